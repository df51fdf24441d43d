"""One client session's streaming state, free of I/O: chunking, numbering, replay buffer and result ordering.

The WebSocket handler feeds it frames and control messages and gets back :class:`~tasks.wire.ChunkJob` s to
submit; the result listener feeds it :class:`~tasks.wire.ChunkResult` s and gets back client messages in audio
order. Not thread-safe: callers serialize access (app.handler holds a lock).

Replay. Every job since the first chunk of the oldest unfinished utterance is kept (up to ``replay_max_bytes``).
When the session's worker is lost, :meth:`replay` re-issues them under a new stream generation, so another
worker rebuilds the model state from the utterance start and produces the same text; results the client already
has are dropped by sequence number. Past the cap the oldest audio is let go and a replay restarts from the
oldest kept chunk (the text of that utterance may then differ from an uninterrupted run).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field, replace

from app.chunker import Chunker
from app.protocol import SessionConfig
from tasks import wire
from tasks.errors import ServiceError, StreamStateLost
from tasks.wire import ChunkJob, ChunkResult


@dataclass
class Delivery:
    """What a batch of results means for the session: messages for the client, and what to do next."""

    messages: list[dict] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # submission → now, per delivered chunk (seconds)
    replay: bool = False  # the worker lost the stream's state: replay elsewhere
    fatal: ServiceError | None = None  # the session cannot go on


class StreamSession:
    """Turns frames into jobs and results into client messages for one WebSocket session."""

    def __init__(
        self,
        session_id: str,
        config: SessionConfig,
        *,
        channel: str,
        max_frame_bytes: int,
        replay_max_bytes: int,
        clock=time.time,
    ) -> None:
        self.id = session_id
        self.config = config
        self.channel = channel
        self.generation = 0
        self.worker: str | None = None
        self.replay_max_bytes = replay_max_bytes
        self.replay_exact = True
        self.replays = 0
        self.clock = clock
        self._chunker = Chunker(config.chunk_bytes, max_frame_bytes)
        self._options = config.stream_options().to_wire()
        self._seq = 0  # next sequence number to assign
        self._in_utterance = False  # a first chunk was issued and no final yet
        self._kept: deque[ChunkJob] = deque()  # replay buffer: consecutive seqs, oldest first
        self._kept_bytes = 0
        self._next_deliver = 0
        self._results: dict[int, ChunkResult] = {}

    # --- audio in -------------------------------------------------------------------------------------------------
    @property
    def stream(self) -> str:
        return wire.stream_id(self.id, self.generation)

    def feed(self, frame: bytes) -> list[ChunkJob]:
        """A binary frame → the jobs for the chunks it completed. Raises ProtocolError on a bad frame."""
        return [self._job(chunk, final=False) for chunk in self._chunker.feed(frame)]

    def end_utterance(self) -> list[ChunkJob]:
        """``is_speaking: false`` → the final job (the remaining partial chunk, possibly empty).

        Without audio since the last final there is no utterance to end, and nothing is issued.
        """
        rest = self._chunker.flush()
        if not rest and not self._in_utterance:
            return []
        return [self._job(rest, final=True)]

    def _job(self, audio: bytes, *, final: bool) -> ChunkJob:
        first = not self._in_utterance
        job = ChunkJob(
            stream=self.stream, seq=self._seq, audio=audio, is_final=final, first=first,
            options=self._options if first else None, channel=self.channel, submitted_at=self.clock(),
        )
        self._seq += 1
        self._in_utterance = not final
        self._keep(job)
        return job

    def _keep(self, job: ChunkJob) -> None:
        self._kept.append(job)
        self._kept_bytes += len(job.audio)
        while self._kept_bytes > self.replay_max_bytes and len(self._kept) > 1:
            dropped = self._kept.popleft()
            self._kept_bytes -= len(dropped.audio)
            self.replay_exact = False

    # --- results out ----------------------------------------------------------------------------------------------
    @property
    def outstanding(self) -> int:
        """Chunks issued whose results the client has not been sent yet."""
        return self._seq - self._next_deliver

    def oldest_outstanding_age(self) -> float:
        """Seconds since the oldest undelivered chunk was issued (0 when none)."""
        job = self._kept_job(self._next_deliver)
        return self.clock() - job.submitted_at if job else 0.0

    def _kept_job(self, seq: int) -> ChunkJob | None:
        if not self._kept or not self._kept[0].seq <= seq <= self._kept[-1].seq:
            return None
        return self._kept[seq - self._kept[0].seq]

    def accept(self, result: ChunkResult) -> Delivery:
        """One result from the channel → client messages now deliverable in order, and what to do next."""
        delivery = Delivery()
        if result.stream != self.stream or result.seq < self._next_deliver:
            return delivery  # from a previous generation, or a replayed chunk the client already has
        if result.error is not None:
            if result.code == StreamStateLost.code:
                delivery.replay = True
            else:
                delivery.fatal = ServiceError(f"chunk {result.seq} failed: {result.error}", code=result.code)
            return delivery
        self._results[result.seq] = result
        while self._next_deliver in self._results:
            ready = self._results.pop(self._next_deliver)
            job = self._kept_job(ready.seq)
            if job is not None:
                delivery.latencies.append(self.clock() - job.submitted_at)
            self._next_deliver += 1
            message = self._message(ready)
            if message is not None:
                delivery.messages.append(message)
            if ready.is_final:
                self._release_through(ready.seq)
        return delivery

    def _message(self, result: ChunkResult) -> dict | None:
        if not result.text and not result.is_final:
            return None  # FunASR's servers send nothing for a chunk that produced no text
        message = {"mode": self.config.mode, "text": result.text, "wav_name": self.config.wav_name,
                   "is_final": result.is_final, "chunk": result.seq}
        if result.is_final:
            message["is_end"] = True  # FunASR's newer clients wait for this acknowledgement of end of input
        if self.config.timing:
            message["timing"] = self._timing(result)
        return message

    def _timing(self, result: ChunkResult) -> dict:
        """Where the chunk's time went, in seconds: waiting (broker and worker queue), model, and the rest
        (result publishing and relaying) up to now; ``total`` counts from the chunk's submission."""
        job = self._kept_job(result.seq)
        total = self.clock() - job.submitted_at if job else None
        timing = {"wait": result.timing.get("queued"), "compute": result.timing.get("compute"),
                  "batch": result.timing.get("batch"), "total": round(total, 4) if total is not None else None}
        return timing

    def _release_through(self, seq: int) -> None:
        """An utterance is fully delivered: its audio is no longer needed for a replay."""
        while self._kept and self._kept[0].seq <= seq:
            self._kept_bytes -= len(self._kept.popleft().audio)
        if not self._kept:
            self.replay_exact = True

    # --- worker loss ----------------------------------------------------------------------------------------------
    def replay(self) -> list[ChunkJob]:
        """Start a new generation and return every kept job re-addressed to it, the first one marked first."""
        self.generation += 1
        self.replays += 1
        self._results.clear()
        jobs = []
        for i, job in enumerate(self._kept):
            first = job.first or i == 0
            jobs.append(replace(job, stream=self.stream, first=first, options=self._options if first else None,
                                replay=True, submitted_at=self.clock()))
        self._kept = deque(jobs)
        return jobs
