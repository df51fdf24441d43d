"""Serves one WebSocket session: frames in, chunk tasks out, results and queue status back, clean endings.

Three parties touch a session, each in its own thread (greenlet under gevent):

* the handler thread (:meth:`SessionHandler.run`) reads the socket, feeds :class:`~app.session.StreamSession`,
  submits jobs, and does the periodic work: queue_status pushes, timeouts, replay after a worker's death;
* the result router's thread calls :meth:`_on_result`, which orders results and queues client messages;
* a sender thread is the only writer to the socket, so a slow client never blocks the router.

The handler owns every submission (replays included), so a session's chunks reach the broker in order.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from simple_websocket import ConnectionClosed

from app.protocol import CLOSE_INTERNAL, CLOSE_POLICY, SessionConfig, parse_config, parse_control
from app.session import StreamSession
from tasks.errors import AdmissionRefused, BackendUnavailable, ProtocolError, ServiceError
from tasks.wire import ChunkResult

if TYPE_CHECKING:
    from app.services import Services

logger = logging.getLogger(__name__)

TICK = 0.5  # seconds between housekeeping rounds (replays, timeouts, queue_status): each one wakes the session
SUBSCRIBE_TIMEOUT = 10.0  # seconds to wait for the result router to subscribe a new session
REPLAY = "replay"


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


class SessionHandler:
    """One WebSocket session from first message to close."""

    def __init__(self, ws, services: Services, client: str, session_id: str, worker: str) -> None:
        self.ws = ws
        self.services = services
        self.settings = services.settings
        self.client = client
        self.id = session_id
        self.worker = worker  # leased before the handshake (app.ws)
        self.session: StreamSession | None = None
        self._lock = threading.Lock()
        self._outbox: queue.Queue = queue.Queue()
        self._actions: queue.Queue = queue.Queue()  # REPLAY or a fatal ServiceError, from the result thread
        self._last_heard = time.monotonic()
        self._status_sent_at = 0.0
        self._status_pending: int | None = None
        self._replay_wanted = False
        self._end_reason = "ended"
        self._next_housekeeping = 0.0

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def run(self) -> None:
        sender = threading.Thread(target=self._send_loop, name=f"asr-send-{self.id[:8]}", daemon=True)
        sender.start()
        try:
            self._serve()
        except ConnectionClosed:
            logger.info("session %s: client closed", self.id)
            self._end_reason = "client_closed"
        except ProtocolError as exc:
            self._fail(exc, exc.close_code or CLOSE_POLICY)
        except ServiceError as exc:
            self._fail(exc, CLOSE_INTERNAL)
        except Exception:  # noqa: BLE001 - process boundary: log with context, tell the client, keep serving others
            logger.exception("session %s: unexpected error", self.id)
            self._fail(ServiceError("internal error; the session was closed"), CLOSE_INTERNAL)
        finally:
            self._cleanup()
            self._outbox.put(None)
            sender.join(timeout=5)

    def _serve(self) -> None:
        config = self._receive_config()
        self._open(config)
        while True:
            message = self.ws.receive(timeout=TICK)
            if message is not None:
                self._last_heard = time.monotonic()
                if isinstance(message, str):
                    self._on_text(message)
                else:
                    self._on_audio(message)
            now = time.monotonic()
            if now >= self._next_housekeeping:  # at most every TICK, not on every frame
                self._next_housekeeping = now + TICK
                if self._housekeeping():
                    return

    def _receive_config(self) -> SessionConfig:
        message = self.ws.receive(timeout=self.settings.idle_timeout)
        if message is None:
            raise ProtocolError("no configuration message received", code="timeout")
        if not isinstance(message, str):
            raise ProtocolError("the first message must be the JSON configuration, not audio",
                                code="audio_before_config")
        return parse_config(
            message,
            encoder_look_back=self.settings.encoder_chunk_look_back,
            decoder_look_back=self.settings.decoder_chunk_look_back,
        )

    def _open(self, config: SessionConfig) -> None:
        services = self.services
        worker = self.worker
        self.session = StreamSession(
            self.id, config,
            channel=services.keys.result_channel(self.id),
            max_frame_bytes=self.settings.max_frame_bytes,
            replay_max_bytes=int(self.settings.replay_max_seconds * 32000),
        )
        self.session.worker = worker
        if not services.router.subscribe(self.id, self._on_result, self._on_reset, timeout=SUBSCRIBE_TIMEOUT):
            raise ServiceError(f"could not subscribe to the session's results within {SUBSCRIBE_TIMEOUT:.0f} s "
                               "(Redis unreachable, or this gateway overloaded)", code="backend_unavailable")
        logger.info("session %s (%s, %s) on worker %s", self.id, self.client, config.wav_name, worker)

    def _cleanup(self) -> None:
        self.services.metrics.ended.labels(self._end_reason).inc()
        self.services.router.unsubscribe(self.id)
        self.services.sessions.remove(self.id)
        self.services.dispatcher.release(self.id)
        session = self.session
        if session is not None and session.worker in self.services.monitor.snapshot.workers:
            self.services.dispatcher.close_stream(session.stream, session.worker)

    def _fail(self, error: ServiceError, close_code: int) -> None:
        self._end_reason = error.code
        logger.info("session %s ends with %s: %s", self.id, error.code, error.message)
        self._outbox.put(dict(error.to_client(), is_end=True))
        self._outbox.put(_Close(close_code, error.code))

    # --- client → service -----------------------------------------------------------------------------------------
    def _on_audio(self, frame: bytes) -> None:
        assert self.session is not None
        with self._lock:
            jobs = self.session.feed(frame)
        self._submit(jobs)

    def _on_text(self, text: str) -> None:
        assert self.session is not None
        try:
            is_speaking, warning = parse_control(text)
        except ProtocolError as exc:  # garbage mid-stream: tell the client, keep the session
            self._outbox.put(exc.to_client())
            return
        if warning is not None:
            self._outbox.put(warning.to_client())
        if is_speaking is False:
            with self._lock:
                jobs = self.session.end_utterance()
            self._submit(jobs)

    def _submit(self, jobs: list) -> None:
        """Send jobs to the session's worker. If the broker cannot take them they stay in the replay buffer
        and the whole unfinished utterance is replayed once it is back; the chunk timeout bounds the wait."""
        if jobs and not self._replay_wanted:  # when a replay is due, it will carry these jobs too
            self.services.dispatcher.submit(jobs, self.session.worker, self._on_submit_failed)  # type: ignore
            self.services.metrics.chunks.inc(len(jobs))

    def _on_submit_failed(self) -> None:
        """Called by the publisher's thread when our chunks could not be pushed to the broker."""
        self._actions.put(REPLAY)

    # --- service → client -----------------------------------------------------------------------------------------
    def _on_result(self, result: ChunkResult) -> None:
        """Called by the result router's thread."""
        session = self.session
        if session is None:
            return
        with self._lock:
            delivery = session.accept(result)
        for message in delivery.messages:
            self._outbox.put(message)
        for latency in delivery.latencies:
            self.services.metrics.latency.observe(latency)
        if delivery.replay:
            self._actions.put(REPLAY)
        if delivery.fatal is not None:
            self._actions.put(delivery.fatal)

    def _on_reset(self) -> None:
        """The result channel was down for a while: results may be lost, so replay what is unfinished."""
        if self.session is not None and self.session.outstanding:
            self._actions.put(REPLAY)

    def _send_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            try:
                if isinstance(item, _Close):
                    self.ws.close(reason=item.code, message=item.reason)
                    return
                self.ws.send(json.dumps(item, ensure_ascii=False))
            except (ConnectionClosed, OSError):
                return

    # --- periodic work --------------------------------------------------------------------------------------------
    def _housekeeping(self) -> bool:
        """Replays, timeouts and queue status; True when the session should end quietly."""
        self._drain_actions()
        session = self.session
        assert session is not None
        snapshot = self.services.monitor.snapshot
        if snapshot.redis_ok and session.worker not in snapshot.workers:
            logger.warning("session %s: worker %s is gone; replaying", self.id, session.worker)
            self._replay_wanted = True
        if self._replay_wanted:
            self._replay()
        age = session.oldest_outstanding_age()
        if age > self.settings.chunk_timeout:
            raise ServiceError(f"no result for {age:.0f} s; the session cannot go on", code="result_timeout")
        if session.config.queue_status:
            self._push_queue_status(snapshot.pending)
        silent = time.monotonic() - self._last_heard
        if silent > self.settings.idle_timeout and not session.outstanding:
            self._outbox.put({"type": "closing", "code": "idle_timeout",
                              "message": f"no data for {silent:.0f} s", "is_end": True})
            self._outbox.put(_Close(1000, "idle timeout"))
            self._end_reason = "idle_timeout"
            return True
        return False

    def _drain_actions(self) -> None:
        while True:
            try:
                action = self._actions.get_nowait()
            except queue.Empty:
                return
            if isinstance(action, ServiceError):
                raise action
            self._replay_wanted = True

    def _replay(self) -> None:
        """Move the session to the least-loaded live worker and resubmit its unfinished audio there."""
        session = self.session
        assert session is not None
        old_worker, old_stream = session.worker, session.stream
        try:  # an admitted session is never cut for load: a full worker still takes it
            worker = self.services.dispatcher.move(self.id)
        except (AdmissionRefused, BackendUnavailable):
            return  # no worker or no Redis right now; try again next round (the chunk timeout bounds the wait)
        with self._lock:
            jobs = session.replay()
            session.worker = worker
        self._replay_wanted = False  # the publisher asks again (REPLAY) if the broker is still down
        if old_worker in self.services.monitor.snapshot.workers:
            self.services.dispatcher.close_stream(old_stream, old_worker)  # type: ignore[arg-type]
        logger.info("session %s: replaying %d chunk(s) on %s (was %s)", self.id, len(jobs), worker, old_worker)
        self.services.metrics.replays.inc()
        self._submit(jobs)

    def _push_queue_status(self, pending: int) -> None:
        now = time.monotonic()
        last = self._status_pending
        due = now - self._status_sent_at >= self.settings.queue_status_interval
        jumped = last is not None and abs(pending - last) >= self.settings.queue_status_step
        if due or jumped:
            self._outbox.put({"type": "queue_status", "pending": pending})
            self._status_sent_at, self._status_pending = now, pending
