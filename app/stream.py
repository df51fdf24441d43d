"""One session's audio and results, free of I/O: chunking, numbering, replay buffer and result ordering.

:class:`app.session.Session` feeds it frames and control messages and gets back :class:`~tasks.wire.ChunkJob` s
to submit; results go in and client messages come out in audio order. Not thread-safe: callers serialize access.

Replay. Every job not yet answered is kept, and so is the answered audio of the current utterance (its
*history*), up to ``replay_max_bytes`` per session and while the process-wide :class:`~app.limits.ReplayBudget`
lasts. When the session's worker is lost, :meth:`replay` re-issues the kept jobs under a new stream generation,
so another worker rebuilds the model state from the utterance start and produces the same text; results the
client already has are dropped by sequence number. Unanswered audio is never let go (the session core stops
reading the client while too much of it is outstanding), so a replay always answers every chunk; with history
cut short a replay restarts the utterance from the oldest kept chunk and its text may differ from an
uninterrupted run (:attr:`replay_exact` says so).

Options travel once per stream generation (see :class:`~tasks.wire.ChunkJob`): on its first job.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from app.chunker import Chunker
from app.limits import ReplayBudget
from app.protocol import SessionConfig
from app.resample import Resampler
from app.sentences import SentenceTracker
from tasks import wire
from tasks.errors import ServiceError, StreamStateLost
from tasks.options import BYTES_PER_SAMPLE, SAMPLE_RATE
from tasks.wire import ChunkJob, ChunkResult, SentenceJob, SentenceResult


@dataclass
class Delivery:
    """What a batch of results means for the session: messages for the client, and what to do next."""

    messages: list[dict] = field(default_factory=list)
    sentences: list[SentenceJob] = field(default_factory=list)  # sentence jobs to send (2pass, offline)
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
        budget: ReplayBudget | None = None,
        clock=time.time,
    ) -> None:
        self.id = session_id
        self.config = config
        self.channel = channel
        self.generation = 0
        self.worker: str | None = None
        self.replay_max_bytes = replay_max_bytes
        self.budget = budget
        self.replay_exact = True
        self.replays = 0
        self.clock = clock
        self._chunker = Chunker(config.chunk_bytes, max_frame_bytes)
        self._options = config.stream_options().to_wire()
        self._options_sent = False  # this generation's first job carried them
        self._seq = 0  # next sequence number to assign
        self._in_utterance = False  # a first chunk was issued and no final yet
        self._kept: deque[ChunkJob] = deque()  # replay buffer: consecutive seqs, oldest first
        self._history_bytes = 0  # audio of kept jobs already answered (charged to the budget)
        self._outstanding_bytes = 0  # audio of issued jobs not yet answered
        self._next_deliver = 0
        self._results: dict[int, ChunkResult] = {}
        self._issued = 0  # bytes of 16 kHz audio issued in all (the sentence tracker's absolute offsets)
        self._utterance_start = 0  # ... at the current utterance's first chunk
        self._ends: dict[int, int] = {}  # 2pass/offline: seq -> absolute byte offset after that chunk, until answered
        self._resampler = Resampler(config.audio_fs) if config.audio_fs != SAMPLE_RATE else None
        self.sentences: SentenceTracker | None = None
        if config.mode != "online":
            self.sentences = SentenceTracker(
                session_id, channel=channel, mode=config.mode, wav_name=config.wav_name, hotwords=config.hotwords
            )

    # --- audio in -------------------------------------------------------------------------------------------------
    @property
    def stream(self) -> str:
        return wire.stream_id(self.id, self.generation)

    def feed(self, frame: bytes) -> list[ChunkJob]:
        """A binary frame → the jobs for the chunks it completed. Raises ProtocolError on a bad frame."""
        if self._resampler is not None:
            self._chunker.check(frame)
            chunks = self._chunker.feed(self._resampler.feed(frame), checked=True)
        else:
            chunks = self._chunker.feed(frame)
        return [self._job(chunk, final=False) for chunk in chunks]

    def end_utterance(self) -> list[ChunkJob]:
        """``is_speaking: false`` → the final job (the remaining partial chunk, possibly empty).

        Without audio since the last final there is no utterance to end, and nothing is issued.
        """
        if self._resampler is not None:
            tail = self._resampler.flush()
            if tail:
                jobs = [self._job(chunk, final=False) for chunk in self._chunker.feed(tail, checked=True)]
                return jobs + self._end_utterance()
        return self._end_utterance()

    def _end_utterance(self) -> list[ChunkJob]:
        rest = self._chunker.flush()
        if not rest and not self._in_utterance:
            return []
        job = self._job(rest, final=True)
        if self.sentences is not None:
            self.sentences.new_utterance()
        return [job]

    def _job(self, audio: bytes, *, final: bool) -> ChunkJob:
        first = not self._in_utterance
        if first:
            self._utterance_start = self._issued
        at = (self._issued - self._utterance_start) // BYTES_PER_SAMPLE
        self._issued += len(audio)
        if self.sentences is not None:
            self._ends[self._seq] = self._issued
            self.sentences.feed(audio)
        job = ChunkJob(
            stream=self.stream,
            seq=self._seq,
            audio=audio,
            is_final=final,
            first=first,
            options=None if self._options_sent else self._options,
            channel=self.channel,
            submitted_at=self.clock(),
            at=at,
        )
        self._options_sent = True
        self._seq += 1
        self._in_utterance = not final
        self._kept.append(job)
        self._outstanding_bytes += len(audio)
        return job

    # --- results out ----------------------------------------------------------------------------------------------
    @property
    def outstanding(self) -> int:
        """Chunks issued whose results the client has not been sent yet."""
        return self._seq - self._next_deliver

    @property
    def outstanding_bytes(self) -> int:
        """Audio bytes issued and not yet answered (the session core stops reading past its bound)."""
        return self._outstanding_bytes

    @property
    def buffered_bytes(self) -> int:
        """Audio held in memory for this session: the partial chunk plus every kept job."""
        return self._chunker.buffered + self._history_bytes + self._outstanding_bytes

    def oldest_outstanding_age(self) -> float:
        """Seconds since the oldest unanswered chunk was issued (0 when none). It is always kept."""
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
                self._answered(job)
            self._next_deliver += 1
            message = self._message(ready)
            if message is not None:
                delivery.messages.append(message)
            if self.sentences is not None:
                update = self.sentences.on_chunk(ready.vad, self._ends.pop(ready.seq, 0), ready.is_final)
                delivery.sentences += update.jobs
                delivery.messages += update.messages
            if ready.is_final:
                self._release_through(ready.seq)
                self.replay_exact = not self._kept or self._kept[0].first
        return delivery

    def _answered(self, job: ChunkJob) -> None:
        """A kept job got its result: its audio moves from outstanding to history, if history may hold it."""
        size = len(job.audio)
        self._outstanding_bytes -= size
        while self._history_bytes + size > self.replay_max_bytes and self._kept[0].seq < job.seq:
            self._release_through(self._kept[0].seq)  # the per-session cap: the oldest answered audio goes
            self.replay_exact = False
        if self._history_bytes + size <= self.replay_max_bytes and (self.budget is None or self.budget.charge(size)):
            self._history_bytes += size
        else:  # no room in the process budget (or a chunk over the cap): keep no history
            self._release_through(job.seq, charged=False)
            self.replay_exact = False

    def accept_sentence(self, result: SentenceResult) -> Delivery:
        """A sentence's result → its message (and the next sentence job), in sentence order."""
        delivery = Delivery()
        if self.sentences is not None:
            update = self.sentences.on_result(result)
            delivery.sentences, delivery.messages = update.jobs, update.messages
        return delivery

    def _message(self, result: ChunkResult) -> dict | None:
        mode = self.config.mode
        if mode != "online":
            # 2pass: partials as 2pass-online, never final (the sentences and the end acknowledgement come from the
            # sentence tracker); offline: no partials at all.
            if mode == "offline" or not result.text:
                return None
            message: dict[str, Any] = {"mode": "2pass-online", "text": result.text, "wav_name": self.config.wav_name}
            message.update(is_final=False, chunk=result.seq)
            if self.config.timing:
                message["timing"] = self._timing(result)
            return message
        if not result.text and not result.is_final:
            return None  # FunASR's servers send nothing for a chunk that produced no text
        message = {
            "mode": mode,
            "text": result.text,
            "wav_name": self.config.wav_name,
            "is_final": result.is_final,
            "chunk": result.seq,
        }
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
        timing = {
            "wait": result.timing.get("queued"),
            "compute": result.timing.get("compute"),
            "batch": result.timing.get("batch"),
            "total": round(total, 4) if total is not None else None,
        }
        return timing

    def _release_through(self, seq: int, *, charged: bool = True) -> None:
        """Let kept jobs up to ``seq`` (all answered) go: after a final, or when history is full. ``charged``
        False: the job at ``seq`` itself was never charged to history (it did not fit)."""
        freed = 0
        while self._kept and self._kept[0].seq <= seq:
            job = self._kept.popleft()
            if job.seq < seq or charged:
                freed += len(job.audio)
        self._history_bytes -= freed
        if self.budget is not None and freed:
            self.budget.refund(freed)

    def close(self) -> None:
        """The session ended: give its history back to the process budget."""
        if self.budget is not None and self._history_bytes:
            self.budget.refund(self._history_bytes)
        self._history_bytes = 0
        self._kept.clear()

    # --- worker loss ----------------------------------------------------------------------------------------------
    def resend_sentences(self) -> list[SentenceJob]:
        """After a move: the sentence in flight, to send again to the new worker."""
        return self.sentences.resend() if self.sentences is not None else []

    def replay(self) -> list[ChunkJob]:
        """Start a new generation and return every kept job re-addressed to it, the first one marked first and
        carrying the options."""
        self.generation += 1
        self.replays += 1
        self._results.clear()
        if not self._kept:
            self._in_utterance = False  # nothing to rebuild from: the next chunk starts afresh
            self._options_sent = False
            return []
        jobs = []
        for i, job in enumerate(self._kept):
            first = job.first or i == 0
            jobs.append(
                replace(
                    job,
                    stream=self.stream,
                    first=first,
                    options=self._options if i == 0 else None,
                    replay=True,
                    submitted_at=self.clock(),
                )
            )
        self._options_sent = True
        self._kept = deque(jobs)
        return jobs
