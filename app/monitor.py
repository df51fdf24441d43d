"""The gateway's view of the back end: live workers, queue depths, and the pruning of dead workers' queues.

One background thread per gateway process samples Redis every ``monitor_interval`` (one pipelined round trip
for the heartbeats, one for the queue lengths) and publishes an immutable :class:`Snapshot`. Everything that
needs load information — admission, worker choice, ``queue_status`` pushes, ``/api/queue`` — reads the latest
snapshot instead of asking Redis per session.

Pending work is the total length of the Redis lists behind the shared queue and every worker's private queue,
priority-suffixed lists included (see tasks.wire.queue_keys).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field

import redis

from app.leases import Leases
from tasks import wire
from tasks.filejobs import FileJobStore
from tasks.wire import Keys

logger = logging.getLogger(__name__)

ORPHAN_SWEEP_SECONDS = 10.0  # how often private queues of departed workers are looked for and deleted


@dataclass(frozen=True)
class Snapshot:
    """Back-end state at ``taken_at``; ``redis_error`` is set when Redis could not be read."""

    taken_at: float = 0.0
    workers: dict[str, dict] = field(default_factory=dict)  # live worker id → its heartbeat body
    queues: dict[str, int] = field(default_factory=dict)  # queue name → waiting tasks
    leases: dict[str, int] = field(default_factory=dict)  # live worker id → sessions holding a slot on it
    files: dict[str, float] = field(
        default_factory=dict
    )  # file jobs: unfinished jobs, audio seconds left (tasks.filejobs)
    redis_error: str | None = "not sampled yet"

    @property
    def pending(self) -> int:
        return sum(self.queues.values())

    @property
    def redis_ok(self) -> bool:
        return self.redis_error is None

    def streams(self) -> int:
        return sum(int(w.get("streams", 0)) for w in self.workers.values())

    def sessions_on(self, worker_id: str) -> int:
        """Sessions holding a slot on the worker (leases), or its own stream count if that is higher."""
        return max(self.leases.get(worker_id, 0), int(self.workers.get(worker_id, {}).get("streams", 0)))


class Monitor:
    """Samples Redis in a background thread; :attr:`snapshot` is always the latest sample."""

    def __init__(
        self, client: redis.Redis, keys: Keys, leases: Leases, base_queue: str, interval: float = 0.25
    ) -> None:
        self.client = client
        self.files = FileJobStore(client, keys.prefix)
        self.leases = leases
        self.keys = keys
        self.base_queue = base_queue
        self.interval = interval
        self.snapshot = Snapshot()
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Monitor:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="asr-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def wait_for_update(self, timeout: float) -> Snapshot:
        """Block until the next sample (or timeout) and return the latest snapshot."""
        with self._changed:
            self._changed.wait(timeout)
        return self.snapshot

    def _run(self) -> None:
        next_sweep = time.monotonic() + ORPHAN_SWEEP_SECONDS
        while not self._stop.wait(self.interval):
            snapshot = self.sample()
            if snapshot.redis_ok and time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + ORPHAN_SWEEP_SECONDS
                self._sweep_orphans(set(snapshot.workers))

    def sample(self) -> Snapshot:
        """Read workers and queue depths now; prune workers whose heartbeat expired."""
        try:
            snapshot = self._read()
        except redis.RedisError as exc:
            if self.snapshot.redis_ok:
                logger.warning("cannot read Redis: %s", exc)
            snapshot = Snapshot(taken_at=time.time(), redis_error=str(exc) or type(exc).__name__)
        self.snapshot = snapshot
        with self._changed:
            self._changed.notify_all()
        return snapshot

    def _read(self) -> Snapshot:
        ids = sorted(m.decode() if isinstance(m, bytes) else m for m in self.client.smembers(self.keys.workers))
        bodies = self.client.mget([self.keys.worker(i) for i in ids]) if ids else []
        workers, dead = {}, []
        for worker_id, body in zip(ids, bodies):
            if body is None:
                dead.append(worker_id)
            else:
                workers[worker_id] = json.loads(body)
        queues = [self.base_queue]
        queues += [w.get("queue") or wire.worker_queue(self.base_queue, i) for i, w in workers.items()]
        depths = self._depths(queues)
        leases = self.leases.counts(workers)
        if dead:
            self._prune(dead)
        files = {**self.files.backlog(), "segments_queued": self.client.llen(self.files.queue_key("todo"))}
        return Snapshot(
            taken_at=time.time(), workers=workers, queues=depths, leases=leases, files=files, redis_error=None
        )

    def _depths(self, queues: list[str]) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            for key in wire.queue_keys(queue):
                pipe.llen(key)
        lengths = pipe.execute()
        steps = len(wire.PRIORITY_STEPS)
        return {q: sum(lengths[i * steps : (i + 1) * steps]) for i, q in enumerate(queues)}

    def _sweep_orphans(self, live: set[str]) -> None:
        """Delete private queues of workers that are not alive.

        A stopping worker hands the chunks it had fetched but not started back to its queue, possibly after
        :meth:`_prune` deleted it; nobody would ever read or count them. Their sessions were replayed elsewhere.
        """
        prefix = f"{self.base_queue}."
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix) + "*"  # glob-escaped prefix
        try:
            orphans = []
            for key in self.client.scan_iter(match=pattern, count=1000):
                name = key.decode() if isinstance(key, bytes) else key
                if name[len(prefix) :].split(wire.PRIORITY_SEP)[0] not in live:
                    orphans.append(name)
            if orphans:
                self.client.delete(*orphans)
                logger.warning("deleted %d queue(s) of workers that are gone: %s", len(orphans), ", ".join(orphans))
        except redis.RedisError as exc:
            logger.info("orphan queue sweep failed: %s", exc)

    def _prune(self, dead: list[str]) -> None:
        """Forget dead workers and drop their private queues: their sessions are replayed elsewhere."""
        pipe = self.client.pipeline(transaction=False)
        for worker_id in dead:
            pipe.srem(self.keys.workers, worker_id)
            pipe.delete(*wire.queue_keys(wire.worker_queue(self.base_queue, worker_id)), self.keys.leases(worker_id))
        pipe.execute()
        logger.warning("worker(s) %s stopped heartbeating; removed with their queues", ", ".join(dead))
