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

Stages. A chunk of an ``online`` stream goes through the streaming recognizer; of a ``2pass`` stream through the
VAD (its events ride on the chunk's result, for the gateway to cut sentences) and the streaming recognizer; of an
``offline`` stream through the VAD only. Each is one batched call per round over the round's chunks that need it.
*Sentences* (:class:`~tasks.wire.SentenceJob`, the 2pass second pass) are stateless and go through the offline
pipeline (offline model, then punctuation) in batches of their own, with a lower priority: a round takes sentences
only when no chunk is ready, or when the oldest sentence has waited ``sentence_max_defer`` (so a busy worker still
corrects sentences: then one sentence only); a sentence round holds at most ``sentence_max_batch`` sentences and
``sentence_max_audio`` seconds of audio, which bounds how long a chunk that becomes ready meanwhile waits.

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
from typing import TYPE_CHECKING

import numpy as np

from config.logs import stream_fields
from tasks.errors import EngineError, ModelMissing, RecognitionFailed, ServiceError, StreamStateLost
from tasks.options import StreamOptions
from tasks.recognizer import ChunkWork, StreamingRecognizer, StreamState
from tasks.wire import ChunkJob, ChunkResult, SentenceJob, SentenceResult

if TYPE_CHECKING:  # the models load lazily in tasks.runtime; the engine only calls them
    from tasks.offline import SentencePipeline
    from tasks.vad import StreamingVad, VadState

logger = logging.getLogger(__name__)

Publisher = Callable[[Sequence[tuple[str, ChunkResult | SentenceResult]]], None]
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
class _Sentence:
    job: SentenceJob
    pending: Pending
    arrived: float


@dataclass
class _Stream:
    """Engine-side view of one stream: model state plus the reorder buffer."""

    id: str
    opened: bool = False  # a first chunk opened its model state (streaming and/or VAD, per its mode)
    state: StreamState | None = None
    vad_state: VadState | None = None
    vad_base_ms: int = 0  # where the VAD state started in the utterance (a replay may start mid-utterance)
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

    def stage_ran(self, name: str, size: int, forward: float) -> None:
        """One model stage ran on ``size`` items in ``forward`` seconds: ``vad``, ``streaming`` or ``sentence``."""

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
        vad: StreamingVad | None = None,
        sentences: SentencePipeline | None = None,
        sentence_max_batch: int = 8,
        sentence_max_audio: float = 30.0,
        sentence_max_defer: float = 1.0,
    ) -> None:
        self.recognizer = recognizer
        self.vad = vad
        self.sentences = sentences
        self.sentence_max_batch = max(1, sentence_max_batch)
        self.sentence_max_audio = sentence_max_audio
        self.sentence_max_defer = sentence_max_defer
        self._sentence_queue: deque[_Sentence] = deque()
        self._sentence_batch: list[_Sentence] = []
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
    def modes(self) -> list[str]:
        """The session modes this engine's models serve."""
        offline = self.vad is not None and self.sentences is not None
        return ["online"] + (["2pass", "offline"] if offline else [])

    def submit_sentence(self, job: SentenceJob) -> Pending:
        """Queue one sentence for the offline pass; the Pending resolves once its result was published."""
        pending = Pending()
        with self._cond:
            if self._stopping or self.death is not None:
                pending.resolve(None)
                return pending
            self._sentence_queue.append(_Sentence(job, pending, self.clock()))
            self._cond.notify()
        return pending

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
            sentences = list(self._sentence_queue) + list(self._sentence_batch)
            self._sentence_queue.clear()
        for sentence in sentences:
            sentence.pending.resolve(None)
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
            if isinstance(batch, _SentenceRound):
                self._sentence_batch = batch.items
                try:
                    self._process_sentences(batch.items)
                except Exception as exc:  # noqa: BLE001 - as for chunks: one round fails, not the worker
                    self._fail_sentences(batch.items, exc)
                self._sentence_batch = []
            elif batch:
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

    def _collect(self) -> list[tuple[_Stream, _Waiting]] | _SentenceRound | None:
        """Wait for ready chunks (or sentences) per the batching policy; None when stopping. Caller holds the lock."""
        while not self._ready and not self._sentence_queue and not self._stopping:
            self._cond.wait(timeout=IDLE_WAKE_SECONDS)
            if not self._ready and not self._sentence_queue:
                return []  # let the caller sweep expired streams now and then
        if self._stopping:
            return None
        if self._sentence_queue and (
            not self._ready or self.clock() - self._sentence_queue[0].arrived > self.sentence_max_defer
        ):
            return self._take_sentences()
        deadline = self._oldest_ready_arrival() + self.max_wait
        while len(self._ready) < self.max_batch and not self._stopping:
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            self._cond.wait(timeout=remaining)
        return self._take_batch()

    def _take_sentences(self) -> _SentenceRound:
        """The next sentence round: up to the batch bounds when no chunk is ready; one sentence when chunks wait
        (the round was forced by ``sentence_max_defer``), so a live chunk waits at most one sentence."""
        items: list[_Sentence] = []
        audio = 0.0
        limit = self.sentence_max_batch if not self._ready else 1
        while self._sentence_queue and len(items) < limit:
            seconds = len(self._sentence_queue[0].job.audio) / 32000
            if items and audio + seconds > self.sentence_max_audio:
                break
            items.append(self._sentence_queue.popleft())
            audio += seconds
        return _SentenceRound(items)

    def _process_sentences(self, items: list[_Sentence]) -> None:
        """One round of the offline pass: offline model then punctuation over the round's sentences."""
        from tasks.offline import SentenceWork  # noqa: PLC0415 - numpy-side module, loaded with the models

        started = time.time()
        t0 = self.clock()
        pipeline = self.sentences
        if pipeline is None:
            outputs: list = [ModelMissing("this worker has no offline model (ASR_OFFLINE_MODEL)")] * len(items)
        else:
            work = [SentenceWork(_pcm_to_float(s.job.audio), s.job.hotwords, dict(s.job.punc)) for s in items]
            try:
                outputs = pipeline.process(work)
            except Exception as exc:  # noqa: BLE001 - third-party code: retry one by one to find the culprit
                logger.warning("sentence round of %d raised %r; retrying one by one", len(work), exc)
                outputs = [self._sentence_one(pipeline, w) for w in work]
        forward = self.clock() - t0
        if len(outputs) != len(items):
            raise EngineError(f"the offline pipeline returned {len(outputs)} results for {len(items)} sentences")
        self.observer.stage_ran("sentence", len(items), forward)
        messages = []
        for item, out in zip(items, outputs):
            job = item.job
            timing = {"queued": round(started - job.submitted_at, 4), "compute": round(forward, 4), "batch": len(items)}
            end_ms = job.start_ms + len(job.audio) // 32
            if isinstance(out, ServiceError):
                self.observer.failed(out.code)
                result = SentenceResult(
                    job.session, job.index, start_ms=job.start_ms, end_ms=end_ms, error=out.message, code=out.code,
                    worker=self.worker_id, timing=timing,
                )  # fmt: skip
            else:
                result = SentenceResult(
                    job.session,
                    job.index,
                    text=out.text,
                    raw_text=out.raw_text,
                    timestamp=out.timestamp,
                    stamp_sents=out.stamp_sents,
                    punc=out.punc_cache,
                    start_ms=job.start_ms,
                    end_ms=end_ms,
                    worker=self.worker_id,
                    timing=timing,
                )
            messages.append((job.channel, result))
        self._publish(messages)
        for item in items:
            item.pending.resolve(None)

    @staticmethod
    def _sentence_one(pipeline: SentencePipeline, work) -> object:
        try:
            return pipeline.process([work])[0]
        except Exception as exc:  # noqa: BLE001 - third-party code
            logger.exception("offline pipeline raised on one sentence")
            return RecognitionFailed(f"offline pipeline failed: {type(exc).__name__}: {exc}")

    def _fail_sentences(self, items: list[_Sentence], exc: Exception) -> None:
        logger.error("sentence round of %d failed in the engine: %r", len(items), exc, exc_info=exc)
        error = EngineError(f"internal error in the worker's engine: {type(exc).__name__}: {exc}")
        pending = [s for s in items if not s.pending.done]
        self._publish(
            [
                (s.job.channel, SentenceResult(s.job.session, s.job.index, error=error.message, code=error.code))
                for s in pending
            ]
        )
        self.observer.failed(error.code, len(pending))
        for s in pending:
            s.pending.resolve(None)

    def _oldest_ready_arrival(self) -> float:
        stream = self._streams.get(self._ready[0])
        if stream is None or stream.next_seq not in stream.waiting:
            return self.clock()
        return stream.waiting[stream.next_seq].arrived  # type: ignore[index]

    def _process(self, batch: list[tuple[_Stream, _Waiting]]) -> None:
        started = time.time()
        t0 = self.clock()
        outcomes: list[str | ServiceError | None] = [self._prepare(s, w) for s, w in batch]
        audio = [_pcm_to_float(w.job.audio) for _, w in batch]
        events = self._vad_stage(batch, outcomes, audio)
        todo = [i for i, outcome in enumerate(outcomes) if outcome is None and batch[i][0].state is not None]
        work = []
        for i in todo:
            stream, waiting = batch[i]
            state: StreamState = stream.state  # type: ignore[assignment]  # checked above
            work.append(ChunkWork(state, audio[i], waiting.job.is_final))
        forward_t0 = self.clock()
        texts = self._recognize(work) if work else []
        forward = self.clock() - forward_t0
        if len(texts) != len(work):
            raise EngineError(f"the recognizer returned {len(texts)} results for {len(work)} chunks")
        if work:
            self.observer.stage_ran("streaming", len(work), forward)
        for i, text in zip(todo, texts):
            outcomes[i] = (
                text
                if isinstance(text, (str, ServiceError))
                else RecognitionFailed(f"the recognizer returned a {type(text).__name__}, not text")
            )
        for i, outcome in enumerate(outcomes):
            if outcome is None:  # an offline-mode chunk: no text, only VAD events
                outcomes[i] = ""
        compute = self.clock() - t0
        results = [self._result(w.job, out, started, compute, len(batch)) for (_, w), out in zip(batch, outcomes)]
        for result, found in zip(results, events):
            if found and result.error is None:
                result.vad = found
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
            return None if stream.opened else StreamStateLost("the stream has no model state here")
        if waiting.options is not None:
            stream.options = waiting.options
        options = stream.options
        if options is None:
            return StreamStateLost("this worker holds no options for the stream: replay it with options")
        if options.needs_vad and (self.vad is None or self.sentences is None):
            return ModelMissing(
                f"mode {options.mode!r} needs the VAD and offline models; this worker has not loaded them"
            )
        stream.opened = False
        try:
            stream.state = self.recognizer.open_stream(options) if options.needs_streaming else None
            stream.vad_state = self.vad.open_stream() if options.needs_vad and self.vad is not None else None
        except Exception as exc:  # noqa: BLE001 - the models are third-party code, as in _recognize
            logger.exception("could not open stream %s", stream.id, extra=stream_fields(stream.id))
            return RecognitionFailed(f"failed to open the stream: {type(exc).__name__}: {exc}")
        stream.vad_base_ms = waiting.job.at // 16
        stream.opened = True
        return None

    def _vad_stage(
        self, batch: list[tuple[_Stream, _Waiting]], outcomes: list, audio: list[np.ndarray]
    ) -> list[list[list[int]]]:
        """Run the VAD over the round's chunks that need it; a failure fails that chunk (outcomes[i])."""
        from tasks.vad import VadWork  # noqa: PLC0415 - numpy-side module, loaded with the models

        events: list[list[list[int]]] = [[] for _ in batch]
        todo = [i for i, o in enumerate(outcomes) if o is None and batch[i][0].vad_state is not None]
        if not todo or self.vad is None:
            return events
        vad = self.vad
        work = [VadWork(batch[i][0].vad_state, audio[i], batch[i][1].job.is_final) for i in todo]  # type: ignore[arg-type]
        t0 = self.clock()
        try:
            found = vad.process(work)
        except Exception as exc:  # noqa: BLE001 - third-party code: retry one by one to find the culprit
            logger.warning("VAD round of %d raised %r; retrying one by one", len(work), exc)
            found = []
            for item in work:
                try:
                    found.append(vad.process([item])[0])
                except Exception as one:  # noqa: BLE001
                    found.append(RecognitionFailed(f"VAD failed: {type(one).__name__}: {one}"))
        self.observer.stage_ran("vad", len(work), self.clock() - t0)
        for i, out in zip(todo, found):
            if isinstance(out, ServiceError):
                outcomes[i] = out
                continue
            base = batch[i][0].vad_base_ms
            events[i] = [[b + base if b >= 0 else -1, e + base if e >= 0 else -1] for b, e in out]
        return events

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

    def _publish(self, messages: Sequence[tuple[str, ChunkResult | SentenceResult]]) -> None:
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


@dataclass
class _SentenceRound:
    """A round of the batcher that runs sentences (the offline pass) instead of chunks."""

    items: list[_Sentence]


def _inject_death(batch: list[tuple[_Stream, _Waiting]]) -> None:
    for stream, waiting in batch:
        options = waiting.options or stream.options
        if options is not None and options.wav_name.startswith(KILL_ENGINE_PREFIX):
            raise InjectedEngineDeath(f"fault injection: stream {stream.id} ({options.wav_name}) kills the engine")


def _pcm_to_float(pcm: bytes) -> np.ndarray:
    """16-bit LE PCM → float32 in [-1, 1), the scale FunASR's own byte loader uses."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
