"""An asyncio client of the FunASR WebSocket protocol that records what happened, with timestamps.

Used by the tests (against a real gateway) and by the load tester. It streams 16-bit PCM in frames at a chosen
pace (real time, or as fast as possible), ends the utterance with ``{"is_speaking": false}``, waits for the final
result, and returns a :class:`SessionRecord`: every message received, when each chunk's audio was complete, the
HTTP status of a refused handshake, and the close code.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field

import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

SAMPLE_RATE = 16000
BYTES_PER_SECOND = SAMPLE_RATE * 2


@dataclass
class SessionRecord:
    """What one session saw. Times are ``time.monotonic()`` seconds."""

    started: float = 0.0
    connected: float | None = None
    refused_status: int | None = None  # HTTP status when the handshake was refused (503, 401 …)
    refused_body: dict | None = None
    refused_headers: dict[str, str] = field(default_factory=dict)
    messages: list[tuple[float, dict]] = field(default_factory=list)
    chunk_ends: list[float] = field(default_factory=list)  # when each full chunk's audio had been sent
    speech_end: float | None = None  # when {"is_speaking": false} was sent
    first_audio: float | None = None  # when the first audio frame was handed to the socket
    close_code: int | None = None
    close_reason: str = ""
    error: str | None = None  # client-side failure (timeout, connection error)
    finished: float | None = None

    @property
    def results(self) -> list[dict]:
        return [m for _, m in self.messages if "mode" in m]

    @property
    def texts(self) -> list[str]:
        return [m["text"] for m in self.results if m.get("text")]

    @property
    def text(self) -> str:
        return "".join(m.get("text", "") for m in self.results)

    @property
    def final(self) -> dict | None:
        return next((m for m in self.results if m.get("is_final")), None)

    @property
    def errors(self) -> list[dict]:
        return [m for _, m in self.messages if m.get("type") == "error"]

    @property
    def queue_statuses(self) -> list[tuple[float, int]]:
        return [(t, m["pending"]) for t, m in self.messages if m.get("type") == "queue_status"]


class Pacer:
    """Shares wake-ups among many paced clients: each sleeps until the next point of a ``grid``-second grid.

    With hundreds of clients on one event loop, one timer and one loop wake-up per grid point replace one per
    frame per client, which is most of a paced client's CPU. Frames leave up to ``grid`` seconds later than due.
    """

    def __init__(self, grid: float = 0.01) -> None:
        self.grid = grid
        self._slots: dict[int, asyncio.Future] = {}

    async def sleep_until(self, due: float) -> None:
        """Sleep until the first grid point at or after ``due`` (a ``time.monotonic()`` time)."""
        slot = math.ceil(due / self.grid)
        if slot * self.grid <= time.monotonic():
            return
        future = self._slots.get(slot)
        if future is None:
            loop = asyncio.get_running_loop()  # its clock is time.monotonic()
            future = self._slots[slot] = loop.create_future()
            loop.call_at(slot * self.grid, self._wake, slot)
        await asyncio.shield(future)  # a cancelled sleeper must not cancel the others' future

    def _wake(self, slot: int) -> None:
        future = self._slots.pop(slot)
        if not future.done():
            future.set_result(None)


def pcm_frames(pcm: bytes, frame_bytes: int) -> list[bytes]:
    return [pcm[i : i + frame_bytes] for i in range(0, len(pcm), frame_bytes)]


class StreamClient:
    """One session against ``url``. ``pace`` 1.0 sends in real time, 0 as fast as possible.

    ``pacer`` (optional) is a :class:`Pacer` shared by many clients: load tests use one to cut wake-ups.
    """

    def __init__(
        self,
        url: str,
        *,
        config: dict | None = None,
        frame_ms: int = 60,
        pace: float = 1.0,
        timeout: float = 60.0,
        headers: dict | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self.url = url
        self.config = {
            "mode": "online",
            "chunk_size": [5, 10, 5],
            "chunk_interval": 10,
            "wav_name": "client",
            "wav_format": "pcm",
            "audio_fs": SAMPLE_RATE,
            "is_speaking": True,
            **(config or {}),
        }
        self.frame_bytes = int(BYTES_PER_SECOND * frame_ms / 1000) // 2 * 2
        self.pace = pace
        self.timeout = timeout
        self.headers = headers or {}
        self.pacer = pacer
        self.record = SessionRecord()

    @property
    def chunk_bytes(self) -> int:
        size = self.config["chunk_size"]
        middle = int(size.split(",")[1]) if isinstance(size, str) else int(size[1])
        return middle * 960 * 2

    async def run(self, pcm: bytes) -> SessionRecord:
        """Stream ``pcm`` as one utterance and wait for its final result (or an error, close, timeout)."""
        rec = self.record
        rec.started = time.monotonic()
        try:
            await asyncio.wait_for(self._session(pcm), self.timeout)
        except InvalidStatus as exc:
            rec.refused_status = exc.response.status_code
            rec.refused_body = _json_or_none(exc.response.body)
            rec.refused_headers = {k.lower(): v for k, v in exc.response.headers.raw_items()}
        except asyncio.TimeoutError:
            rec.error = "timeout"
        except ConnectionClosed as exc:  # the server closed while we were still sending
            if exc.rcvd is not None:
                rec.close_code, rec.close_reason = exc.rcvd.code, exc.rcvd.reason
            if rec.close_code is None or rec.close_code == 1000 and not rec.final:
                rec.error = f"connection closed: {exc}"
        except (OSError, websockets.exceptions.InvalidHandshake) as exc:
            rec.error = f"{type(exc).__name__}: {exc}"
        rec.finished = time.monotonic()
        return rec

    async def _session(self, pcm: bytes) -> None:
        async with websockets.connect(
            self.url,
            subprotocols=["binary"],
            additional_headers=self.headers,
            max_size=None,
            compression=None,
            open_timeout=self.timeout,
        ) as ws:
            self.record.connected = time.monotonic()
            receiver = asyncio.create_task(self._receive(ws))
            await ws.send(json.dumps(self.config))
            await self._send_audio(ws, pcm)
            await ws.send(json.dumps({"is_speaking": False}))
            self.record.speech_end = time.monotonic()
            await receiver
            await ws.close()

    async def _send_audio(self, ws, pcm: bytes) -> None:
        sent = 0
        start = time.monotonic()
        for frame in pcm_frames(pcm, self.frame_bytes):
            if self.pace > 0:
                due = start + sent / BYTES_PER_SECOND / self.pace
                if self.pacer is not None:
                    await self.pacer.sleep_until(due)
                else:
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
            if self.record.first_audio is None:
                self.record.first_audio = time.monotonic()
            await ws.send(frame)
            before, sent = sent, sent + len(frame)
            for _ in range(before // self.chunk_bytes, sent // self.chunk_bytes):
                self.record.chunk_ends.append(time.monotonic())

    async def _receive(self, ws) -> None:
        try:
            async for raw in ws:
                message = json.loads(raw)
                self.record.messages.append((time.monotonic(), message))
                if message.get("is_final"):
                    return
                if message.get("type") == "error" and message.get("is_end"):
                    await asyncio.wait_for(ws.wait_closed(), 10)  # the server closes right after a fatal error
                    return
        except (ConnectionClosed, asyncio.TimeoutError):
            pass
        finally:
            if ws.close_code is not None:
                self.record.close_code, self.record.close_reason = ws.close_code, ws.close_reason or ""


def _json_or_none(body: bytes | None) -> dict | None:
    try:
        return json.loads(body or b"")
    except ValueError:
        return None
