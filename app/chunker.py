"""Cuts a stream of 16-bit PCM frames of any size into fixed-size model chunks (no I/O)."""

from __future__ import annotations

from app.protocol import CLOSE_INVALID_PAYLOAD, CLOSE_TOO_BIG
from tasks.errors import ProtocolError


class Chunker:
    """Buffers PCM bytes and emits chunks of exactly ``chunk_bytes``; :meth:`flush` returns the remainder.

    Frames must hold whole samples (even length) and be at most ``max_frame_bytes``; either violation raises a
    fatal :class:`ProtocolError`, since a misaligned byte would shift every later sample.
    """

    def __init__(self, chunk_bytes: int, max_frame_bytes: int) -> None:
        if chunk_bytes <= 0 or chunk_bytes % 2:
            raise ValueError(f"chunk_bytes must be a positive even number, got {chunk_bytes}")
        self.chunk_bytes = chunk_bytes
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self.bytes_accepted = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, frame: bytes, *, checked: bool = False) -> list[bytes]:
        """Add one frame; return the chunks it completed (often none). ``checked``: :meth:`check` already saw
        the frame as the client sent it (the session resampled it since)."""
        if not checked:
            self.check(frame)
        self.bytes_accepted += len(frame)
        self._buffer += frame
        if len(self._buffer) < self.chunk_bytes:
            return []
        return self._split()

    def check(self, frame: bytes) -> None:
        """Raise ProtocolError for a frame over the size limit or not whole 16-bit samples."""
        if len(frame) > self.max_frame_bytes:
            raise ProtocolError(
                f"binary frame of {len(frame)} bytes exceeds the {self.max_frame_bytes}-byte limit",
                code="frame_too_large",
                close_code=CLOSE_TOO_BIG,
            )
        if len(frame) % 2:
            raise ProtocolError(
                f"binary frame of {len(frame)} bytes is not whole 16-bit samples",
                code="odd_frame",
                close_code=CLOSE_INVALID_PAYLOAD,
            )

    def _split(self) -> list[bytes]:
        whole = len(self._buffer) - len(self._buffer) % self.chunk_bytes
        chunks = [bytes(self._buffer[i : i + self.chunk_bytes]) for i in range(0, whole, self.chunk_bytes)]
        del self._buffer[:whole]
        return chunks

    def flush(self) -> bytes:
        """Return and clear the partial chunk (possibly empty) at the end of an utterance."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest
