"""A worker dying mid-session: the session moves to another worker and finishes with no audio lost."""

from __future__ import annotations

import asyncio
import signal

from bench.client import StreamClient
from tasks.runtime import EXIT_MODEL_LOAD_FAILED
from tests import audio, reference
from tests.stack import wait_until


def test_killed_worker_sessions_finish_on_another_worker_with_the_same_text(make_stack, tiny_model):
    s = make_stack("kill", heartbeat_interval=0.5, heartbeat_ttl=2)
    for name in ("w1", "w2"):
        s.start_worker(name)
    s.start_gateway()
    pcms = [audio.noise(6.0, seed=50 + i) for i in range(4)]
    procs = {s.worker_id(p.name): p for p in s.procs if p.name.startswith("w")}

    async def scenario():
        clients = [StreamClient(s.url, config={"wav_name": f"k{i}"}, pace=1.0, timeout=60) for i in range(4)]
        sessions = [asyncio.create_task(c.run(pcm)) for c, pcm in zip(clients, pcms)]
        await asyncio.to_thread(
            wait_until,
            lambda: all(len(c.record.texts) >= 2 for c in clients),
            30,
            0.1,
            "every session to get its first results",
        )
        # the workers' stream counts come with their heartbeats: wait until they show every session
        await asyncio.to_thread(
            wait_until,
            lambda: sum(w["streams"] for w in s.api_queue()["workers"]) >= len(clients),
            10,
            0.1,
            "the workers' heartbeats to count every session",
        )
        busiest = max(s.api_queue()["workers"], key=lambda w: w["streams"])
        procs[busiest["id"]].kill()  # SIGKILL: no goodbye, no deregistration
        return busiest, await asyncio.gather(*sessions)

    victim, records = asyncio.run(scenario())

    assert victim["streams"] >= 1
    for record, pcm in zip(records, pcms):
        assert record.error is None and not record.errors, (record.error, record.errors)
        assert record.texts == [t for t in reference.chunk_texts(str(tiny_model), pcm) if t]
    survivors = s.api_queue()["workers"]
    assert [w["id"] for w in survivors] != [victim["id"]] and len(survivors) == 1


def test_a_worker_whose_model_cannot_load_exits_instead_of_hanging(make_stack):
    s = make_stack("badmodel", model="/nonexistent/model")
    proc = s.start_worker("w1", wait=False)

    wait_until(lambda: proc.popen.poll() is not None, 60, what="the worker to exit")

    assert proc.popen.returncode == EXIT_MODEL_LOAD_FAILED
    assert "cannot load its model" in proc.tail(200)


def test_a_worker_stopped_gracefully_hands_its_sessions_over_and_exits_promptly(make_stack, tiny_model):
    s = make_stack("drain")
    for name in ("w1", "w2"):
        s.start_worker(name)
    s.start_gateway()
    procs = {s.worker_id(p.name): p for p in s.procs if p.name.startswith("w")}
    pcms = [audio.noise(20.0, seed=58 + i) for i in range(4)]

    async def scenario():
        # Sent as fast as possible: the worker holds a backlog of chunks when it is told to stop.
        clients = [StreamClient(s.url, config={"wav_name": f"d{i}"}, pace=0, timeout=90) for i in range(4)]
        sessions = [asyncio.create_task(c.run(pcm)) for c, pcm in zip(clients, pcms)]
        await asyncio.to_thread(
            wait_until, lambda: all(len(c.record.texts) >= 1 for c in clients), 30, 0.05, "first results"
        )
        busiest = max(s.api_queue()["workers"], key=lambda w: w["pending"] + w["streams"])
        procs[busiest["id"]].kill(signal.SIGTERM)  # waits up to 10 s for it to exit, then SIGKILLs
        return busiest["id"], await asyncio.gather(*sessions)

    stopped, records = asyncio.run(scenario())

    for record, pcm in zip(records, pcms):
        assert record.error is None and not record.errors
        assert record.texts == [t for t in reference.chunk_texts(str(tiny_model), pcm) if t]
    assert procs[stopped].popen.returncode not in (None, -signal.SIGKILL), "the worker left by itself within 10 s"
    assert stopped not in [w["id"] for w in s.api_queue()["workers"]]
