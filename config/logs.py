"""Process-wide logging setup for the gateway (the worker's is Celery's): one format, level from settings."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"


def configure_logging(level: str) -> None:
    """Send this service's loggers (``app``, ``tasks``) to stderr at ``level``; leave other libraries at WARNING."""
    logging.basicConfig(level=logging.WARNING, format=FORMAT)
    for name in ("app", "tasks", "config"):
        logging.getLogger(name).setLevel(level.upper())


def printable(value: object, limit: int = 80) -> str:
    """Client-supplied text made safe to log: control characters escaped, at most ``limit`` characters.

    A ``wav_name`` or field name with a newline would otherwise forge log lines; a megabyte one would flood the log.
    """
    text = value if isinstance(value, str) else repr(value)
    cut = len(text) > limit
    text = text[:limit].encode("unicode_escape", "backslashreplace").decode("ascii")
    return text + ("…" if cut else "")
