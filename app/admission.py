"""Who may open a session now: authentication, origin, per-client limits and back-end capacity (no I/O).

Decided before the WebSocket handshake, so a refusal is a plain HTTP response with a JSON body — 503 with
``Retry-After`` when the service is full or has no worker, 401/403/429 for the client's own problems — instead of
an accepted session that would later time out.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.monitor import Snapshot
from config.settings import Settings

if TYPE_CHECKING:
    from flask import Request

    from app.services import Services


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str
    retry_after: int | None = None

    def body(self) -> dict:
        return {"type": "error", "code": self.code, "message": self.message}


UNAUTHORIZED = Refusal(401, "unauthorized", "a valid API token is required")


def bearer_token(header: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer …`` header, or None for a missing header or another scheme.

    The scheme is case-insensitive and may be padded with whitespace (RFC 7235 section 2.1), so ``bearer x``
    and `` Bearer   x `` both carry ``x``.
    """
    parts = (header or "").split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1].strip()


def token_ok(settings: Settings, header: str | None, query_token: str | None) -> bool:
    """True when no token is configured, or the request carries it (Bearer header or ?token=).

    Compared with :func:`hmac.compare_digest` on UTF-8 bytes: the time taken does not depend on how much of a
    guess matches (the str form would also refuse non-ASCII input with TypeError).
    """
    if not settings.api_token:
        return True
    expected = settings.api_token.encode()
    offered = [t for t in (bearer_token(header), query_token) if t is not None]
    return any(hmac.compare_digest(t.encode(), expected) for t in offered)


def origin_ok(settings: Settings, origin: str | None) -> bool:
    """Browsers always send Origin, so a listed-origins check stops other sites' pages from using a visitor's
    browser against us. Non-browser clients send none (and could send any): they pass, the token guards them."""
    allowed = [o.strip() for o in settings.allowed_origins.split(",") if o.strip()]
    return not allowed or origin is None or origin in allowed


def capacity_refusal(settings: Settings, snapshot: Snapshot, room: bool) -> Refusal | None:
    """Refuse when Redis is down, no worker is alive, too much work waits, or every worker is full."""
    retry = settings.retry_after
    if not snapshot.redis_ok:
        return Refusal(503, "backend_unavailable", f"Redis is unreachable: {snapshot.redis_error}", retry)
    if not snapshot.workers:
        return Refusal(503, "no_worker", "no recognition worker is running", retry)
    if snapshot.pending > settings.max_pending:
        return Refusal(
            503,
            "overloaded",
            f"{snapshot.pending} chunks are waiting (limit {settings.max_pending}); try again later",
            retry,
        )
    if not room:
        return Refusal(503, "at_capacity", "every worker is serving its maximum number of streams", retry)
    return None


def admit(
    settings: Settings,
    snapshot: Snapshot,
    *,
    room: bool,
    client_sessions: int,
    auth_header: str | None,
    query_token: str | None,
    origin: str | None,
) -> Refusal | None:
    """The first reason to refuse a new session, or None to admit it."""
    if not token_ok(settings, auth_header, query_token):
        return UNAUTHORIZED
    if not origin_ok(settings, origin):
        return Refusal(403, "origin_not_allowed", f"origin {origin!r} is not allowed")
    limit = settings.max_sessions_per_client
    if limit and client_sessions >= limit:
        return Refusal(429, "too_many_sessions", f"this client already has {client_sessions} open sessions")
    return capacity_refusal(settings, snapshot, room)


def refusal_for(svc: Services, request: Request, *, room: bool | None = None) -> Refusal | None:
    """Why a session opened by ``request`` would be refused now (None: it would be admitted).

    ``room`` None estimates from the snapshot whether some worker has a free slot; /ws passes True and lets
    the lease it then takes decide (app.dispatch.Dispatcher.reserve).
    """
    snapshot = svc.monitor.snapshot
    if room is None:
        room = any(svc.dispatcher.has_room(w, info) for w, info in snapshot.workers.items())
    return admit(
        svc.settings,
        snapshot,
        room=room,
        client_sessions=svc.sessions.count(request.remote_addr or ""),
        auth_header=request.headers.get("Authorization"),
        query_token=request.args.get("token"),
        origin=request.headers.get("Origin"),
    )
