"""Messages on their way to one client, bounded in bytes: the handler's queue to its sender thread.

A client that stops reading makes the sender block in ``send`` once the kernel's socket buffer is full; what the
session produces meanwhile waits here. Past ``max_bytes`` the outbox refuses (:meth:`put` returns False) and the
handler disconnects the client (``slow_consumer``): per-session memory stays bounded whatever the client does.
Droppable messages (queue_status) are not queued while others wait, since a newer one follows.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class CloseFrame:
    code: int
    reason: str


class Outbox:
    """Thread-safe FIFO of serialized messages (``str``) and at most one final :class:`CloseFrame`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: deque[tuple[str, int] | CloseFrame | None] = deque()  # (message, its UTF-8 size)
        self._cond = threading.Condition()
        self._closed = False

    def put(self, text: str, *, droppable: bool = False) -> bool:
        """Queue a message; False when the client is too far behind (nothing queued) or the outbox is closed."""
        with self._cond:
            if self._closed:
                return False
            if droppable and self._items:
                return True
            size = len(text.encode("utf-8", "surrogatepass"))
            if self.bytes + size > self.max_bytes and self._items:
                return False
            self._items.append((text, size))
            self.bytes += size
            self._cond.notify()
            return True

    def close(self, frame: CloseFrame | None = None) -> None:
        """No more messages: the sender writes what is queued, then ``frame`` (if any), then stops."""
        with self._cond:
            if not self._closed:
                self._closed = True
                self._items.append(frame)
                self._cond.notify()

    def get(self) -> str | CloseFrame | None:
        """The next item, blocking; None after the last one (the sender then returns)."""
        with self._cond:
            while not self._items:
                self._cond.wait()
            item = self._items.popleft()
            if isinstance(item, tuple):
                text, size = item
                self.bytes -= size
                return text
            return item
