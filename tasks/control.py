"""Operating a worker: remote-control ``drain`` / ``undrain`` / ``streams``, and the stop that every exit path runs.

Remote control (``celery -A tasks control|inspect <command> -d <worker id>``; Flower sends the same commands):

* ``control drain``: the worker stays registered and serves its open sessions, but its heartbeat says
  ``"draining": true`` and gateways choose other workers for new sessions. Replies with the streams still open.
* ``control undrain``: takes new sessions again.
* ``inspect streams``: ``{"draining": bool, "streams": N}``, to wait for N to reach 0 before stopping.

Stopping. Celery fires ``worker_shutting_down`` only from its SIGTERM/SIGINT/SIGQUIT handlers; the remote
``shutdown`` command (``celery control shutdown``, Flower's button) raises WorkerShutdown without it, and
``worker_shutdown`` comes only after the pool has joined, i.e. after every task body still waiting in the engine
has timed out. :class:`StopRuntime` is a worker bootstep: Celery calls every step's ``close`` first on every stop
path, warm or cold, before any step (the pool included) stops, so the runtime deregisters and releases its
waiting chunks there.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps
from celery.worker.control import control_command, inspect_command

logger = logging.getLogger(__name__)


def _runtime():
    from tasks import transcribe  # imported lazily: `celery control` (the CLI) needs only the command names

    return transcribe.current_runtime()


def _not_serving() -> dict:
    return {"error": "this worker has no runtime yet (still starting)"}


def _reply(state: dict) -> dict[str, Any]:
    verb = "draining" if state["draining"] else "taking new sessions"
    return {"ok": f"{verb}; {state['streams']} open streams", **state}


@control_command()
def drain(state: Any, **_kwargs: Any) -> dict[str, Any]:
    """Take no new sessions (gateways skip this worker), finish the open ones; reply with the streams left."""
    runtime = _runtime()
    return _reply(runtime.drain(True)) if runtime is not None else _not_serving()


@control_command()
def undrain(state: Any, **_kwargs: Any) -> dict[str, Any]:
    """Take new sessions again after ``drain``."""
    runtime = _runtime()
    return _reply(runtime.drain(False)) if runtime is not None else _not_serving()


@inspect_command()
def streams(state: Any, **_kwargs: Any) -> dict[str, Any]:
    """Whether this worker is draining, and how many streams it still has open."""
    runtime = _runtime()
    if runtime is None:
        return _not_serving()
    return {"draining": runtime.draining, "streams": runtime.open_streams}


class StopRuntime(bootsteps.StartStopStep):
    """Stops the worker's runtime (deregister, release waiting chunks) first thing on every stop path."""

    requires = ("celery.worker.components:Pool",)
    label = "asr runtime stop"

    def close(self, parent: Any) -> None:
        runtime = _runtime()
        if runtime is None:
            return
        logger.info("worker stopping: deregistering and releasing waiting chunks")
        try:
            runtime.stop()
        except Exception:  # noqa: BLE001 - process boundary: the rest of Celery's shutdown must still run
            logger.exception("stopping the runtime failed")
