"""Worker choice: sessions spread by count (per slot), leases enforce each worker's limit."""

from __future__ import annotations

import time

import pytest
import redis

from app.dispatch import Dispatcher
from app.leases import Leases
from app.monitor import Snapshot
from config.settings import Settings
from tasks.errors import AdmissionRefused
from tasks.wire import Keys


class FixedMonitor:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot


def dispatcher(redis_url: str, prefix: str, workers: dict, queues: dict) -> Dispatcher:
    client = redis.Redis.from_url(redis_url)
    snapshot = Snapshot(taken_at=time.time(), workers=workers, queues=queues, redis_error=None)
    return Dispatcher(None, Leases(client, Keys(prefix)), Settings.from_env({}), FixedMonitor(snapshot))


def test_new_sessions_alternate_between_equal_workers_whatever_their_queues(redis_url):
    workers = {w: {"queue": f"gpu.{w}", "streams": 0} for w in ("a", "b")}
    d = dispatcher(redis_url, "disp-a:", workers, {"gpu": 0, "gpu.a": 500, "gpu.b": 0})
    chosen = [d.reserve(f"s{i}") for i in range(10)]
    assert chosen.count("a") == 5 and chosen.count("b") == 5, "a passing backlog must not pin sessions to b"
    assert chosen[0] == "b", "with equal sessions, the shorter queue wins"


def test_limits_are_enforced_and_weigh_the_choice(redis_url):
    workers = {"big": {"queue": "gpu.big", "max_streams": 4}, "small": {"queue": "gpu.small", "max_streams": 2}}
    d = dispatcher(redis_url, "disp-b:", workers, {})
    chosen = [d.reserve(f"s{i}") for i in range(6)]
    assert chosen.count("big") == 4 and chosen.count("small") == 2
    with pytest.raises(AdmissionRefused) as full:
        d.reserve("s7")
    assert full.value.code == "at_capacity"
    assert d.move("s0") in ("big", "small"), "a moving session is placed even when every worker is full"


def test_no_live_worker_is_refused_as_no_worker(redis_url):
    with pytest.raises(AdmissionRefused) as none:
        dispatcher(redis_url, "disp-c:", {}, {}).reserve("s")
    assert none.value.code == "no_worker"


def test_concurrent_reservations_spread_over_equal_workers(redis_url):
    import threading

    workers = {w: {"queue": f"gpu.{w}", "streams": 0} for w in ("a", "b")}
    d = dispatcher(redis_url, "disp-d:", workers, {})
    chosen: list[str] = []
    start = threading.Barrier(8)

    def one(i: int) -> None:
        start.wait()
        chosen.append(d.reserve(f"s{i}"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(chosen) == ["a"] * 4 + ["b"] * 4, "sessions opened together must not all land on one worker"


def test_draining_workers_take_no_new_sessions_but_a_moving_one_as_a_last_resort(redis_url):
    workers = {"a": {"queue": "gpu.a", "draining": True}, "b": {"queue": "gpu.b"}}
    d = dispatcher(redis_url, "disp-e:", workers, {})
    assert {d.reserve(f"s{i}") for i in range(4)} == {"b"}
    only_draining = dispatcher(redis_url, "disp-f:", {"a": {"queue": "gpu.a", "draining": True}}, {})
    with pytest.raises(AdmissionRefused) as refused:
        only_draining.reserve("new")
    assert refused.value.code == "at_capacity"
    assert only_draining.move("moving") == "a"
