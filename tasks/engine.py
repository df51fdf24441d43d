"""The recognition engine of one worker process: open streams, chunk ordering and cross-stream batching.

Celery task bodies (many threads) hand chunks to :meth:`Engine.submit` and wait on the returned
:class:`Pending`; one batcher thread owns the recognizer. Each round it takes the *next* chunk of up to
``max_batch`` streams that have one ready, runs them through the recognizer in one call, publishes each result on
its session's channel (one Redis pipeline per batch, in chunk order per stream), and releases the waiting tasks.

Ordering. A stream's chunks must reach the model in order; the threads pool may start task n+1 before task n,
so chunks wait in a per-stream reorder buffer until their predecessor is done. A chunk whose predecessor never
comes (``gap_timeout``) or that belongs to a stream this process has no state for fails with
:class:`~tasks.errors.StreamStateLost`; the gateway then replays the utterance elsewhere.

Batching policy. When the first chunk becomes ready the batcher waits at most ``max_wait`` for more, then runs
whatever is ready (up to ``max_batch``). Chunks that became ready while a batch was running have already waited
and go at once. Larger ``max_wait`` buys bigger batches (throughput) with added latency; see the README.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tasks.errors import EngineError, RecognitionFailed, ServiceError, StreamStateLost
from tasks.recognizer import ChunkWork, StreamingRecognizer, StreamOptions, StreamState
from tasks.wire import ChunkJob, ChunkResult

logger = logging.getLogger(__name__)

Publisher = Callable[[Sequence[tuple[str, ChunkResult]]], None]
SWEEP_SECONDS = 0.25  # how often gap and idle timeouts are checked


class Pending:
    """A submitted chunk's outcome, for the task thread that submitted it."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self.result: ChunkResult | None = None

    def resolve(self, result: ChunkResult | None) -> None:
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


@dataclass
class _Stream:
    """Engine-side view of one stream: model state plus the reorder buffer."""

    id: str
    state: StreamState | None = None
    next_seq: int | None = None  # None until the first chunk of an utterance has arrived
    waiting: dict[int, _Waiting] = field(default_factory=dict)
    last_used: float = 0.0  # last chunk submitted or done: for the idle timeout
    progressed: float = 0.0  # last time the stream started or finished a chunk: for the gap timeout
    queued: bool = False  # in the ready deque
    busy: bool = False  # a chunk of it is in the batch being recognized


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
    """Streams and batching for one recognizer. Thread-safe: ``submit``/``close_stream`` from any thread."""

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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.recognizer = recognizer
        self.publish = publish
        self.worker_id = worker_id
        self.max_batch = max(1, max_batch)
        self.max_wait = max_wait
        self.stream_idle_timeout = stream_idle_timeout
        self.gap_timeout = gap_timeout
        self.clock = clock
        self.stats = EngineStats()
        self._streams: dict[str, _Stream] = {}
        self._ready: deque[str] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # --- public API -----------------------------------------------------------------------------------------------
    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._run, name="asr-batcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the batch in progress, then drop every waiting chunk so the tasks holding them return at once
        (their sessions are replayed elsewhere: the worker has deregistered)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread:
            self._thread.join(timeout)
        with self._cond:
            streams, self._streams = list(self._streams.values()), {}
            self._ready.clear()
        for stream in streams:
            for waiting in stream.waiting.values():
                waiting.pending.resolve(None)

    @property
    def open_streams(self) -> int:
        with self._cond:
            return len(self._streams)

    def submit(self, job: ChunkJob) -> Pending:
        """Queue one chunk; the returned Pending resolves once its result was published (or it was dropped)."""
        pending = Pending()
        now = self.clock()
        with self._cond:
            if self._stopping:
                pending.resolve(None)
                return pending
            stream = self._streams.get(job.stream)
            if stream is None:
                stream = self._streams[job.stream] = _Stream(job.stream, last_used=now, progressed=now)
            if stream.next_seq is not None and job.seq < stream.next_seq:
                pending.resolve(None)  # a duplicate of a chunk already done (a replay overlap): nothing to do
                return pending
            if job.first and stream.next_seq is None:
                self._start(stream, job.seq)
            stream.waiting[job.seq] = _Waiting(job, pending, now)
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

    # --- bookkeeping (caller holds the lock) ---------------------------------------------------------------------
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
        batch = []
        while self._ready and len(batch) < self.max_batch:
            stream = self._streams.get(self._ready.popleft())
            if stream is None:
                continue
            stream.queued = False
            waiting = stream.waiting.pop(stream.next_seq, None) if stream.next_seq is not None else None
            if waiting is None:
                continue
            if waiting.job.first:  # a new utterance starts from fresh model state
                stream.state = self.recognizer.open_stream(StreamOptions.from_wire(waiting.job.options or {}))
            stream.busy = True
            batch.append((stream, waiting))
        return batch

    # --- batcher thread -------------------------------------------------------------------------------------------
    def _run(self) -> None:
        next_sweep = 0.0
        while True:
            with self._cond:
                batch = self._collect()
                if batch is None:
                    return
            if batch:
                self._process(batch)
            if self.clock() >= next_sweep:  # a sweep visits every stream: not after every batch
                next_sweep = self.clock() + SWEEP_SECONDS
                self._expire()

    def _collect(self) -> list[tuple[_Stream, _Waiting]] | None:
        """Wait for ready chunks per the batching policy; None when stopping. Caller holds the lock."""
        while not self._ready and not self._stopping:
            self._cond.wait(timeout=0.5)
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
        work = [ChunkWork(s.state, _pcm_to_float(w.job.audio), w.job.is_final) for s, w in batch]  # type: ignore[arg-type]
        outcomes = self._recognize(work)
        compute = self.clock() - t0
        results = [self._result(w.job, out, started, compute, len(batch)) for (_, w), out in zip(batch, outcomes)]
        self._publish([(w.job.channel, r) for (_, w), r in zip(batch, results)])
        self.stats.batches += 1
        self.stats.chunks += len(batch)
        self.stats.last_batch_size, self.stats.last_batch_ms = len(batch), compute * 1000
        with self._cond:
            for (stream, waiting), outcome in zip(batch, outcomes):
                self._advance(stream, waiting.job, outcome)
        for (_, waiting), result in zip(batch, results):
            waiting.pending.resolve(result)

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
            return ChunkResult(job.stream, job.seq, is_final=job.is_final, error=outcome.message,
                               code=outcome.code, worker=self.worker_id, timing=timing)
        return ChunkResult(job.stream, job.seq, outcome, is_final=job.is_final, worker=self.worker_id, timing=timing)

    def _advance(self, stream: _Stream, job: ChunkJob, outcome) -> None:
        """After a chunk: move the stream on, or drop it when its state is no longer trustworthy."""
        stream.busy = False
        if isinstance(outcome, ServiceError):
            self._streams.pop(stream.id, None)
            for waiting in stream.waiting.values():
                waiting.pending.resolve(None)
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
                    logger.info("freeing stream %s after %.0f s idle", stream.id, now - stream.last_used)
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
        logger.warning("stream %s: %s", stream.id, error.message)
        return out


def _pcm_to_float(pcm: bytes) -> np.ndarray:
    """16-bit LE PCM → float32 in [-1, 1), the scale FunASR's own byte loader uses."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
