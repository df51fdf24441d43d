"""gunicorn settings for the gateway: ``gunicorn -c config/gunicorn.py wsgi:app``.

Worker class: gevent. Every open WebSocket holds its handler for the whole session (flask-sock's model), plus a
reader and a sender; with OS threads 500 sessions would mean 1,500 threads contending for the GIL, while gevent
greenlets cost a few KB each and switch in microseconds. ``worker_connections`` bounds open sockets per process.
One process per core is plenty: the gateway's work per frame is small next to the model's. Each process keeps
its own sessions, result subscription and queue monitor.

Access log: a browser cannot set headers on a WebSocket, so the page sends the API token as ``/ws?token=…``, and
its page URL (``/?token=…``) comes back in ``Referer``. The default format logs both (``%(r)s``, ``%(f)s``).
:class:`RedactingLogger` masks the ``token`` query parameter in every atom, and the ``Authorization`` and
``Cookie`` header atoms whole. Chosen over a format without the query string (``%(U)s``, no ``%(f)s``): it keeps
the other query parameters and the referer, and still holds when an operator passes their own
``--access-logformat``. Accepted WebSockets get no access line at all (flask-sock ends them with StopIteration);
refused handshakes and every HTTP request do.
"""

import re

from gunicorn.glogging import Logger

from config.logs import use_format
from config.settings import Settings

_TOKEN_PARAM = re.compile(r"((?:^|[?&;])token=)[^&;#\s\"]*", re.IGNORECASE)
_SECRET_HEADERS = ("{authorization}i", "{cookie}i", "{proxy-authorization}i")


class RedactingLogger(Logger):
    """gunicorn's logger, with the API token masked out of access-log lines (see the module docstring)."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key, value in atoms.items():
            if key in _SECRET_HEADERS:
                atoms[key] = "[redacted]"
            elif isinstance(value, str) and "token=" in value.lower():
                atoms[key] = _TOKEN_PARAM.sub(r"\1[redacted]", value)
        return atoms

    def setup(self, cfg):
        super().setup(cfg)
        use_format(_settings.log_format, [self.error_log, self.access_log])  # ASR_LOG_FORMAT=json: these too


_settings = Settings.from_env()

bind = _settings.bind
worker_class = "gevent"
workers = _settings.gateway_processes
worker_connections = _settings.gateway_connections
timeout = 30  # seconds a process may stay unresponsive before the arbiter restarts it
graceful_timeout = _settings.drain_seconds  # on SIGTERM, open sessions get this long to finish
keepalive = 5
accesslog = "-"
logger_class = RedactingLogger
loglevel = _settings.log_level
