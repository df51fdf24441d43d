"""The ``/ws`` WebSocket endpoint: admission before the handshake, then one SessionHandler per connection."""

from __future__ import annotations

from flask import Blueprint, Flask, current_app, jsonify, request
from flask_sock import Sock

from app.admission import refusal_for
from app.handler import SessionHandler
from app.services import Services

bp = Blueprint("ws", __name__)
sock = Sock()

WS_PATH = "/ws"


def services() -> Services:
    return current_app.extensions["asr"]


@bp.before_app_request
def _admission():
    """Refuse a new session with a plain HTTP error (JSON body) before the WebSocket handshake."""
    if request.path != WS_PATH:
        return None
    svc = services()
    refusal = refusal_for(svc, request)
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


@sock.route(WS_PATH, bp=bp)
def transcribe(ws) -> None:
    svc = services()
    handler = SessionHandler(ws, svc, request.remote_addr or "")
    svc.sessions.add(handler.id, handler.client)
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
        "ping_interval": 25,  # finds clients that vanished without a TCP reset
    }
    app.register_blueprint(bp)
