"""Typed settings for the gateway and the workers, read once from ``ASR_``-prefixed environment variables.

Every setting is a field of :class:`Settings` with its default and unit beside it; the README's configuration
table is generated from the same field metadata (``python -m config``). Nothing else in the code reads
``os.environ``: the gateway factory and the Celery app take a ``Settings`` object.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "ASR_"
ROOT = Path(__file__).resolve().parent.parent

#: Where the run command puts the generated random-weight model when ``ASR_MODEL`` is empty.
DEFAULT_MODEL_DIR = ROOT / "models" / "paraformer-zh-streaming-tiny"
#: ... and the 2pass models beside it (folder names in the same parent folder).
DEFAULT_EXTRA_DIRS = {"vad": "fsmn-vad-tiny", "offline": "paraformer-zh-tiny", "punc": "ct-punc-tiny"}


def _setting(default: Any, doc: str, unit: str = "") -> Any:
    return field(default=default, metadata={"doc": doc, "unit": unit})


@dataclass(frozen=True)
class Settings:
    """All tunables of the service. Instances are immutable; build one with :meth:`from_env`."""

    # --- plumbing -------------------------------------------------------------------------------------------------
    redis_url: str = _setting(
        "redis://127.0.0.1:6379/0",
        "Redis for results, registry and queue inspection: redis://[user:password@]host"
        ":port/db, rediss://… (TLS; ?ssl_ca_certs=…), unix:///path?db=N, or sentinel://[user:password@]host:26379"
        "[,host2:26379]/db?master=NAME (see config/redis.py)",
    )
    broker_url: str = _setting("", "Celery broker; empty means the same as redis_url")
    queue: str = _setting("gpu", "Celery queue family for chunk tasks; each worker also owns '<queue>.<hostname>'")
    key_prefix: str = _setting("asr:", "Prefix of every Redis key and channel this service writes")

    # --- model ----------------------------------------------------------------------------------------------------
    model: str = _setting(
        "",
        "FunASR model: a local folder or a hub name (e.g. paraformer-zh-streaming). Empty: the embedded tiny "
        "random-weight model, generated on first use (transcripts are meaningless)",
    )
    model_revision: str = _setting("", "Hub revision for a hub model name; empty for the hub's default")
    default_model_dir: str = _setting(str(DEFAULT_MODEL_DIR), "Where the embedded default model is generated")
    device: str = _setting("cpu", "torch device for the model: cpu, cuda, cuda:1 …")
    ncpu: int = _setting(1, "torch intra-op threads per worker process", "threads")
    batch_max_size: int = _setting(64, "Most stream-chunks one forward pass takes", "chunks")
    batch_max_wait_ms: float = _setting(
        5.0, "How long the batcher waits for more ready chunks after the first, before a forward pass", "ms"
    )
    batching: bool = _setting(True, "Batch chunks of many streams into one forward pass (false: one call each)")
    exact: str = _setting(
        "auto", "Batched GEMMs bit-identical to FunASR's per-stream calls: auto (on for CPU float32), on, off"
    )
    autocast: str = _setting("", "CUDA only: run the batched model under autocast, float16 or bfloat16")
    precision: str = _setting(
        "fp32",
        "CPU: fp32 (FunASR's texts, bit for bit) or int8 (Linear layers in int8 with per-row scales: GEMMs 2.4x "
        "cheaper, about 2x the streams per worker, each stream's texts independent of its batch, int8's texts "
        "rather than FunASR's)",
    )
    encoder_chunk_look_back: int = _setting(4, "Default encoder look-back of the streaming model", "chunks")
    decoder_chunk_look_back: int = _setting(1, "Default decoder look-back of the streaming model", "chunks")
    vad_model: str = _setting(
        "",
        "Streaming VAD for the 2pass and offline modes (e.g. fsmn-vad, or a folder). Empty: the embedded tiny "
        "random-weight VAD while ASR_MODEL is the embedded default, otherwise none; 'none': no VAD",
    )
    vad_device: str = _setting("", "torch device for the VAD; empty: ASR_DEVICE")
    offline_model: str = _setting(
        "",
        "Offline model of the 2pass second pass and the offline mode (e.g. paraformer-zh, SeACo-Paraformer: "
        "hotwords and timestamps). Empty/'none': as for ASR_VAD_MODEL (without it, no 2pass/offline modes)",
    )
    offline_device: str = _setting("", "torch device for the offline model; empty: ASR_DEVICE")
    punc_model: str = _setting(
        "",
        "Punctuation of the offline pass: the realtime CT-Transformer FunASR's servers use "
        "(iic/punc_ct-transformer_zh-cn-common-vad_realtime-vocab272727, or a folder). "
        "Empty: as for ASR_VAD_MODEL; 'none': sentences without punctuation",
    )
    punc_device: str = _setting("", "torch device for the punctuation model; empty: ASR_DEVICE")
    sentence_max_batch: int = _setting(8, "Most sentences one offline-pass round takes", "sentences")
    sentence_max_defer_ms: float = _setting(
        1000.0,
        "Sentences yield to live chunks; one that has waited this long goes in the next round anyway",
        "ms",
    )
    fault_injection: bool = _setting(
        False,
        "Chaos testing only: a stream whose wav_name starts with '__raise__' makes the recognizer raise, "
        "one starting with '__kill_engine__' kills the worker's engine thread",
    )

    # --- sessions -------------------------------------------------------------------------------------------------
    max_frame_bytes: int = _setting(1 << 20, "Largest binary WebSocket frame accepted", "bytes")
    max_text_bytes: int = _setting(64 << 10, "Largest text WebSocket message accepted (larger: close 1009)", "bytes")
    max_messages_per_second: float = _setting(
        400.0,
        "WebSocket messages (frames) per second one session may send, in bursts of twice that; past it the "
        "session is closed with 1008 rate_limited. 0 = no limit",
        "messages/s",
    )
    config_timeout: float = _setting(
        10.0,
        "A session whose first message (its configuration) is not in by then is closed, and its worker slot freed",
        "s",
    )
    idle_timeout: float = _setting(
        30.0, "Gateway closes a session that sends no audio for this long (other messages do not count)", "s"
    )
    max_outstanding_seconds: float = _setting(
        10.0,
        "Audio a session may have submitted without results; past it the gateway stops reading that client "
        "(TCP back-pressure) until results catch up",
        "s",
    )
    max_outbox_bytes: int = _setting(
        1 << 20,
        "Messages waiting to be written to one client; a client this far behind is disconnected (slow_consumer)",
        "bytes",
    )
    stream_idle_timeout: float = _setting(120.0, "Worker frees a stream's model state unused for this long", "s")
    chunk_timeout: float = _setting(
        60.0, "A chunk without a result this long after submission ends the session with an error", "s"
    )
    replay_max_seconds: float = _setting(
        120.0, "Audio of the current utterance kept by the gateway to replay on another worker (32 KB/s)", "s"
    )
    replay_budget_mb: float = _setting(
        512.0, "Replay history all sessions of one gateway process may keep in all (beyond unanswered audio)", "MiB"
    )
    max_sessions_per_client: int = _setting(
        0, "Concurrent sessions one client address may hold, across all gateway processes; 0 = no limit"
    )
    api_token: str = _setting(
        "",
        "If set, the WebSocket (/ws and /), /api/* and /metrics require it as 'Authorization: Bearer …' "
        "(any case) or ?token=…; /healthz then tells anonymous callers only its status",
    )
    allowed_origins: str = _setting(
        "", "Comma-separated Origin values allowed on the WebSocket (/ws and /); empty allows any"
    )

    # --- capacity and admission -----------------------------------------------------------------------------------
    max_pending: int = _setting(5000, "New sessions are refused (503) while more chunk tasks than this wait")
    worker_max_streams: int = _setting(
        0, "Open streams one worker accepts; 0 = no limit. Admission refuses when every worker is full"
    )
    queue_status_interval: float = _setting(1.0, "How often queue_status is pushed to each client", "s")
    queue_status_step: int = _setting(
        10, "queue_status is also pushed when pending changes by at least this much", "tasks"
    )
    monitor_interval: float = _setting(0.25, "How often the gateway samples queue depth and workers", "s")
    retry_after: int = _setting(5, "Retry-After sent with a 503", "s")

    # --- file transcription ---------------------------------------------------------------------------------------
    file_max_bytes: int = _setting(
        512 << 20, "Largest upload to /api/transcribe and /v1/audio/transcriptions (413)", "bytes"
    )
    file_max_seconds: float = _setting(
        3600.0,
        "Longest audio one upload may decode to (413); its 16 kHz audio sits in Redis while it runs (115 MB/h)",
        "s",
    )
    file_max_uploads: int = _setting(
        4,
        "Uploads one gateway process receives and decodes at once; more get 503 (bounds its disk: this many times "
        "ASR_FILE_MAX_BYTES, plus their decoded audio)",
    )
    file_max_jobs: int = _setting(
        8, "Unfinished file jobs across the service; past it new uploads get 503 (bounds Redis: jobs x max seconds)"
    )
    file_live_pending_limit: int = _setting(
        200, "New file jobs get 503 while more live chunk tasks than this wait: live sessions are falling behind"
    )
    file_sync_seconds: float = _setting(
        60.0, "Uploads up to this long are answered when done; longer ones (or ?async=1) get 202 and a job id", "s"
    )
    file_sync_timeout: float = _setting(
        600.0, "A synchronous upload (and every /v1/audio/transcriptions call) waits this long, then gets 504", "s"
    )
    file_ttl: float = _setting(86400.0, "A file job and its result are kept this long after their last change", "s")
    file_inflight: int = _setting(8, "File segments one worker holds in its engine at once", "segments")
    file_max_batch: int = _setting(
        4, "File segments one offline round takes (rounds run only when no live work waits)", "segments"
    )
    file_live_round_seconds: float = _setting(
        8.0,
        "While live streams are open, a worker's offline round takes at most this much file audio (one file sentence "
        "at least): a live chunk arriving meanwhile waits for the round",
        "s",
    )
    file_tmp_dir: str = _setting("", "Where the gateway spools uploads while decoding them; empty: the system temp dir")

    # --- gateway process ------------------------------------------------------------------------------------------
    bind: str = _setting("127.0.0.1:8000", "host:port the gateway listens on (gunicorn)")
    gateway_processes: int = _setting(1, "gunicorn worker processes for the gateway", "processes")
    gateway_connections: int = _setting(2000, "Open connections per gateway process (gevent)", "connections")
    proxy_hops: int = _setting(
        0, "Reverse proxies in front of the gateway whose X-Forwarded-For/-Proto to trust (per-client limits)"
    )
    drain_seconds: int = _setting(30, "On SIGTERM a gateway process lets open sessions run this long", "s")
    log_level: str = _setting("info", "Log level of the gateway's own loggers (workers: celery --loglevel)")
    log_format: str = _setting(
        "text",
        "Log line format of gateways and workers: text (human-readable) or json (one JSON object per line, "
        "with session, worker, stream and chunk as keys on the lines about them)",
    )
    log_tasks: bool = _setting(
        False, "Log every chunk task received/succeeded at INFO (two lines per chunk; off keeps logs readable)"
    )

    # --- workers --------------------------------------------------------------------------------------------------
    heartbeat_interval: float = _setting(1.0, "Worker heartbeat period", "s")
    heartbeat_ttl: float = _setting(
        4.0, "A worker whose heartbeat is older than this is dead: its sessions move elsewhere", "s"
    )
    chunk_task_expires: float = _setting(300.0, "Chunk tasks not started within this are discarded", "s")
    worker_metrics_port: int = _setting(
        0,
        "Port of the worker process's own Prometheus /metrics (batch sizes, forward and wait times, failures, "
        "process memory); 0 = off. One port per worker process: give each process on one host its own",
        "port",
    )
    worker_metrics_addr: str = _setting(
        "127.0.0.1", "Address the worker's metrics port listens on (0.0.0.0 in containers, for Prometheus to reach it)"
    )

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def model_is_default(self) -> bool:
        return not self.model

    @property
    def model_path(self) -> str:
        return self.model or self.default_model_dir

    def extra_model(self, kind: str) -> tuple[str, bool] | None:
        """Where the ``vad``, ``offline`` or ``punc`` model comes from: (folder or hub name, is the embedded default),
        or None when the worker runs without it."""
        value = {"vad": self.vad_model, "offline": self.offline_model, "punc": self.punc_model}[kind].strip()
        if value.lower() == "none":
            return None
        if value:
            return value, False
        if not self.model_is_default:
            return None  # a real streaming model with a random-weight VAD beside it would surprise everyone
        return str(Path(self.default_model_dir).parent / DEFAULT_EXTRA_DIRS[kind]), True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``ASR_*`` variables; explicit ``overrides`` win over the environment."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f, raw)
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind: Any = type(f.default)
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind in (int, float):
            return kind(raw)
        return raw
    except ValueError as exc:
        raise ValueError(f"{PREFIX}{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from exc


def describe() -> list[tuple[str, str, str, str]]:
    """(variable, default, unit, doc) rows for the README's configuration table."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default if f.name != "default_model_dir" else "models/paraformer-zh-streaming-tiny"
        rows.append((PREFIX + f.name.upper(), repr(default), f.metadata.get("unit", ""), f.metadata["doc"]))
    return rows
