"""The worker's Celery app, found by ``celery -A tasks worker``. Settings come from ``ASR_*`` variables."""

from config.settings import Settings
from tasks.celery_app import create_celery_app

app = create_celery_app(Settings.from_env(), worker=True)
