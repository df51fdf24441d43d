"""Abusive WebSocket clients for the flood scenario: each misuses one session in one way and records how it ended.

==============  ===================================================================================================
tiny-frames     a valid configuration, then 2-byte binary frames as fast as the socket takes them
big-text        a valid configuration, then text messages just under and just over 64 KiB as fast as possible
never-read      a valid configuration, then audio faster than real time; never reads its socket (4 KiB SO_RCVBUF)
silent          ``{}`` text messages once a second, never a configuration and never audio
==============  ===================================================================================================

They speak WebSocket over a plain non-blocking socket with wsproto (sans-IO) doing the framing, so a flooder
controls exactly what reaches the socket and when it is read: frames are built once and written in 64 KiB
batches (the flooder's own CPU is not what limits the flood), and the never-read socket is not read at all after
the handshake until the flood is over. :func:`run_flooders` blocks on its own event loop: the flood scenario runs
it in a child process, so the flood does not share an event loop (or a GIL) with the healthy clients it measures.
Times are ``time.monotonic()`` seconds, comparable across processes on one machine.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    RejectConnection,
    Request,
    TextMessage,
)

from bench import audio

KINDS = ("tiny-frames", "big-text", "never-read", "silent")
CONFIG = {
    "mode": "online",
    "chunk_size": [5, 10, 5],
    "chunk_interval": 10,
    "wav_name": "flooder",
    "wav_format": "pcm",
    "audio_fs": audio.SAMPLE_RATE,
    "is_speaking": True,
}
BATCH_BYTES = 64 * 1024  # pre-built frames per socket write
TEXT_LIMIT = 64 * 1024  # the gateway's largest text message (ASR_MAX_TEXT_BYTES default)
TEXT_MARGIN = 16  # big-text: bytes under and over TEXT_LIMIT
NEVER_READ_RCVBUF = 4096  # bytes: the kernel's receive buffer of the never-read socket
NEVER_READ_FRAME_MS = 100
SILENT_INTERVAL = 1.0  # seconds between a silent flooder's "{}" messages
CONNECT_TIMEOUT = 10.0
POST_READ = 2.0  # seconds the never-read flooder finally reads, to learn what the gateway did
READ_SIZE = 65536


@dataclass
class FlooderRecord:
    """What one flooder saw. ``closed`` is when it noticed the server closing (close frame, EOF, reset)."""

    kind: str
    index: int
    started: float
    connected: float | None = None
    refused_status: int | None = None
    closed: float | None = None
    close_code: int | None = None
    close_reason: str = ""
    codes: list[str] = field(default_factory=list)  # "code" of each JSON error/closing message, in order
    ended: float | None = None
    ended_by: str = ""  # "server closed", "ran its time", "refused", "connect failed: …", "send failed: …"
    closed_seen_late: bool = False  # never-read: the close was found only when it finally read
    frames_out: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    bytes_in: int = 0

    @property
    def name(self) -> str:
        return f"{self.kind} #{self.index}"

    @property
    def error_code(self) -> str | None:
        return self.codes[0] if self.codes else None

    @property
    def seconds_to_close(self) -> float | None:
        """Connected → the server's close noticed; None when the server never closed it."""
        if self.closed is None or self.connected is None:
            return None
        return self.closed - self.connected

    def to_json(self) -> dict:
        return dict(asdict(self), error_code=self.error_code, seconds_to_close=self.seconds_to_close)

    @classmethod
    def from_json(cls, data: dict) -> FlooderRecord:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


class RawWebSocket:
    """A client WebSocket on a non-blocking socket: wsproto frames, nothing reads unless :meth:`read` is called.

    Pings and the server's close frame are not answered: a flooder is rude, and the gateway sends no pings.
    """

    def __init__(self, record: FlooderRecord, rcvbuf: int | None = None) -> None:
        self.record = record
        self.rcvbuf = rcvbuf
        self.conn = WSConnection(ConnectionType.CLIENT)
        self.sock: socket.socket | None = None
        self.closed = asyncio.Event()
        self._text: list[str] = []
        self._handshake = asyncio.Event()
        self._writing = asyncio.Lock()  # one sock_sendall at a time: frames must not interleave

    def frame(self, event: Event) -> bytes:
        """The bytes of one message (masked, as a client must), to write once or many times."""
        return self.conn.send(event)

    async def connect(self, url: str) -> bool:
        """TCP connect and WebSocket handshake; True when accepted (a refusal is recorded)."""
        parts = urlsplit(url)
        loop = asyncio.get_running_loop()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        if self.rcvbuf:  # before connect, so the advertised window stays small too
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        await loop.sock_connect(self.sock, (parts.hostname, parts.port or 80))
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        await self.send(self.frame(Request(host=parts.netloc, target=target, subprotocols=["binary"])), count=False)
        while not self._handshake.is_set():
            if not await self._read_once():
                break
        return self.record.connected is not None

    async def send(self, data: bytes, frames: int = 1, count: bool = True) -> bool:
        """Write ``data`` (``frames`` messages); False when the connection is gone."""
        try:
            async with self._writing:
                await asyncio.get_running_loop().sock_sendall(self.sock, data)
        except OSError as exc:
            self._gone(f"send failed: {exc.strerror or exc}")
            return False
        if count:
            self.record.frames_out += frames
            self.record.bytes_out += len(data)
        await asyncio.sleep(0)  # a write the kernel took at once does not yield: let the reader run
        return True

    async def read(self, seconds: float | None = None) -> None:
        """Read and handle what arrives until the server closes (or ``seconds`` pass)."""
        try:
            await asyncio.wait_for(self._read_until_closed(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _read_until_closed(self) -> None:
        while not self.closed.is_set() and await self._read_once():
            pass

    async def _read_once(self) -> bool:
        try:
            data = await asyncio.get_running_loop().sock_recv(self.sock, READ_SIZE)
        except OSError as exc:
            self._gone(f"read failed: {exc.strerror or exc}")
            return False
        self.record.bytes_in += len(data)
        self.conn.receive_data(data or None)
        for event in self.conn.events():
            self._on_event(event)
        if not data:
            self._gone("server closed")
        return bool(data)

    def _on_event(self, event: Event) -> None:
        rec = self.record
        if isinstance(event, AcceptConnection):
            rec.connected = time.monotonic()
            self._handshake.set()
        elif isinstance(event, RejectConnection):
            rec.refused_status = event.status_code
            self._handshake.set()
            self._gone("refused")
        elif isinstance(event, TextMessage):
            self._text.append(event.data)
            if event.message_finished:
                rec.messages_in += 1
                self._on_text("".join(self._text))
                self._text.clear()
        elif isinstance(event, BytesMessage):
            rec.messages_in += event.message_finished
        elif isinstance(event, CloseConnection):  # not answered: finish() drops the socket
            rec.close_code, rec.close_reason = int(event.code), event.reason or ""
            self._gone("server closed")

    def _on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return
        if isinstance(message, dict) and message.get("type") in ("error", "closing"):
            self.record.codes.append(str(message.get("code")))

    def _gone(self, why: str) -> None:
        if not self.closed.is_set():
            self.record.closed, self.record.ended_by = time.monotonic(), why
            self.closed.set()

    def running(self, deadline: float) -> bool:
        return not self.closed.is_set() and time.monotonic() < deadline

    async def finish(self) -> None:
        """Close from our side if the server did not; release the socket."""
        if not self.closed.is_set() and self.conn.state is ConnectionState.OPEN:
            self.record.ended_by = self.record.ended_by or "ran its time"
            try:
                await asyncio.wait_for(self.send(self.conn.send(CloseConnection(1000)), count=False), 1.0)
            except asyncio.TimeoutError:
                pass  # the server is not reading: just drop the socket
        if self.sock is not None:
            self.sock.close()
        self.record.ended = time.monotonic()


# --- the flooders -------------------------------------------------------------------------------------------------
async def _send_until(ws: RawWebSocket, data: bytes, frames: int, deadline: float) -> bool:
    """Send ``data`` unless the deadline passes first (a server that stops reading blocks the write)."""
    try:
        return await asyncio.wait_for(ws.send(data, frames), max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        return False


async def tiny_frames(ws: RawWebSocket, deadline: float, pace: float) -> None:
    await ws.send(ws.frame(TextMessage(json.dumps(CONFIG))))
    frame = ws.frame(BytesMessage(b"\x00\x00"))
    n = BATCH_BYTES // len(frame)
    batch = frame * n
    while ws.running(deadline) and await _send_until(ws, batch, n, deadline):
        pass


async def big_text(ws: RawWebSocket, deadline: float, pace: float) -> None:
    await ws.send(ws.frame(TextMessage(json.dumps(CONFIG))))
    batch = ws.frame(TextMessage(_padded(TEXT_LIMIT - TEXT_MARGIN))) + ws.frame(
        TextMessage(_padded(TEXT_LIMIT + TEXT_MARGIN))
    )
    while ws.running(deadline) and await _send_until(ws, batch, 2, deadline):
        pass


def _padded(size: int) -> str:
    """A control message of exactly ``size`` bytes: a valid ``is_speaking`` with a long ``hotwords`` beside it."""
    head, tail = '{"is_speaking": true, "hotwords": "', '"}'
    return head + "x" * (size - len(head) - len(tail)) + tail


async def never_read(ws: RawWebSocket, deadline: float, pace: float) -> None:
    """Audio at ``pace`` × real time (0: as fast as the socket takes it); reads only after the deadline."""
    await ws.send(ws.frame(TextMessage(json.dumps(CONFIG))))
    frame_bytes = audio.BYTES_PER_SECOND * NEVER_READ_FRAME_MS // 1000
    pcm = audio.noise(10.0, seed=9)
    frames = [ws.frame(BytesMessage(pcm[i : i + frame_bytes])) for i in range(0, len(pcm), frame_bytes)]
    start, sent = time.monotonic(), 0
    while time.monotonic() < deadline and not ws.closed.is_set():
        if pace > 0:
            await asyncio.sleep(max(0.0, start + sent * NEVER_READ_FRAME_MS / 1000 / pace - time.monotonic()))
        if not await _send_until(ws, frames[sent % len(frames)], 1, deadline):
            break
        sent += 1
    if not ws.closed.is_set():
        await ws.read(POST_READ)  # what piled up for us, and whether the gateway had closed
        ws.record.closed_seen_late = ws.closed.is_set()


async def silent(ws: RawWebSocket, deadline: float, pace: float) -> None:
    message = ws.frame(TextMessage("{}"))
    while ws.running(deadline) and await _send_until(ws, message, 1, deadline):
        try:
            await asyncio.wait_for(ws.closed.wait(), min(SILENT_INTERVAL, max(0.0, deadline - time.monotonic())))
        except asyncio.TimeoutError:
            pass


FLOODERS = {"tiny-frames": tiny_frames, "big-text": big_text, "never-read": never_read, "silent": silent}
READS_WHILE_FLOODING = {"tiny-frames", "big-text", "silent"}


async def flood_one(url: str, kind: str, index: int, seconds: float, pace: float) -> FlooderRecord:
    """One flooder of ``kind`` for ``seconds`` (or until the server closes it)."""
    record = FlooderRecord(kind, index, time.monotonic())
    ws = RawWebSocket(record, rcvbuf=NEVER_READ_RCVBUF if kind == "never-read" else None)
    reader = None
    try:
        if await asyncio.wait_for(ws.connect(url), CONNECT_TIMEOUT):
            if kind in READS_WHILE_FLOODING:
                reader = asyncio.create_task(ws.read())
            await FLOODERS[kind](ws, time.monotonic() + seconds, pace)
    except (OSError, asyncio.TimeoutError) as exc:
        record.ended_by = f"connect failed: {exc!r}"
    finally:
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        await ws.finish()
    return record


def run_flooders(url: str, kinds: list[str], count: int, seconds: float, pace: float) -> dict:
    """``count`` flooders of each kind at once for ``seconds``, on a new event loop.

    Returns ``{"records": [FlooderRecord.to_json() …], "cpu_s": CPU seconds this process spent flooding}``.
    """

    async def all_of_them() -> list[FlooderRecord]:
        return await asyncio.gather(*(flood_one(url, kind, i, seconds, pace) for kind in kinds for i in range(count)))

    cpu = time.process_time()
    records = asyncio.run(all_of_them())
    return {"records": [r.to_json() for r in records], "cpu_s": time.process_time() - cpu}


def ready() -> bool:
    """A no-op for warming up the child process (its imports) before the flood starts."""
    return True
