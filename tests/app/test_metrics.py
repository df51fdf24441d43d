"""The gateway's /metrics: the exposition's names, the build and process series, and the refusal to serve split
counters when gunicorn runs more than one process (app.metrics). Real Redis, the real Flask app."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from app.metrics import GatewayMetrics
from app.monitor import Snapshot
from config.settings import Settings
from config.version import package_version

WORKERS = {"w1@h": {"streams": 3, "stats": {"chunks": 40, "batches": 10, "failures": 2, "mean_batch": 4.0}}}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def exposition(metrics: GatewayMetrics) -> dict[tuple[str, tuple], float]:
    return samples(generate_latest(metrics.registry).decode())


def test_exposition_names_build_process_and_the_workers_counters():
    files = {"jobs": 2, "audio_seconds": 61.5, "segments_queued": 7}
    snapshot = Snapshot(taken_at=1.0, redis_error=None, queues={"gpu": 2}, workers=WORKERS, files=files)
    metrics = GatewayMetrics(lambda: snapshot, lambda: 5)
    metrics.sessions.inc()
    got = exposition(metrics)
    names = {name for name, _ in got}
    assert got[("asr_sessions_admitted_total", ())] == 1
    assert "asr_sessions_total" not in names and "asr_worker_mean_batch" not in names
    assert got[("asr_build_info", (("version", package_version()),))] == 1
    assert package_version() not in ("", "unknown")  # a checkout reads setup.cfg
    assert got[("process_resident_memory_bytes", ())] > 0
    worker = (("worker", "w1@h"),)
    assert got[("asr_worker_chunks_total", worker)] / got[("asr_worker_batches_total", worker)] == 4.0
    assert got[("asr_worker_failures_total", worker)] == 2
    assert got[("asr_gateway_sessions", ())] == 5
    assert (got[("asr_file_jobs", ())], got[("asr_file_segments_queued", ())]) == (2, 7)
    assert got[("asr_file_audio_seconds_pending", ())] == 61.5


@pytest.fixture
def gateway(redis_url):
    apps = []

    def make(**settings):
        app = create_app(
            Settings(redis_url=redis_url, key_prefix="asrtest-gwmetrics:", queue="gpu-gwmetrics", **settings)
        )
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["asr"].stop()


def test_one_process_serves_the_exposition(gateway):
    response = gateway(gateway_processes=1).get("/metrics")
    assert response.status_code == 200
    assert ("asr_redis_up", ()) in samples(response.get_data(as_text=True))


def test_several_processes_refuse_to_serve_split_counters(gateway, caplog):
    response = gateway(gateway_processes=3).get("/metrics")
    assert response.status_code == 503
    body = response.get_data(as_text=True)
    assert "ASR_GATEWAY_PROCESSES=3" in body and "one gateway process per container" in body
    assert any("ASR_GATEWAY_PROCESSES=3" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
