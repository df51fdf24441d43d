"""Submitting chunk tasks: choosing a worker for a session and sending its chunks to that worker's queue.

Session affinity. A stream's model state lives in the worker process that ran its previous chunk, so all chunks of
a stream go to one worker's private queue, ``<queue>.<worker id>``, in order. The worker is chosen when the
session starts (or replays): the live worker with the fewest open streams plus waiting tasks, counting sessions
this gateway assigned since that worker's last heartbeat. New workers therefore take new sessions at once;
existing sessions stay where they are until their worker dies, then move (see app.session's replay).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable

from app.monitor import Monitor, Snapshot
from app.publisher import TaskPublisher
from config.settings import Settings
from tasks import wire
from tasks.errors import AdmissionRefused
from tasks.wire import ChunkJob

logger = logging.getLogger(__name__)


class Dispatcher:
    """Chooses workers and sends tasks. Thread-safe."""

    def __init__(self, publisher: TaskPublisher, settings: Settings, monitor: Monitor) -> None:
        self.publisher = publisher
        self.settings = settings
        self.monitor = monitor
        self._lock = threading.Lock()
        # worker id → (heartbeat timestamp it applies to, sessions assigned by this gateway since then)
        self._recent: dict[str, tuple[float, int]] = {}

    def streams(self, worker_id: str, info: dict) -> int:
        """Open streams on a worker: its last heartbeat's count plus sessions assigned here since then."""
        since, recent = self._recent.get(worker_id, (0.0, 0))
        return int(info.get("streams", 0)) + (recent if since == info.get("ts") else 0)

    def load(self, worker_id: str, info: dict, snapshot: Snapshot) -> int:
        """What worker choice minimizes: open streams plus tasks waiting in the worker's queue."""
        queue = info.get("queue") or wire.worker_queue(self.settings.queue, worker_id)
        return self.streams(worker_id, info) + snapshot.queues.get(queue, 0)

    def has_room(self, worker_id: str, info: dict) -> bool:
        limit = int(info.get("max_streams") or self.settings.worker_max_streams or 0)
        return limit <= 0 or self.streams(worker_id, info) < limit

    def choose_worker(self, *, require_room: bool = True) -> str:
        """The least-loaded live worker (with room for another stream, unless ``require_room`` is False);
        raises AdmissionRefused when there is none."""
        snapshot = self.monitor.snapshot
        with self._lock:
            candidates = [
                (self.load(w, info, snapshot), w)
                for w, info in snapshot.workers.items()
                if not require_room or self.has_room(w, info)
            ]
            if not candidates:
                raise AdmissionRefused("no worker is available", code="no_worker", retry_after=self.settings.retry_after)
            _, worker_id = min(candidates)
            ts = snapshot.workers[worker_id].get("ts", 0.0)
            since, recent = self._recent.get(worker_id, (ts, 0))
            self._recent[worker_id] = (ts, (recent if since == ts else 0) + 1)
        return worker_id

    def queue_for(self, worker_id: str) -> str:
        info = self.monitor.snapshot.workers.get(worker_id, {})
        return info.get("queue") or wire.worker_queue(self.settings.queue, worker_id)

    def submit(self, jobs: Iterable[ChunkJob], worker_id: str, on_failure: Callable[[], None]) -> None:
        """Send chunk tasks to a worker's private queue, in order; ``on_failure`` runs if they cannot be sent."""
        queue = self.queue_for(worker_id)
        for job in jobs:
            message = self.publisher.message(wire.TASK_CHUNK, (job.to_wire(),), queue=queue,
                                             expires=self.settings.chunk_task_expires,
                                             argsrepr=f"{job.stream}#{job.seq}")
            self.publisher.enqueue(queue, message, on_failure)

    def close_stream(self, stream: str, worker_id: str) -> None:
        """Ask the worker to free the stream's state now; best effort (it idles out anyway)."""
        queue = self.queue_for(worker_id)
        message = self.publisher.message(wire.TASK_CLOSE_STREAM, (stream,), queue=queue, expires=60)
        self.publisher.enqueue(queue, message)
