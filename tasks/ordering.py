"""The engine's per-stream ordering table: reorder buffers, the ready queue, and gap and idle expiry.

The threads pool may start task n+1 before task n, so each stream's chunks wait in a reorder buffer until their
predecessor is done; a stream whose next chunk is there is *ready*, and the batcher takes the next chunk of up to
``limit`` ready streams per round (:meth:`StreamTable.take`). A chunk whose predecessor never comes within
``gap_timeout`` — or that belongs to a stream this process has no state for — fails its stream
(:meth:`StreamTable.expire`); streams unused for ``idle_timeout`` are forgotten.

Nothing here knows models or batching policy (tasks.engine) or what a stage does (tasks.stages). Not thread-safe:
the engine calls it under its lock, and ``on_ready`` (the engine's notify) is called under that lock too.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tasks.options import StreamOptions
from tasks.wire import ChunkJob

if TYPE_CHECKING:
    from tasks.recognizer import StreamState
    from tasks.vad import VadState


class Pending:
    """A submitted chunk's (or sentence's) outcome, for the task thread that submitted it."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self.result: Any = None  # a ChunkResult or SentenceResult, or a background call's outcome

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def resolve(self, result: Any) -> None:
        """Set the outcome; only the first call counts."""
        if not self._done.is_set():
            self.result = result
            self._done.set()

    def settled(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the outcome; whether it is there."""
        return self._done.wait(timeout)

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the chunk was recognized and published (or dropped); False-y on timeout."""
        if not self._done.wait(timeout):
            raise TimeoutError("chunk not processed in time")
        return self.result


@dataclass
class Waiting:
    """A chunk in its stream's reorder buffer."""

    job: ChunkJob
    pending: Pending
    arrived: float
    options: StreamOptions | None = None  # the job's options, validated by Engine.submit()


@dataclass
class Stream:
    """One stream: its model state (the stages' business) plus its reorder buffer (this module's)."""

    id: str
    opened: bool = False  # a first chunk opened its model state (streaming and/or VAD, per its mode)
    state: StreamState | None = None
    vad_state: VadState | None = None
    vad_base_ms: int = 0  # where the VAD state started in the utterance (a replay may start mid-utterance)
    options: StreamOptions | None = None  # from the stream's first job; kept for its later utterances
    next_seq: int | None = None  # None until the stream's first job (the one with options) has arrived
    waiting: dict[int, Waiting] = field(default_factory=dict)
    last_used: float = 0.0  # last chunk submitted or done: for the idle timeout
    progressed: float = 0.0  # last time the stream started or finished a chunk: for the gap timeout
    queued: bool = False  # in the ready deque
    busy: bool = False  # a chunk of it is in the batch being recognized


class StreamTable:
    """Every open stream of one engine and which of them are ready. ``clock`` is the engine's."""

    def __init__(self, clock: Callable[[], float], on_ready: Callable[[], Any] = lambda: None) -> None:
        self.clock = clock
        self.on_ready = on_ready
        self.streams: dict[str, Stream] = {}
        self.ready: deque[str] = deque()

    def __len__(self) -> int:
        return len(self.streams)

    def add(self, job: ChunkJob, options: StreamOptions | None, pending: Pending) -> None:
        """File a chunk in its stream's reorder buffer (resolving duplicates at once)."""
        now = self.clock()
        stream = self.streams.get(job.stream)
        if stream is None:
            stream = self.streams[job.stream] = Stream(job.stream, last_used=now, progressed=now)
        if stream.next_seq is not None and job.seq < stream.next_seq:
            pending.resolve(None)  # a duplicate of a chunk already done (a replay overlap): nothing to do
            return
        if job.first and options is not None and stream.next_seq is None:
            self._start(stream, job.seq)  # the stream's first job: the only one that carries options
        stream.waiting[job.seq] = Waiting(job, pending, now, options)
        stream.last_used = now
        self._mark_ready(stream)

    def close(self, stream_id: str) -> None:
        """Forget a stream (its session ended); chunks still waiting for it are dropped without results."""
        stream = self.streams.pop(stream_id, None)
        if stream:
            for waiting in stream.waiting.values():
                waiting.pending.resolve(None)

    def clear(self) -> list[Stream]:
        """Forget every stream; returns them, for the caller to release their waiting tasks."""
        streams, self.streams = list(self.streams.values()), {}
        self.ready.clear()
        return streams

    def drop(self, stream: Stream) -> None:
        """Forget a stream whose state is no longer trustworthy; its waiting chunks are dropped without results."""
        stream.busy = False
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
        for waiting in stream.waiting.values():
            waiting.pending.resolve(None)
        stream.waiting.clear()

    def take(self, limit: int) -> list[tuple[Stream, Waiting]]:
        """The next chunk of up to ``limit`` ready streams, oldest-ready first; their streams are marked busy."""
        batch: list[tuple[Stream, Waiting]] = []
        while self.ready and len(batch) < limit:
            stream = self.streams.get(self.ready.popleft())
            if stream is None:
                continue
            stream.queued = False
            waiting = stream.waiting.pop(stream.next_seq, None) if stream.next_seq is not None else None
            if waiting is None:
                continue
            stream.busy = True
            batch.append((stream, waiting))
        return batch

    def oldest_ready_arrival(self) -> float:
        stream = self.streams.get(self.ready[0]) if self.ready else None
        if stream is None or stream.next_seq not in stream.waiting:
            return self.clock()
        return stream.waiting[stream.next_seq].arrived  # type: ignore[index]

    def advance(self, stream: Stream, job: ChunkJob, failed: bool) -> None:
        """After a chunk: move the stream on, or drop it when its state is no longer trustworthy."""
        stream.busy = False
        if failed:
            self.drop(stream)
            return
        stream.next_seq = job.seq + 1
        stream.last_used = stream.progressed = self.clock()
        if stream.state is not None:
            stream.state.chunks_done = 0 if job.is_final else stream.state.chunks_done + 1
        self._mark_ready(stream)

    def expire(self, gap_timeout: float, idle_timeout: float) -> tuple[list[Stream], list[Stream]]:
        """Streams whose next chunk has been missing for ``gap_timeout`` (removed, their waiting chunks still in
        them, for the caller to fail) and streams idle for ``idle_timeout`` (removed)."""
        now = self.clock()
        gapped, idle = [], []
        for stream in list(self.streams.values()):
            if self._gap_expired(stream, now, gap_timeout):
                del self.streams[stream.id]
                gapped.append(stream)
            elif not (stream.waiting or stream.busy) and now - stream.last_used > idle_timeout:
                del self.streams[stream.id]
                idle.append(stream)
        return gapped, idle

    def _start(self, stream: Stream, seq: int) -> None:
        """A new stream's first chunk arrived: chunks before it (stale retries) are dropped."""
        for stale in [s for s in stream.waiting if s < seq]:
            stream.waiting.pop(stale).pending.resolve(None)
        stream.next_seq = seq
        stream.progressed = self.clock()

    def _mark_ready(self, stream: Stream) -> None:
        if not stream.queued and stream.next_seq is not None and stream.next_seq in stream.waiting:
            stream.queued = True
            self.ready.append(stream.id)
            self.on_ready()

    @staticmethod
    def _gap_expired(stream: Stream, now: float, gap_timeout: float) -> bool:
        """True when the stream's next chunk is missing and has been for longer than gap_timeout."""
        if not stream.waiting or stream.queued or stream.busy:
            return False
        oldest = min(w.arrived for w in stream.waiting.values())
        return now - max(oldest, stream.progressed) > gap_timeout
