"""Submitting chunk tasks: choosing a worker for a session and sending its chunks to that worker's queue.

Session affinity. A stream's model state lives in the worker process that ran its previous chunk, so all chunks of
a stream go to one worker's private queue, ``<queue>.<worker id>``, in order. The worker is chosen before the
session's handshake (or when it replays): the live worker with the fewest sessions (leases, see app.leases) plus
waiting tasks that still has a free slot. New workers therefore take new sessions at once; existing sessions
stay where they are until their worker dies, then move (see app.session's replay).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

import redis

from app.leases import Leases
from app.monitor import Monitor, Snapshot
from app.publisher import TaskPublisher
from config.settings import Settings
from tasks import wire
from tasks.errors import AdmissionRefused, BackendUnavailable
from tasks.wire import ChunkJob, SentenceJob

logger = logging.getLogger(__name__)


class Dispatcher:
    """Chooses workers (leasing a slot on them) and sends tasks. Thread-safe."""

    def __init__(self, publisher: TaskPublisher, leases: Leases, settings: Settings, monitor: Monitor) -> None:
        self.publisher = publisher
        self.leases = leases
        self.settings = settings
        self.monitor = monitor
        self._lock = threading.Lock()
        # worker id → (snapshot time it applies to, sessions this gateway leased on it since that snapshot)
        self._recent: dict[str, tuple[float, int]] = {}

    def sessions_on(self, worker_id: str, snapshot: Snapshot) -> int:
        """Sessions on a worker: the snapshot's lease count plus what this gateway leased since it was taken."""
        taken, recent = self._recent.get(worker_id, (0.0, 0))
        return snapshot.sessions_on(worker_id) + (recent if taken == snapshot.taken_at else 0)

    def limit(self, info: dict) -> int:
        return int(info.get("max_streams") or self.settings.worker_max_streams or 0)

    def has_room(self, worker_id: str, info: dict) -> bool:
        """An estimate for status pages; the lease taken by :meth:`reserve` is what enforces the limit."""
        if info.get("draining"):
            return False
        limit = self.limit(info)
        return limit <= 0 or self.sessions_on(worker_id, self.monitor.snapshot) < limit

    def load(self, worker_id: str, info: dict, snapshot: Snapshot) -> tuple[float, int]:
        """What worker choice minimizes: sessions per slot first, then tasks waiting in the worker's queue.

        Every session sends the same chunk rate for as long as it lives, so the session count is the lasting
        load; a queue is a passing state (a worker's first batches are slower, a burst lands unevenly), and
        ranking on it would pin many long sessions to whichever worker happened to be quick for a moment.
        With ASR_WORKER_MAX_STREAMS set, sessions are weighed against each worker's own limit.
        """
        queue = info.get("queue") or wire.worker_queue(self.settings.queue, worker_id)
        per_slot = self.sessions_on(worker_id, snapshot) / max(1, self.limit(info))
        return per_slot, snapshot.queues.get(queue, 0)

    def reserve(self, session_id: str, *, require_room: bool = True) -> str:
        """Lease a slot for the session on the least-loaded live worker that has one, and return that worker.

        Draining workers (``celery -A tasks control drain``) take no new sessions. ``require_room=False``
        ignores ASR_WORKER_MAX_STREAMS and, when no other worker is left, accepts a draining one (a session moving
        off a dead worker is never cut for load). Raises AdmissionRefused when no worker is alive or all are full,
        BackendUnavailable when Redis cannot be reached.
        """
        snapshot = self.monitor.snapshot
        if not snapshot.workers:
            raise AdmissionRefused(
                "no recognition worker is running", code="no_worker", retry_after=self.settings.retry_after
            )
        candidates = {w: info for w, info in snapshot.workers.items() if not info.get("draining")}
        if not candidates and not require_room:
            candidates = dict(snapshot.workers)
        tried: set[str] = set()
        while True:
            with self._lock:  # choose and count in one step, so concurrent reservations spread out
                ranked = sorted((self.load(w, info, snapshot), w) for w, info in candidates.items() if w not in tried)
                if not ranked:
                    break
                worker_id = ranked[0][1]
                self._add_recent(worker_id, snapshot, 1)
            tried.add(worker_id)
            limit = self.limit(snapshot.workers[worker_id]) if require_room else 0
            try:
                granted = self.leases.reserve(worker_id, session_id, limit)
            except redis.RedisError as exc:
                with self._lock:
                    self._add_recent(worker_id, snapshot, -1)
                raise BackendUnavailable(f"cannot reach Redis: {exc}") from exc
            if granted:
                return worker_id
            with self._lock:
                self._add_recent(worker_id, snapshot, -1)
        raise AdmissionRefused(
            "every worker is serving its maximum number of streams (or draining)",
            code="at_capacity",
            retry_after=self.settings.retry_after,
        )

    def move(self, session_id: str) -> str:
        """Release the session's worker lease and lease a slot on the least-loaded live worker, full or not."""
        self.leases.release_worker(session_id)
        return self.reserve(session_id, require_room=False)

    def release(self, session_id: str) -> None:
        self.leases.release(session_id)

    def _add_recent(self, worker_id: str, snapshot: Snapshot, delta: int) -> None:
        """Count a lease taken (or given back) since ``snapshot``. Caller holds the lock."""
        taken, recent = self._recent.get(worker_id, (snapshot.taken_at, 0))
        self._recent[worker_id] = (snapshot.taken_at, max(0, (recent if taken == snapshot.taken_at else 0) + delta))

    def queue_for(self, worker_id: str) -> str:
        info = self.monitor.snapshot.workers.get(worker_id, {})
        return info.get("queue") or wire.worker_queue(self.settings.queue, worker_id)

    def submit(self, jobs: Iterable[ChunkJob], worker_id: str, on_failure: Callable[[], None]) -> None:
        """Send chunk tasks to a worker's private queue, in order; ``on_failure`` runs if they cannot be sent."""
        queue = self.queue_for(worker_id)
        for job in jobs:
            self._enqueue(queue, wire.TASK_CHUNK, job.to_wire(), f"{job.stream}#{job.seq}", on_failure)

    def submit_sentence(self, job: SentenceJob, worker_id: str, on_failure: Callable[[], None]) -> None:
        """Send a sentence for the offline pass to the session's worker's queue, behind the session's chunks.

        A sentence job is stateless (any worker could take it); it goes to the session's own worker so that the
        offline work of a worker's sessions is bounded by its sessions (a thread each at most), and is sent again
        to the new worker when the session moves (app.sentences)."""
        self._enqueue(
            self.queue_for(worker_id), wire.TASK_SENTENCE, job.to_wire(), f"{job.session}~{job.index}", on_failure
        )

    def _enqueue(self, queue: str, task: str, payload: dict, argsrepr: str, on_failure: Callable[[], None]) -> None:
        message = self.publisher.message(
            task, (payload,), queue=queue, expires=self.settings.chunk_task_expires, argsrepr=argsrepr
        )
        self.publisher.enqueue(queue, message, on_failure)

    def close_stream(self, stream: str, worker_id: str) -> None:
        """Ask the worker to free the stream's state now; best effort (it idles out anyway)."""
        queue = self.queue_for(worker_id)
        message = self.publisher.message(wire.TASK_CLOSE_STREAM, (stream,), queue=queue, expires=60)
        self.publisher.enqueue(queue, message)
