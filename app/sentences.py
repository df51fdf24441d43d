"""The sentence state of a 2pass or offline session, free of I/O: VAD events in, sentence jobs and messages out.

The session's worker runs the streaming VAD on every chunk (tasks.vad) and returns its events with the chunk's
result: speech began at ``beg`` ms, ended at ``end`` ms, in ms from the utterance's first sample. Each finished
segment is one *sentence*: its audio goes to the offline model and punctuation as a :class:`~tasks.wire.SentenceJob`
and the punctuated text comes back as a ``2pass-offline`` (or ``offline``) message.

Where the audio comes from. The gateway cuts each sentence from audio it already holds: every byte a client sends
passes through here on its way to the worker, so the sentence job is self-contained — any worker can take it, a
lost one is sent again, and no audio travels back from the worker. The tracker keeps only what a sentence can
still need: from the open segment's start (or, while nobody speaks, the last :data:`KEEP_BEFORE_MS` before the
VAD's position, since fsmn-vad reports a start some frames after it happened), up to what the client has sent.

Order and state. One sentence per session is in flight at a time: the realtime punctuation model carries state
from one sentence to the next (the words after the last full stop), and that state comes back with each result to
go out with the next job. Sentences finished meanwhile wait, cut, in a queue; :attr:`held_bytes` counts them and
the session core stops reading the client while it is over its bound.

Bounds (per session): a sentence is at most :data:`~tasks.wire.MAX_SENTENCE_SECONDS` (a segment still open that
long is cut there and continues as the next sentence; fsmn-vad's own ``max_single_segment_time`` is the same
60 s); the punctuation state at most :data:`~tasks.wire.MAX_PUNC_WORDS` words; held audio is bounded by the session
core through :attr:`held_bytes`.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field

from tasks.options import BYTES_PER_SAMPLE, SAMPLE_RATE
from tasks.segments import Segmenter
from tasks.wire import SentenceJob, SentenceResult, carry_punc

BYTES_PER_MS = SAMPLE_RATE * BYTES_PER_SAMPLE // 1000  # 32
#: Audio kept before the VAD's position while no speech is open: fsmn-vad confirms a start a few hundred ms after
#: it (window plus look-back), and results reach the gateway after the audio; 5 s covers both with room.
KEEP_BEFORE_MS = 5000


@dataclass
class _Utterance:
    start: int  # absolute byte offset of the utterance's first sample in the session's audio
    segmenter: Segmenter = field(default_factory=Segmenter)  # its sentence boundaries so far


@dataclass
class SentenceUpdate:
    """What an event means for the session: jobs to send, messages for the client."""

    jobs: list[SentenceJob] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)


class SentenceTracker:
    """Cuts one session's sentences from its audio by the VAD's events and orders their results."""

    def __init__(
        self,
        session_id: str,
        *,
        channel: str,
        mode: str,
        wav_name: str,
        hotwords: str = "",
        clock=time.time,
    ) -> None:
        self.session = session_id
        self.channel = channel
        self.mode = mode
        self.wav_name = wav_name
        self.hotwords = hotwords
        self.clock = clock
        self._audio = bytearray()  # the session's audio from absolute offset _base
        self._base = 0
        self._utterances: deque[_Utterance] = deque([_Utterance(0)])  # oldest first; the last one is being sent
        self._waiting: deque[SentenceJob] = deque()  # cut, not sent yet
        self._inflight: SentenceJob | None = None
        self._inflight_end: int = 0
        self._index = 0
        self._punc: dict = {}
        self._ends_due = 0  # utterances whose end acknowledgement waits for their sentences
        self._end_after: deque[int] = deque()  # per due end: the index of the last sentence before it (exclusive)

    # --- queries --------------------------------------------------------------------------------------------------
    @property
    def held_bytes(self) -> int:
        """Audio held for this session: the uncut buffer plus the cut sentences waiting or in flight."""
        waiting = sum(len(job.audio) for job in self._waiting)
        return len(self._audio) + waiting + (len(self._inflight.audio) if self._inflight else 0)

    @property
    def busy(self) -> bool:
        """A sentence is in flight or waiting, or an utterance end waits for its sentences."""
        return self._inflight is not None or bool(self._waiting) or self._ends_due > 0

    def inflight_age(self) -> float:
        return self.clock() - self._inflight.submitted_at if self._inflight else 0.0

    # --- audio and events -----------------------------------------------------------------------------------------
    def feed(self, audio: bytes) -> None:
        """Audio the session just issued to its worker, in order."""
        self._audio += audio

    def new_utterance(self) -> None:
        """The client ended an utterance (``is_speaking: false``): audio fed from now on is the next one's."""
        self._utterances.append(_Utterance(self._base + len(self._audio)))

    def on_chunk(self, events: list[list[int]], chunk_end: int, final: bool) -> SentenceUpdate:
        """A chunk's result, in order: its VAD events; ``chunk_end`` is the absolute byte offset after the chunk,
        ``final`` that it ended its utterance. Sentence boundaries follow :class:`tasks.segments.Segmenter`."""
        utterance = self._utterances[0]
        update = SentenceUpdate()
        position = (chunk_end - utterance.start) // BYTES_PER_MS
        for start, end in utterance.segmenter.on_chunk(events, position, final):
            self._cut(utterance, start, end)
        if final:
            self._utterances.popleft()
            if not self._utterances:
                self._utterances.append(_Utterance(chunk_end))
            self._ends_due += 1
            self._end_after.append(self._index)
        self._trim(utterance, position, final)
        self._advance(update)
        return update

    def _cut(self, utterance: _Utterance, start_ms: int, end_ms: int) -> None:
        lo = utterance.start + start_ms * BYTES_PER_MS - self._base
        hi = utterance.start + end_ms * BYTES_PER_MS - self._base
        audio = bytes(self._audio[max(lo, 0) : max(hi, 0)])
        if not audio:
            return
        self._waiting.append(
            SentenceJob(
                session=self.session,
                index=self._index,
                audio=audio,
                start_ms=start_ms,
                hotwords=self.hotwords,
                channel=self.channel,
            )
        )
        self._index += 1

    def _trim(self, utterance: _Utterance, position_ms: int, final: bool) -> None:
        """Let go of audio no sentence can need any more."""
        if final:
            keep_from = self._utterances[0].start  # the next utterance's start
        elif utterance.segmenter.open_ms is not None:
            keep_from = utterance.start + utterance.segmenter.open_ms * BYTES_PER_MS
        else:
            keep_from = utterance.start + max(position_ms - KEEP_BEFORE_MS, 0) * BYTES_PER_MS
        drop = min(keep_from - self._base, len(self._audio))
        if drop > 0:
            del self._audio[:drop]
            self._base += drop

    def _advance(self, update: SentenceUpdate) -> None:
        """Send the next sentence if none is in flight; acknowledge utterance ends whose sentences are all done."""
        if self._inflight is None and self._waiting:
            job = self._waiting.popleft()
            job.punc = self._punc
            job.submitted_at = self.clock()
            self._inflight = job
            update.jobs.append(job)
        while self._ends_due and self._end_done():
            self._ends_due -= 1
            self._end_after.popleft()
            self._punc = {}  # FunASR's C++ server clears the punctuation state at the end of input
            update.messages.append(
                {"mode": self.mode, "text": "", "wav_name": self.wav_name, "is_final": True, "is_end": True}
            )

    def _end_done(self) -> bool:
        last = self._end_after[0]
        pending = [job.index for job in self._waiting] + ([self._inflight.index] if self._inflight else [])
        return all(index >= last for index in pending)

    # --- results --------------------------------------------------------------------------------------------------
    def on_result(self, result: SentenceResult) -> SentenceUpdate:
        """A sentence's result; stale ones (a resend's twin) are ignored."""
        update = SentenceUpdate()
        job = self._inflight
        if job is None or result.index != job.index or result.session != self.session:
            return update
        self._inflight = None
        if result.error is not None:
            update.messages.append(
                {
                    "type": "error",
                    "code": result.code or "sentence_failed",
                    "message": f"sentence {job.index} could not be corrected: {result.error}",
                }
            )
        else:
            self._punc = carry_punc(result.punc)
            if result.text:
                update.messages.append(self._message(job, result))
        self._advance(update)
        return update

    def _message(self, job: SentenceJob, result: SentenceResult) -> dict:
        offset = job.start_ms
        timestamp = [[s + offset, e + offset] for s, e in result.timestamp]
        stamp_sents = [
            dict(
                entry,
                start=entry.get("start", 0) + offset,
                end=entry.get("end", 0) + offset,
                ts_list=[[s + offset, e + offset] for s, e in entry.get("ts_list", [])],
            )
            for entry in result.stamp_sents
        ]
        end_ms = job.start_ms + len(job.audio) // BYTES_PER_MS
        return {
            "mode": "2pass-offline" if self.mode == "2pass" else "offline",
            "text": result.text,
            "wav_name": self.wav_name,
            "is_final": False,
            "timestamp": json.dumps(timestamp, separators=(",", ":")),  # a JSON string, as FunASR's servers send
            "stamp_sents": stamp_sents,
            "start_time": job.start_ms,
            "end_time": end_ms,
            "index": job.index,
        }

    def resend(self) -> list[SentenceJob]:
        """The session moved to another worker: the sentence in flight goes again (its result may be lost)."""
        if self._inflight is None:
            return []
        self._inflight.submitted_at = self.clock()
        return [self._inflight]
