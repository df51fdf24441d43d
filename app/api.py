"""HTTP endpoints: probes (``/healthz``, ``/readyz``, ``/livez``), ``/metrics`` and ``/api/…`` for operators.

With ``ASR_API_TOKEN`` set, everything that tells how loaded the back end is (queue depths, workers, models,
metrics) needs the token; the probes stay open but ``/healthz`` then tells an anonymous caller only its status.
"""

from __future__ import annotations

import logging
import os

from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.admission import UNAUTHORIZED, capacity_refusal, refusal_for, token_ok
from app.metrics import SPLIT_REFUSAL
from app.services import Services

bp = Blueprint("api", __name__)
logger = logging.getLogger(__name__)

DEFAULT_MODEL_WARNING = (
    "workers serve the embedded tiny random-weight model: transcripts are meaningless; set ASR_MODEL"
)


def services() -> Services:
    return current_app.extensions["asr"]


def authorized(svc: Services) -> bool:
    """Whether this request carries the API token (always true when none is configured)."""
    return token_ok(svc.settings, request.headers.get("Authorization"), request.args.get("token"))


def unauthorized(body: dict | None = None) -> tuple[Response, int, dict]:
    """401 with ``body`` (default: the error alone) and the challenge RFC 7235 requires with every 401."""
    return jsonify(body or UNAUTHORIZED.body()), UNAUTHORIZED.status, {"WWW-Authenticate": 'Bearer realm="asr"'}


@bp.get("/healthz")
def healthz():
    """200 when Redis answers and at least one worker is alive, else 503; the body says which part failed.

    Without the API token (when one is set) the body is only ``{"status": …}``: probes and uptime checks keep
    working, while workers, models and Redis errors are for those who hold the token.
    """
    svc = services()
    snapshot = svc.monitor.snapshot
    healthy = snapshot.redis_ok and bool(snapshot.workers)
    code = 200 if healthy else 503
    body: dict = {"status": "ok" if healthy else "unavailable"}
    if not authorized(svc):
        return jsonify(body), code
    default_model = any(w.get("model_is_default") for w in snapshot.workers.values())
    body.update(
        {
            "redis": {"ok": snapshot.redis_ok, "error": snapshot.redis_error},
            "workers": len(snapshot.workers),
            "models": sorted({str(w.get("model")) for w in snapshot.workers.values()}),
            # per stage (streaming, vad, offline, punc): the distinct (model, device) pairs the workers serve with
            "stages": _stages(snapshot.workers.values()),
            "modes": sorted({m for w in snapshot.workers.values() for m in w.get("modes") or []}),
            "default_model": default_model,
            "warnings": [DEFAULT_MODEL_WARNING] if default_model else [],
        }
    )
    return jsonify(body), code


def _stages(workers) -> dict[str, list[dict]]:
    stages: dict[str, list[dict]] = {}
    for info in workers:
        for stage, model in (info.get("models") or {}).items():
            entry = {"model": model.get("model"), "device": model.get("device"), "default": model.get("default")}
            if entry not in stages.setdefault(stage, []):
                stages[stage].append(entry)
    return stages


@bp.get("/readyz")
def readyz():
    """200 while this gateway can read Redis: ready to be sent traffic (it answers 503 itself when no worker
    is up, so worker outages must not take gateways out of a load balancer, unlike /healthz)."""
    snapshot = services().monitor.snapshot
    body = {"status": "ready" if snapshot.redis_ok else "unavailable", "redis": snapshot.redis_error}
    return jsonify(body), 200 if snapshot.redis_ok else 503


@bp.get("/livez")
def livez():
    """200 whenever this process serves HTTP; reads nothing. For liveness probes, which must neither depend on
    Redis (restarting a gateway does not bring Redis back) nor need the API token."""
    return jsonify({"status": "alive"})


@bp.get("/")
def page():
    """The browser client: microphone capture, live transcript, queue banner (app/static)."""
    return current_app.send_static_file("index.html")


@bp.get("/api/admission")
def admission():
    """Whether this client would be admitted now, and why not: what a browser checks before opening /ws
    (it cannot read the status of a refused WebSocket handshake). Without the token only the refusal: how
    much work waits is for clients that may use the service."""
    svc = services()
    if not authorized(svc):
        return unauthorized({"admitting": False, "refusal": UNAUTHORIZED.body()})
    refusal = refusal_for(svc, request)
    body = {
        "admitting": refusal is None,
        "pending": svc.monitor.snapshot.pending,
        "refusal": refusal.body() if refusal else None,
        "retry_after": refusal.retry_after if refusal else None,
    }
    return jsonify(body), 200 if refusal is None else refusal.status


@bp.get("/metrics")
def metrics():
    """Prometheus exposition of this gateway's counters and the back end's gauges (see app.metrics).

    Needs the API token when one is set: Prometheus sends it with ``authorization: {credentials_file: …}``
    (or ``bearer_token_file``) in the scrape config. With more than one gateway process it answers 503 instead:
    each process has its own counters, and a scrape would see one of them at random (app.metrics).
    """
    svc = services()
    if not authorized(svc):
        return unauthorized()
    if svc.settings.gateway_processes > 1:
        message = SPLIT_REFUSAL.format(processes=svc.settings.gateway_processes)
        logger.error("%s", message)
        return Response(message + "\n", status=503, content_type="text/plain; charset=utf-8")
    return Response(generate_latest(svc.metrics.registry), content_type=CONTENT_TYPE_LATEST)


@bp.get("/api/queue")
def queue_state():
    """Queue depths, workers and sessions as JSON; the same numbers drive admission and queue_status."""
    svc = services()
    if not authorized(svc):
        return unauthorized()
    snapshot = svc.monitor.snapshot
    room = any(svc.dispatcher.has_room(w, info) for w, info in snapshot.workers.items())
    refusal = capacity_refusal(svc.settings, snapshot, room)
    workers = [
        {
            "id": w,
            "hostname": info.get("hostname"),
            "pid": info.get("pid"),
            "queue": info.get("queue"),
            "pending": snapshot.queues.get(info.get("queue", ""), 0),
            "leases": snapshot.leases.get(w, 0),
            "streams": info.get("streams", 0),
            "max_streams": info.get("max_streams", 0),
            "concurrency": info.get("concurrency"),
            "pool": info.get("pool"),
            "draining": info.get("draining", False),
            "recognizer": info.get("recognizer"),
            "device": info.get("device"),
            "stats": info.get("stats", {}),
        }
        for w, info in sorted(snapshot.workers.items())
    ]
    return jsonify(
        {
            "pending": snapshot.pending,
            "queues": snapshot.queues,
            "workers": workers,
            "streams": snapshot.streams(),
            "gateway_sessions": svc.sessions.count(),
            # file jobs, counted apart from live chunks: unfinished jobs, their audio left, segments queued
            "files": snapshot.files,
            "gateway_pid": os.getpid(),
            "max_pending": svc.settings.max_pending,
            "admitting": refusal is None,
            "refusal": refusal.body() if refusal else None,
            "sampled_at": snapshot.taken_at,
        }
    )
