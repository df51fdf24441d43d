"""Worker liveness in Redis: each worker refreshes a JSON heartbeat key with a TTL.

The key ``<prefix>worker:<id>`` existing *is* the worker being alive (Redis expires it, so no clocks are
compared across machines); the set ``<prefix>workers`` lists ids to look up. Gateways read both (app.monitor) to
pick a worker for a new session, to count capacity for admission, and to notice a dead worker's sessions.

A worker must stop advertising itself the moment it cannot serve: the heartbeat asks ``check`` before every beat,
and when it names a reason the heartbeat deletes the key, stops, and hands the reason to ``on_unhealthy``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import redis

from tasks.wire import Keys

logger = logging.getLogger(__name__)


class Heartbeat:
    """Publishes ``describe()`` every ``interval`` seconds under a key that expires after ``ttl``.

    ``check()`` (optional) returns None while the worker can serve, else why not; the heartbeat then
    deregisters, stops for good, and calls ``on_unhealthy(reason)`` from its own thread.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        worker_id: str,
        describe: Callable[[], dict],
        *,
        interval: float = 1.0,
        ttl: float = 4.0,
        check: Callable[[], str | None] | None = None,
        on_unhealthy: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.worker_id = worker_id
        self.describe = describe
        self.interval = interval
        self.ttl_ms = int(ttl * 1000)
        self.check = check
        self.on_unhealthy = on_unhealthy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="asr-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def beat(self) -> None:
        """Write one heartbeat now. Raises redis errors; the loop logs and retries them."""
        body = dict(self.describe(), id=self.worker_id, ts=time.time())
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.keys.worker(self.worker_id), json.dumps(body), px=self.ttl_ms)
        pipe.sadd(self.keys.workers, self.worker_id)
        pipe.execute()

    def stop(self, *, deregister: bool = True) -> None:
        """Stop beating; ``deregister`` deletes the key so gateways move this worker's sessions at once.
        Idempotent, and callable from the heartbeat's own thread (``on_unhealthy`` may call it)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.interval * 2)
        if deregister:
            try:
                self.client.delete(self.keys.worker(self.worker_id))
            except redis.RedisError:
                logger.warning("could not deregister worker %s", self.worker_id)

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            reason = self.check() if self.check is not None else None
            if reason is not None:
                logger.critical("worker %s cannot serve (%s): deregistering", self.worker_id, reason)
                self.stop(deregister=True)
                if self.on_unhealthy is not None:
                    self.on_unhealthy(reason)
                return
            try:
                self.beat()
                if failing:
                    logger.info("heartbeat restored")
                failing = False
            except redis.RedisError as exc:
                if not failing:
                    logger.warning("heartbeat failed (%s); retrying every %.1f s", exc, self.interval)
                failing = True
