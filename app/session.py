"""Every decision about one WebSocket session, free of I/O: a state machine fed events and the clock.

The handler (app.handler) is a pump: it hands the session each message the reader parsed, each result the router
relays, and a :meth:`Session.tick` about twice a second with a :class:`Backend` view, and performs the
:mod:`actions <app.actions>` that come back. So every limit, timeout and failure path is a unit test with plain
values (tests/app/test_session_core.py); the end-to-end tests check the pump.

States: ``configuring`` (until the first message) → ``streaming`` → ``closed``. Decisions made here:

* the first message must be the configuration, within ``config_timeout``;
* audio frames become chunk jobs for the session's worker (app.stream); while more than
  ``max_outstanding_bytes`` of audio waits for results, :meth:`wants_input` is False and the handler stops
  reading the client — TCP back-pressure instead of unbounded memory;
* a worker that disappears, a broker that refused our chunks, or a result channel that was down means
  :class:`~app.actions.Move`: the handler leases a slot elsewhere and calls :meth:`moved`;
* no result for ``chunk_timeout`` ends the session (1011); no audio for ``idle_timeout`` with nothing in flight
  closes it (1000); queue_status is pushed every ``queue_status_interval`` or when pending moves by
  ``queue_status_step``;
* a :class:`~app.limits.Violation` from the reader (rate, size) ends the session with its close code.

Not thread-safe: the handler serializes calls (results arrive on another thread).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.actions import Action, Close, Move, Observe, Release, Send, Submit, SubmitSentence
from app.limits import Limits, ReplayBudget, Violation
from app.protocol import CLOSE_INTERNAL, CLOSE_POLICY, CLOSE_UNSUPPORTED, SessionConfig, parse_config, parse_control
from app.stream import StreamSession
from tasks.errors import ProtocolError, ServiceError
from tasks.wire import MAX_SENTENCE_BYTES, ChunkResult, SentenceResult

CONFIGURING, STREAMING, CLOSED = "configuring", "streaming", "closed"
#: Audio a 2pass/offline session may hold for its sentences (app.sentences) before the client is not read: two
#: longest sentences, one in flight and one cut behind it.
MAX_SENTENCE_HOLD_BYTES = 2 * MAX_SENTENCE_BYTES
#: What each mode needs its worker to have loaded (the worker's heartbeat lists its ``modes``).
MODE_NEEDS = {
    "online": "the streaming model",
    "2pass": "the streaming, VAD and offline models",
    "offline": "the VAD and offline models",
}


@dataclass(frozen=True)
class Backend:
    """What the session needs to know about the back end at a tick (from the monitor's snapshot)."""

    redis_ok: bool = True
    workers: frozenset[str] = field(default_factory=frozenset)
    pending: int = 0
    file_jobs: int = 0


class Session:
    """One session's lifecycle. ``now`` arguments are seconds on one clock (the handler passes time.time())."""

    def __init__(
        self,
        session_id: str,
        worker: str,
        *,
        channel: str,
        limits: Limits,
        now: float,
        budget: ReplayBudget | None = None,
        encoder_look_back: int = 4,
        decoder_look_back: int = 1,
        modes: frozenset[str] | None = None,
    ) -> None:
        self.id = session_id
        self.modes = modes  # what the session's worker can serve; None: not known, assume every mode
        self.worker = worker
        self.channel = channel
        self.limits = limits
        self.budget = budget
        self.look_backs = (encoder_look_back, decoder_look_back)
        self.state = CONFIGURING
        self.opened_at = now
        self.last_audio = now
        self.end_reason = ""
        self.stream: StreamSession | None = None
        self._move_wanted = False
        self._status_sent_at = float("-inf")
        self._status_pending: int | None = None

    # --- queries --------------------------------------------------------------------------------------------------
    @property
    def config(self) -> SessionConfig | None:
        return self.stream.config if self.stream else None

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def wants_input(self) -> bool:
        """False while too much audio is unanswered: the handler then stops reading the client (back-pressure)."""
        stream = self.stream
        if self.state == CLOSED:
            return False
        if stream is None:
            return True
        held = stream.sentences.held_bytes if stream.sentences is not None else 0
        return stream.outstanding_bytes < self.limits.max_outstanding_bytes and held < MAX_SENTENCE_HOLD_BYTES

    # --- events ---------------------------------------------------------------------------------------------------
    def on_message(self, message: str | bytes | Violation, now: float) -> list[Action]:
        """A message from the client (or the reader's verdict on one)."""
        if self.state == CLOSED:
            return []
        try:
            if isinstance(message, Violation):
                raise ProtocolError(message.message, code=message.code, close_code=message.close_code)
            if self.state == CONFIGURING:
                return self._configure(message, now)
            if isinstance(message, str):
                return self._control(message)
            self.last_audio = now
            return self._submit(self._stream.feed(message))
        except ProtocolError as exc:
            if exc.close_code is None:
                return [Send(exc.to_client())]
            return self._fail(exc, exc.close_code)

    def on_result(self, result: ChunkResult | SentenceResult, now: float) -> list[Action]:
        """A result from the session's channel: a chunk's or a sentence's."""
        if self.state != STREAMING:
            return []
        if isinstance(result, SentenceResult):
            delivery = self._stream.accept_sentence(result)
        else:
            delivery = self._stream.accept(result)
        actions: list[Action] = [Send(m) for m in delivery.messages]
        if not self._move_wanted:  # while a move is due the sentence in flight waits; moved() sends it again
            actions += [SubmitSentence(job, self.worker) for job in delivery.sentences]
        if delivery.latencies:
            actions.append(Observe(tuple(delivery.latencies)))
        if delivery.replay:
            self._move_wanted = True
        if delivery.fatal is not None:
            actions += self._fail(delivery.fatal, CLOSE_INTERNAL)
        return actions

    def on_submit_failed(self) -> None:
        """The broker did not take our chunks: they are kept, and the next tick moves the stream (replays)."""
        self._move_wanted = True

    def on_results_reset(self) -> None:
        """The result channel was down for a while: results may be lost, so replay what is unanswered."""
        if self.stream is not None and self.stream.outstanding:
            self._move_wanted = True

    def tick(self, now: float, backend: Backend) -> list[Action]:
        """Periodic decisions: timeouts, worker loss, queue status."""
        if self.state == CLOSED:
            return []
        if self.state == CONFIGURING:
            if now - self.opened_at > self.limits.config_timeout:
                return self._fail(
                    ProtocolError(
                        f"no configuration message within {self.limits.config_timeout:g} s", code="config_timeout"
                    ),
                    CLOSE_POLICY,
                )
            return []
        stream = self._stream
        actions: list[Action] = []
        if backend.redis_ok and self.worker not in backend.workers:
            self._move_wanted = True
        if self._move_wanted:
            actions.append(Move(self.worker))
        age = stream.oldest_outstanding_age()
        if stream.sentences is not None:
            age = max(age, stream.sentences.inflight_age())
        if age > self.limits.chunk_timeout:
            return self._fail(
                ServiceError(f"no result for {age:.0f} s; the session cannot go on", code="result_timeout"),
                CLOSE_INTERNAL,
            )
        if stream.config.queue_status:
            actions += self._queue_status(now, backend.pending, backend.file_jobs)
        silent = now - self.last_audio
        busy = stream.outstanding or (stream.sentences is not None and stream.sentences.busy)
        if silent > self.limits.idle_timeout and not busy:
            self.state, self.end_reason = CLOSED, "idle_timeout"
            actions += [
                Send(
                    {
                        "type": "closing",
                        "code": "idle_timeout",
                        "message": f"no audio for {silent:.0f} s",
                        "is_end": True,
                    }
                ),
                Close(1000, "idle timeout"),
            ]
        return actions

    def moved(self, worker: str) -> list[Action]:
        """The handler leased the session a slot on ``worker``: replay the kept audio there."""
        stream = self._stream
        old = Release(stream.stream, self.worker)
        jobs = stream.replay()
        self.worker, self._move_wanted = worker, False
        actions: list[Action] = [old]
        if jobs:
            actions.append(Submit(tuple(jobs), worker, replay=True))
        actions += [SubmitSentence(job, worker) for job in stream.resend_sentences()]
        return actions

    def end(self, reason: str) -> None:
        """The connection is gone (client closed, vanished): no more actions; release the replay history."""
        if self.state != CLOSED:
            self.state, self.end_reason = CLOSED, reason
        if self.stream is not None:
            self.stream.close()

    # --- internals ------------------------------------------------------------------------------------------------
    @property
    def _stream(self) -> StreamSession:
        assert self.stream is not None, "streaming state without a stream"
        return self.stream

    def _configure(self, message: str | bytes, now: float) -> list[Action]:
        if not isinstance(message, str):
            raise ProtocolError(
                "the first message must be the JSON configuration, not audio", code="audio_before_config"
            )
        config = parse_config(message, encoder_look_back=self.look_backs[0], decoder_look_back=self.look_backs[1])
        if self.modes is not None and config.mode not in self.modes:
            served = ", ".join(sorted(self.modes)) or "none"
            raise ProtocolError(
                f"mode {config.mode!r} needs {MODE_NEEDS[config.mode]}, which this server's workers have not loaded "
                f"(modes served: {served})",
                code="unsupported_mode",
                close_code=CLOSE_UNSUPPORTED,
            )
        self.stream = StreamSession(
            self.id,
            config,
            channel=self.channel,
            max_frame_bytes=self.limits.max_frame_bytes,
            replay_max_bytes=self.limits.replay_max_bytes,
            budget=self.budget,
        )
        self.stream.worker = self.worker
        self.state, self.last_audio = STREAMING, now
        return []

    def _control(self, text: str) -> list[Action]:
        try:
            is_speaking, warning = parse_control(text)
        except ProtocolError as exc:  # garbage mid-stream: tell the client, keep the session
            return [Send(exc.to_client())]
        actions: list[Action] = [Send(warning.to_client())] if warning is not None else []
        if is_speaking is False:
            actions += self._submit(self._stream.end_utterance())
        return actions

    def _submit(self, jobs: list) -> list[Action]:
        # While a move is due the jobs wait in the replay buffer: the replay will carry them, in order.
        if not jobs or self._move_wanted:
            return []
        return [Submit(tuple(jobs), self.worker)]

    def _fail(self, error: ServiceError, close_code: int) -> list[Action]:
        self.state, self.end_reason = CLOSED, error.code
        return [Send(dict(error.to_client(), is_end=True)), Close(close_code, error.code)]

    def _queue_status(self, now: float, pending: int, file_jobs: int = 0) -> list[Action]:
        last = self._status_pending
        due = now - self._status_sent_at >= self.limits.queue_status_interval
        jumped = last is not None and abs(pending - last) >= self.limits.queue_status_step
        if not (due or jumped):
            return []
        self._status_sent_at, self._status_pending = now, pending
        return [Send({"type": "queue_status", "pending": pending, "file_jobs": file_jobs}, droppable=True)]
