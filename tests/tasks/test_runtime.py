"""The worker runtime's reaction to a dead or stuck engine, with the fake recognizer, real threads and real Redis.

The runtime is built as the worker hooks build it, with the process exit replaced by a recorder; the real exit
status is checked against a real worker process in test_engine_death.py.
"""

from __future__ import annotations

import json
import threading

import pytest
import redis

from config.settings import Settings
from tasks import runtime as runtime_module
from tasks.engine import KILL_ENGINE_PREFIX
from tasks.options import StreamOptions
from tasks.recognizer import FakeRecognizer
from tasks.runtime import EXIT_ENGINE_DIED, WorkerRuntime
from tasks.wire import ChunkJob
from tests.stack import wait_until

PREFIX = "asrtest-runtime:"


class Stuck(FakeRecognizer):
    """Never returns from a batch with a stream named ``stuck`` until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def process(self, work):
        if any(item.state.options.wav_name == "stuck" for item in work):
            self.release.wait(30)
        return super().process(work)


@pytest.fixture
def client(redis_url):
    r = redis.Redis.from_url(redis_url)
    yield r
    for key in r.scan_iter(PREFIX + "*"):
        r.delete(key)


@pytest.fixture
def start_runtime(redis_url, client, monkeypatch):
    """A started WorkerRuntime over ``recognizer``; returns it with the exit statuses it asked for."""
    runtimes = []

    def start(recognizer, **settings) -> tuple[WorkerRuntime, list[int]]:
        monkeypatch.setattr(runtime_module, "build_recognizer", lambda _settings: recognizer)
        config = Settings.from_env({}, redis_url=redis_url, key_prefix=PREFIX, heartbeat_interval=0.1, **settings)
        exits: list[int] = []
        runtime = WorkerRuntime(config, "w@test", "q.w@test", 2, "threads", exit_with=exits.append)
        runtime.start()
        assert runtime.ready.wait(10)
        runtimes.append(runtime)
        return runtime, exits

    yield start
    for runtime in runtimes:
        runtime.stop()


def first_job(name: str) -> ChunkJob:
    return ChunkJob(
        "sess/0",
        0,
        b"\x00\x00" * 160,
        first=True,
        options=StreamOptions(wav_name=name).to_wire(),
        channel=PREFIX + "result:sess",
    )


def test_the_heartbeat_says_the_engine_is_ok(start_runtime, client):
    runtime, exits = start_runtime(FakeRecognizer())
    body = json.loads(client.get(runtime.keys.worker("w@test")))
    assert body["engine"] == "ok" and body["streams"] == 0 and body["recognizer"] == "fake"
    assert runtime.engine_problem() is None and not exits


def test_a_dead_engine_deregisters_the_worker_and_asks_for_its_exit_status(start_runtime, client):
    runtime, exits = start_runtime(FakeRecognizer(), fault_injection=True)
    key = runtime.keys.worker("w@test")
    assert client.exists(key)
    pending = runtime.engine.submit(first_job(KILL_ENGINE_PREFIX))
    assert pending.wait(5) is None, "the waiting task body returns at once"
    wait_until(lambda: exits, 5, what="the exit request")
    assert exits == [EXIT_ENGINE_DIED] and not client.exists(key)
    threading.Event().wait(0.3)  # several heartbeat periods: nothing writes the key again
    assert not client.exists(key) and exits == [EXIT_ENGINE_DIED]


def test_a_stalled_engine_deregisters_the_worker_and_releases_its_waiting_tasks(start_runtime, client):
    recognizer = Stuck()
    runtime, exits = start_runtime(recognizer, chunk_timeout=0.3)
    pending = runtime.engine.submit(first_job("stuck"))
    wait_until(lambda: exits, 5, what="the stall to be noticed")
    assert exits == [EXIT_ENGINE_DIED] and not client.exists(runtime.keys.worker("w@test"))
    assert pending.wait(1) is None, "the task stuck in the batch is released before the exit"
    recognizer.release.set()
