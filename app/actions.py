"""What the session core (app.session) asks its handler to do. Plain values: the handler performs them in order."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.wire import ChunkJob, SentenceJob


@dataclass(frozen=True)
class Send:
    """Write a JSON message to the client. ``droppable`` messages (queue_status) are skipped when the client is
    behind: a newer one follows."""

    message: dict
    droppable: bool = False


@dataclass(frozen=True)
class Submit:
    """Send chunk jobs to a worker's private queue, in order."""

    jobs: tuple[ChunkJob, ...]
    worker: str
    replay: bool = False


@dataclass(frozen=True)
class SubmitSentence:
    """Send a sentence (2pass, offline) to a worker for the offline pass; the session's own worker takes it."""

    job: SentenceJob
    worker: str


@dataclass(frozen=True)
class Move:
    """Lease the session a slot on the least-loaded live worker (``current`` is gone or failed us), then call
    :meth:`app.session.Session.moved` with it; if none can be had now, the next tick asks again."""

    current: str


@dataclass(frozen=True)
class Release:
    """Ask ``worker`` to free the stream's model state (best effort: skipped when the worker is gone)."""

    stream: str
    worker: str


@dataclass(frozen=True)
class Close:
    """Close the connection with this code after the messages before it."""

    code: int
    reason: str


@dataclass(frozen=True)
class Observe:
    """Chunk latencies (submission → delivery, seconds) for the metrics."""

    latencies: tuple[float, ...]


Action = Send | Submit | SubmitSentence | Move | Release | Close | Observe
