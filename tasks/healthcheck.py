"""Container probe for a worker: exit 0 when its heartbeat is in Redis and says its engine is ok, else 1.

    python -m tasks.healthcheck [--worker-id ID] [--timeout SECONDS]

A worker writes its heartbeat key ``<ASR_KEY_PREFIX>worker:<worker id>`` only once its model is loaded, refreshes
it every ``ASR_HEARTBEAT_INTERVAL`` and deletes it on SIGTERM (see :mod:`tasks.registry`), so the key existing
is exactly "gateways may send sessions here". The body's ``engine`` field is the engine's health: anything but
``ok`` (``dead``, ``stalled``) is unhealthy; a body without it (an older worker) counts as ok. One line says why,
on stdout when healthy, on stderr when not.

Worker id. It is the worker's Celery node name (``-n``). The convention in ``docker/``: the launch command passes
``-n`` the value of ``ASR_WORKER_NAME``, and this probe reads the same variable and expands it as Celery does
(``%h`` is the host name; a value without ``@`` is taken as the host part of ``celery@<value>``). Compose uses
``worker@%h`` (every replica has its own container host name); Kubernetes uses ``worker@$(POD_NAME)`` from the
downward API. Unset, the id is Celery's own default, ``celery@<host name>``. ``ASR_WORKER_NAME`` is a launch
variable like ``ASR_WORKER_CONCURRENCY`` in the Procfile, not a field of :class:`config.settings.Settings`:
the Celery command line owns the node name, and the worker reads it from there.

What it does not check by itself: that the worker is making progress. The worker does: when its engine dies or
stalls it deletes its heartbeat and exits with status 4 (tasks.runtime), for the restart policy to act on. A
liveness probe built on this one would restart every worker at once whenever Redis is unreachable, so the
deployment files use it for readiness only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import redis

from config.redis import client as redis_client
from config.redis import redact
from config.settings import Settings
from tasks.wire import Keys

WORKER_NAME_VAR = "ASR_WORKER_NAME"
EXIT_OK = 0
EXIT_UNHEALTHY = 1


def default_worker_id(template: str | None = None) -> str:
    """The node name Celery gives ``celery worker -n <template>`` on this host (Celery's default when None)."""
    # Imported here: celery.utils takes 0.2 s, and only the default needs it.
    from celery.utils.nodenames import default_nodename, host_format

    if template is None:
        template = os.environ.get(WORKER_NAME_VAR) or None
    return host_format(default_nodename(template))


def check(settings: Settings, worker_id: str, timeout: float = 2.0) -> tuple[bool, str]:
    """(healthy, reason) for ``worker_id``'s heartbeat in the Redis of ``settings``."""
    key = Keys(settings.key_prefix).worker(worker_id)
    try:
        client = redis_client(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
        with client:
            raw = client.get(key)
    except (redis.RedisError, ValueError) as exc:  # ValueError: a malformed ASR_REDIS_URL
        return False, f"cannot read Redis at {_safe_url(settings.redis_url)}: {exc}"
    if raw is None:
        return False, f"no heartbeat {key!r}: model still loading, worker stopped, or a different -n name"
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    engine = body.get("engine", "ok")
    if engine != "ok":
        return False, f"worker {worker_id} registered, but its engine is {str(engine)[:40]}"
    return True, (
        f"worker {worker_id} registered: model {body.get('model', '?')} on {body.get('device', '?')}, "
        f"{body.get('streams', '?')} open streams"
    )


def _safe_url(url: str) -> str:
    """The Redis URL without its passwords (user info and ``sentinel_password``), for messages."""
    return redact(url)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.healthcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--worker-id", help=f"Celery node name of the worker (default: from ${WORKER_NAME_VAR})")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for Redis (default: 2)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return EXIT_UNHEALTHY
    worker_id = args.worker_id or default_worker_id()
    healthy, reason = check(settings, worker_id, args.timeout)
    print(("ok: " if healthy else "unhealthy: ") + reason, file=sys.stdout if healthy else sys.stderr)
    return EXIT_OK if healthy else EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
