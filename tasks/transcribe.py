"""Celery tasks (one per chunk, one to close a stream) and the worker hooks that create the process's runtime.

Hooks, in the order Celery fires them in the worker process:

* ``worker_init``: refuse pools that would run tasks outside this process (prefork, eventlet, gevent): the
  model and the streams' state live here, so a task must run here. Refuse ``--autoscale`` too (one process is
  one model copy; Celery's threads pool cannot resize anyway).
* ``celeryd_after_setup``: add this worker's private queue ``<queue>.<hostname>`` to what it consumes.
* ``worker_ready``: create the :class:`~tasks.runtime.WorkerRuntime` and start loading the model.
* ``worker_shutting_down`` (SIGTERM, SIGINT): deregister, so gateways move this worker's sessions elsewhere at
  once. The remote ``shutdown`` command skips that signal; :class:`tasks.control.StopRuntime` (a bootstep) stops
  the runtime on every path, that one included.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import shared_task, signals
from celery.concurrency import get_implementation

from config.logs import stream_fields
from config.settings import Settings
from tasks import wire
from tasks.errors import ProtocolError
from tasks.runtime import WorkerRuntime
from tasks.wire import ChunkJob, ChunkResult, SentenceJob, SentenceResult

logger = logging.getLogger(__name__)

SUPPORTED_POOLS = ("threads", "solo")
_runtime: WorkerRuntime | None = None


def _pool_name(pool_cls) -> str:
    cls = get_implementation(pool_cls)
    return {get_implementation(name): name for name in ("threads", "solo", "prefork")}.get(cls, cls.__module__)


def current_runtime() -> WorkerRuntime | None:
    """This worker process's runtime; None outside a worker or before ``celeryd_after_setup``."""
    return _runtime


@signals.worker_init.connect
def _check_pool(sender, **_kwargs) -> None:
    pool = _pool_name(sender.pool_cls)
    if pool not in SUPPORTED_POOLS:
        raise SystemExit(
            f"pool {pool!r} cannot serve streaming sessions: use --pool threads (the default) or solo. "
            "One worker process holds one model copy; run more worker processes to use more cores or GPUs."
        )
    autoscale = getattr(sender, "autoscale", None) or sender.options.get("autoscale")
    if autoscale:
        raise SystemExit(
            f"--autoscale {','.join(map(str, autoscale))} is not supported: a worker's --concurrency is how many "
            "chunks it holds at once (its largest batch), not model copies, and the threads pool cannot resize. "
            "Use --concurrency N and run more worker processes (one per core group or GPU) to add capacity."
        )


@signals.celeryd_after_setup.connect
def _add_private_queue(sender: str, instance, **_kwargs) -> None:
    global _runtime
    settings: Settings = instance.app.conf.asr_settings
    if not settings.log_tasks:  # Celery logs two INFO lines per task: at 800 chunks/s that drowns the log
        for name in ("celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(name).setLevel(logging.WARNING)
    queue = wire.worker_queue(settings.queue, sender)
    instance.app.amqp.queues.select_add(queue)
    _runtime = WorkerRuntime(settings, sender, queue, instance.concurrency, _pool_name(instance.pool_cls))
    logger.info(
        "worker %s consumes %s and %s (pool %s, concurrency %s)",
        sender,
        settings.queue,
        queue,
        _runtime.pool,
        instance.concurrency,
    )


@signals.worker_ready.connect
def _start_runtime(**_kwargs) -> None:
    if _runtime is not None:
        _runtime.start()


@signals.worker_shutting_down.connect
def _stop_runtime(**_kwargs) -> None:
    if _runtime is not None:
        _runtime.stop()


def _ready_runtime() -> WorkerRuntime:
    """This process's runtime once its model is loaded (a worker whose model fails to load exits instead)."""
    runtime = _runtime
    if runtime is None:
        raise RuntimeError("chunk task ran outside a worker started with `celery -A tasks worker`")
    runtime.ready.wait()
    return runtime


def _refuse(payload: Any, error: ProtocolError) -> None:
    """Answer a malformed chunk task on its session's channel, so the gateway ends that session with the reason;
    a payload that does not say whose it is (or names a channel not its session's) is logged and dropped."""
    runtime = _runtime
    address = ChunkJob.reply_address(payload)
    if runtime is not None and address is not None:
        stream, seq, channel = address
        if channel == runtime.keys.result_channel(wire.split_stream_id(stream)[0]):
            logger.warning("refusing chunk %d of %s: %s", seq, stream, error.message, extra=stream_fields(stream, seq))
            result = ChunkResult(stream, seq, error=error.message, code=error.code, worker=runtime.worker_id)
            _answer(runtime, channel, result, f"chunk {seq} of {stream}")
            if runtime.engine is not None:
                runtime.engine.close_stream(stream)  # the session ends: its later chunks need no state
            return
    logger.error(
        "dropping a malformed chunk task that names no valid reply channel (%s): %s",
        error.message,
        wire.payload_summary(payload),
    )


def _answer(runtime: WorkerRuntime, channel: str, result: ChunkResult | SentenceResult, what: str) -> None:
    """Publish the refusal of a malformed task; a Redis error is logged (the gateway times the session out)."""
    try:
        runtime.publisher([(channel, result)])
    except redis.RedisError as exc:
        logger.warning("could not answer the refused %s: %s", what, exc)


@shared_task(name=wire.TASK_CHUNK, ignore_result=True)
def transcribe_chunk(payload: Any) -> None:
    """Recognize one chunk of a stream; returns once its result is published on the session's channel.

    The payload is validated completely first (:meth:`ChunkJob.from_wire`): a malformed one never reaches the
    engine, and is answered with a ``bad_task`` result where the payload says whose it is.
    """
    try:
        job = ChunkJob.from_wire(payload)
    except ProtocolError as exc:
        _refuse(payload, exc)
        return
    runtime = _ready_runtime()
    assert runtime.engine is not None
    try:
        runtime.engine.submit(job).wait(timeout=runtime.settings.chunk_timeout)
    except TimeoutError:
        logger.warning(
            "chunk %s of %s still waiting after %.0f s",
            job.seq,
            job.stream,
            runtime.settings.chunk_timeout,
            extra=stream_fields(job.stream, job.seq),
        )


@shared_task(name=wire.TASK_SENTENCE, ignore_result=True)
def correct_sentence(payload: Any) -> None:
    """The 2pass second pass for one sentence (offline model, then punctuation); returns once its result is
    published on the session's channel. Stateless: the payload carries the audio and the session's state."""
    try:
        job = SentenceJob.from_wire(payload)
    except ProtocolError as exc:
        _refuse_sentence(payload, exc)
        return
    runtime = _ready_runtime()
    assert runtime.engine is not None
    try:
        runtime.engine.submit_sentence(job).wait(timeout=runtime.settings.chunk_timeout)
    except TimeoutError:
        logger.warning(
            "sentence %d of %s still waiting after %.0f s", job.index, job.session, runtime.settings.chunk_timeout
        )


def _refuse_sentence(payload: Any, error: ProtocolError) -> None:
    """Answer a malformed sentence task on its session's channel (the session reports it and goes on)."""
    runtime = _runtime
    address = SentenceJob.reply_address(payload)
    if runtime is not None and address is not None:
        session, index, channel = address
        if channel == runtime.keys.result_channel(session):
            logger.warning("refusing sentence %d of %s: %s", index, session, error.message)
            result = SentenceResult(session, index, error=error.message, code=error.code, worker=runtime.worker_id)
            _answer(runtime, channel, result, f"sentence {index} of {session}")
            return
    logger.error("dropping a malformed sentence task (%s): %s", error.message, wire.payload_summary(payload))


@shared_task(name=wire.TASK_CLOSE_STREAM, ignore_result=True)
def close_stream(stream: str) -> None:
    """Free a stream's model state now (the session ended) instead of at its idle timeout."""
    runtime = _runtime
    if runtime is not None and runtime.engine is not None:
        runtime.engine.close_stream(str(stream))
