"""The socket reader of each WebSocket connection: bounded, rate-limited, and polite to the other greenlets.

simple-websocket (under flask-sock) parses incoming frames in a thread of its own per connection and appends
every message to an unbounded list, reading as long as the socket has data. Under gevent that thread never
yields while a client floods: one client sending tiny frames as fast as it can froze a whole gateway process
(other sessions 17 s late, gunicorn's WORKER TIMEOUT). flask-sock lets the app choose that thread's class
(``SOCK_SERVER_OPTIONS["thread_class"]``); :func:`reader_class` returns one that runs this loop instead of the
library's:

* every frame passes :class:`~app.limits.FrameGuard` (message rate, size so far by type) as it is parsed; a
  violation is handed to the session as a :class:`~app.limits.Violation` in place of a message, and reading stops
  (the handler sends the error and closes);
* at most ``READ_AHEAD_MESSAGES`` / ``READ_AHEAD_BYTES`` wait for the handler; past that the socket is not read
  (TCP back-pressure), which is also how the handler's own back-pressure reaches the client;
* it yields to other greenlets after every read and every ``YIELD_EVERY`` frames.

It drives the library's connection object through its documented attributes (``sock``, ``ws`` — the wsproto
connection —, ``input_buffer``, ``event``, ``connected``, ``close_reason``); tests/app/test_reader.py pins them.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import LocalProtocolError

from app.limits import READ_AHEAD_BYTES, READ_AHEAD_MESSAGES, FrameGuard, Limits, Violation

YIELD_EVERY = 64  # frames parsed between cooperative yields
FULL_WAIT = 0.01  # seconds between looks at a full read-ahead buffer
CLOSE_GRACE = 10.0  # seconds a reader that stopped on a violation waits for the handler to close
DRAIN_SECONDS = 2.0  # then it discards what the client still sends, for at most this long
DRAIN_BYTES = 16 << 20  # or this much
DRAIN_QUIET = 0.5  # seconds of silence that end the drain


def reader_class(limits: Limits) -> Any:
    """The ``thread_class`` for simple-websocket: called as ``thread_class(target=ws._thread)``."""
    return functools.partial(BoundedReader, limits=limits)


class BoundedReader(threading.Thread):
    """Reads one connection's socket on behalf of its simple-websocket ``Server`` object."""

    def __init__(self, target: Any, limits: Limits) -> None:
        super().__init__(name="asr-reader", daemon=True)
        self.conn = target.__self__  # the simple_websocket.Server whose _thread we replace
        self.guard = FrameGuard(limits, time.monotonic())
        self._partial = 0  # bytes of the message being assembled
        self._parts: list[Any] = []
        self.frames = 0

    def run(self) -> None:
        conn = self.conn
        violated = False
        try:
            while conn.connected and not violated:
                if self._full():
                    time.sleep(FULL_WAIT)
                    continue
                data = conn.sock.recv(conn.receive_bytes)
                if not data:
                    raise OSError("connection closed by the client")
                conn.ws.receive_data(data)
                violated = not self._handle_events()
                time.sleep(0)  # let other sessions run between reads, however fast this client sends
        except (OSError, LocalProtocolError):
            conn.connected = False
        finally:
            conn.event.set()
        if violated:  # the handler sends the error and closes; then the socket goes
            deadline = time.monotonic() + CLOSE_GRACE
            while conn.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            self._drain()
        try:
            conn.sock.close()
        except OSError:
            pass

    def _drain(self) -> None:
        """Read and discard what the client still sends, unparsed, until it goes quiet (it has our close frame),
        at most ``DRAIN_SECONDS`` / ``DRAIN_BYTES``: closing a socket with unread data resets it, and the client
        would never see the close frame with the reason. Parsing it would cost a flood's worth of CPU."""
        sock = self.conn.sock
        deadline = time.monotonic() + DRAIN_SECONDS
        drained = 0
        try:
            sock.settimeout(DRAIN_QUIET)
            while time.monotonic() < deadline and drained < DRAIN_BYTES:
                data = sock.recv(65536)
                if not data:
                    return
                drained += len(data)
                time.sleep(0)
        except OSError:  # socket.timeout included: the client went quiet
            pass

    def _full(self) -> bool:
        buffer = self.conn.input_buffer
        return len(buffer) >= READ_AHEAD_MESSAGES or sum(_size(m) for m in buffer) >= READ_AHEAD_BYTES

    def _handle_events(self) -> bool:
        """Parse what arrived; False when the connection must stop being read (closed, or a violation)."""
        conn = self.conn
        out = b""
        keep_going = True
        for event in conn.ws.events():
            self.frames += 1
            if self.frames % YIELD_EVERY == 0:
                time.sleep(0)
            if isinstance(event, CloseConnection):
                out += conn.ws.send(event.response())
                conn.close_reason, conn.close_message = event.code, event.reason
                conn.connected = keep_going = False
                break
            if isinstance(event, Ping):
                violation = self.guard.frame(text=False, message_bytes=0, now=time.monotonic())
                if violation is not None:
                    self._deliver(violation)
                    keep_going = False
                    break
                out += conn.ws.send(event.response())
            elif isinstance(event, (TextMessage, BytesMessage)):
                if not self._message_part(event):
                    keep_going = False
                    break
        if out:
            conn.sock.send(out)
        return keep_going

    def _message_part(self, event: TextMessage | BytesMessage) -> bool:
        text = isinstance(event, TextMessage)
        data = event.data
        self._partial += len(data.encode("utf-8", "surrogatepass")) if text else len(data)  # type: ignore[union-attr]
        violation = self.guard.frame(text=text, message_bytes=self._partial, now=time.monotonic())
        if violation is not None:
            self._deliver(violation)
            return False
        self._parts.append(data)
        if event.message_finished:
            parts, self._parts, self._partial = self._parts, [], 0
            if len(parts) == 1:
                message = parts[0]
            else:
                message = "".join(parts) if text else b"".join(parts)
            self._deliver(message)
        return True

    def _deliver(self, message: str | bytes | Violation) -> None:
        self.conn.input_buffer.append(message)
        self.conn.event.set()


def _size(message: Any) -> int:
    """Bytes a read-ahead item holds (a Violation holds none)."""
    return 0 if isinstance(message, Violation) else len(message)
