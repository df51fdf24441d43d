"""The worker probe `python -m tasks.healthcheck` against the real test Redis, and once against a real worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import redis

from tasks import healthcheck
from tasks.wire import Keys
from tests.stack import ROOT, wait_until

PREFIX = "asrtest-healthcheck:"


@pytest.fixture
def client(redis_url, monkeypatch):
    """The test Redis, with this module's settings in the environment; its keys are removed afterwards."""
    monkeypatch.setenv("ASR_REDIS_URL", redis_url)
    monkeypatch.setenv("ASR_KEY_PREFIX", PREFIX)
    monkeypatch.delenv(healthcheck.WORKER_NAME_VAR, raising=False)
    r = redis.Redis.from_url(redis_url)
    yield r
    for key in r.scan_iter(PREFIX + "*"):
        r.delete(key)


def beat(client: redis.Redis, worker_id: str, ttl_ms: int = 10_000, **fields) -> str:
    key = Keys(PREFIX).worker(worker_id)
    client.set(key, json.dumps({"model": "/models/m", "device": "cpu", "streams": 3, **fields}), px=ttl_ms)
    return key


def test_exit_status_follows_the_heartbeat_key(client, capsys):
    key = beat(client, "w1@host")
    assert healthcheck.main(["--worker-id", "w1@host"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: worker w1@host registered") and "3 open streams" in out

    client.delete(key)
    assert healthcheck.main(["--worker-id", "w1@host"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("unhealthy: no heartbeat") and PREFIX + "worker:w1@host" in err
    assert "\n" not in err, "one line, for probe logs and `docker inspect`"


@pytest.mark.parametrize("engine", ["dead", "stalled"])
def test_a_heartbeat_that_reports_a_failed_engine_is_unhealthy(client, capsys, engine):
    beat(client, "w1@host", engine=engine)
    assert healthcheck.main(["--worker-id", "w1@host"]) == 1
    assert capsys.readouterr().err.strip() == f"unhealthy: worker w1@host registered, but its engine is {engine}"
    beat(client, "w1@host", engine="ok")
    assert healthcheck.main(["--worker-id", "w1@host"]) == 0


def test_another_workers_heartbeat_does_not_count(client):
    beat(client, "w2@host")
    assert healthcheck.main(["--worker-id", "w1@host"]) == 1


def test_default_worker_id_expands_ASR_WORKER_NAME_the_way_celery_expands_n(client, monkeypatch):
    host = socket.gethostname()
    monkeypatch.setenv(healthcheck.WORKER_NAME_VAR, "worker@%h")
    assert healthcheck.default_worker_id() == f"worker@{host}"
    beat(client, f"worker@{host}")
    assert healthcheck.main([]) == 0

    monkeypatch.delenv(healthcheck.WORKER_NAME_VAR)
    assert healthcheck.default_worker_id() == f"celery@{host}", "celery's default node name without -n"
    assert healthcheck.main([]) == 1


def test_unreachable_redis_is_unhealthy_without_leaking_the_password(client, monkeypatch, capsys):
    monkeypatch.setenv("ASR_REDIS_URL", "redis://:secret@127.0.0.1:1/0")
    assert healthcheck.main(["--worker-id", "w1@host", "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert "cannot read Redis at redis://***@127.0.0.1:1/0" in err and "secret" not in err


def test_invalid_settings_are_unhealthy_with_the_reason(client, monkeypatch, capsys):
    monkeypatch.setenv("ASR_HEARTBEAT_TTL", "four")
    assert healthcheck.main(["--worker-id", "w1@host"]) == 1
    assert "ASR_HEARTBEAT_TTL='four'" in capsys.readouterr().err


def test_runs_as_a_module_with_the_exit_status_a_probe_reads(client, redis_url):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    beat(client, "w3@host")
    ok = subprocess.run(
        [sys.executable, "-m", "tasks.healthcheck", "--worker-id", "w3@host"],
        env=env,
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    bad = subprocess.run(
        [sys.executable, "-m", "tasks.healthcheck", "--worker-id", "w4@host"],
        env=env,
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (ok.returncode, bad.returncode) == (0, 1), (ok.stderr, bad.stderr)


@pytest.mark.slow
def test_a_real_worker_is_healthy_once_loaded_and_unhealthy_as_soon_as_it_drains(client, redis_url, tiny_model, logdir):
    """The compose/k8s convention end to end: `-n worker@%h` and ASR_WORKER_NAME name the same heartbeat.

    The heartbeat TTL is a minute, so the key can only vanish within the wait below if SIGTERM deregisters it:
    that is the graceful drain gateways rely on to move sessions.
    """
    queue = "gpu-healthcheck"
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        ASR_MODEL=str(tiny_model),
        ASR_QUEUE=queue,
        ASR_NCPU="1",
        ASR_HEARTBEAT_TTL="60",
        **{healthcheck.WORKER_NAME_VAR: "worker@%h"},
    )
    probe = [sys.executable, "-m", "tasks.healthcheck"]

    def healthy() -> bool:
        return subprocess.run(probe, env=env, cwd=ROOT, check=False, capture_output=True, timeout=60).returncode == 0

    assert not healthy()
    log = (logdir / "healthcheck-worker.log").open("wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "worker",
            "-Q",
            queue,
            "-n",
            "worker@%h",
            "--concurrency",
            "2",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "INFO",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def loaded() -> bool:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}; see {log.name}")
        return healthy()

    try:
        wait_until(loaded, 120, interval=0.5, what="the worker's model to load")
        worker.send_signal(signal.SIGTERM)
        wait_until(lambda: not healthy(), 20, interval=0.2, what="the worker to deregister on SIGTERM")
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)
        log.close()
