"""Queue status pushed to clients, and admission control refusing new sessions up front (HTTP 503)."""

from __future__ import annotations

import asyncio
import os
import signal

from bench.client import StreamClient
from tests import audio, reference
from tests.stack import wait_until


def test_queue_status_is_pushed_about_once_a_second(stack):
    record = asyncio.run(StreamClient(stack.url, pace=1.0).run(audio.noise(4.2, seed=21)))

    statuses = record.queue_statuses
    assert record.error is None
    assert len(statuses) >= 3, statuses
    assert all(isinstance(pending, int) and pending >= 0 for _, pending in statuses)
    gaps = [b[0] - a[0] for a, b in zip(statuses, statuses[1:])]
    assert min(gaps) > 0.2, "pushes are paced, not sent per frame"


def test_no_worker_means_503_with_reason_and_retry_after(make_stack):
    s = make_stack("noworker")
    s.start_gateway(wait_healthy=False)

    record = asyncio.run(StreamClient(s.url).run(audio.noise(0.5)))
    health_status, health = s.get(s.http + "/healthz")

    assert record.refused_status == 503
    assert record.refused_body["code"] == "no_worker"
    assert int(record.refused_headers["retry-after"]) > 0
    assert health_status == 503 and health["workers"] == 0


def test_backlog_over_the_limit_refuses_new_sessions_but_never_cuts_admitted_ones(make_stack, tiny_model):
    s = make_stack("backlog", batching=0, heartbeat_ttl=120, max_pending=3)
    worker = s.start_worker("w1", concurrency=1)
    s.start_gateway()
    pcms = [audio.noise(2.0, seed=30 + i) for i in range(3)]

    async def scenario():
        os.kill(worker.popen.pid, signal.SIGSTOP)  # the worker stops taking tasks: a backlog builds up
        try:
            clients = [StreamClient(s.url, config={"wav_name": f"a{i}"}, pace=0, timeout=90) for i in range(3)]
            admitted = [asyncio.create_task(c.run(pcm)) for c, pcm in zip(clients, pcms)]
            await asyncio.to_thread(wait_until, lambda: s.api_queue()["pending"] > 3, 20, 0.1, "a backlog")
            refused = await StreamClient(s.url, config={"wav_name": "late"}).run(audio.noise(0.5))

            def everyone_told():
                return all(any(p > 3 for _, p in c.record.queue_statuses) for c in clients)

            await asyncio.to_thread(wait_until, everyone_told, 10, 0.1, "queue_status showing the backlog")
        finally:
            os.kill(worker.popen.pid, signal.SIGCONT)
        return await asyncio.gather(*admitted), refused

    admitted, refused = asyncio.run(scenario())

    assert refused.refused_status == 503 and refused.refused_body["code"] == "overloaded"
    assert "retry-after" in refused.refused_headers
    for record, pcm in zip(admitted, pcms):
        assert record.error is None and not record.errors
        assert record.text == "".join(reference.chunk_texts(str(tiny_model), pcm))
    wait_until(lambda: s.api_queue()["admitting"], 20, what="admission to reopen once the backlog drained")


def test_every_worker_full_means_503_at_capacity(make_stack):
    s = make_stack("capacity", worker_max_streams=1)
    s.start_worker("w1")
    s.start_gateway()

    async def scenario():
        first = asyncio.create_task(StreamClient(s.url, pace=1.0).run(audio.noise(3.0, seed=40)))
        await asyncio.to_thread(wait_until, lambda: s.api_queue()["streams"] >= 1, 20, 0.1, "the first stream")
        second = await StreamClient(s.url).run(audio.noise(0.5))
        return await first, second

    first, second = asyncio.run(scenario())

    assert first.error is None and first.final is not None
    assert second.refused_status == 503 and second.refused_body["code"] == "at_capacity"


def test_a_burst_of_new_sessions_gets_exactly_the_free_slots_and_503_for_the_rest(make_stack):
    s = make_stack("burst", worker_max_streams=3)
    s.start_worker("w1")
    s.start_gateway()

    async def burst():
        clients = [StreamClient(s.url, pace=1.0).run(audio.noise(3.0, seed=70 + i)) for i in range(10)]
        return await asyncio.gather(*clients)

    records = asyncio.run(burst())

    served = [r for r in records if r.final is not None]
    refused = [r for r in records if r.refused_status == 503]
    assert len(served) == 3 and len(refused) == 7, [(r.refused_status, r.error, r.errors) for r in records]
    assert {r.refused_body["code"] for r in refused} == {"at_capacity"}
    assert all(not r.errors for r in served)
