"""File transcription over HTTP: ``/api/transcribe`` (jobs) and ``/v1/audio/transcriptions`` (OpenAI-compatible).

An upload is spooled to disk (never whole in memory; at most ``ASR_FILE_MAX_BYTES``), decoded and resampled to
16 kHz mono by :mod:`app.media` in a native thread (the gevent loop keeps serving live sessions meanwhile), and
becomes a job in Redis (:mod:`tasks.filejobs`) that the workers split, fan out and punctuate
(:mod:`tasks.filework`). Audio up to ``ASR_FILE_SYNC_SECONDS`` is answered when done; longer audio, or
``?async=1``, gets 202 with the job's id, to poll with ``GET /api/transcribe/<id>`` and cancel with ``DELETE``.
OpenAI's endpoint always answers when done (its clients expect that), within ``ASR_FILE_SYNC_TIMEOUT``.

Errors are JSON in OpenAI's shape for both APIs: ``{"error": {"message", "type", "param", "code"}}`` with 400
(bad parameter), 401, 404, 409 (not done yet / cancelled), 413 (too big or too long), 415 (not audio), 422
(empty or corrupt audio), 503 with ``Retry-After`` (no worker with the offline model, too many jobs, or live
sessions falling behind: live sessions come first), 504 (a synchronous request waited too long; the job goes on).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from app.formats import FORMATS, render, with_text
from app.services import Services
from tasks.filejobs import FINISHED, FileJobStore
from tasks.options import check_hotwords

if TYPE_CHECKING:
    from app.media import DecodedAudio

bp = Blueprint("files", __name__)
logger = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # a synchronous request checks its job this often
COPY_BLOCK = 1 << 20
OPENAI_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")


class ApiError(Exception):
    """An HTTP error answered as ``{"error": {...}}`` (see the module docstring)."""

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None, retry: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.retry = status, code, message, param, retry

    def response(self) -> tuple[Response, int, dict]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        headers = {"Retry-After": str(self.retry)} if self.retry else {}
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="asr"'
        return jsonify(body), self.status, headers


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return exc.response()


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(_exc: RequestEntityTooLarge):
    limit = _services().settings.file_max_bytes
    return ApiError(413, "too_large", f"the upload is over the {limit}-byte limit").response()


def _services() -> Services:
    return current_app.extensions["asr"]


def _store(svc: Services) -> FileJobStore:
    return FileJobStore(svc.redis, svc.settings.key_prefix, svc.settings.file_ttl)


@bp.before_request
def _authorize() -> None:
    """Every file endpoint needs the API token when one is set."""
    from app.api import authorized

    if not authorized(_services()):
        raise ApiError(401, "unauthorized", "a valid API token is required")


# --- endpoints ----------------------------------------------------------------------------------------------------
@bp.post("/api/transcribe")
def transcribe():
    """Upload a file (multipart field ``file``, or the raw body); see the module docstring for the answers."""
    svc = _services()
    fmt = _choice(_param("format", "json"), FORMATS, "format")
    hotwords = _hotwords(_param("hotwords", ""))
    wait = _param("async", "0").lower() not in ("1", "true", "yes")
    job, decoded = _start_job(svc, hotwords=hotwords, language=_param("language", ""))
    if wait and decoded.seconds <= svc.settings.file_sync_seconds:
        return _answer(svc, job, fmt, openai=False, granularities=())
    location = f"/api/transcribe/{job}"
    body = {"id": job, "state": "queued", "status_url": location, "duration": round(decoded.seconds, 3)}
    return jsonify(body), 202, {"Location": location}


@bp.get("/api/transcribe/<job>")
def job_status(job: str):
    """A job's state and progress, with its result once done (``?format=`` renders it instead)."""
    store = _store(_services())
    record = _record(store, job)
    fmt = request.args.get("format")
    if fmt is not None:
        fmt = _choice(fmt, FORMATS, "format")
        if record["state"] != "done":
            raise ApiError(409, "not_done", f"job {job} is {record['state']}, not done")
        return _rendered(_result(store, job), fmt, openai=False, granularities=())
    body = describe(job, record)
    if record["state"] == "done":
        body["result"] = with_text(_result(store, job))
    return jsonify(body)


@bp.delete("/api/transcribe/<job>")
def cancel(job: str):
    """Cancel a job: its audio and partial results are freed at once, its queued segments dropped."""
    store = _store(_services())
    record = _record(store, job)
    if not store.cancel(job):
        raise ApiError(409, "finished", f"job {job} is already {record['state']}")
    return jsonify({"id": job, "state": "cancelled"})


@bp.post("/v1/audio/transcriptions")
def openai_transcriptions():
    """OpenAI's ``POST /v1/audio/transcriptions``: ``file``, ``model`` (any name; this service has one
    recognizer), ``language``, ``prompt`` (its words bias the model as hotwords), ``response_format``
    (json, text, srt, verbose_json, vtt) and ``timestamp_granularities[]`` (segment, word)."""
    svc = _services()
    fmt = _choice(_param("response_format", "json"), OPENAI_FORMATS, "response_format")
    granularities = request.form.getlist("timestamp_granularities[]") or request.form.getlist("timestamp_granularities")
    for value in granularities:
        _choice(value, ("segment", "word"), "timestamp_granularities")
    if not request.form.get("model") and not request.args.get("model"):
        raise ApiError(400, "missing_model", "model is required (any name)", param="model")
    hotwords = _hotwords(_param("prompt", ""))
    job, _ = _start_job(svc, hotwords=hotwords, language=_param("language", ""))
    return _answer(svc, job, fmt, openai=True, granularities=granularities)


@bp.get("/v1/models")
def openai_models():
    """OpenAI's model list: the one recognizer, for clients that check before they transcribe."""
    created = int(time.time())
    return jsonify(
        {"object": "list", "data": [{"id": "funasr", "object": "model", "created": created, "owned_by": "asr"}]}
    )


# --- the job's life -----------------------------------------------------------------------------------------------
def _start_job(svc: Services, *, hotwords: str, language: str) -> tuple[str, DecodedAudio]:
    """Admission, then spool, decode and hand the upload to the workers as a job; (job id, decoded audio)."""
    refusal = file_refusal(svc)
    if refusal is not None:
        raise refusal
    settings = svc.settings
    if not svc.uploads.acquire(blocking=False):
        message = f"this gateway is receiving {settings.file_max_uploads} uploads already; try again shortly"
        raise ApiError(503, "too_many_uploads", message, retry=settings.retry_after)
    with ExitStack() as stack:
        stack.callback(svc.uploads.release)
        spool = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="asr-upload-", dir=settings.file_tmp_dir or None))
        )
        name = _spool(spool / "upload", settings.file_max_bytes)
        pcm_path = spool / "audio.pcm"
        with open(pcm_path, "wb") as pcm:
            decoded = off_loop(_decoder(spool / "upload", pcm, settings.file_max_seconds))
        job = uuid.uuid4().hex
        with open(pcm_path, "rb") as pcm:
            meta = {"name": name[:256], "hotwords": hotwords, "language": language[:32]}
            _store(svc).create(job, pcm, decoded.samples, meta)
    logger.info("file job %s: %s, %.1f s (%s/%s)", job, name, decoded.seconds, decoded.container, decoded.codec)
    return job, decoded


def _decoder(path: Path, out: IO[bytes], max_seconds: float) -> Callable[[], DecodedAudio]:
    from app.media import decode_file, decode_raw_pcm  # PyAV and numpy: loaded by the first upload, not at start

    mimetype = request.mimetype
    if mimetype in ("audio/l16", "audio/pcm", "audio/x-pcm"):  # raw s16le: rate and channels as parameters
        params = request.mimetype_params
        rate = _int(params.get("rate") or request.args.get("rate") or "16000", "rate")
        channels = _int(params.get("channels") or request.args.get("channels") or "1", "channels")
        return lambda: decode_raw_pcm(path, out, rate=rate, channels=channels, max_seconds=max_seconds)
    return lambda: decode_file(path, out, max_seconds=max_seconds)


def _spool(target: Path, limit: int) -> str:
    """Write the upload to ``target`` in blocks; its file name. Multipart (field ``file``) or the raw body."""
    request.max_content_length = limit
    with open(target, "wb") as out:
        if request.mimetype == "multipart/form-data":
            upload = request.files.get("file")  # werkzeug spools file parts over 500 KB to disk
            if upload is None:
                raise ApiError(400, "missing_file", "a multipart upload needs a 'file' field", param="file")
            shutil.copyfileobj(upload.stream, out, COPY_BLOCK)
            name = upload.filename or "upload"
        else:
            while block := request.stream.read(COPY_BLOCK):
                out.write(block)
            name = request.headers.get("X-Filename", "upload")
        size = out.tell()
    if size == 0:
        raise ApiError(422, "empty_file", "the upload is empty", param="file")
    return name


def off_loop(call: Callable[[], DecodedAudio]) -> DecodedAudio:
    """Decode in a native thread while gevent serves the other greenlets (inline without gevent); a MediaError
    becomes the client's error. ``call`` must not touch sockets (they are gevent's)."""
    from app.media import MediaError

    try:
        try:
            from gevent import get_hub, monkey
        except ImportError:
            return call()
        if not monkey.is_module_patched("socket"):
            return call()
        return get_hub().threadpool.apply(call)
    except MediaError as exc:
        raise ApiError(exc.status, exc.code, exc.message, param="file") from exc


def _answer(svc: Services, job: str, fmt: str, *, openai: bool, granularities) -> Any:
    """Wait for the job (``ASR_FILE_SYNC_TIMEOUT`` at most) and answer with its rendered result."""
    store = _store(svc)
    deadline = time.monotonic() + svc.settings.file_sync_timeout
    while True:
        record = store.record(job)
        if record is None:
            raise ApiError(500, "job_lost", f"job {job} disappeared from Redis")
        state = record["state"]
        if state == "done":
            return _rendered(_result(store, job), fmt, openai=openai, granularities=granularities)
        if state == "failed":
            message = record.get("error_message") or "the transcription failed"
            raise ApiError(500, record.get("error_code") or "failed", message)
        if state == "cancelled":
            raise ApiError(409, "cancelled", f"job {job} was cancelled")
        if time.monotonic() >= deadline:
            raise ApiError(
                504, "timeout", f"not done in {svc.settings.file_sync_timeout:.0f} s; poll /api/transcribe/{job}"
            )
        time.sleep(POLL_SECONDS)


def _rendered(result: dict, fmt: str, *, openai: bool, granularities) -> Any:
    body, content_type = render(result, fmt, openai=openai, granularities=granularities)
    if isinstance(body, dict):
        return jsonify(body)
    return Response(body, content_type=content_type)


def _record(store: FileJobStore, job: str) -> dict[str, str]:
    record = store.record(job)
    if record is None:
        raise ApiError(404, "not_found", f"no transcription job {job!r} (unknown, or expired)")
    return record


def _result(store: FileJobStore, job: str) -> dict:
    result = store.result(job)
    if result is None:
        raise ApiError(404, "not_found", f"the result of job {job} expired")
    return result


def describe(job: str, record: dict[str, str]) -> dict:
    """A job's public state: progress in segments and in seconds of its audio."""
    state = record["state"]
    seconds = int(record.get("samples", 0)) / 16000
    total = int(record["segments_total"]) if "segments_total" in record else None
    done = int(record.get("segments_done", 0))
    speech_ms = int(record.get("speech_ms", 0) or 0)
    if state == "done":
        covered = seconds
    elif state in ("transcribing", "punctuating") and speech_ms:
        covered = seconds * min(int(record.get("audio_done_ms", 0)) / speech_ms, 1.0)  # the file's share done
    else:
        covered = 0.0
    error = {"code": record.get("error_code"), "message": record.get("error_message")} if state == "failed" else None
    return {
        "id": job,
        "state": state,
        "name": record.get("name", ""),
        "created": float(record.get("created", 0)),
        "updated": float(record.get("updated", 0)),
        "duration": round(seconds, 3),
        "progress": {
            "segments_done": done,
            "segments_total": total,
            "audio_seconds_done": round(covered, 3),
            "audio_seconds_total": round(seconds, 3),
            "split_seconds": round(int(record.get("split_ms", 0)) / 1000, 3),
        },
        "finished": state in FINISHED,
        "error": error,
    }


# --- admission and parameters -------------------------------------------------------------------------------------
def file_refusal(svc: Services) -> ApiError | None:
    """Why a new file job would be refused now (503), or None. Live sessions come first (module docstring)."""
    settings, snapshot = svc.settings, svc.monitor.snapshot
    retry = settings.retry_after
    if not snapshot.redis_ok:
        return ApiError(503, "backend_unavailable", f"Redis is unreachable: {snapshot.redis_error}", retry=retry)
    if not any("offline" in (w.get("modes") or []) for w in snapshot.workers.values()):
        return ApiError(
            503, "no_offline_worker", "no worker serves file transcription (ASR_OFFLINE_MODEL)", retry=retry
        )
    if snapshot.pending > settings.file_live_pending_limit:
        message = f"{snapshot.pending} live chunks are waiting: live sessions come first; try again later"
        return ApiError(503, "live_busy", message, retry=retry)
    jobs = int(snapshot.files.get("jobs", 0))
    if jobs >= settings.file_max_jobs:
        return ApiError(
            503, "too_many_jobs", f"{jobs} file jobs are running (limit {settings.file_max_jobs})", retry=retry
        )
    return None


def _param(name: str, default: str) -> str:
    value = request.args.get(name)
    if value is None and request.mimetype == "multipart/form-data":
        value = request.form.get(name)
    return default if value is None else value


def _choice(value: str, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise ApiError(
            400, "bad_parameter", f"{name} must be one of {', '.join(allowed)}, not {value[:40]!r}", param=name
        )
    return value


def _hotwords(value: str) -> str:
    from tasks.errors import ProtocolError

    try:
        return check_hotwords(value)
    except ProtocolError as exc:
        raise ApiError(400, "bad_hotwords", exc.message, param="hotwords") from exc


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"{name} must be an integer, not {value[:20]!r}", param=name) from None
