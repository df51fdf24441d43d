"""Slots that sessions hold, shared by every gateway: the counts admission, worker choice and per-client limits
rely on.

A worker reports its streams only after their first chunk arrived, and each gateway knows only its own
sessions, so neither can enforce ``ASR_WORKER_MAX_STREAMS`` or ``ASR_MAX_SESSIONS_PER_CLIENT`` under a burst of
new sessions. Instead a session *leases* its slots before its WebSocket handshake: one atomic Lua script on a
sorted set (members = session ids, scores = expiry on Redis's clock) that drops expired leases, refuses when the
set is full and adds the lease otherwise. There is one set per worker (``<prefix>leases:<worker>``) and one per
client address (``<prefix>clients:<address>``), so a limit holds across all gateway processes.

Sessions release their leases when they end or move; a gateway renews its sessions' leases in one script call
every ``LEASE_SECONDS / 6``, so the leases of a gateway that died expire on their own.

Redis restarts. Leases live only in Redis: after a restart (or a failover) they are gone, and counting from
an empty set would admit past every limit. Each gateway keeps a marker key with the same lifetime; a reservation
by a gateway that holds leases but whose marker is missing is refused by the script (``-1``), the gateway then
re-creates all its leases in one call and tries again, so its sessions count before any new one does.
Renewals re-create missing leases too (plain ``ZADD``), which brings back the sessions of idle gateways within
one renewal period.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable

import redis

from tasks.wire import Keys

logger = logging.getLogger(__name__)

LEASE_SECONDS = 30  # a lease not renewed for this long is gone (its gateway died)
MAX_CLIENT_KEY_CHARS = 128  # a client address longer than this is cut (IPv6 with a zone fits in 64)

_RESERVE = """
local t = redis.call('TIME')
t = tonumber(t[1]) + tonumber(t[2]) / 1e6
local seconds = tonumber(ARGV[3])
if tonumber(ARGV[4]) > 0 and redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
redis.call('SET', KEYS[2], '1', 'EX', math.ceil(seconds * 2))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
local limit = tonumber(ARGV[2])
if limit > 0 and redis.call('ZSCORE', KEYS[1], ARGV[1]) == false and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], t + seconds, ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(seconds * 2))
return 1
"""

_RENEW = """
local t = redis.call('TIME')
local seconds = tonumber(ARGV[1])
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1e6 + seconds
redis.call('SET', KEYS[1], '1', 'EX', math.ceil(seconds * 2))
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], until_, ARGV[i])
  redis.call('EXPIRE', KEYS[i], math.ceil(seconds * 2))
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
    """Session leases on workers and per client address. Thread-safe; the renewal runs in its own thread."""

    def __init__(self, client: redis.Redis, keys: Keys, lease_seconds: float = LEASE_SECONDS) -> None:
        self.client = client
        self.keys = keys
        self.lease_seconds = lease_seconds
        self.marker = f"{keys.prefix}gateway:{uuid.uuid4().hex}"
        self._reserve = client.register_script(_RESERVE)
        self._renew = client.register_script(_RENEW)
        self._count = client.register_script(_COUNT)
        self._held: dict[str, set[str]] = {}  # session id → the lease sets it is in, for renewal
        self._lock = threading.RLock()
        self._stop = threading.Event()

    def start(self) -> Leases:
        threading.Thread(target=self._run, name="asr-leases", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def client_key(self, address: str) -> str:
        return f"{self.keys.prefix}clients:{address[:MAX_CLIENT_KEY_CHARS]}"

    def reserve(self, worker_id: str, session_id: str, limit: int) -> bool:
        """Take a slot on the worker for the session; False when the worker already holds ``limit`` (> 0)."""
        return self._take(self.keys.leases(worker_id), session_id, limit)

    def reserve_client(self, address: str, session_id: str, limit: int) -> bool:
        """Count the session against its client address; False when that address holds ``limit`` (> 0)."""
        return self._take(self.client_key(address), session_id, limit)

    def _take(self, key: str, session_id: str, limit: int) -> bool:
        with self._lock:
            granted = self._reserve(
                keys=[key, self.marker], args=[session_id, limit, self.lease_seconds, len(self._held)]
            )
            if granted == -1:  # Redis lost our leases (restart, failover): put them back, then decide
                logger.warning("Redis lost this gateway's %d lease(s); re-creating them", len(self._held))
                self._renew_held()
                granted = self._reserve(keys=[key, self.marker], args=[session_id, limit, self.lease_seconds, 0])
            if granted == 1:
                self._held.setdefault(session_id, set()).add(key)
        return granted == 1

    def release(self, session_id: str) -> None:
        """Give back every slot the session holds (worker and client); Redis errors are logged, leases expire."""
        with self._lock:
            held = self._held.pop(session_id, set())
        if not held:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in held:
                pipe.zrem(key, session_id)
            pipe.execute()
        except redis.RedisError as exc:
            logger.info("could not release the leases of %s: %s", session_id, exc)

    def release_worker(self, session_id: str) -> None:
        """Give back the session's worker slot only (it is moving to another worker; its client slot stays)."""
        prefix = self.keys.leases("")
        with self._lock:
            held = self._held.get(session_id, set())
            keys = [k for k in held if k.startswith(prefix)]
            held.difference_update(keys)
        for key in keys:
            try:
                self.client.zrem(key, session_id)
            except redis.RedisError as exc:
                logger.info("could not release the lease of %s: %s", session_id, exc)

    def counts(self, workers: Iterable[str]) -> dict[str, int]:
        """Live leases per worker (one round trip)."""
        ids = list(workers)
        if not ids:
            return {}
        return dict(zip(ids, self._count(keys=[self.keys.leases(w) for w in ids]), strict=True))

    def _renew_held(self) -> None:
        """Renew (re-creating where missing) every lease this gateway holds. Caller holds the lock, so a release
        cannot slip between the snapshot and the write and leave a lease behind."""
        pairs = [(key, session) for session, held in self._held.items() for key in held]
        self._renew(keys=[self.marker, *(k for k, _ in pairs)], args=[self.lease_seconds, *(s for _, s in pairs)])

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(1.0 if failing else self.lease_seconds / 6):
            try:
                with self._lock:
                    self._renew_held()
                if failing:
                    logger.info("session leases renewed again")
                failing = False
            except redis.RedisError as exc:
                if not failing:
                    logger.warning("could not renew session leases: %s", exc)
                failing = True
