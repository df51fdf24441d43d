"""The recognition engine of one worker process: the batcher thread and its scheduling policy.

Celery task bodies (many threads) hand chunks to :meth:`Engine.submit` (sentences to :meth:`Engine.submit_sentence`)
and wait on the returned :class:`~tasks.ordering.Pending`; one batcher thread owns the models. Each round it takes
the *next* chunk of up to ``max_batch`` streams that have one ready (or a round of sentences), runs the round's
stages with one batched call each, publishes each result on its session's channel (one Redis pipeline per round,
in chunk order per stream), and releases the waiting tasks. Three parts: this module decides *when* and *what*
(batching policy, priorities, failure and death); :mod:`tasks.ordering` keeps the per-stream reorder buffers and
the ready queue; :mod:`tasks.stages` runs the models.

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

Background work. File jobs (:mod:`tasks.filework`) come last: their sentences (``SentenceJob.background``) and
their calls (:meth:`Engine.submit_background`: VAD over a file's audio, its punctuation pass) run only in a
round where no chunk is ready and no live sentence waits, and are never forced. A background sentence round takes
at most ``background_max_batch`` sentences (after any live ones) and, while live streams are open, at most
``background_live_audio`` seconds of their audio (one sentence at least), so a chunk that becomes ready meanwhile
waits at most that round; background calls alternate with such rounds and are sized by their callers to run
briefly.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING

from config.logs import stream_fields
from tasks.errors import EngineError, ServiceError, StreamStateLost
from tasks.ordering import Pending, Stream, StreamTable, Waiting
from tasks.recognizer import StreamingRecognizer
from tasks.stages import ChunkStages, EngineObserver, SentenceStage
from tasks.wire import ChunkJob, ChunkResult, SentenceJob, SentenceResult

if TYPE_CHECKING:  # the models load lazily in tasks.runtime; the engine only calls them
    from tasks.offline import SentencePipeline
    from tasks.vad import StreamingVad

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


@dataclass
class _Sentence:
    job: SentenceJob
    pending: Pending
    arrived: float


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
        background_max_batch: int = 4,
        background_live_audio: float = 8.0,
    ) -> None:
        self.recognizer = recognizer
        self.vad = vad
        self.sentences = sentences
        self.observer = observer or EngineObserver()
        self.stages = ChunkStages(recognizer, vad, sentences is not None, self.observer, clock)
        self.sentence_stage = SentenceStage(sentences, self.observer, clock)
        self.sentence_max_batch = max(1, sentence_max_batch)
        self.sentence_max_audio = sentence_max_audio
        self.sentence_max_defer = sentence_max_defer
        self._sentence_queue: deque[_Sentence] = deque()
        self._sentence_batch: list[_Sentence] = []
        self.background_max_batch = max(1, background_max_batch)
        self.background_live_audio = background_live_audio
        self._background: deque[_Sentence] = deque()  # file jobs' sentences
        self._calls: deque[_Call] = deque()  # file jobs' other work
        self._call_next = False  # alternate background calls with background sentence rounds
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
        self.death: str | None = None  # why the batcher thread died, once it has
        self._cond = threading.Condition()
        self._table = StreamTable(clock, on_ready=self._cond.notify)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._batch: list[tuple[Stream, Waiting]] = []  # the batch being processed, released if the thread dies
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
            queue = self._background if job.background else self._sentence_queue
            queue.append(_Sentence(job, pending, self.clock()))
            self._cond.notify()
        return pending

    def submit_background(self, call: Callable[[], object]) -> Pending:
        """Run ``call()`` in the batcher thread when it has nothing live to do (see Background work in the module
        docstring). The Pending's result is ``call``'s return value or the exception it raised; None if the engine
        stopped first."""
        pending = Pending()
        with self._cond:
            if self._stopping or self.death is not None:
                pending.resolve(None)
                return pending
            self._calls.append(_Call(call, pending))
            self._cond.notify()
        return pending

    @property
    def open_streams(self) -> int:
        with self._cond:
            return len(self._table)

    def submit(self, job: ChunkJob) -> Pending:
        """Queue one chunk; the returned Pending resolves once its result was published (or it was dropped)."""
        options = job.stream_options()  # validated here, in the caller's thread (ProtocolError), never in the batcher
        pending = Pending()
        with self._cond:
            if self._stopping or self.death is not None:
                pending.resolve(None)
                return pending
            self._table.add(job, options, pending)
        return pending

    def close_stream(self, stream_id: str) -> None:
        """Forget a stream (session ended); chunks still waiting for it are dropped without results."""
        with self._cond:
            self._table.close(stream_id)

    def _release_all(self) -> None:
        """Forget every stream and release every task still waiting, the batch in progress included."""
        with self._cond:
            streams = self._table.clear()
            batch = list(self._batch)
            sentences = list(self._sentence_queue) + list(self._sentence_batch) + list(self._background)
            calls = list(self._calls)
            self._sentence_queue.clear()
            self._background.clear()
            self._calls.clear()
        for sentence in sentences:
            sentence.pending.resolve(None)
        for call in calls:
            call.pending.resolve(None)
        for stream in streams:
            for waiting in stream.waiting.values():
                waiting.pending.resolve(None)
        for _, waiting in batch:
            waiting.pending.resolve(None)

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
            if isinstance(batch, _Call):
                try:
                    batch.pending.resolve(batch.call())
                except Exception as exc:  # noqa: BLE001 - the caller's code: its error is its result
                    batch.pending.resolve(exc)
            elif isinstance(batch, _SentenceRound):
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

    def _fail_batch(self, batch: list[tuple[Stream, Waiting]], exc: Exception) -> None:
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
                    self._table.drop(stream)
        for waiting, result in zip(failed, results):
            waiting.pending.resolve(result)

    def _collect(self) -> list[tuple[Stream, Waiting]] | _SentenceRound | _Call | None:
        """Wait for ready chunks (or sentences, or background work) per the batching policy; None when stopping.
        Caller holds the lock."""
        ready = self._table.ready

        def idle() -> bool:
            return not ready and not self._sentence_queue and not self._background and not self._calls

        while idle() and not self._stopping:
            self._cond.wait(timeout=IDLE_WAKE_SECONDS)
            if idle():
                return []  # let the caller sweep expired streams now and then
        if self._stopping:
            return None
        if self._sentence_queue and (
            not ready or self.clock() - self._sentence_queue[0].arrived > self.sentence_max_defer
        ):
            return self._take_sentences()
        if not ready and (self._background or self._calls):
            if self._calls and (self._call_next or not self._background):
                self._call_next = False
                return self._calls.popleft()
            self._call_next = True
            return self._take_sentences()
        deadline = self._table.oldest_ready_arrival() + self.max_wait
        while len(ready) < self.max_batch and not self._stopping:
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            self._cond.wait(timeout=remaining)
        return self._table.take(self.max_batch)

    def _take_sentences(self) -> _SentenceRound:
        """The next sentence round: up to the batch bounds when no chunk is ready; one sentence when chunks wait
        (the round was forced by ``sentence_max_defer``), so a live chunk waits at most one sentence."""
        items: list[_Sentence] = []
        audio = 0.0
        limit = self.sentence_max_batch if not self._table.ready else 1
        while self._sentence_queue and len(items) < limit:
            seconds = len(self._sentence_queue[0].job.audio) / 32000
            if items and audio + seconds > self.sentence_max_audio:
                break
            items.append(self._sentence_queue.popleft())
            audio += seconds
        background, background_audio = 0, 0.0
        # beside open live streams a background round stays short: their next chunk may arrive during it
        cap = self.background_live_audio if len(self._table) else self.sentence_max_audio
        while self._background and not self._table.ready and background < self.background_max_batch:
            seconds = len(self._background[0].job.audio) / 32000
            if items and (audio + seconds > self.sentence_max_audio or background_audio + seconds > cap):
                break
            items.append(self._background.popleft())
            audio += seconds
            background_audio += seconds
            background += 1
        return _SentenceRound(items)

    def _process_sentences(self, items: list[_Sentence]) -> None:
        """One round of the offline pass: offline model then punctuation over the round's sentences."""
        started = time.time()
        outputs, forward = self.sentence_stage.run([item.job for item in items])
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
            messages.append((item, result))
        self._publish([(item.job.channel, result) for item, result in messages if not item.job.background])
        for item, result in messages:
            item.pending.resolve(result)

    def _fail_sentences(self, items: list[_Sentence], exc: Exception) -> None:
        logger.error("sentence round of %d failed in the engine: %r", len(items), exc, exc_info=exc)
        error = EngineError(f"internal error in the worker's engine: {type(exc).__name__}: {exc}")
        pending = [s for s in items if not s.pending.done]
        results = [SentenceResult(s.job.session, s.job.index, error=error.message, code=error.code) for s in pending]
        self._publish([(s.job.channel, r) for s, r in zip(pending, results) if not s.job.background])
        self.observer.failed(error.code, len(pending))
        for s, r in zip(pending, results):
            s.pending.resolve(r)

    def _process(self, batch: list[tuple[Stream, Waiting]]) -> None:
        started = time.time()
        t0 = self.clock()
        outcomes, events, forward = self.stages.run(batch)
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
                self._table.advance(stream, waiting.job, isinstance(outcome, ServiceError))
        for (_, waiting), result in zip(batch, results):
            waiting.pending.resolve(result)

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

    def _publish(self, messages: Sequence[tuple[str, ChunkResult | SentenceResult]]) -> None:
        try:
            self.publish(messages)
        except Exception:  # noqa: BLE001 - a broken Redis must not kill the batcher; gateways time out
            logger.exception("could not publish %d results", len(messages))

    def _expire(self) -> None:
        """Fail chunks whose predecessor never came, and free streams idle for too long."""
        with self._cond:
            gapped, idle = self._table.expire(self.gap_timeout, self.stream_idle_timeout)
        for stream in idle:
            idle_for = self.clock() - stream.last_used
            logger.info("freeing stream %s after %.0f s idle", stream.id, idle_for, extra=stream_fields(stream.id))
        failed = [entry for stream in gapped for entry in self._fail_stream(stream)]
        if failed:
            self._publish([(channel, result) for channel, result, _ in failed])
            for _, result, pending in failed:
                pending.resolve(result)

    def _fail_stream(self, stream: Stream) -> list[tuple[str, ChunkResult, Pending]]:
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
class _Call:
    """Background work for the batcher thread (:meth:`Engine.submit_background`)."""

    call: Callable[[], object]
    pending: Pending


@dataclass
class _SentenceRound:
    """A round of the batcher that runs sentences (the offline pass) instead of chunks."""

    items: list[_Sentence]


def _inject_death(batch: list[tuple[Stream, Waiting]]) -> None:
    for stream, waiting in batch:
        options = waiting.options or stream.options
        if options is not None and options.wav_name.startswith(KILL_ENGINE_PREFIX):
            raise InjectedEngineDeath(f"fault injection: stream {stream.id} ({options.wav_name}) kills the engine")
