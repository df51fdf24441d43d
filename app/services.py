"""The long-lived objects of one gateway process, built once by the app factory and shared by all requests."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

import redis
from celery import Celery

from app.dispatch import Dispatcher
from app.leases import Leases
from app.limits import Limits, ReplayBudget
from app.metrics import GatewayMetrics
from app.monitor import Monitor, Snapshot
from app.publisher import TaskPublisher
from app.results import ResultRouter
from app.session import Backend
from config.redis import client as redis_client
from config.settings import Settings
from tasks.celery_app import create_celery_app
from tasks.wire import Keys


class SessionTable:
    """Open sessions of this gateway process, by id and by client address. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, str] = {}
        self._per_client: Counter[str] = Counter()

    def add(self, session_id: str, client: str) -> None:
        with self._lock:
            self._clients[session_id] = client
            self._per_client[client] += 1

    def remove(self, session_id: str) -> None:
        with self._lock:
            client = self._clients.pop(session_id, None)
            if client is not None:
                self._per_client[client] -= 1
                if self._per_client[client] <= 0:
                    del self._per_client[client]

    def count(self, client: str | None = None) -> int:
        with self._lock:
            return len(self._clients) if client is None else self._per_client.get(client, 0)


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    celery: Celery
    keys: Keys
    monitor: Monitor
    router: ResultRouter
    dispatcher: Dispatcher
    sessions: SessionTable
    metrics: GatewayMetrics
    limits: Limits
    replay_budget: ReplayBudget
    uploads: threading.BoundedSemaphore  # file uploads being received and decoded by this process (app.files)
    _backend: tuple[Snapshot | None, Backend] = (None, Backend())

    def backend(self) -> Backend:
        """The session core's view of the latest monitor snapshot (built once per snapshot, shared)."""
        snapshot = self.monitor.snapshot
        cached_for, view = self._backend
        if cached_for is not snapshot:
            jobs = int(snapshot.files.get("jobs", 0))
            view = Backend(snapshot.redis_ok, frozenset(snapshot.workers), snapshot.pending, jobs)
            self._backend = (snapshot, view)
        return view

    @classmethod
    def build(cls, settings: Settings) -> Services:
        """Create and start the background parts (monitor, result router). No model, no Celery worker."""
        client = _redis(settings.redis_url)
        keys = Keys(settings.key_prefix)
        celery = create_celery_app(settings)
        leases = Leases(client, keys).start()
        monitor = Monitor(client, keys, leases, settings.queue, settings.monitor_interval).start()
        router = ResultRouter(client, keys).start()
        broker = client if settings.broker == settings.redis_url else _redis(settings.broker)
        publisher = TaskPublisher(celery, broker).start()
        dispatcher = Dispatcher(publisher, leases, settings, monitor)
        sessions = SessionTable()
        metrics = GatewayMetrics(lambda: monitor.snapshot, sessions.count)
        budget = ReplayBudget(int(settings.replay_budget_mb * (1 << 20)))
        return cls(
            settings,
            client,
            celery,
            keys,
            monitor,
            router,
            dispatcher,
            sessions,
            metrics,
            Limits.from_settings(settings),
            budget,
            threading.BoundedSemaphore(max(1, settings.file_max_uploads)),
        )

    def stop(self) -> None:
        self.monitor.stop()
        self.router.stop()
        self.dispatcher.publisher.stop()
        self.dispatcher.leases.stop()


def _redis(url: str) -> redis.Redis:
    """A client for ``url`` in any form config.redis accepts (Sentinel, TLS, AUTH); ValueError if malformed."""
    return redis_client(url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=10)
