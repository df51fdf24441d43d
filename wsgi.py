"""WSGI entry point: ``gunicorn -c config/gunicorn.py wsgi:app``."""

from app import create_app
from config.logs import configure_logging
from config.settings import Settings

settings = Settings.from_env()
configure_logging(settings.log_level, settings.log_format)
app = create_app(settings)
