"""Everything one worker process owns: the model (via the engine), its Redis client and its heartbeat.

Created once per worker process by the worker hooks in ``tasks.transcribe`` — never at import, never per
session. The model loads in a background thread after the worker is up (loading can take far longer than
Celery's startup timeouts); the heartbeat starts only once the model is ready, so gateways never route a session
to a worker that cannot serve it yet.

A worker whose engine dies (its batcher thread ended on an exception) or stalls (``ASR_CHUNK_TIMEOUT`` without
coming back to its loop) is useless but would go on heartbeating. Instead it deregisters at once (gateways move
its sessions), releases its waiting tasks, logs CRITICAL and exits with :data:`EXIT_ENGINE_DIED`, for the
supervisor (compose/k8s restart policy, honcho) to restart it.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import redis

from config.redis import client as redis_client
from config.settings import Settings
from config.version import package_version
from tasks import modelgen
from tasks.engine import HEALTH_OK, HEALTH_STOPPED, KILL_ENGINE_PREFIX, Engine
from tasks.errors import ModelLoadError
from tasks.filejobs import FileJobStore
from tasks.metrics import HEALTH_LOADING, WorkerMetrics, time_stages
from tasks.recognizer import FaultInjectingRecognizer, FunASRStreamingRecognizer, StreamingRecognizer
from tasks.registry import Heartbeat
from tasks.wire import ChunkResult, Keys, SentenceResult

if TYPE_CHECKING:
    from tasks.filework import FileWork
    from tasks.offline import SentencePipeline
    from tasks.vad import StreamingVad

logger = logging.getLogger(__name__)

EXIT_MODEL_LOAD_FAILED = 3  # the worker's exit status when its model cannot be loaded
EXIT_ENGINE_DIED = 4  # ... when its engine died or stalled while serving

DEFAULT_MODEL_BANNER = (
    "NO MODEL CONFIGURED: serving the embedded tiny paraformer-zh-streaming with RANDOM WEIGHTS from %s. "
    "Transcripts are deterministic but meaningless. Set ASR_MODEL to a FunASR model folder or hub name."
)


def build_recognizer(settings: Settings) -> StreamingRecognizer:
    """Load the configured model behind the configured recognizer (batched unless ASR_BATCHING=0)."""
    path = settings.model_path
    if settings.model_is_default:
        logger.warning(DEFAULT_MODEL_BANNER, path)
        modelgen.generate(path, "tiny")
    recognizer: StreamingRecognizer
    if settings.batching:
        from tasks.batched import BatchedParaformerRecognizer

        exact = {"auto": None, "on": True, "off": False}.get(settings.exact.lower())
        if (
            settings.exact.lower() not in ("auto", "on", "off")
            or settings.autocast not in ("", "float16", "bfloat16")
            or settings.precision not in ("fp32", "int8")
        ):
            raise ModelLoadError(
                f"ASR_EXACT={settings.exact!r} / ASR_AUTOCAST={settings.autocast!r} / "
                f"ASR_PRECISION={settings.precision!r}: use auto|on|off, ''|float16|bfloat16 and fp32|int8"
            )
        recognizer = BatchedParaformerRecognizer.load(
            path,
            exact=exact,
            dtype=settings.autocast or None,
            precision=settings.precision,
            device=settings.device,
            ncpu=settings.ncpu,
            revision=settings.model_revision,
        )
    else:
        recognizer = FunASRStreamingRecognizer.load(
            path, device=settings.device, ncpu=settings.ncpu, revision=settings.model_revision
        )
    if settings.fault_injection:
        logger.warning(
            "FAULT INJECTION IS ON: streams named __raise__N fail on chunk N; streams named %s* kill the engine",
            KILL_ENGINE_PREFIX,
        )
        recognizer = FaultInjectingRecognizer(recognizer)
    return recognizer


def _extra_source(settings: Settings, kind: str) -> str | None:
    """The folder or hub name of a 2pass model, generating the embedded default on first use."""
    source = settings.extra_model(kind)
    if source is None:
        return None
    path, is_default = source
    if is_default:
        modelgen.generate(path, "tiny", kind=kind)  # the settings' kinds are tasks.modelgen's
    return path


def build_sentence_models(settings: Settings) -> tuple[StreamingVad | None, SentencePipeline | None]:
    """The VAD and the offline pipeline (offline model + punctuation) of the 2pass and offline modes, as
    configured; (None, None) when either the VAD or the offline model is off: the worker then serves online only."""
    vad_path, offline_path = _extra_source(settings, "vad"), _extra_source(settings, "offline")
    if vad_path is None or offline_path is None:
        if (vad_path is None) != (offline_path is None):
            logger.warning("2pass and offline need both ASR_VAD_MODEL and ASR_OFFLINE_MODEL; serving online only")
        return None, None
    from tasks.offline import SentencePipeline  # noqa: PLC0415 - only workers that serve 2pass load these
    from tasks.vad import load_vad  # noqa: PLC0415

    vad = load_vad(vad_path, device=settings.vad_device or settings.device, batched=settings.batching)
    pipeline = SentencePipeline(
        offline_path,
        _extra_source(settings, "punc"),
        device=settings.offline_device or settings.device,
        ncpu=settings.ncpu,
        punc_device=settings.punc_device or settings.device,
    )
    return vad, pipeline


class RedisPublisher:
    """Publishes a batch's results on their sessions' channels in one pipeline (one round trip per batch)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def __call__(self, messages: Sequence[tuple[str, ChunkResult | SentenceResult]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for channel, result in messages:
            pipe.publish(channel, result.encode())
        pipe.execute()


def exit_process(status: int) -> None:
    """End the worker process now, from any thread (SystemExit would end only the calling thread)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(status)


class WorkerRuntime:
    """The per-process owner of engine, Redis client and heartbeat.

    ``exit_with`` ends the process (:func:`exit_process`); tests of the failure paths may replace it.
    """

    def __init__(
        self,
        settings: Settings,
        worker_id: str,
        queue: str,
        concurrency: int,
        pool: str,
        exit_with: Callable[[int], None] = exit_process,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.queue = queue
        self.concurrency = concurrency
        self.pool = pool
        self.keys = Keys(settings.key_prefix)
        self.redis = redis_client(settings.redis_url, socket_timeout=10, health_check_interval=10)
        self.publisher = RedisPublisher(self.redis)
        self.exit = exit_with
        self.engine: Engine | None = None
        self.files: FileWork | None = None  # file-job threads, on workers that serve the offline mode
        self.heartbeat: Heartbeat | None = None
        self.ready = threading.Event()
        self.started_at = time.time()
        self.metrics: WorkerMetrics | None = None  # with ASR_WORKER_METRICS_PORT set (start())
        self.draining = False  # advertised in the heartbeat: gateways give this worker no new sessions
        self._stopped = threading.Event()  # stop() ran: a model still loading must not register afterwards
        self._failing = threading.Lock()  # held by the one thread that runs the exit path

    def start(self) -> None:
        """Serve metrics (if configured), load the model in the background; tasks wait on :attr:`ready`."""
        self._start_metrics()
        threading.Thread(target=self._load, name="asr-model-load", daemon=True).start()

    def _load(self) -> None:
        t0 = time.monotonic()
        try:
            recognizer = build_recognizer(self.settings)
            recognizer.warm_up(batch_sizes=(1, min(8, max(1, self.concurrency))))
            vad, sentences = build_sentence_models(self.settings)
        except Exception as exc:  # noqa: BLE001 - process boundary: a worker without a model is useless
            logger.critical("worker %s cannot load its model, exiting: %s", self.worker_id, exc, exc_info=True)
            self.exit(EXIT_MODEL_LOAD_FAILED)
            return
        if self.metrics is not None:
            self.metrics.model_load.set(time.monotonic() - t0)
            time_stages(recognizer, self.metrics)
        self.engine = Engine(
            recognizer,
            self.publisher,
            worker_id=self.worker_id,
            max_batch=min(self.settings.batch_max_size, max(1, self.concurrency)),
            max_wait=self.settings.batch_max_wait_ms / 1000,
            stream_idle_timeout=self.settings.stream_idle_timeout,
            stall_timeout=self.settings.chunk_timeout,  # a batch this long has failed its chunks' sessions anyway
            on_death=self.engine_failed,
            fault_injection=self.settings.fault_injection,
            observer=self.metrics,
            vad=vad,
            sentences=sentences,
            sentence_max_batch=self.settings.sentence_max_batch,
            sentence_max_defer=self.settings.sentence_max_defer_ms / 1000,
            background_max_batch=self.settings.file_max_batch,
            background_live_audio=self.settings.file_live_round_seconds,
        ).start()
        logger.info("model ready in %.1f s: %s (%s)", time.monotonic() - t0, recognizer.description, recognizer.name)
        self.heartbeat = Heartbeat(
            self.redis,
            self.keys,
            self.worker_id,
            self.describe,
            interval=self.settings.heartbeat_interval,
            ttl=self.settings.heartbeat_ttl,
            check=self.engine_problem,
            on_unhealthy=self.engine_failed,
        )
        if self._stopped.is_set():  # told to stop while the model loaded: never register
            self.engine.stop(timeout=0)
            return
        self._start_heartbeat()
        self._start_files()
        self.ready.set()

    def _start_files(self) -> None:
        """Take part in file jobs (tasks.filework) when this worker serves the offline mode."""
        engine = self.engine
        if engine is None or engine.vad is None or engine.sentences is None:
            return
        from tasks.filework import FileWork  # noqa: PLC0415 - with the offline models, like them

        store = FileJobStore(self.redis, self.settings.key_prefix, self.settings.file_ttl)

        def alive(worker: str) -> bool:
            return bool(self.redis.exists(self.keys.worker(worker)))

        try:
            self.files = FileWork(store, engine, self.worker_id, alive=alive, inflight=self.settings.file_inflight)
            self.files.start()
        except redis.RedisError as exc:  # live sessions matter more: serve them, log why files are off
            logger.error("worker %s takes no file jobs: %s", self.worker_id, exc)
            self.files = None

    def _start_metrics(self) -> None:
        """Serve this process's Prometheus metrics (tasks.metrics) when ASR_WORKER_METRICS_PORT is set. A port
        that cannot be bound is logged as an error, not fatal: a worker without metrics still serves."""
        if not self.settings.worker_metrics_port:
            return
        info = {
            "worker": self.worker_id,
            "queue": self.queue,
            "device": self.settings.device,
            "version": package_version(),
        }
        metrics = WorkerMetrics(
            info,
            health=lambda: self.engine.health() if self.engine else HEALTH_LOADING,
            streams=lambda: self.engine.open_streams if self.engine else 0,
        )
        try:
            metrics.serve(self.settings.worker_metrics_port, self.settings.worker_metrics_addr)
        except OSError as exc:
            logger.error(
                "worker %s cannot serve metrics on %s:%d: %s",
                self.worker_id,
                self.settings.worker_metrics_addr,
                self.settings.worker_metrics_port,
                exc,
            )
            return
        self.metrics = metrics

    def _start_heartbeat(self) -> None:
        while True:
            try:
                self.heartbeat.start()  # type: ignore[union-attr]
                return
            except redis.RedisError as exc:
                logger.warning("cannot register with Redis yet (%s); retrying", exc)
                time.sleep(self.settings.heartbeat_interval)

    def engine_problem(self) -> str | None:
        """None while the engine serves (or is stopping on purpose); else why it cannot: dead or stalled."""
        engine = self.engine
        if engine is None:
            return None  # still loading: the heartbeat has not started
        health = engine.health()
        if health in (HEALTH_OK, HEALTH_STOPPED):  # stopped: SIGTERM, and stop() ends the heartbeat itself
            return None
        return f"engine {health}" + (f" ({engine.death})" if engine.death else "")

    def engine_failed(self, reason: str) -> None:
        """The engine cannot serve any more: deregister, release waiting tasks, exit with EXIT_ENGINE_DIED.

        Called from the dying batcher thread or from the heartbeat thread; runs once.
        """
        if not self._failing.acquire(blocking=False):
            return
        logger.critical(
            "worker %s: %s; deregistering and exiting with status %d", self.worker_id, reason, EXIT_ENGINE_DIED
        )
        if self.heartbeat is not None:
            self.heartbeat.stop(deregister=True)
        if self.engine is not None:
            self.engine.stop(timeout=0)  # releases every waiting task body at once
        self.exit(EXIT_ENGINE_DIED)

    def describe(self) -> dict:
        """The heartbeat body: what gateways and /api/queue need to know about this worker."""
        engine = self.engine
        recognizer = engine.recognizer if engine else None
        return {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "queue": self.queue,
            "pool": self.pool,
            "concurrency": self.concurrency,
            "engine": engine.health() if engine else "loading",
            "streams": engine.open_streams if engine else 0,
            "draining": self.draining,
            "max_streams": self.settings.worker_max_streams,
            "recognizer": recognizer.name if recognizer else None,
            "model": self.settings.model_path,
            "model_is_default": self.settings.model_is_default,
            "device": self.settings.device,
            "modes": engine.modes if engine else [],
            "models": self.models(),
            "started_at": self.started_at,
            "metrics_port": self.metrics.port if self.metrics else None,
            "stats": engine.stats.snapshot() if engine else {},
        }

    def models(self) -> dict:
        """Each model this worker serves with: what it is and where it runs (heartbeat, /healthz)."""
        settings, engine = self.settings, self.engine
        models: dict[str, dict] = {
            "streaming": {"model": settings.model_path, "device": settings.device, "default": settings.model_is_default}
        }
        vad = engine.vad if engine else None
        pipeline = engine.sentences if engine else None
        for kind, loaded, device in (
            ("vad", vad is not None, settings.vad_device),
            ("offline", pipeline is not None, settings.offline_device),
            ("punc", pipeline is not None and pipeline.has_punc, settings.punc_device),
        ):
            source = settings.extra_model(kind)
            if loaded and source is not None:
                models[kind] = {"model": source[0], "device": device or settings.device, "default": source[1]}
        return models

    def drain(self, draining: bool = True) -> dict:
        """Advertise (or stop advertising) that this worker takes no new sessions; its open ones go on.

        The heartbeat is rewritten at once, so gateways see it at their next sample rather than the next beat.
        Returns what the ``drain``/``undrain`` control commands reply: the flag and the streams still open.
        """
        self.draining = draining
        if self.heartbeat is not None and not self._stopped.is_set():
            try:
                self.heartbeat.beat()
            except redis.RedisError as exc:  # the next beat carries it
                logger.warning("could not publish the draining flag at once: %s", exc)
        logger.warning(
            "worker %s %s: %d open streams",
            self.worker_id,
            "draining (no new sessions)" if draining else "no longer draining",
            self.open_streams,
        )
        return {"draining": self.draining, "streams": self.open_streams}

    @property
    def open_streams(self) -> int:
        return self.engine.open_streams if self.engine is not None else 0

    def stop(self) -> None:
        """Deregister at once, finish the batch in progress, release every waiting chunk. Idempotent; every stop
        path calls it (tasks.control.StopRuntime, and the SIGTERM/SIGINT signal hook earlier)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.heartbeat:
            self.heartbeat.stop()
        if self.files:
            self.files.stop(timeout=0)
        if self.engine:
            self.engine.stop()
        if self.files:
            self.files.stop()
