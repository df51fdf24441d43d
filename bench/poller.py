"""Samples the gateway's ``GET /api/queue`` about every half second while a load test runs.

The samples are the service's own view: chunk tasks waiting in Redis (``pending``, per worker), open streams per
worker, the gateway's open sessions, and the worker and gateway process ids that the memory sampler needs. A
sample that failed (gateway down, timeout) is kept with ``ok=False`` so gaps show in the report.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.5  # seconds between samples
REQUEST_TIMEOUT = 2.0  # seconds; a busy gateway may answer slowly, but a poll must not pile up


def http_base(ws_url: str) -> str:
    """``ws://host:port/ws`` → ``http://host:port`` (``wss`` → ``https``); path and query dropped."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


def url_token(ws_url: str) -> str | None:
    """The ``?token=`` of a ws URL, to pass on to /api/queue (which needs the same token)."""
    values = parse_qs(urlsplit(ws_url).query).get("token")
    return values[0] if values else None


@dataclass(frozen=True)
class QueueSample:
    """One /api/queue answer at monotonic time ``t``; fields are None when the request failed."""

    t: float
    ok: bool
    pending: int | None = None
    streams: int | None = None
    gateway_sessions: int | None = None
    admitting: bool | None = None
    gateway_pid: int | None = None
    workers: tuple[dict, ...] = field(default_factory=tuple)  # id, pid, pending, streams, stats

    @classmethod
    def from_body(cls, t: float, body: dict | None) -> QueueSample:
        if not body:
            return cls(t, False)
        workers = tuple(
            {
                "id": w.get("id"),
                "pid": w.get("pid"),
                "pending": w.get("pending"),
                "streams": w.get("streams"),
                "stats": w.get("stats") or {},
            }
            for w in body.get("workers", [])
        )
        return cls(
            t,
            True,
            body.get("pending"),
            body.get("streams"),
            body.get("gateway_sessions"),
            body.get("admitting"),
            body.get("gateway_pid"),
            workers,
        )

    def to_json(self, t0: float) -> dict:
        return {
            "t": round(self.t - t0, 3),
            "ok": self.ok,
            "pending": self.pending,
            "streams": self.streams,
            "gateway_sessions": self.gateway_sessions,
            "admitting": self.admitting,
            "workers": [{k: w[k] for k in ("id", "pending", "streams")} for w in self.workers],
        }


def fetch_queue(http: str, token: str | None = None, timeout: float = REQUEST_TIMEOUT) -> dict | None:
    """GET ``/api/queue`` (blocking); None when the gateway does not answer 200 with JSON."""
    request = urllib.request.Request(http + "/api/queue")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        logger.debug("GET /api/queue failed: %s", exc)
        return None


class QueuePoller:
    """Polls /api/queue every ``interval`` seconds until stopped; ``samples`` grows in time order."""

    def __init__(self, http: str, *, interval: float = DEFAULT_INTERVAL, token: str | None = None) -> None:
        self.http = http
        self.interval = interval
        self.token = token
        self.samples: list[QueueSample] = []

    @property
    def latest(self) -> QueueSample | None:
        return self.samples[-1] if self.samples else None

    @property
    def latest_ok(self) -> QueueSample | None:
        return next((s for s in reversed(self.samples) if s.ok), None)

    async def poll_once(self) -> QueueSample:
        body = await asyncio.to_thread(fetch_queue, self.http, self.token)
        sample = QueueSample.from_body(time.monotonic(), body)
        self.samples.append(sample)
        return sample

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until ``stop`` is set (one more sample is taken after it is)."""
        while True:
            started = time.monotonic()
            await self.poll_once()
            if stop.is_set():
                return
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, self.interval - (time.monotonic() - started)))
            except TimeoutError:
                pass
