"""The worker's own Prometheus metrics (tasks.metrics): a real worker process serving them on its port while a
real gateway streams a session through it, and the engine's failure hooks with real threads."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bench.client import StreamClient
from tasks.engine import Engine
from tasks.metrics import WorkerMetrics, time_stages
from tasks.recognizer import FakeRecognizer
from tasks.wire import ChunkJob
from tests import audio
from tests.stack import free_port, wait_until


def parse(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return parse(response.read().decode())


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_a_worker_exports_its_batches_waits_failures_and_process_on_its_port(make_stack):
    s = make_stack("wmetrics", fault_injection=1)
    port = free_port()
    s.start_worker("w1", worker_metrics_port=port)
    s.start_gateway()
    body = json.loads(s.redis.get(f"{s.prefix}worker:{s.worker_id('w1')}"))
    assert body["metrics_port"] == port, "published in the heartbeat"

    before = scrape(port)
    assert total(before, "asr_engine_health", state="ok") == 1 and total(before, "asr_engine_health") == 1
    assert total(before, "asr_engine_model_load_seconds") > 0
    assert total(before, "asr_engine_info", worker=s.worker_id("w1")) == 1
    assert total(before, "process_resident_memory_bytes") > 0

    record = asyncio.run(StreamClient(s.url, pace=0).run(audio.noise(2.0, seed=7)))  # 4 chunks of 600 ms
    assert record.final is not None, record
    failing = asyncio.run(StreamClient(s.url, pace=0, config={"wav_name": "__raise__0"}).run(audio.noise(1.2, seed=8)))
    assert failing.errors, failing

    after = wait_until(
        lambda: (
            (a := scrape(port))
            and total(a, "asr_engine_chunks_total") >= total(before, "asr_engine_chunks_total") + 5
            and a
        ),
        10,
        what="the worker's chunk counter",
    )
    chunks = total(after, "asr_engine_chunks_total") - total(before, "asr_engine_chunks_total")
    assert chunks >= 5  # 4 of the good session, at least 1 of the failing one (replays may add more)
    for histogram in ("asr_engine_chunk_wait_seconds", "asr_engine_chunk_compute_seconds"):
        assert total(after, histogram + "_count") - total(before, histogram + "_count") == chunks, histogram
    batches = total(after, "asr_engine_batches_total") - total(before, "asr_engine_batches_total")
    assert 1 <= batches <= chunks
    assert total(after, "asr_engine_batch_size_count") - total(before, "asr_engine_batch_size_count") == batches
    assert total(after, "asr_engine_batch_size_sum") - total(before, "asr_engine_batch_size_sum") == chunks
    assert (
        total(after, "asr_engine_forward_seconds_count") - total(before, "asr_engine_forward_seconds_count") == batches
    )
    assert total(after, "asr_engine_failures_total", code="recognition_failed") >= 1
    if s.env()["ASR_BATCHING"] == "1":  # the batched recognizer on CPU: each model stage timed
        assert total(after, "asr_engine_stage_seconds_count", stage="encoder") > total(
            before, "asr_engine_stage_seconds_count", stage="encoder"
        )


def test_the_engine_reports_failures_by_code_to_its_observer():
    metrics = WorkerMetrics({"worker": "w"}, health=lambda: "ok", streams=lambda: 0)
    engine = Engine(FakeRecognizer(), lambda messages: None, observer=metrics, gap_timeout=0.2).start()
    try:
        orphan = ChunkJob(
            stream="s1", seq=3, audio=b"\0\0" * 9600, channel="c", first=False, is_final=False, submitted_at=0.0
        )
        assert engine.submit(orphan).wait(5).code == "stream_state_lost"  # its predecessors never come
    finally:
        engine.stop()
    got = parse(generate_latest(metrics.registry).decode())
    assert total(got, "asr_engine_failures_total", code="stream_state_lost") == 1
    assert total(got, "asr_engine_chunks_total") == 0, "a chunk that never reached a batch is no batch's"


def test_stage_timing_needs_the_batched_model_and_leaves_other_recognizers_alone():
    metrics = WorkerMetrics({"worker": "w"}, health=lambda: "ok", streams=lambda: 0)
    assert time_stages(FakeRecognizer(), metrics) is False
