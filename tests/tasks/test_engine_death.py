"""A real worker process against malformed tasks and against the death of its engine (finding 6).

Tasks are sent straight to the worker's private queue with Celery's own client, as a gateway (or anyone who
can write to the broker) could send them. The heartbeat TTL is a minute, so the key can only vanish within the
waits below if the worker deletes it itself.
"""

from __future__ import annotations

import json

import pytest

from config.settings import Settings
from tasks import wire
from tasks.celery_app import create_celery_app
from tasks.engine import KILL_ENGINE_PREFIX
from tasks.options import StreamOptions
from tasks.runtime import EXIT_ENGINE_DIED
from tasks.wire import ChunkJob, ChunkResult
from tests.stack import Stack, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def worker(make_stack):
    """One worker with fault injection on; yields (stack, its process, a function that sends it a payload)."""
    stack: Stack = make_stack("death", fault_injection=1, heartbeat_ttl=60)
    proc = stack.start_worker("w1", concurrency=2)
    app = create_celery_app(Settings.from_env(stack.env()))
    queue = wire.worker_queue(stack.queue, stack.worker_id("w1"))

    def send(payload) -> None:
        app.send_task(wire.TASK_CHUNK, (payload,), queue=queue)

    yield stack, proc, send
    app.close()


def chunk(stack: Stack, session: str, **changes) -> dict:
    job = ChunkJob(
        wire.stream_id(session, 0),
        0,
        b"\x00\x00" * 1600,
        first=True,
        options=StreamOptions(wav_name=session).to_wire(),
        channel=stack.prefix + f"result:{session}",
    )
    return {**job.to_wire(), **changes}


def next_result(pubsub, timeout: float = 20) -> ChunkResult:
    def message():
        got = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        return got if got and got["type"] == "message" else None

    return ChunkResult.decode(wait_until(message, timeout, interval=0, what="a result")["data"])


def test_a_malformed_task_is_answered_on_its_channel_and_the_worker_serves_on(worker):
    stack, proc, send = worker
    pubsub = stack.redis.pubsub()
    pubsub.subscribe(stack.prefix + "result:bad", stack.prefix + "result:good")
    send({**chunk(stack, "nobody"), "channel": 7})  # cannot tell whom: logged and dropped
    send(chunk(stack, "bad", options={"chunk_size": [5, 10, 5]}))  # lacks keys: once killed the batcher thread
    refused = next_result(pubsub)
    assert (refused.stream, refused.seq, refused.code) == ("bad/0", 0, "bad_task")
    assert "lack" in refused.error
    send(chunk(stack, "good", final=True))
    served = next_result(pubsub)
    assert served.stream == "good/0" and served.error is None
    assert proc.popen.poll() is None and stack.redis.exists(f"{stack.prefix}worker:{stack.worker_id('w1')}")
    assert "dropping a malformed chunk task" in proc.tail(200)
    pubsub.close()


def test_a_worker_whose_engine_dies_deregisters_and_exits_with_its_own_status(worker):
    stack, proc, send = worker
    key = f"{stack.prefix}worker:{stack.worker_id('w1')}"
    assert json.loads(stack.redis.get(key))["engine"] == "ok"
    send(chunk(stack, "killer", options=StreamOptions(wav_name=KILL_ENGINE_PREFIX).to_wire()))
    wait_until(lambda: not stack.redis.exists(key), 30, what="the worker to deregister")
    assert proc.popen.wait(30) == EXIT_ENGINE_DIED, proc.tail()
    assert "batcher thread died" in proc.tail(200) and "exiting with status 4" in proc.tail(200)
