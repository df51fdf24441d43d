"""Prometheus metrics of one gateway process, served at ``/metrics``.

Three kinds: counters and a latency histogram the gateway updates as sessions run; gauges read at scrape time
from the monitor's latest snapshot — so one scrape of any gateway shows the whole back end (queue depths, every
live worker's streams and batch counters, from their heartbeats); and the process's own ``process_*`` series
and ``asr_build_info``. ``asr_pending_tasks`` is the number to autoscale workers on (docker/k8s has a KEDA
example). Workers serve their own distributions (batch sizes, forward times, failures) on their own port:
tasks.metrics.

One gateway process per container (``ASR_GATEWAY_PROCESSES=1``): each gunicorn process has its own registry and
a scrape reaches one of them at random, so with several every counter would jump between processes' values.
Rather than serve that, ``/metrics`` refuses with 503 and says why (:data:`SPLIT_REFUSAL`): the target shows as
down and Prometheus's ``up`` alerts fire. prometheus_client's multiprocess mode was not chosen: it needs its
directory set before the first import and gunicorn hooks for dead processes, and it cannot merge the
snapshot-time gauges, which every process would report again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from app.monitor import Snapshot
from config.version import package_version

SPLIT_REFUSAL = (
    "ASR_GATEWAY_PROCESSES={processes}: each gateway process has its own counters and a scrape reaches one at "
    "random, so /metrics is refused. Run one gateway process per container and more containers instead."
)
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)


class _BackendCollector(Collector):
    """Gauges from the monitor snapshot, computed when Prometheus scrapes."""

    def __init__(self, snapshot: Callable[[], Snapshot], sessions: Callable[[], int]) -> None:
        self.snapshot = snapshot
        self.sessions = sessions

    def collect(self) -> Iterable:
        snap = self.snapshot()
        yield _gauge("asr_redis_up", "1 when the gateway can read Redis", 1 if snap.redis_ok else 0)
        yield _gauge("asr_pending_tasks", "Chunk tasks waiting in Redis (all gpu queues)", snap.pending)
        yield _gauge("asr_workers", "Workers with a live heartbeat", len(snap.workers))
        yield _gauge("asr_gateway_sessions", "Open WebSocket sessions in this gateway process", self.sessions())
        files = snap.files
        yield _gauge("asr_file_jobs", "File transcription jobs not finished (counted apart from live work)",
                     files.get("jobs", 0))  # fmt: skip
        yield _gauge("asr_file_audio_seconds_pending", "Audio seconds file jobs still have to transcribe",
                     files.get("audio_seconds", 0.0))  # fmt: skip
        yield _gauge("asr_file_segments_queued", "File sentences waiting for a worker", files.get("segments_queued", 0))
        depth = GaugeMetricFamily("asr_queue_depth", "Waiting tasks per queue", labels=["queue"])
        for queue, n in snap.queues.items():
            depth.add_metric([queue], n)
        yield depth
        streams = GaugeMetricFamily("asr_worker_streams", "Open streams per worker", labels=["worker"])
        chunks = CounterMetricFamily("asr_worker_chunks", "Chunks recognized per worker", labels=["worker"])
        batches = CounterMetricFamily("asr_worker_batches", "Forward passes per worker", labels=["worker"])
        failures = CounterMetricFamily(
            "asr_worker_failures",
            "Chunks failed per worker (by code: the worker's own asr_engine_failures_total)",
            labels=["worker"],
        )
        for worker, info in snap.workers.items():
            stats = info.get("stats") or {}
            streams.add_metric([worker], info.get("streams", 0))
            chunks.add_metric([worker], stats.get("chunks", 0))
            batches.add_metric([worker], stats.get("batches", 0))
            failures.add_metric([worker], stats.get("failures", 0))
        yield from (streams, chunks, batches, failures)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class GatewayMetrics:
    """The gateway's registry and the instruments handlers update."""

    def __init__(self, snapshot: Callable[[], Snapshot], sessions: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes …
        Info("asr_build", "This gateway's build", registry=self.registry).info({"version": package_version()})
        # Counted once a session passed admission (app.ws); refused ones are asr_sessions_refused_total.
        self.sessions = Counter("asr_sessions_admitted", "Sessions admitted", registry=self.registry)
        self.refused = Counter(
            "asr_sessions_refused", "Sessions refused before the handshake", ["code"], registry=self.registry
        )
        self.ended = Counter("asr_sessions_ended", "Sessions ended, by how", ["reason"], registry=self.registry)
        self.chunks = Counter("asr_chunks_submitted", "Chunk tasks submitted", registry=self.registry)
        self.replays = Counter("asr_replays", "Sessions replayed on another worker", registry=self.registry)
        self.latency = Histogram(
            "asr_chunk_latency_seconds",
            "Chunk submission to result relayed to the client",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_BackendCollector(snapshot, sessions))
