"""Prometheus metrics of one worker process, served on its own HTTP port (``ASR_WORKER_METRICS_PORT``, 0 = off).

What the gateways cannot see from a heartbeat: distributions. Batch sizes, the recognizer's forward time (and,
for the batched recognizer on a CPU, each model stage's), how long chunks waited between the gateway's
submission and their batch, what each chunk's batch cost, failures by error code, the model's load time, open
streams, the engine's health, and the process's own CPU and memory (``process_*``).

One port per worker process, not prometheus_client's multiprocess mode. Multiprocess mode exists for servers
that fork request-handling children sharing one port (gunicorn, prefork); a worker here is one process by
design (threads pool: the model lives in it, tasks/transcribe.py refuses prefork), so there is nothing to
aggregate, and multiprocess mode would cost a directory of mmap files, loses custom collectors and
``process_*``. Each process therefore needs a port of its own: in compose and Kubernetes every replica has its
own network namespace, so one fixed port serves all replicas; on one bare host give each worker process its own
``ASR_WORKER_METRICS_PORT``. The port is published in the heartbeat body (``metrics_port``, ``/api/queue``).

Worker series carry no ``worker`` label: Prometheus's ``instance`` tells targets apart, and
``asr_engine_info{worker=…}`` joins an instance to the worker id the gateway's ``asr_worker_*{worker=…}`` use.
Names start with ``asr_engine_`` so they never clash with those gateway-side per-worker series.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tasks.engine import HEALTH_DEAD, HEALTH_OK, HEALTH_STALLED, HEALTH_STOPPED, EngineObserver

logger = logging.getLogger(__name__)

HEALTH_LOADING = "loading"  # the model is still loading: no engine yet
HEALTH_STATES = (HEALTH_LOADING, HEALTH_OK, HEALTH_STALLED, HEALTH_DEAD, HEALTH_STOPPED)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # chunks; ASR_BATCH_MAX_SIZE is 64 by default
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 1.0, 2.0, 5.0, 10.0)
#: Stages of tasks.batched.BatchedParaformer, timed by wrapping its callables (see :func:`time_stages`).
STAGES = ("frontend", "encoder", "cif", "decoder")


class WorkerMetrics(EngineObserver):
    """The worker process's registry and instruments; the engine reports to it as its observer.

    ``health()`` and ``streams()`` are read at scrape time (any thread). Thread-safe, as prometheus_client is.
    """

    def __init__(self, info: dict[str, str], health: Callable[[], str], streams: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # process_*, python_*
            self.registry.register(collector)
        r = self.registry
        self.batch_size = Histogram(
            "asr_engine_batch_size", "Chunks per forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.forward = Histogram(
            "asr_engine_forward_seconds", "The recognizer's call for one batch", buckets=SECONDS_BUCKETS, registry=r
        )
        self.stage = Histogram(
            "asr_engine_stage_seconds",
            "One model stage of one batch (batched recognizer on CPU only)",
            ["stage"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.pipeline_size = Histogram(
            "asr_engine_pipeline_batch_size",
            "Items per call of one pipeline stage: vad, streaming (chunks) or sentence (offline model + punctuation)",
            ["stage"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.pipeline_forward = Histogram(
            "asr_engine_pipeline_forward_seconds",
            "One call of one pipeline stage (vad, streaming, sentence)",
            ["stage"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.wait = Histogram(
            "asr_engine_chunk_wait_seconds",
            "Gateway submission to the start of the chunk's "
            "batch (queue + reorder + batching wait; wall clocks of two hosts)",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "asr_engine_chunk_compute_seconds",
            "Start of the chunk's batch to its result",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.chunks = Counter("asr_engine_chunks", "Chunks recognized (failed ones included)", registry=r)
        self.batches = Counter("asr_engine_batches", "Forward passes", registry=r)
        self.failures = Counter("asr_engine_failures", "Chunks failed, by error code", ["code"], registry=r)
        self.model_load = Gauge(
            "asr_engine_model_load_seconds", "How long loading and warming up the model took", registry=r
        )
        self.info = Gauge("asr_engine_info", "Constant 1: who this worker is, and the build", sorted(info), registry=r)
        self.info.labels(**info).set(1)
        r.register(_LiveCollector(health, streams))
        self.port: int | None = None

    # --- EngineObserver -------------------------------------------------------------------------------------------
    def batch(self, size: int, waits: Sequence[float], forward: float, compute: float) -> None:
        self.batch_size.observe(size)
        self.forward.observe(forward)
        self.batches.inc()
        self.chunks.inc(size)
        for wait in waits:
            self.wait.observe(max(0.0, wait))  # clock skew between hosts can make it negative
            self.compute.observe(compute)

    def stage_ran(self, name: str, size: int, forward: float) -> None:
        self.pipeline_size.labels(name).observe(size)
        self.pipeline_forward.labels(name).observe(forward)

    def failed(self, code: str, count: int = 1) -> None:
        self.failures.labels(code).inc(count)

    # --- serving --------------------------------------------------------------------------------------------------
    def serve(self, port: int, addr: str) -> int:
        """Serve ``/metrics`` from a daemon thread on ``addr:port``; returns the port bound (``port`` 0 is not
        meant here: the caller treats 0 as off)."""
        server, _ = start_http_server(port, addr=addr, registry=self.registry)
        self.port = server.server_port
        logger.info("worker metrics on http://%s:%d/metrics", addr, self.port)
        return self.port


class _LiveCollector(Collector):
    """Gauges read at scrape time: the engine's health as a state set, and its open streams."""

    def __init__(self, health: Callable[[], str], streams: Callable[[], int]) -> None:
        self.health = health
        self.streams = streams

    def collect(self):
        state = self.health()
        family = GaugeMetricFamily(
            "asr_engine_health",
            "1 for the engine's current state (ok, loading, stalled, dead, stopped), 0 for the others",
            labels=["state"],
        )
        for name in HEALTH_STATES:
            family.add_metric([name], 1 if name == state else 0)
        yield family
        yield GaugeMetricFamily("asr_engine_streams", "Streams with model state in this worker", value=self.streams())


class _Timed:
    """A callable stage of the batched model, timed; attribute reads pass through (``fresh``, ``close`` …)."""

    def __init__(self, inner: Any, observe: Callable[[float], None]) -> None:
        self._inner = inner
        self._observe = observe

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self._inner(*args, **kwargs)
        finally:
            self._observe(time.perf_counter() - t0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def time_stages(recognizer: Any, metrics: WorkerMetrics) -> bool:
    """Time each stage of a batched recognizer's model (frontend, encoder, cif, decoder); True if it did.

    Only on a CPU: CUDA kernels run asynchronously, so without a device sync per stage (which would slow every
    batch) a stage's wall time is mostly its launch time, and the sync lands in whichever stage reads a result
    back. On CUDA, and for the per-stream FunASR recognizer, only ``asr_engine_forward_seconds`` (the whole
    recognizer call) is measured. Wrapping the model's stage objects avoids touching tasks.batched.
    """
    model = getattr(getattr(recognizer, "inner", recognizer), "model", None)  # through FaultInjectingRecognizer
    device = getattr(model, "device", None)
    if model is None or getattr(device, "type", None) != "cpu" or not all(hasattr(model, s) for s in STAGES):
        return False
    for stage in STAGES:
        setattr(model, stage, _Timed(getattr(model, stage), metrics.stage.labels(stage).observe))
    return True
