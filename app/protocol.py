"""The FunASR runtime WebSocket protocol, client side in: parsing and validating text messages (no I/O).

A session opens with one JSON text message (``mode``, ``chunk_size``, ``wav_name``, ``audio_fs`` …, see FunASR's
``runtime/docs/websocket_protocol.md``), then sends binary 16-bit LE mono PCM frames, and ends an utterance with
``{"is_speaking": false}``. Fields FunASR's own clients send are accepted and kept even where this service does
not use them yet (``hotwords``, ``itn``, ``svs_lang`` …); anything else in the first message is refused, so a
typo does not silently fall back to a default.

WebSocket close codes used (RFC 6455 §7.4.1): 1003 unsupported data (mode, format, sample rate), 1007 invalid
payload (odd-length PCM), 1008 policy violation (malformed or out-of-order messages), 1009 message too big,
1011 internal error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from config.logs import printable
from tasks import options as opt
from tasks.errors import ProtocolError
from tasks.options import SAMPLE_RATE, StreamOptions

SUPPORTED_MODES = opt.MODES
#: Sample rates a client may send (``audio_fs``); anything but 16 kHz is resampled by the gateway (app.resample).
AUDIO_FS_RANGE = (8000, 48000)
MAX_NAMED_FIELDS = 5  # unknown field names quoted in an error or warning; the rest are counted

CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013

#: Every field FunASR's clients (Python, JS, C++, Java) send in their first message.
KNOWN_FIELDS = frozenset(
    {
        "mode",
        "chunk_size",
        "chunk_interval",
        "wav_name",
        "wav_format",
        "audio_fs",
        "is_speaking",
        "hotwords",
        "hotword",
        "itn",
        "encoder_chunk_look_back",
        "decoder_chunk_look_back",
        "svs_lang",
        "svs_itn",
        "is_end",
        # This service's extensions: queue_status=false turns off queue_status pushes for strict old clients;
        # timing=true adds a per-chunk latency breakdown to each result (for load testing).
        "queue_status",
        "timing",
    }
)
#: Fields that may come mid-stream without being a second configuration.
CONTROL_FIELDS = frozenset({"is_speaking", "is_end", "wav_name"})


@dataclass(frozen=True)
class SessionConfig:
    """A validated first message."""

    mode: str = "online"  # parse_config defaults to 2pass, as FunASR's servers do when a client sends no mode
    chunk_size: tuple[int, int, int] = (5, 10, 5)
    chunk_interval: int = 10
    wav_name: str = "microphone"
    wav_format: str = "pcm"
    audio_fs: int = SAMPLE_RATE
    is_speaking: bool = True
    hotwords: str = ""
    itn: bool = True
    encoder_chunk_look_back: int = 4
    decoder_chunk_look_back: int = 1
    queue_status: bool = True
    timing: bool = False
    extra: tuple[tuple[str, Any], ...] = ()  # accepted fields kept as sent (svs_lang, svs_itn)

    def stream_options(self) -> StreamOptions:
        return StreamOptions(
            chunk_size=self.chunk_size,
            encoder_chunk_look_back=self.encoder_chunk_look_back,
            decoder_chunk_look_back=self.decoder_chunk_look_back,
            hotwords=self.hotwords,
            itn=self.itn,
            wav_name=self.wav_name,
            mode=self.mode,
        )

    @property
    def chunk_bytes(self) -> int:
        """Bytes of 16-bit PCM in one full chunk: chunk_size[1] × 60 ms."""
        return self.stream_options().chunk_samples * 2


def _load_object(text: str) -> dict:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"text message is not JSON: {exc}", code="bad_json") from exc
    if not isinstance(data, dict):
        raise ProtocolError("text message must be a JSON object", code="bad_json")
    return data


def _int(data: dict, name: str, default: int, low: int, high: int) -> int:
    return opt.check_int(name, data.get(name, default), low, high)


def _names(fields: set[str]) -> str:
    """Unknown field names for an error message: a few, escaped and cut short; the rest counted."""
    names = sorted(fields)
    shown = ", ".join(printable(n, 40) for n in names[:MAX_NAMED_FIELDS])
    return shown + (f" and {len(names) - MAX_NAMED_FIELDS} more" if len(names) > MAX_NAMED_FIELDS else "")


def _bool(data: dict, name: str, default: bool) -> bool:
    value = data.get(name, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ProtocolError(f"{name} must be true or false, got {printable(repr(value), 40)}", code="bad_config")


def _check_mode(data: dict) -> str:
    mode = data.get("mode", "2pass")  # FunASR's servers and clients default to 2pass
    if mode not in SUPPORTED_MODES:
        raise ProtocolError(
            f"unknown mode {printable(str(mode), 40)!r}; use one of {', '.join(SUPPORTED_MODES)}",
            code="unsupported_mode",
            close_code=CLOSE_UNSUPPORTED,
        )
    return mode


def _check_audio(data: dict) -> tuple[str, int]:
    wav_format = str(data.get("wav_format", "pcm")).lower()
    if wav_format != "pcm":
        raise ProtocolError(
            f"wav_format {printable(wav_format, 40)!r} is not supported; send 16-bit PCM and wav_format 'pcm'",
            code="unsupported_format",
            close_code=CLOSE_UNSUPPORTED,
        )
    audio_fs = _int(data, "audio_fs", SAMPLE_RATE, 1, 1_000_000)
    if not AUDIO_FS_RANGE[0] <= audio_fs <= AUDIO_FS_RANGE[1]:
        raise ProtocolError(
            f"audio_fs {audio_fs} is not supported: send 16-bit mono PCM at {AUDIO_FS_RANGE[0]}-{AUDIO_FS_RANGE[1]} Hz",
            code="unsupported_sample_rate",
            close_code=CLOSE_UNSUPPORTED,
        )
    return wav_format, audio_fs


def parse_config(text: str, *, encoder_look_back: int = 4, decoder_look_back: int = 1) -> SessionConfig:
    """Validate a session's first message; raises :class:`ProtocolError` with a close code on any problem."""
    data = _load_object(text)
    unknown = set(data) - KNOWN_FIELDS
    if unknown:
        raise ProtocolError(f"unknown field(s) in the first message: {_names(unknown)}", code="unknown_field")
    mode = _check_mode(data)
    wav_format, audio_fs = _check_audio(data)
    wav_name = opt.check_wav_name(data.get("wav_name", "microphone"))
    return SessionConfig(
        mode=mode,
        chunk_size=opt.check_chunk_size(data.get("chunk_size", [5, 10, 5])),
        chunk_interval=_int(data, "chunk_interval", 10, 1, 1000),
        wav_name=wav_name,
        wav_format=wav_format,
        audio_fs=audio_fs,
        is_speaking=_bool(data, "is_speaking", True),
        hotwords=opt.check_hotwords(data.get("hotwords", data.get("hotword", ""))),
        itn=_bool(data, "itn", True),
        encoder_chunk_look_back=_int(data, "encoder_chunk_look_back", encoder_look_back, *opt.LOOK_BACK_RANGE),
        decoder_chunk_look_back=_int(data, "decoder_chunk_look_back", decoder_look_back, *opt.LOOK_BACK_RANGE),
        queue_status=_bool(data, "queue_status", True),
        timing=_bool(data, "timing", False),
        extra=tuple((k, data[k]) for k in ("svs_lang", "svs_itn") if k in data),
    )


def parse_control(text: str) -> tuple[bool | None, ProtocolError | None]:
    """A mid-stream text message → (new ``is_speaking`` or None, a non-fatal warning or None).

    FunASR's browser client repeats its whole configuration in the end-of-utterance message, so configuration
    fields next to ``is_speaking`` are ignored quietly. A message with configuration but no ``is_speaking`` is a
    second configuration: the session keeps its first one and the client is told. Non-JSON raises (non-fatal).
    """
    data = _load_object(text)
    unknown = set(data) - KNOWN_FIELDS
    warning = None
    if unknown:
        warning = ProtocolError(f"unknown field(s) ignored: {_names(unknown)}", code="unknown_field", close_code=None)
    if "is_speaking" not in data:
        if warning is None and set(data) - CONTROL_FIELDS:
            warning = ProtocolError(
                "session is already configured; the new configuration is ignored",
                code="already_configured",
                close_code=None,
            )
        return None, warning
    return _bool(data, "is_speaking", True), warning
