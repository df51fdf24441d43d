"""The pump of one WebSocket session: moves messages, results and ticks into the session core, performs its actions.

Every decision lives in :class:`app.session.Session` (I/O-free). Three threads (greenlets under gevent) touch a
session:

* the handler thread (:meth:`SessionHandler.run`) takes parsed messages from the connection (app.reader reads
  the socket), passes them and a tick about every ``TICK`` seconds to the session, and performs the actions:
  submissions (so a session's chunks reach the broker in order), moves to another worker, closes;
* the result router's thread calls :meth:`_on_result`, which passes the result to the session and queues the
  messages that come back;
* a sender thread is the only writer to the socket, fed by a bounded :class:`~app.outbox.Outbox`, so a slow
  client never blocks the router, and one that falls too far behind is disconnected.

A lock serializes the session between the handler and router threads.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

from simple_websocket import ConnectionClosed

from app.actions import Action, Close, Move, Observe, Release, Send, Submit, SubmitSentence
from app.outbox import CloseFrame, Outbox
from app.protocol import CLOSE_INTERNAL
from app.session import Session
from config.logs import fields, printable
from tasks.errors import AdmissionRefused, BackendUnavailable, ServiceError
from tasks.wire import ChunkResult, SentenceResult

if TYPE_CHECKING:
    from app.services import Services

logger = logging.getLogger(__name__)

TICK = 0.5  # seconds between the session's periodic decisions (timeouts, worker loss, queue_status)
YIELD_EVERY = 16  # messages handled between cooperative yields, so one busy session cannot starve the others
READER_GRACE = 3.0  # seconds a closing session waits for its reader (app.reader drains for up to 2 s)


class SessionHandler:
    """One WebSocket session from first message to close."""

    def __init__(self, ws, services: Services, client: str, session_id: str, worker: str) -> None:
        self.ws = ws
        self.services = services
        self.client = client
        self.id = session_id
        settings = services.settings
        modes = services.monitor.snapshot.workers.get(worker, {}).get("modes")
        self.session = Session(
            session_id,
            worker,
            channel=services.keys.result_channel(session_id),
            limits=services.limits,
            now=time.time(),
            budget=services.replay_budget,
            encoder_look_back=settings.encoder_chunk_look_back,
            decoder_look_back=settings.decoder_chunk_look_back,
            modes=frozenset(modes) if isinstance(modes, list) else None,
        )
        self.outbox = Outbox(services.limits.max_outbox_bytes)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._aborted = False

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def run(self) -> None:
        sender = threading.Thread(target=self._send_loop, name=f"asr-send-{self.id[-8:]}", daemon=True)
        sender.start()
        self.services.router.subscribe(self.id, self._on_result, self._on_reset)
        try:
            self._pump()
        except ConnectionClosed:
            with self._lock:
                self.session.end("client_closed")
        except Exception:  # noqa: BLE001 - process boundary: log with context, tell the client, keep serving others
            logger.exception("session %s: unexpected error", self.id, extra=self._fields())
            with self._lock:
                self.session.end("internal_error")
            self._perform(self._fail_actions(ServiceError("internal error; the session was closed")))
        finally:
            self._cleanup()
            self.outbox.close()
            sender.join(timeout=5)
            self._await_reader()

    def _await_reader(self) -> None:
        """Let the reader finish the close handshake before the server closes the socket: closing it with the
        client's unread data in the buffer resets the connection, and the client would see 1006 instead of our
        close code (a flooder always has unread data)."""
        reader = getattr(self.ws, "thread", None)
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=READER_GRACE)

    def _pump(self) -> None:
        next_tick = time.monotonic() + TICK
        handled = 0
        while True:
            with self._lock:
                if self.session.closed or self._aborted:
                    return
                wants_input = self.session.wants_input()
            message = None
            if wants_input:
                message = self.ws.receive(timeout=TICK)
            else:  # back-pressure: leave the socket unread until results come in
                self._wake.wait(TICK)
                self._wake.clear()
                if not self.ws.connected:
                    raise ConnectionClosed(None, None)
            if message is not None:
                with self._lock:
                    configuring = self.session.config is None
                    actions = self.session.on_message(message, time.time())
                if configuring and self.session.config is not None:
                    logger.info(
                        "session %s (%s, %s) on worker %s",
                        self.id,
                        self.client,
                        printable(self.session.config.wav_name),
                        self.session.worker,
                        extra=self._fields(),
                    )
                self._perform(actions)
                handled += 1
                if handled % YIELD_EVERY == 0:
                    time.sleep(0)
            if time.monotonic() >= next_tick:  # at most every TICK, not on every frame
                next_tick = time.monotonic() + TICK
                with self._lock:
                    actions = self.session.tick(time.time(), self.services.backend())
                self._perform(actions)

    def _cleanup(self) -> None:
        services, session = self.services, self.session
        with self._lock:
            session.end(session.end_reason or "ended")
        services.metrics.ended.labels(session.end_reason).inc()
        services.router.unsubscribe(self.id)
        services.sessions.remove(self.id)
        services.dispatcher.release(self.id)
        if session.stream is not None and session.worker in services.monitor.snapshot.workers:
            services.dispatcher.close_stream(session.stream.stream, session.worker)
        logger.info("session %s ended: %s", self.id, session.end_reason, extra=self._fields())

    @staticmethod
    def _fail_actions(error: ServiceError) -> list[Action]:
        return [Send(dict(error.to_client(), is_end=True)), Close(CLOSE_INTERNAL, error.code)]

    # --- actions --------------------------------------------------------------------------------------------------
    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                text = json.dumps(action.message, ensure_ascii=False)
                if not self.outbox.put(text, droppable=action.droppable):
                    self._abort("slow_consumer")
                    return
            elif isinstance(action, Submit):
                self.services.dispatcher.submit(action.jobs, action.worker, self._on_submit_failed)
                self.services.metrics.chunks.inc(len(action.jobs))
            elif isinstance(action, SubmitSentence):
                self.services.dispatcher.submit_sentence(action.job, action.worker, self._on_submit_failed)
            elif isinstance(action, Move):
                self._move(action.current)
            elif isinstance(action, Release):
                if action.worker in self.services.monitor.snapshot.workers:
                    self.services.dispatcher.close_stream(action.stream, action.worker)
            elif isinstance(action, Close):
                self.outbox.close(CloseFrame(action.code, action.reason))
                self._log_close(action)
                self._wake.set()
            elif isinstance(action, Observe):
                for latency in action.latencies:
                    self.services.metrics.latency.observe(latency)

    def _move(self, current: str) -> None:
        """Lease a slot on the least-loaded live worker and replay there; if none now, the next tick retries."""
        try:  # an admitted session is never cut for load: a full worker still takes it
            worker = self.services.dispatcher.move(self.id)
        except (AdmissionRefused, BackendUnavailable):
            return
        with self._lock:
            actions = self.session.moved(worker)
        submitted = sum(len(a.jobs) for a in actions if isinstance(a, Submit))
        logger.info(
            "session %s: replaying %d chunk(s) on %s (was %s)",
            self.id,
            submitted,
            worker,
            current,
            extra=self._fields(),
        )
        self.services.metrics.replays.inc()
        self._perform(actions)

    def _abort(self, reason: str) -> None:
        """The client is too far behind to be told anything: drop the connection."""
        with self._lock:
            self.session.end(reason)
            self._aborted = True
        logger.info(
            "session %s: client %s is %d bytes behind; disconnecting",
            self.id,
            self.client,
            self.outbox.bytes,
            extra=self._fields(),
        )
        self.outbox.close()
        self.ws.connected = False
        try:
            self.ws.sock.shutdown(socket.SHUT_RDWR)  # unblocks a sender stuck in send()
        except OSError:
            pass
        self._wake.set()

    def _log_close(self, action: Close) -> None:
        config = self.session.config
        name = printable(config.wav_name) if config else "-"
        logger.info(
            "session %s (%s, %s) closing: %s (%d)",
            self.id,
            self.client,
            name,
            action.reason,
            action.code,
            extra=self._fields(),
        )

    def _fields(self) -> dict:
        """This session's structured log fields (JSON keys; the text format shows the message only)."""
        stream = self.session.stream
        return fields(
            session=self.id, worker=self.session.worker, stream=stream.stream if stream else None, client=self.client
        )

    # --- callbacks from other threads -----------------------------------------------------------------------------
    def _on_result(self, result: ChunkResult | SentenceResult) -> None:
        """Called by the result router's thread."""
        with self._lock:
            actions = self.session.on_result(result, time.time())
        self._perform(actions)
        self._wake.set()

    def _on_reset(self) -> None:
        with self._lock:
            self.session.on_results_reset()

    def _on_submit_failed(self) -> None:
        """Called by the publisher's thread when our chunks could not be pushed to the broker."""
        with self._lock:
            self.session.on_submit_failed()

    def _send_loop(self) -> None:
        while True:
            item = self.outbox.get()
            if item is None:
                return
            try:
                if isinstance(item, CloseFrame):
                    self.ws.close(reason=item.code, message=item.reason)
                    return
                self.ws.send(item)
            except (ConnectionClosed, OSError):
                return
