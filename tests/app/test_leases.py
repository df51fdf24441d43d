"""Session leases on workers, against the real Redis: the shared count that enforces ASR_WORKER_MAX_STREAMS."""

from __future__ import annotations

import threading

import redis

from app.leases import Leases
from tasks.wire import Keys
from tests.stack import wait_until


def make(redis_url: str, prefix: str, seconds: float = 30) -> Leases:
    return Leases(redis.Redis.from_url(redis_url), Keys(prefix), lease_seconds=seconds)


def test_a_worker_takes_sessions_up_to_its_limit_and_a_release_frees_a_slot(redis_url):
    leases = make(redis_url, "lease-a:")
    assert [leases.reserve("w1", f"s{i}", 3) for i in range(5)] == [True, True, True, False, False]
    assert leases.counts(["w1", "w2"]) == {"w1": 3, "w2": 0}
    leases.release("s0")
    assert leases.reserve("w1", "s9", 3) and leases.counts(["w1"]) == {"w1": 3}
    assert leases.reserve("w1", "s10", 0), "limit 0 means no limit"


def test_concurrent_reservations_never_exceed_the_limit(redis_url):
    gateways = [make(redis_url, "lease-b:") for _ in range(4)]  # like four gateway processes
    granted = []

    def burst(leases, g):
        for i in range(25):
            if leases.reserve("w1", f"g{g}-{i}", 10):
                granted.append(1)

    threads = [threading.Thread(target=burst, args=(leases, g)) for g, leases in enumerate(gateways)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 10 and gateways[0].counts(["w1"]) == {"w1": 10}


def test_leases_of_a_dead_gateway_expire_and_live_ones_are_renewed(redis_url):
    dead = make(redis_url, "lease-c:", seconds=1)
    live = make(redis_url, "lease-c:", seconds=1).start()
    try:
        assert dead.reserve("w1", "orphan", 0) and live.reserve("w1", "kept", 0)
        wait_until(lambda: dead.counts(["w1"]) == {"w1": 1}, 5, what="the orphaned lease to expire")
        threading.Event().wait(1.5)  # several renewal periods later the live lease is still there
        assert live.counts(["w1"]) == {"w1": 1}
    finally:
        live.stop()


def test_a_client_address_holds_at_most_its_limit_across_gateways(redis_url):
    one, two = make(redis_url, "lease-d:"), make(redis_url, "lease-d:")
    granted = [one.reserve_client("10.0.0.1", f"a{i}", 2) for i in range(2)] + [two.reserve_client("10.0.0.1", "b", 2)]
    assert granted == [True, True, False]
    assert two.reserve_client("10.0.0.2", "c", 2), "another address has its own count"
    one.release("a0")
    assert two.reserve_client("10.0.0.1", "b", 2)


def test_moving_to_another_worker_keeps_the_client_slot(redis_url):
    leases = make(redis_url, "lease-e:")
    assert leases.reserve_client("10.0.0.1", "s", 1) and leases.reserve("w1", "s", 0)
    leases.release_worker("s")
    assert leases.counts(["w1"]) == {"w1": 0}
    assert not leases.reserve_client("10.0.0.1", "other", 1), "the session still counts for its client"


def test_leases_lost_in_a_redis_restart_are_recreated_before_anyone_is_admitted(redis_url):
    client = redis.Redis.from_url(redis_url)
    gateway = make(redis_url, "lease-f:")
    assert [gateway.reserve("w1", f"s{i}", 3) for i in range(3)] == [True, True, True]
    for key in client.scan_iter("lease-f:*"):  # what a restart without persistence leaves: nothing
        client.delete(key)
    assert not gateway.reserve("w1", "newcomer", 3), "the three sessions still hold the worker's three slots"
    assert gateway.counts(["w1"]) == {"w1": 3}


def test_renewal_recreates_leases_of_an_idle_gateway(redis_url):
    client = redis.Redis.from_url(redis_url)
    idle = make(redis_url, "lease-g:", seconds=1.2).start()
    try:
        assert idle.reserve("w1", "s1", 0)
        client.delete("lease-g:leases:w1")
        wait_until(lambda: idle.counts(["w1"]) == {"w1": 1}, 3, what="the renewal to re-create the lease")
    finally:
        idle.stop()
