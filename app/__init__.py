"""The gateway: a Flask app that accepts FunASR-protocol WebSocket sessions and relays them to Celery workers.

``create_app(settings)`` builds everything; importing this package connects to nothing.
"""

from __future__ import annotations

import logging

from flask import Flask

from config.redis import redact
from config.settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the gateway app and start its background parts (queue monitor, result router)."""
    from app import api, files, ws
    from app.services import Services

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    if settings.proxy_hops:  # client address and scheme as the trusted proxies saw them
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops, x_proto=settings.proxy_hops)  # type: ignore
    app.json.ensure_ascii = False  # type: ignore[attr-defined]  # transcripts are mostly CJK text
    app.extensions["asr"] = Services.build(settings)
    app.register_blueprint(api.bp)
    app.register_blueprint(files.bp)
    ws.init_app(app)
    logger.info("gateway ready: redis %s, queue %s", redact(settings.redis_url), settings.queue)
    return app
