"""The worker's Celery app, found by ``celery -A tasks worker``. Settings come from ``ASR_*`` variables."""

from config.logs import log_celery_as
from config.settings import Settings
from tasks.celery_app import create_celery_app

app = create_celery_app(Settings.from_env(), worker=True)
log_celery_as(app.conf.asr_settings.log_format)
