"""``python -m tasks.drain``: drain this host's worker and wait for its sessions to end — the pre-stop hook.

Scale-in that knows about sessions. Kubernetes (a KEDA scale-down, a rollout, a node drain) picks a worker pod
and runs its ``preStop`` hook before SIGTERM; with this hook the worker first stops taking new sessions
(``celery control drain``: gateways skip it) and the pod waits until its open streams reach 0 or ``--wait``
seconds pass, whichever is first. Only sessions still open then are replayed on another worker, as on any stop.
Live sessions can be long, so the wait is bounded; size ``terminationGracePeriodSeconds`` as ``--wait`` plus
the worker's own few seconds of exit.

The worker id is resolved like the health check's (``ASR_WORKER_NAME``, Celery's ``%h`` expansion); settings
come from ``ASR_*`` variables. Exit status 0 always, so a failed drain never blocks the stop it precedes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence

import redis

from config.redis import client as redis_client
from config.settings import Settings
from tasks.healthcheck import default_worker_id
from tasks.wire import Keys

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0


def open_streams(client: redis.Redis, keys: Keys, worker_id: str) -> int | None:
    """Streams the worker's heartbeat reports (None once it has deregistered or cannot be read)."""
    body = client.get(keys.worker(worker_id))
    return int(json.loads(body).get("streams", 0)) if body else None


def drain(settings: Settings, worker_id: str, wait: float) -> str:
    """Send ``drain`` to the worker, then wait for its streams to reach 0; returns what happened, in words."""
    from tasks.celery_app import create_celery_app

    app = create_celery_app(settings)
    try:
        replies = app.control.broadcast("drain", destination=[worker_id], reply=True, timeout=2.0)
    except Exception as exc:  # noqa: BLE001 - process boundary: the stop must go on whatever the broker says
        return f"could not send drain to {worker_id}: {exc}"
    if not replies:
        return f"{worker_id} did not answer drain (not running?)"
    client = redis_client(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    keys = Keys(settings.key_prefix)
    deadline = time.monotonic() + wait
    left: int | None = None
    while time.monotonic() < deadline:
        try:
            left = open_streams(client, keys, worker_id)
        except (redis.RedisError, ValueError) as exc:
            return f"drained {worker_id}, but cannot read its streams: {exc}"
        if not left:
            return f"drained {worker_id}: no open streams"
        time.sleep(POLL_SECONDS)
    return f"drained {worker_id}: {left} stream(s) still open after {wait:g} s; they will be replayed elsewhere"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.drain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help="worker id (default: from ASR_WORKER_NAME, as the health check)")
    parser.add_argument("--wait", type=float, default=120.0, help="longest wait for open streams to end, seconds")
    args = parser.parse_args(argv)
    print(drain(Settings.from_env(), args.worker or default_worker_id(), args.wait), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
