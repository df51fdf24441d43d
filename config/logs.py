"""Process-wide logging setup for the gateway (the worker's is Celery's): one format, level from settings."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"


def configure_logging(level: str) -> None:
    """Send this service's loggers (``app``, ``tasks``) to stderr at ``level``; leave other libraries at WARNING."""
    logging.basicConfig(level=logging.WARNING, format=FORMAT)
    for name in ("app", "tasks", "config"):
        logging.getLogger(name).setLevel(level.upper())
