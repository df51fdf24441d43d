"""gunicorn settings for the gateway: ``gunicorn -c config/gunicorn.py wsgi:app``.

Worker class: gevent. Every open WebSocket holds its handler for the whole session (flask-sock's model), plus a
reader and a sender; with OS threads 500 sessions would mean 1,500 threads contending for the GIL, while gevent
greenlets cost a few KB each and switch in microseconds. ``worker_connections`` bounds open sockets per process.
One process per core is plenty: the gateway's work per frame is small next to the model's. Each process keeps
its own sessions, result subscription and queue monitor.
"""

from config.settings import Settings

_settings = Settings.from_env()

bind = _settings.bind
worker_class = "gevent"
workers = _settings.gateway_processes
worker_connections = _settings.gateway_connections
timeout = 30  # seconds a process may stay unresponsive before the arbiter restarts it
graceful_timeout = _settings.drain_seconds  # on SIGTERM, open sessions get this long to finish
keepalive = 5
accesslog = "-"
loglevel = _settings.log_level
