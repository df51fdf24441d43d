"""Process-wide logging setup for gateways and workers: level from settings, format ``text`` or ``json``.

Structured fields. Log calls about a session pass its identifiers with ``extra=fields(session=…, worker=…,
stream=…, chunk=…)``. The text format prints the message only, which names them as before; the JSON format
(:class:`JsonFormatter`) writes one object per line with every such field as a key. In a worker process,
:func:`log_celery_as` also adds the worker's own id as ``worker`` to every line that has none.

The gateway calls :func:`configure_logging` (wsgi.py; gunicorn's own loggers through config/gunicorn.py); a worker's
logging is set up by Celery, and :func:`log_celery_as` (tasks/celery.py) switches its handlers to the format.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
FORMATS = ("text", "json")

#: Attributes every LogRecord has; anything else on a record came from ``extra=`` or a filter.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``process``,
    ``message``, ``exc`` (the traceback, when there is one) and the record's structured fields.

    Non-ASCII is escaped (``\\uXXXX``), so no character of a message can split the line for any reader.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        entry.update((k, v) for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_"))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class ProcessFields(logging.Filter):
    """Adds this process's fields (e.g. a worker's ``worker``) to records that do not carry them."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, Any] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.values.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


PROCESS_FIELDS = ProcessFields()


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the given structured fields, those that are None left out."""
    return {key: value for key, value in values.items() if value is not None}


def stream_fields(stream: str, chunk: int | None = None) -> dict[str, Any]:
    """``extra=`` for a worker's line about stream ``<session>/<generation>`` (and one of its chunks)."""
    session = stream.rpartition("/")[0] or None
    return fields(session=session, stream=stream, chunk=chunk)


def formatter(log_format: str, text_format: str = FORMAT) -> logging.Formatter:
    """The formatter for ``log_format`` (``text`` uses ``text_format``); ValueError names the setting."""
    if log_format not in FORMATS:
        raise ValueError(f"ASR_LOG_FORMAT={log_format!r}: expected one of {', '.join(FORMATS)}")
    return JsonFormatter() if log_format == "json" else logging.Formatter(text_format)


def use_format(log_format: str, loggers: Iterable[logging.Logger]) -> None:
    """Give every handler of ``loggers`` the ``log_format`` formatter (json) and the process fields.

    For ``text`` the handlers keep the format their owner gave them (gunicorn's, Celery's).
    """
    json_formatter = formatter(log_format) if log_format == "json" else None
    for logger in loggers:
        for handler in logger.handlers:
            if json_formatter is not None:
                handler.setFormatter(json_formatter)
            if PROCESS_FIELDS not in handler.filters:
                handler.addFilter(PROCESS_FIELDS)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send this service's loggers (``app``, ``tasks``) to stderr at ``level``; leave other libraries at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(PROCESS_FIELDS)
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    for name in ("app", "tasks", "config"):
        logging.getLogger(name).setLevel(level.upper())


def log_celery_as(log_format: str) -> None:
    """In a worker: once Celery has set up its log handlers, switch them to ``log_format``, and tag every line
    with the worker's id (``worker``) once Celery knows it."""
    from celery import signals

    formatter(log_format)  # fail at import, not in a signal handler

    def after_setup(logger: logging.Logger, **_kwargs: Any) -> None:
        use_format(log_format, [logger])

    def worker_named(sender: str, **_kwargs: Any) -> None:
        PROCESS_FIELDS.values["worker"] = sender

    signals.after_setup_logger.connect(after_setup, weak=False)
    signals.after_setup_task_logger.connect(after_setup, weak=False)
    signals.celeryd_after_setup.connect(worker_named, weak=False)


def printable(value: object, limit: int = 80) -> str:
    """Client-supplied text made safe to log: control characters escaped, at most ``limit`` characters.

    A ``wav_name`` or field name with a newline would otherwise forge log lines; a megabyte one would flood the log.
    """
    text = value if isinstance(value, str) else repr(value)
    cut = len(text) > limit
    text = text[:limit].encode("unicode_escape", "backslashreplace").decode("ascii")
    return text + ("…" if cut else "")
