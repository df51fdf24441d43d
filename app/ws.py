"""The WebSocket endpoints, ``/ws`` and ``/``: admission before the handshake, then one SessionHandler each.

FunASR's own clients (Python, html5, C++) connect at the root path, so a WebSocket upgrade on ``/`` is a session
exactly as on ``/ws``; a plain ``GET /`` still serves the page (app.api): Werkzeug routes upgrades and plain
requests to different rules.
"""

from __future__ import annotations

import socket

import redis
from flask import Blueprint, Flask, current_app, g, jsonify, request
from flask_sock import Sock

from app.admission import Refusal, refusal_for
from app.handler import SessionHandler
from app.reader import reader_class
from app.services import Services
from tasks.errors import AdmissionRefused, BackendUnavailable

bp = Blueprint("ws", __name__)
sock = Sock()

WS_PATH = "/ws"
WS_PATHS = (WS_PATH, "/")  # "/": where FunASR's clients connect
SEND_BUFFER_BYTES = 64 << 10  # SO_SNDBUF per WebSocket (Linux doubles it): results are small, 64 KiB is plenty


def services() -> Services:
    return current_app.extensions["asr"]


@bp.before_app_request
def _admission():
    """Admit a new session before the WebSocket handshake: check it, then lease it a slot on a worker.

    A refusal is a plain HTTP error with a JSON body (and Retry-After for 503), never an accepted session that
    would fail later.
    """
    if request.path not in WS_PATHS or request.headers.get("Upgrade", "").lower() != "websocket":
        return None
    svc = services()
    refusal = refusal_for(svc, request, room=True)
    if refusal is None and not svc.router.connected:
        refusal = Refusal(
            503, "backend_unavailable", "this gateway is not subscribed to results yet", svc.settings.retry_after
        )
    if refusal is None:
        refusal = _lease(svc, request.remote_addr or "")
    if refusal is not None:
        svc.metrics.refused.labels(refusal.code).inc()
        response = jsonify(refusal.body())
        response.status_code = refusal.status
        if refusal.retry_after:
            response.headers["Retry-After"] = str(refusal.retry_after)
        return response
    # Audio is incompressible noise to zlib: per-message deflate would only burn gateway CPU on every frame.
    request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    return None


def _lease(svc: Services, client: str) -> Refusal | None:
    """Take the session's slots, all or none: its client address's (ASR_MAX_SESSIONS_PER_CLIENT, counted across
    gateway processes) and one on a worker. Both are leases in Redis, taken before the handshake, so a burst
    cannot overshoot either limit."""
    session_id = svc.router.new_session_id()
    limit = svc.settings.max_sessions_per_client
    try:
        if limit and not svc.dispatcher.leases.reserve_client(client, session_id, limit):
            return Refusal(429, "too_many_sessions", f"this client already has {limit} open sessions")
        g.asr_lease = (session_id, svc.dispatcher.reserve(session_id))
        return None
    except (AdmissionRefused, BackendUnavailable) as exc:
        svc.dispatcher.release(session_id)
        return Refusal(503, exc.code, exc.message, svc.settings.retry_after)
    except redis.RedisError as exc:
        svc.dispatcher.release(session_id)
        return Refusal(503, "backend_unavailable", f"cannot reach Redis: {exc}", svc.settings.retry_after)


@bp.teardown_app_request
def _release_lease(_exc) -> None:
    """The session is over (or its handshake failed): give its worker slot back."""
    lease = g.pop("asr_lease", None)
    if lease is not None:
        services().dispatcher.release(lease[0])


def transcribe(ws) -> None:
    svc = services()
    session_id, worker = g.asr_lease
    try:  # a fixed kernel send buffer: what a client that stops reading can park in the kernel stays bounded
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    except (OSError, AttributeError):
        pass
    handler = SessionHandler(ws, svc, request.remote_addr or "", session_id, worker)
    svc.sessions.add(session_id, handler.client)
    svc.metrics.sessions.inc()
    handler.run()


# flask-sock's decorator returns nothing, so the one view is registered on each path by calling it.
sock.route(WS_PATH, bp=bp)(transcribe)
sock.route("/", bp=bp, endpoint="transcribe_root")(transcribe)


def init_app(app: Flask) -> None:
    services: Services = app.extensions["asr"]
    app.config["SOCK_SERVER_OPTIONS"] = {
        "subprotocols": ["binary"],  # FunASR's clients ask for it and some refuse a server that does not echo it
        # Our reader (app.reader) replaces the library's: per-type size limits, a message rate limit, bounded
        # read-ahead, cooperative yields. The library's own size check is off: ours answers with a JSON error.
        "thread_class": reader_class(services.limits),
        "max_message_size": None,
        "receive_bytes": 65536,
        # No server pings: a streaming client is never idle anyway; one that vanishes without a TCP reset is
        # closed after ASR_IDLE_TIMEOUT.
        "ping_interval": None,
    }
    app.register_blueprint(bp)
