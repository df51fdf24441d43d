"""Shared fixtures: a real Redis database (flushed before and after), the tiny model, and service stacks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from tests.stack import Stack

TEST_REDIS_URL = os.environ.get("ASR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.exit(f"tests need a Redis at {TEST_REDIS_URL} ({exc}); .ci/run starts one", returncode=3)
    client.flushdb()
    yield TEST_REDIS_URL
    client.flushdb()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny paraformer-zh-streaming folder with random weights, generated once per test run."""
    from tasks import modelgen

    return modelgen.generate(tmp_path_factory.mktemp("models") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def logdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def stack(redis_url, tiny_model, logdir):
    """The shared stack: two worker processes (batched recognizer, fault injection on) and one gateway."""
    s = Stack("main", redis_url, str(tiny_model), logdir, settings={"fault_injection": 1})
    try:
        s.start_worker("w1", wait=False)
        s.start_worker("w2", wait=False)
        for proc in s.procs:
            s.wait_worker(s.worker_id(proc.name), proc)
        s.start_gateway()
        yield s
    finally:
        s.stop()


@pytest.fixture
def make_stack(redis_url, tiny_model, logdir, request):
    """A factory of private stacks for tests that kill or reconfigure processes."""
    stacks = []

    def make(name: str, **settings) -> Stack:
        s = Stack(f"{name}-{len(stacks)}", redis_url, str(tiny_model), logdir, settings=settings)
        stacks.append(s)
        return s

    yield make
    for s in stacks:
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            for proc in s.procs:
                print(f"--- {proc.name} ---\n{proc.tail()}")
        s.stop()


@pytest.fixture(scope="module")
def make_module_stack(redis_url, tiny_model, logdir):
    """Like make_stack, for a module's tests that share one private stack (settings of their own)."""
    stacks: list[Stack] = []
    yield lambda name, **settings: _new_stack(stacks, f"{name}-m", redis_url, tiny_model, logdir, settings)
    for s in stacks:
        s.stop()


def _new_stack(stacks: list[Stack], name: str, redis_url, tiny_model, logdir, settings: dict) -> Stack:
    s = Stack(f"{name}{len(stacks)}", redis_url, str(tiny_model), logdir, settings=settings)
    stacks.append(s)
    return s


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


@pytest.fixture(scope="session")
def twopass_models(tmp_path_factory) -> dict[str, str]:
    """The 2pass and file models: the real fsmn-vad weights, tiny generated SeACo-Paraformer and punctuation."""
    from tasks import modelgen
    from tests.speech import real_vad_dir

    root = tmp_path_factory.mktemp("twopass-models")
    return {
        "vad": str(real_vad_dir()),
        "offline": str(modelgen.generate(root / "offline", "tiny", seed=0, kind="offline")),
        "punc": str(modelgen.generate(root / "punc", "tiny", seed=0, kind="punc")),
    }
