"""Everything one worker process owns: the model (via the engine), its Redis client and its heartbeat.

Created once per worker process by the worker hooks in ``tasks.transcribe`` — never at import, never per
session. The model loads in a background thread after the worker is up (loading can take far longer than
Celery's startup timeouts); the heartbeat starts only once the model is ready, so gateways never route a session
to a worker that cannot serve it yet.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence

import redis

from config.settings import Settings
from tasks import modelgen
from tasks.engine import Engine
from tasks.errors import ModelLoadError
from tasks.recognizer import FaultInjectingRecognizer, FunASRStreamingRecognizer, StreamingRecognizer
from tasks.registry import Heartbeat
from tasks.wire import ChunkResult, Keys

logger = logging.getLogger(__name__)

EXIT_MODEL_LOAD_FAILED = 3  # the worker's exit status when its model cannot be loaded

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
    kwargs = dict(device=settings.device, ncpu=settings.ncpu, revision=settings.model_revision)
    recognizer: StreamingRecognizer
    if settings.batching:
        from tasks.batched import BatchedParaformerRecognizer

        exact = {"auto": None, "on": True, "off": False}.get(settings.exact.lower())
        if settings.exact.lower() not in ("auto", "on", "off") or settings.autocast not in ("", "float16", "bfloat16"):
            raise ModelLoadError(f"ASR_EXACT={settings.exact!r} / ASR_AUTOCAST={settings.autocast!r}: "
                                 "use auto|on|off and ''|float16|bfloat16")
        recognizer = BatchedParaformerRecognizer.load(path, exact=exact, dtype=settings.autocast or None, **kwargs)
    else:
        recognizer = FunASRStreamingRecognizer.load(path, **kwargs)
    if settings.fault_injection:
        logger.warning("FAULT INJECTION IS ON: streams named __raise__N fail on chunk N")
        recognizer = FaultInjectingRecognizer(recognizer)
    return recognizer


class RedisPublisher:
    """Publishes a batch's results on their sessions' channels in one pipeline (one round trip per batch)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def __call__(self, messages: Sequence[tuple[str, ChunkResult]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for channel, result in messages:
            pipe.publish(channel, result.encode())
        pipe.execute()


class WorkerRuntime:
    """The per-process owner of engine, Redis client and heartbeat."""

    def __init__(self, settings: Settings, worker_id: str, queue: str, concurrency: int, pool: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.queue = queue
        self.concurrency = concurrency
        self.pool = pool
        self.keys = Keys(settings.key_prefix)
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=10, health_check_interval=10)
        self.engine: Engine | None = None
        self.heartbeat: Heartbeat | None = None
        self.ready = threading.Event()
        self.started_at = time.time()

    def start(self) -> None:
        """Load the model in the background; tasks wait on :attr:`ready`."""
        threading.Thread(target=self._load, name="asr-model-load", daemon=True).start()

    def _load(self) -> None:
        t0 = time.monotonic()
        try:
            recognizer = build_recognizer(self.settings)
        except Exception as exc:  # noqa: BLE001 - process boundary: a worker without a model is useless
            logger.critical("worker %s cannot load its model, exiting: %s", self.worker_id, exc, exc_info=True)
            os._exit(EXIT_MODEL_LOAD_FAILED)  # from a thread, SystemExit would not stop the worker
        recognizer.warm_up(batch_sizes=(1, min(8, max(1, self.concurrency))))
        self.engine = Engine(
            recognizer,
            RedisPublisher(self.redis),
            worker_id=self.worker_id,
            max_batch=min(self.settings.batch_max_size, max(1, self.concurrency)),
            max_wait=self.settings.batch_max_wait_ms / 1000,
            stream_idle_timeout=self.settings.stream_idle_timeout,
        ).start()
        logger.info("model ready in %.1f s: %s (%s)", time.monotonic() - t0, recognizer.description, recognizer.name)
        self.heartbeat = Heartbeat(
            self.redis, self.keys, self.worker_id, self.describe,
            interval=self.settings.heartbeat_interval, ttl=self.settings.heartbeat_ttl,
        )
        self._start_heartbeat()
        self.ready.set()

    def _start_heartbeat(self) -> None:
        while True:
            try:
                self.heartbeat.start()  # type: ignore[union-attr]
                return
            except redis.RedisError as exc:
                logger.warning("cannot register with Redis yet (%s); retrying", exc)
                time.sleep(self.settings.heartbeat_interval)

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
            "streams": engine.open_streams if engine else 0,
            "max_streams": self.settings.worker_max_streams,
            "recognizer": recognizer.name if recognizer else None,
            "model": self.settings.model_path,
            "model_is_default": self.settings.model_is_default,
            "device": self.settings.device,
            "started_at": self.started_at,
            "stats": engine.stats.snapshot() if engine else {},
        }

    def stop(self) -> None:
        if self.heartbeat:
            self.heartbeat.stop()
        if self.engine:
            self.engine.stop()
