"""The ``/ws`` WebSocket endpoint: admission before the handshake, then one SessionHandler per connection."""

from __future__ import annotations

import uuid

from flask import Blueprint, Flask, current_app, g, jsonify, request
from flask_sock import Sock

from app.admission import Refusal, refusal_for
from app.handler import SessionHandler
from app.services import Services
from tasks.errors import AdmissionRefused, BackendUnavailable

bp = Blueprint("ws", __name__)
sock = Sock()

WS_PATH = "/ws"


def services() -> Services:
    return current_app.extensions["asr"]


@bp.before_app_request
def _admission():
    """Admit a new session before the WebSocket handshake: check it, then lease it a slot on a worker.

    A refusal is a plain HTTP error with a JSON body (and Retry-After for 503), never an accepted session that
    would fail later.
    """
    if request.path != WS_PATH:
        return None
    svc = services()
    refusal = refusal_for(svc, request, room=True)
    if refusal is None:
        session_id = uuid.uuid4().hex
        try:
            g.asr_lease = (session_id, svc.dispatcher.reserve(session_id))
        except (AdmissionRefused, BackendUnavailable) as exc:
            refusal = Refusal(503, exc.code, exc.message, svc.settings.retry_after)
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


@bp.teardown_app_request
def _release_lease(_exc) -> None:
    """The session is over (or its handshake failed): give its worker slot back."""
    lease = g.pop("asr_lease", None)
    if lease is not None:
        services().dispatcher.release(lease[0])


@sock.route(WS_PATH, bp=bp)
def transcribe(ws) -> None:
    svc = services()
    session_id, worker = g.asr_lease
    handler = SessionHandler(ws, svc, request.remote_addr or "", session_id, worker)
    svc.sessions.add(session_id, handler.client)
    svc.metrics.sessions.inc()
    handler.run()


def init_app(app: Flask) -> None:
    settings = app.extensions["asr"].settings
    app.config["SOCK_SERVER_OPTIONS"] = {
        "subprotocols": ["binary"],  # FunASR's clients ask for it and some refuse a server that does not echo it
        # Frames a little over our limit still reach the handler, which answers with a JSON error; far larger
        # ones are cut by the library with close code 1009.
        "max_message_size": settings.max_frame_bytes * 4,
        "receive_bytes": 65536,
        # No server pings: with them simple-websocket runs a selector round before every frame it reads, and
        # a streaming client is never idle anyway; one that vanishes without a TCP reset is closed after
        # ASR_IDLE_TIMEOUT.
        "ping_interval": None,
    }
    app.register_blueprint(bp)
