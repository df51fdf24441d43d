"""The recognition engine of one worker process: open streams, chunk ordering and cross-stream batching.

Celery task bodies (many threads) hand chunks to :meth:`Engine.submit` and wait on the returned
:class:`Pending`; one batcher thread owns the recognizer. Each round it takes the *next* chunk of up to
``max_batch`` streams that have one ready, runs them through the recognizer in one call, publishes each result on
its session's channel (one Redis pipeline per batch, in chunk order per stream), and releases the waiting tasks.

Ordering. A stream's chunks must reach the model in order; the threads pool may start task n+1 before task n,
so chunks wait in a per-stream reorder buffer until their predecessor is done. A chunk whose predecessor never
comes (``gap_timeout``) or that belongs to a stream this process has no state for fails with
:class:`~tasks.errors.StreamStateLost`; the gateway then replays the utterance elsewhere.

Options. A stream's options come with its first job only (see :class:`~tasks.wire.ChunkJob`): that job starts
the stream here, and every later utterance (a ``first`` job without options) reuses them. A ``first`` job of a
stream that never started here waits for its predecessors like any other chunk, and fails with StreamStateLost
after ``gap_timeout`` if they never come (this process restarted, or freed the stream when it idled out).

Batching policy. When the first chunk becomes ready the batcher waits at most ``max_wait`` for more, then runs
whatever is ready (up to ``max_batch``). Chunks that became ready while a batch was running have already waited
and go at once. Larger ``max_wait`` buys bigger batches (throughput) with added latency; see the README.

Failure. Whatever goes wrong with one batch outside the recognizer's own contract (a bug, a broken promise of the
recognizer) fails that batch's chunks with ``engine_error`` and the batcher goes on. If the batcher thread dies
anyway, or stops coming back to its loop for ``stall_timeout``, :meth:`Engine.health` says so, every waiting task
is released, and ``on_death`` is called: the worker then deregisters and exits (tasks.runtime).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from config.logs import stream_fields
from tasks.errors import EngineError, RecognitionFailed, ServiceError, StreamStateLost
from tasks.options import StreamOptions
from tasks.recognizer import ChunkWork, StreamingRecognizer, StreamState
from tasks.wire import ChunkJob, ChunkResult

logger = logging.getLogger(__name__)

Publisher = Callable[[Sequence[tuple[str, ChunkResult]]], None]
SWEEP_SECONDS = 0.25  # how often gap and idle timeouts are checked
IDLE_WAKE_SECONDS = 0.5  # an idle batcher still comes back to its loop this often: the stall check relies on it

# Engine.health() values; the heartbeat carries them (tasks.runtime) and the worker probe reads them.
HEALTH_OK = "ok"
HEALTH_STALLED = "stalled"  # the batcher thread has not come back to its loop for longer than stall_timeout
HEALTH_DEAD = "dead"  # the batcher thread died
HEALTH_STOPPED = "stopped"  # not started yet, or stopped on purpose

#: Chaos testing (``fault_injection=True`` only): a stream whose wav_name starts with this kills the batcher thread
#: outside the per-batch isolation, to exercise the worker's reaction to a dead engine.
KILL_ENGINE_PREFIX = "__kill_engine__"


class InjectedEngineDeath(RuntimeError):
    """Raised in the batcher thread by a :data:`KILL_ENGINE_PREFIX` stream (fault injection only)."""


class Pending:
    """A submitted chunk's outcome, for the task thread that submitted it."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self.result: ChunkResult | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def resolve(self, result: ChunkResult | None) -> None:
        """Set the outcome; only the first call counts."""
        if not self._done.is_set():
            self.result = result
            self._done.set()

    def wait(self, timeout: float | None = None) -> ChunkResult | None:
        """Block until the chunk was recognized and published (or dropped); False-y on timeout."""
        if not self._done.wait(timeout):
            raise TimeoutError("chunk not processed in time")
        return self.result


@dataclass
class _Waiting:
    job: ChunkJob
    pending: Pending
    arrived: float
    options: StreamOptions | None = None  # the job's options, validated by submit()


@dataclass
class _Stream:
    """Engine-side view of one stream: model state plus the reorder buffer."""

    id: str
    state: StreamState | None = None
    options: StreamOptions | None = None  # from the stream's first job; kept for its later utterances
    next_seq: int | None = None  # None until the stream's first job (the one with options) has arrived
    waiting: dict[int, _Waiting] = field(default_factory=dict)
    last_used: float = 0.0  # last chunk submitted or done: for the idle timeout
    progressed: float = 0.0  # last time the stream started or finished a chunk: for the gap timeout
    queued: bool = False  # in the ready deque
    busy: bool = False  # a chunk of it is in the batch being recognized


class EngineObserver:
    """Instrumentation hooks, called from the batcher thread; this default does nothing (tasks.metrics exports
    them to Prometheus). They must be quick and must not raise."""

    def batch(self, size: int, waits: Sequence[float], forward: float, compute: float) -> None:
        """A batch ran: its chunks, each one's wait (submission to batch start, s; the gateway's wall clock
        against this host's), the recognizer call and the whole batch (s)."""

    def failed(self, code: str, count: int = 1) -> None:
        """``count`` chunks failed with error ``code`` (tasks.errors)."""


@dataclass
class EngineStats:
    batches: int = 0
    chunks: int = 0
    failures: int = 0
    last_batch_size: int = 0
    last_batch_ms: float = 0.0

    def snapshot(self) -> dict:
        mean = self.chunks / self.batches if self.batches else 0.0
        return {
            "batches": self.batches,
            "chunks": self.chunks,
            "failures": self.failures,
            "mean_batch": round(mean, 2),
            "last_batch_size": self.last_batch_size,
            "last_batch_ms": round(self.last_batch_ms, 2),
        }


class Engine:
    """Streams and batching for one recognizer. Thread-safe: ``submit``/``close_stream``/``health`` from any thread.

    ``on_death(reason)`` is called once, from the dying batcher thread, if that thread dies; ``stall_timeout``
    (seconds, plus the idle wake-up period) bounds how long it may stay away from its loop (in one batch, say)
    before :meth:`health` reports it stalled. ``fault_injection`` enables :data:`KILL_ENGINE_PREFIX`.
    """

    def __init__(
        self,
        recognizer: StreamingRecognizer,
        publish: Publisher,
        *,
        worker_id: str = "",
        max_batch: int = 64,
        max_wait: float = 0.005,
        stream_idle_timeout: float = 120.0,
        gap_timeout: float = 5.0,
        stall_timeout: float = 60.0,
        on_death: Callable[[str], None] | None = None,
        fault_injection: bool = False,
        clock: Callable[[], float] = time.monotonic,
        observer: EngineObserver | None = None,
    ) -> None:
        self.recognizer = recognizer
        self.publish = publish
        self.worker_id = worker_id
        self.max_batch = max(1, max_batch)
        self.max_wait = max_wait
        self.stream_idle_timeout = stream_idle_timeout
        self.gap_timeout = gap_timeout
        self.stall_timeout = stall_timeout
        self.on_death = on_death
        self.fault_injection = fault_injection
        self.clock = clock
        self.stats = EngineStats()
        self.observer = observer or EngineObserver()
        self.death: str | None = None  # why the batcher thread died, once it has
        self._streams: dict[str, _Stream] = {}
        self._ready: deque[str] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._batch: list[tuple[_Stream, _Waiting]] = []  # the batch being processed, released if the thread dies
        self._looped = clock()  # when the batcher thread last came back to its loop

    # --- public API -----------------------------------------------------------------------------------------------
    def start(self) -> Engine:
        self._looped = self.clock()
        self._thread = threading.Thread(target=self._run, name="asr-batcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the batch in progress (waiting at most ``timeout``), then drop every waiting chunk so the tasks
        holding them return at once (their sessions are replayed elsewhere: the worker has deregistered)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._release_all()

    def health(self) -> str:
        """:data:`HEALTH_OK`, or why this engine cannot serve: dead, stalled or stopped."""
        if self.death is not None:
            return HEALTH_DEAD
        if self._stopping or self._thread is None:
            return HEALTH_STOPPED
        if not self._thread.is_alive():
            return HEALTH_DEAD  # ended without passing through _die: cannot happen, but must not read as ok
        if self.clock() - self._looped > self.stall_timeout + IDLE_WAKE_SECONDS:  # an idle loop comes back this late
            return HEALTH_STALLED
        return HEALTH_OK

    @property
    def alive(self) -> bool:
        """True while the batcher thread runs and keeps coming back to its loop."""
        return self.health() == HEALTH_OK

    @property
    def open_streams(self) -> int:
        with self._cond:
            return len(self._streams)

    def submit(self, job: ChunkJob) -> Pending:
        """Queue one chunk; the returned Pending resolves once its result was published (or it was dropped)."""
        options = job.stream_options()  # validated here, in the caller's thread (ProtocolError), never in the batcher
        pending = Pending()
        now = self.clock()
        with self._cond:
            if self._stopping or self.death is not None:
                pending.resolve(None)
                return pending
            stream = self._streams.get(job.stream)
            if stream is None:
                stream = self._streams[job.stream] = _Stream(job.stream, last_used=now, progressed=now)
            if stream.next_seq is not None and job.seq < stream.next_seq:
                pending.resolve(None)  # a duplicate of a chunk already done (a replay overlap): nothing to do
                return pending
            if job.first and options is not None and stream.next_seq is None:
                self._start(stream, job.seq)  # the stream's first job: the only one that carries options
            stream.waiting[job.seq] = _Waiting(job, pending, now, options)
            stream.last_used = now
            self._mark_ready(stream)
        return pending

    def close_stream(self, stream_id: str) -> None:
        """Forget a stream (session ended); chunks still waiting for it are dropped without results."""
        with self._cond:
            stream = self._streams.pop(stream_id, None)
        if stream:
            for waiting in stream.waiting.values():
                waiting.pending.resolve(None)

    def _release_all(self) -> None:
        """Forget every stream and release every task still waiting, the batch in progress included."""
        with self._cond:
            streams, self._streams = list(self._streams.values()), {}
            self._ready.clear()
            batch = list(self._batch)
        for stream in streams:
            for waiting in stream.waiting.values():
                waiting.pending.resolve(None)
        for _, waiting in batch:
            waiting.pending.resolve(None)

    # --- bookkeeping (caller holds the lock) ---------------------------------------------------------------------
    def _drop(self, stream: _Stream) -> None:
        """Forget a stream whose state is no longer trustworthy; its waiting chunks are dropped without results."""
        stream.busy = False
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]
        for waiting in stream.waiting.values():
            waiting.pending.resolve(None)
        stream.waiting.clear()

    def _start(self, stream: _Stream, seq: int) -> None:
        """A new stream's first chunk arrived: chunks before it (stale retries) are dropped."""
        for stale in [s for s in stream.waiting if s < seq]:
            stream.waiting.pop(stale).pending.resolve(None)
        stream.next_seq = seq
        stream.progressed = self.clock()

    def _mark_ready(self, stream: _Stream) -> None:
        if not stream.queued and stream.next_seq is not None and stream.next_seq in stream.waiting:
            stream.queued = True
            self._ready.append(stream.id)
            self._cond.notify()

    def _take_batch(self) -> list[tuple[_Stream, _Waiting]]:
        batch: list[tuple[_Stream, _Waiting]] = []
        while self._ready and len(batch) < self.max_batch:
            stream = self._streams.get(self._ready.popleft())
            if stream is None:
                continue
            stream.queued = False
            waiting = stream.waiting.pop(stream.next_seq, None) if stream.next_seq is not None else None
            if waiting is None:
                continue
            stream.busy = True
            batch.append((stream, waiting))
        return batch

    # --- batcher thread -------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - the thread's boundary: its death must be noticed, not silent
            self._die(exc)

    def _loop(self) -> None:
        next_sweep = 0.0
        while True:
            self._looped = self.clock()
            with self._cond:
                batch = self._collect()
                if batch is None:
                    return
            if batch:
                self._batch = batch
                if self.fault_injection:
                    _inject_death(batch)
                try:
                    self._process(batch)
                except Exception as exc:  # noqa: BLE001 - a bug or a broken contract fails one batch, not the worker
                    self._fail_batch(batch, exc)
                self._batch = []
            if self.clock() >= next_sweep:  # a sweep visits every stream: not after every batch
                next_sweep = self.clock() + SWEEP_SECONDS
                self._expire()

    def _die(self, exc: BaseException) -> None:
        """The batcher thread is ending on an exception: say so, release every waiting task, tell the owner."""
        self.death = f"{type(exc).__name__}: {exc}"
        logger.critical("the engine's batcher thread died: %s", self.death, exc_info=exc)
        self._release_all()
        if self.on_death is not None:
            try:
                self.on_death(self.death)
            except Exception:  # noqa: BLE001 - last words of a dying thread: log, do not mask the death
                logger.exception("on_death handler failed")

    def _fail_batch(self, batch: list[tuple[_Stream, _Waiting]], exc: Exception) -> None:
        """Fail the chunks of a batch that went wrong outside the recognizer, and drop their streams."""
        logger.error("batch of %d failed in the engine: %r", len(batch), exc, exc_info=exc)
        error = EngineError(f"internal error in the worker's engine: {type(exc).__name__}: {exc}")
        failed = [w for _, w in batch if not w.pending.done]
        results = [
            ChunkResult(
                w.job.stream,
                w.job.seq,
                is_final=w.job.is_final,
                error=error.message,
                code=error.code,
                worker=self.worker_id,
            )
            for w in failed
        ]
        self._publish([(w.job.channel, r) for w, r in zip(failed, results)])
        self.stats.failures += len(failed)
        self.observer.failed(error.code, len(failed))
        with self._cond:
            for stream, waiting in batch:
                if stream.busy or not waiting.pending.done:  # its state is unknown now
                    self._drop(stream)
        for waiting, result in zip(failed, results):
            waiting.pending.resolve(result)

    def _collect(self) -> list[tuple[_Stream, _Waiting]] | None:
        """Wait for ready chunks per the batching policy; None when stopping. Caller holds the lock."""
        while not self._ready and not self._stopping:
            self._cond.wait(timeout=IDLE_WAKE_SECONDS)
            if not self._ready:
                return []  # let the caller sweep expired streams now and then
        if self._stopping:
            return None
        deadline = self._oldest_ready_arrival() + self.max_wait
        while len(self._ready) < self.max_batch and not self._stopping:
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            self._cond.wait(timeout=remaining)
        return self._take_batch()

    def _oldest_ready_arrival(self) -> float:
        stream = self._streams.get(self._ready[0])
        if stream is None or stream.next_seq not in stream.waiting:
            return self.clock()
        return stream.waiting[stream.next_seq].arrived  # type: ignore[index]

    def _process(self, batch: list[tuple[_Stream, _Waiting]]) -> None:
        started = time.time()
        t0 = self.clock()
        outcomes: list[str | ServiceError | None] = [self._prepare(s, w) for s, w in batch]
        todo = [i for i, outcome in enumerate(outcomes) if outcome is None]
        work = []
        for i in todo:
            stream, waiting = batch[i]
            state: StreamState = stream.state  # type: ignore[assignment]  # _prepare saw to it
            work.append(ChunkWork(state, _pcm_to_float(waiting.job.audio), waiting.job.is_final))
        forward_t0 = self.clock()
        texts = self._recognize(work) if work else []
        forward = self.clock() - forward_t0
        if len(texts) != len(work):
            raise EngineError(f"the recognizer returned {len(texts)} results for {len(work)} chunks")
        for i, text in zip(todo, texts):
            outcomes[i] = (
                text
                if isinstance(text, (str, ServiceError))
                else RecognitionFailed(f"the recognizer returned a {type(text).__name__}, not text")
            )
        compute = self.clock() - t0
        results = [self._result(w.job, out, started, compute, len(batch)) for (_, w), out in zip(batch, outcomes)]
        self._publish([(w.job.channel, r) for (_, w), r in zip(batch, results)])
        self.stats.batches += 1
        self.stats.chunks += len(batch)
        self.stats.last_batch_size, self.stats.last_batch_ms = len(batch), compute * 1000
        self.observer.batch(len(batch), [started - w.job.submitted_at for _, w in batch], forward, compute)
        with self._cond:
            for (stream, waiting), outcome in zip(batch, outcomes):
                self._advance(stream, waiting.job, outcome)
        for (_, waiting), result in zip(batch, results):
            waiting.pending.resolve(result)

    def _prepare(self, stream: _Stream, waiting: _Waiting) -> ServiceError | None:
        """Ready a chunk's stream for it: a first chunk gets fresh model state under the stream's options (its
        own, or those kept from the stream's first job). An error returned fails the chunk."""
        if not waiting.job.first:
            return None if stream.state is not None else StreamStateLost("the stream has no model state here")
        if waiting.options is not None:
            stream.options = waiting.options
        if stream.options is None:
            return StreamStateLost("this worker holds no options for the stream: replay it with options")
        try:
            stream.state = self.recognizer.open_stream(stream.options)
        except Exception as exc:  # noqa: BLE001 - the recognizer is third-party code, as in _recognize
            logger.exception("recognizer could not open stream %s", stream.id, extra=stream_fields(stream.id))
            return RecognitionFailed(f"recognizer failed to open the stream: {type(exc).__name__}: {exc}")
        return None

    def _recognize(self, work: list[ChunkWork]) -> list[str | RecognitionFailed]:
        """Run the batch; if the recognizer raises, retry the items alone so only the culprit fails."""
        try:
            return self.recognizer.process(work)
        except Exception as exc:  # noqa: BLE001 - the recognizer is third-party code; isolate its failures
            if len(work) == 1:
                logger.exception("recognizer raised on stream %r", work[0].state.options.wav_name)
                return [RecognitionFailed(f"recognizer failed: {type(exc).__name__}: {exc}")]
            logger.warning("batch of %d raised %r; retrying its chunks one by one", len(work), exc)
            return [self._recognize([item])[0] for item in work]

    def _result(self, job: ChunkJob, outcome, started: float, compute: float, size: int) -> ChunkResult:
        timing = {"queued": round(started - job.submitted_at, 4), "compute": round(compute, 4), "batch": size}
        if isinstance(outcome, ServiceError):
            self.stats.failures += 1
            self.observer.failed(outcome.code)
            return ChunkResult(
                job.stream,
                job.seq,
                is_final=job.is_final,
                error=outcome.message,
                code=outcome.code,
                worker=self.worker_id,
                timing=timing,
            )
        return ChunkResult(job.stream, job.seq, outcome, is_final=job.is_final, worker=self.worker_id, timing=timing)

    def _advance(self, stream: _Stream, job: ChunkJob, outcome) -> None:
        """After a chunk: move the stream on, or drop it when its state is no longer trustworthy."""
        stream.busy = False
        if isinstance(outcome, ServiceError):
            self._drop(stream)
            return
        stream.next_seq = job.seq + 1
        stream.last_used = stream.progressed = self.clock()
        if stream.state is not None:
            stream.state.chunks_done = 0 if job.is_final else stream.state.chunks_done + 1
        self._mark_ready(stream)

    def _publish(self, messages: list[tuple[str, ChunkResult]]) -> None:
        try:
            self.publish(messages)
        except Exception:  # noqa: BLE001 - a broken Redis must not kill the batcher; gateways time out
            logger.exception("could not publish %d results", len(messages))

    def _expire(self) -> None:
        """Fail chunks whose predecessor never came, and free streams idle for too long."""
        now = self.clock()
        failed: list[tuple[str, ChunkResult, Pending]] = []
        with self._cond:
            for stream in list(self._streams.values()):
                if self._gap_expired(stream, now):
                    failed.extend(self._fail_stream(stream))
                elif not (stream.waiting or stream.busy) and now - stream.last_used > self.stream_idle_timeout:
                    logger.info(
                        "freeing stream %s after %.0f s idle",
                        stream.id,
                        now - stream.last_used,
                        extra=stream_fields(stream.id),
                    )
                    del self._streams[stream.id]
        if failed:
            self._publish([(channel, result) for channel, result, _ in failed])
            for _, result, pending in failed:
                pending.resolve(result)

    def _gap_expired(self, stream: _Stream, now: float) -> bool:
        """True when the stream's next chunk is missing and has been for longer than gap_timeout."""
        if not stream.waiting or stream.queued or stream.busy:
            return False
        oldest = min(w.arrived for w in stream.waiting.values())
        return now - max(oldest, stream.progressed) > self.gap_timeout

    def _fail_stream(self, stream: _Stream) -> list[tuple[str, ChunkResult, Pending]]:
        del self._streams[stream.id]
        if stream.next_seq is None:
            error: EngineError = StreamStateLost("this worker has no model state for the stream (restarted?)")
        else:
            error = StreamStateLost(f"chunk {stream.next_seq} never arrived; the stream's state is gone")
        out = []
        for seq in sorted(stream.waiting):
            w = stream.waiting[seq]
            result = ChunkResult(stream.id, seq, error=error.message, code=error.code, worker=self.worker_id)
            out.append((w.job.channel, result, w.pending))
        logger.warning("stream %s: %s", stream.id, error.message, extra=stream_fields(stream.id))
        self.observer.failed(error.code, len(out))
        return out


def _inject_death(batch: list[tuple[_Stream, _Waiting]]) -> None:
    for stream, waiting in batch:
        options = waiting.options or stream.options
        if options is not None and options.wav_name.startswith(KILL_ENGINE_PREFIX):
            raise InjectedEngineDeath(f"fault injection: stream {stream.id} ({options.wav_name}) kills the engine")


def _pcm_to_float(pcm: bytes) -> np.ndarray:
    """16-bit LE PCM → float32 in [-1, 1), the scale FunASR's own byte loader uses."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
