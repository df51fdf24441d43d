"""What each load-test session achieved, computed from its :class:`~bench.client.SessionRecord` (no I/O).

Definitions (all times in seconds, from the client's ``time.monotonic()`` clock):

* **outcome** — ``refused`` (HTTP error before the handshake, normally 503), ``completed`` (final result
  received), ``timed_out`` (the client's per-session timeout fired first), ``failed`` (anything else: a server
  error message, a close without a final, a connection error).
* **RTF** — processing time / audio duration, processing time = first audio frame sent → final result received,
  the definition of the report being reproduced. Streaming at real-time pace, RTF ≥ 1 by construction; it
  approaches 1 + final latency / duration when the service keeps up. Only completed sessions have one;
  ``rtf_censored`` also counts a timed-out session with its end (the timeout) as the final: a lower bound.
* **chunk latency** — end of a chunk's audio (its last byte handed to the socket) → the partial carrying that
  chunk's number in its ``chunk`` field. Chunks whose text was empty get no partial and no sample.
* **first partial** — first audio sent → first partial received (whatever chunk it is for).
* **final latency** — ``{"is_speaking": false}`` sent → final result received.
* **breakdown** (results that carry ``timing``) — ``wait`` (gateway submission → worker batch start: broker and
  worker queue), ``compute`` (the forward pass), ``relay`` = total − wait − compute (publishing and pub/sub back to
  the gateway), ``client_side`` = chunk latency − total (client → gateway → chunking, gateway send, network).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from bench.client import SessionRecord

COMPLETED, REFUSED, TIMED_OUT, FAILED = "completed", "refused", "timed_out", "failed"
OUTCOMES = (COMPLETED, REFUSED, TIMED_OUT, FAILED)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0–100) with linear interpolation between ranks (numpy's default); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Iterable[float | None]) -> dict:
    """Count, mean, min, p50, p95, p99 and max of the values that are not None (None fields when empty)."""
    data = [v for v in values if v is not None]
    if not data:
        return {"n": 0, "mean": None, "min": None, "p50": None, "p95": None, "p99": None, "max": None}
    return {
        "n": len(data),
        "mean": sum(data) / len(data),
        "min": min(data),
        "p50": percentile(data, 50),
        "p95": percentile(data, 95),
        "p99": percentile(data, 99),
        "max": max(data),
    }


@dataclass(frozen=True)
class ChunkSample:
    """One partial matched to the end of its chunk's audio. ``timing`` fields are None without ``timing``."""

    session: int
    chunk: int
    sent: float  # when the chunk's audio had been sent (monotonic s)
    received: float  # when its partial arrived (monotonic s)
    wait: float | None = None
    compute: float | None = None
    total: float | None = None
    batch: int | None = None

    @property
    def latency(self) -> float:
        return self.received - self.sent

    @property
    def relay(self) -> float | None:
        if None in (self.total, self.wait, self.compute):
            return None
        return self.total - self.wait - self.compute  # type: ignore[operator]

    @property
    def client_side(self) -> float | None:
        return None if self.total is None else self.latency - self.total


@dataclass
class SessionFigures:
    """The per-session numbers the report aggregates."""

    index: int
    outcome: str
    audio_seconds: float
    started: float
    connected: float | None
    finished: float | None
    refused_status: int | None = None
    refused_code: str | None = None
    error: str | None = None  # client-side error, or the first server error code
    error_message: str | None = None  # the first server error message's text
    told: bool = False  # got queue_status or a server error message (the client knew what was going on)
    queue_statuses: int = 0
    rtf: float | None = None
    rtf_censored: float | None = None  # rtf, or for a timed-out session (its end − first audio) / duration
    first_partial: float | None = None
    final_latency: float | None = None
    ordered: bool = True  # chunk numbers of results strictly increasing
    chunks: list[ChunkSample] = field(default_factory=list)


def classify(rec: SessionRecord) -> str:
    """The session's outcome: completed, refused, timed_out or failed (see module docstring)."""
    if rec.refused_status is not None:
        return REFUSED
    if rec.final is not None and not rec.errors:
        return COMPLETED
    if rec.error == "timeout":
        return TIMED_OUT
    return FAILED


def chunk_samples(rec: SessionRecord, session: int = 0) -> list[ChunkSample]:
    """Partials (not the final) matched by their ``chunk`` field to ``rec.chunk_ends``; first copy wins."""
    samples, seen = [], set()
    for received, message in rec.messages:
        chunk = message.get("chunk")
        if "mode" not in message or message.get("is_final") or not isinstance(chunk, int) or chunk in seen:
            continue
        if not 0 <= chunk < len(rec.chunk_ends):
            continue
        seen.add(chunk)
        timing = message.get("timing") or {}
        samples.append(
            ChunkSample(
                session,
                chunk,
                rec.chunk_ends[chunk],
                received,
                timing.get("wait"),
                timing.get("compute"),
                timing.get("total"),
                timing.get("batch"),
            )
        )
    return samples


def is_ordered(rec: SessionRecord) -> bool:
    """True when the results' chunk numbers strictly increase (no duplicate, nothing out of order)."""
    chunks = [m["chunk"] for m in rec.results if isinstance(m.get("chunk"), int)]
    return all(a < b for a, b in pairwise(chunks))


def _first_partial(rec: SessionRecord) -> float | None:
    if rec.first_audio is None:
        return None
    for received, message in rec.messages:
        if "mode" in message and not message.get("is_final"):
            return received - rec.first_audio
    return None


def _final_time(rec: SessionRecord) -> float | None:
    return next((t for t, m in rec.messages if "mode" in m and m.get("is_final")), None)


def analyse(rec: SessionRecord, audio_seconds: float, index: int = 0) -> SessionFigures:
    """Every per-session figure of ``rec``, a session that streamed ``audio_seconds`` of audio."""
    outcome = classify(rec)
    errors = rec.errors
    figures = SessionFigures(
        index=index,
        outcome=outcome,
        audio_seconds=audio_seconds,
        started=rec.started,
        connected=rec.connected,
        finished=rec.finished,
        refused_status=rec.refused_status,
        refused_code=(rec.refused_body or {}).get("code"),
        error=rec.error
        or (errors[0].get("code") if errors else None)
        or (f"close {rec.close_code}" if outcome == FAILED and rec.close_code else None),
        error_message=errors[0].get("message") if errors else None,
        queue_statuses=len(rec.queue_statuses),
        told=bool(rec.queue_statuses or errors),
        first_partial=_first_partial(rec),
        ordered=is_ordered(rec),
        chunks=chunk_samples(rec, index),
    )
    final_at = _final_time(rec)
    if outcome == COMPLETED and final_at is not None:
        if rec.first_audio is not None and audio_seconds > 0:
            figures.rtf = (final_at - rec.first_audio) / audio_seconds
        if rec.speech_end is not None:
            figures.final_latency = final_at - rec.speech_end
    figures.rtf_censored = figures.rtf
    if outcome == TIMED_OUT and None not in (rec.first_audio, rec.finished) and audio_seconds > 0:
        figures.rtf_censored = (rec.finished - rec.first_audio) / audio_seconds  # type: ignore[operator]
    return figures
