"""The HTTP side: /healthz, /api/queue and /metrics tell operators what the back end is doing."""

from __future__ import annotations

import asyncio
import urllib.request

from bench.client import StreamClient
from tests import audio
from tests.stack import wait_until


def scrape(http: str) -> dict[str, float]:
    with urllib.request.urlopen(http + "/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_healthz_names_the_model_and_counts_workers(stack, tiny_model):
    status, body = stack.get(stack.http + "/healthz")
    assert status == 200 and body["status"] == "ok"
    assert body["workers"] == 2 and body["redis"]["ok"] is True
    assert body["models"] == [str(tiny_model)] and body["default_model"] is False


def test_readyz_only_needs_redis(stack, make_stack):
    assert stack.get(stack.http + "/readyz") == (200, {"status": "ready", "redis": None})
    lonely = make_stack("ready")
    lonely.start_gateway(wait_healthy=False)  # no worker: not healthy, but ready to answer (with 503s)
    assert lonely.get(lonely.http + "/readyz")[0] == 200
    assert lonely.get(lonely.http + "/healthz")[0] == 503


def test_api_queue_describes_workers_and_admission(stack):
    state = stack.api_queue()
    assert state["admitting"] is True and state["refusal"] is None
    assert set(state["queues"]) == {stack.queue, *(w["queue"] for w in state["workers"])}
    for worker in state["workers"]:
        assert worker["queue"] == f"{stack.queue}.{worker['id']}" and worker["pool"] == "threads"
        assert worker["pid"] > 0 and worker["concurrency"] == 8


def test_metrics_count_sessions_chunks_and_latency_and_expose_the_back_end(stack):
    before = scrape(stack.http)
    record = asyncio.run(StreamClient(stack.url, pace=0).run(audio.noise(2.0, seed=95)))
    assert record.final is not None
    after = scrape(stack.http)

    assert after["asr_sessions_admitted_total"] == before.get("asr_sessions_admitted_total", 0) + 1
    assert after["asr_chunks_submitted_total"] - before.get("asr_chunks_submitted_total", 0) == 4
    assert after["asr_chunk_latency_seconds_count"] - before.get("asr_chunk_latency_seconds_count", 0) == 4
    assert after["asr_workers"] == 2 and after["asr_redis_up"] == 1
    assert "asr_pending_tasks" in after

    def worker_chunks():  # workers report their counts with their next heartbeat
        return sum(v for k, v in scrape(stack.http).items() if k.startswith("asr_worker_chunks_total"))

    wait_until(lambda: worker_chunks() >= 4, 5, what="worker chunk counters")
