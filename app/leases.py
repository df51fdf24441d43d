"""Which sessions each worker holds, shared by every gateway: the count admission and worker choice rely on.

A worker reports its streams only after their first chunk arrived, and each gateway knows only its own
sessions, so neither can enforce ``ASR_WORKER_MAX_STREAMS`` under a burst of new sessions. Instead a session
*leases* a slot on a worker before its WebSocket handshake: one atomic Lua script on a sorted set per worker
(``<prefix>leases:<worker>``, members = session ids, scores = expiry on Redis's clock) that drops expired
leases, refuses when the worker is full and adds the lease otherwise. Sessions release their lease when they
end or move; a gateway renews its sessions' leases in one pipeline every ``LEASE_SECONDS / 3``, so the leases of
a gateway that died expire on their own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

import redis

from tasks.wire import Keys

logger = logging.getLogger(__name__)

LEASE_SECONDS = 30  # a lease not renewed for this long is gone (its gateway died)

_RESERVE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
local limit = tonumber(ARGV[2])
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 2))
return 1
"""

_RENEW = """
local now = redis.call('TIME')
local until_ = tonumber(now[1]) + tonumber(now[2]) / 1e6 + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', until_, ARGV[i + 1])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[1]) * 2))
end
return 1
"""

_COUNT = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
local counts = {}
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', t)
  counts[i] = redis.call('ZCARD', key)
end
return counts
"""


class Leases:
    """Session leases on workers. Thread-safe; the renewal runs in its own thread."""

    def __init__(self, client: redis.Redis, keys: Keys, lease_seconds: float = LEASE_SECONDS) -> None:
        self.client = client
        self.keys = keys
        self.lease_seconds = lease_seconds
        self._reserve = client.register_script(_RESERVE)
        self._renew = client.register_script(_RENEW)
        self._count = client.register_script(_COUNT)
        self._held: dict[str, str] = {}  # session id → worker id, for renewal
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def start(self) -> Leases:
        threading.Thread(target=self._run, name="asr-leases", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def reserve(self, worker_id: str, session_id: str, limit: int) -> bool:
        """Take a slot on the worker for the session; False when the worker already holds ``limit`` (> 0)."""
        granted = self._reserve(keys=[self.keys.leases(worker_id)], args=[session_id, limit, self.lease_seconds])
        if granted:
            with self._lock:
                self._held[session_id] = worker_id
        return bool(granted)

    def release(self, session_id: str) -> None:
        with self._lock:
            worker_id = self._held.pop(session_id, None)
        if worker_id is not None:
            try:
                self.client.zrem(self.keys.leases(worker_id), session_id)
            except redis.RedisError as exc:  # the lease expires by itself
                logger.info("could not release lease of %s: %s", session_id, exc)

    def counts(self, workers: Iterable[str]) -> dict[str, int]:
        """Live leases per worker (one round trip)."""
        ids = list(workers)
        if not ids:
            return {}
        return dict(zip(ids, self._count(keys=[self.keys.leases(w) for w in ids]), strict=True))

    def _run(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            with self._lock:
                held = list(self._held.items())
            if not held:
                continue
            try:  # KEYS[i] is the lease set of the session in ARGV[i + 1]
                self._renew(keys=[self.keys.leases(w) for _, w in held],
                            args=[self.lease_seconds, *(s for s, _ in held)])
            except redis.RedisError as exc:
                logger.warning("could not renew %d session lease(s): %s", len(held), exc)
