"""The monitor's reading of Redis: live workers, queue depths with priority lists, pruning of the departed."""

from __future__ import annotations

import json

import redis

from app.leases import Leases
from app.monitor import Monitor
from tasks import wire
from tasks.wire import Keys


def test_depths_count_priority_lists_and_dead_workers_lose_their_queues(redis_url):
    client = redis.Redis.from_url(redis_url)
    keys = Keys("mon-a:")
    monitor = Monitor(client, keys, Leases(client, keys), "gpuq")
    client.set(keys.worker("alive"), json.dumps({"queue": "gpuq.alive", "streams": 2}), px=5000)
    client.sadd(keys.workers, "alive", "gone")
    client.rpush("gpuq", b"1", b"2")
    client.rpush("gpuq\x06\x166", b"3")
    client.rpush("gpuq.alive", b"4")
    client.rpush("gpuq.gone", b"5")

    snapshot = monitor.sample()

    assert snapshot.redis_ok and set(snapshot.workers) == {"alive"}
    assert snapshot.queues == {"gpuq": 3, "gpuq.alive": 1} and snapshot.pending == 4
    assert not client.exists("gpuq.gone") and client.smembers(keys.workers) == {b"alive"}
    client.delete("gpuq", "gpuq\x06\x166", "gpuq.alive", keys.worker("alive"), keys.workers)


def test_the_sweep_deletes_queues_refilled_after_their_worker_was_pruned(redis_url):
    client = redis.Redis.from_url(redis_url)
    keys = Keys("mon-b:")
    monitor = Monitor(client, keys, Leases(client, keys), "gpuq*b")  # glob characters in the name
    client.rpush("gpuq*b.alive", b"1")
    client.rpush("gpuq*b.late@host", b"restored by a stopping worker")
    client.rpush(f"gpuq*b.late@host{wire.PRIORITY_SEP}3", b"x")
    client.rpush("gpuq*bother", b"not ours")

    monitor._sweep_orphans({"alive"})

    assert client.exists("gpuq*b.alive") and client.exists("gpuq*bother")
    assert not client.exists("gpuq*b.late@host", f"gpuq*b.late@host{wire.PRIORITY_SEP}3")
    client.delete("gpuq*b.alive", "gpuq*bother")


def test_an_unreachable_redis_gives_a_snapshot_that_says_so():
    client = redis.Redis(port=1, socket_connect_timeout=0.5)
    keys = Keys("mon-c:")
    snapshot = Monitor(client, keys, Leases(client, keys), "gpuq").sample()
    assert not snapshot.redis_ok and snapshot.redis_error and snapshot.workers == {}
