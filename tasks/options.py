"""Per-stream decoding options and the audio constants: the part of the contract both sides validate.

The gateway validates a client's first message into :class:`StreamOptions` (app.protocol); the worker validates
the same options again when a task carries them (:meth:`StreamOptions.from_wire`), since a task payload is input
from the network too. Both use the bounds below, so a value one side accepts the other accepts. This module
imports nothing beyond the standard library: the gateway must not load numpy, torch or FunASR.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tasks.errors import ProtocolError

SAMPLE_RATE = 16000  # Hz: what the models take and what the wire carries (16-bit LE mono PCM)
BYTES_PER_SAMPLE = 2
SAMPLES_PER_CHUNK_UNIT = 960  # chunk_size entries count 60 ms units of 16 kHz audio

#: Bounds of every option, inclusive. A look-back of 0 keeps no cache (FunASR's Python client sends decoder 0);
#: -1 means "never trim the cache" in FunASR's streaming model: a stream's state and batch cost would grow
#: without bound, so it is refused.
CHUNK_MID_RANGE = (1, 50)  # 60 ms … 3 s per chunk
CHUNK_SIDE_RANGE = (0, 50)
LOOK_BACK_RANGE = (0, 16)  # chunks
MAX_HOTWORDS_BYTES = 4096  # UTF-8 bytes of the hotwords string as sent
MAX_HOTWORDS = 128  # entries (JSON object keys, or whitespace/comma-separated words)
MAX_WAV_NAME_CHARS = 256

#: FunASR's session modes: ``online`` streams partials from the streaming model; ``offline`` finds sentences with
#: the VAD and sends each one through the offline model and punctuation; ``2pass`` does both.
MODES = ("online", "2pass", "offline")


def _bad(message: str) -> ProtocolError:
    return ProtocolError(message, code="bad_config")


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """An integer (or a string of one) within [low, high]; anything else raises ProtocolError (bad_config)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _bad(f"{name} must be an integer, got {type(value).__name__}")
    try:
        number = int(value)
    except ValueError as exc:
        raise _bad(f"{name} must be an integer") from exc
    if not low <= number <= high:
        raise _bad(f"{name}={number} is outside [{low}, {high}]")
    return number


def check_chunk_size(value: Any) -> tuple[int, int, int]:
    """``[left, mid, right]`` (or FunASR's ``"5,10,5"``) within the chunk ranges."""
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)) or len(parts) != 3:
        raise _bad("chunk_size must be three integers like [5, 10, 5]")
    left = check_int("chunk_size[0]", parts[0].strip() if isinstance(parts[0], str) else parts[0], *CHUNK_SIDE_RANGE)
    mid = check_int("chunk_size[1]", parts[1].strip() if isinstance(parts[1], str) else parts[1], *CHUNK_MID_RANGE)
    right = check_int("chunk_size[2]", parts[2].strip() if isinstance(parts[2], str) else parts[2], *CHUNK_SIDE_RANGE)
    return left, mid, right


def check_hotwords(value: Any) -> str:
    """FunASR's hotwords: a JSON object word → weight (as a string, or an object), or plain words.

    Bounded in bytes and entries: they travel to the worker once per stream and bias every forward pass.
    """
    if isinstance(value, dict):
        value = json.dumps(value, ensure_ascii=False)
    if not isinstance(value, str):
        raise _bad("hotwords must be a string (FunASR sends a JSON object as a string)")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_HOTWORDS_BYTES:
        raise _bad(f"hotwords is {size} bytes; the limit is {MAX_HOTWORDS_BYTES}")
    try:
        parsed = json.loads(value) if value.lstrip().startswith("{") else None
    except ValueError:
        parsed = None
    count = len(parsed) if isinstance(parsed, dict) else len(value.replace(",", " ").split())
    if count > MAX_HOTWORDS:
        raise _bad(f"hotwords has {count} entries; the limit is {MAX_HOTWORDS}")
    return value


def check_wav_name(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_WAV_NAME_CHARS:
        raise _bad(f"wav_name must be a string of at most {MAX_WAV_NAME_CHARS} characters")
    return value


@dataclass(frozen=True)
class StreamOptions:
    """Per-stream decoding options, as a FunASR client sends them in its first message."""

    chunk_size: tuple[int, int, int] = (5, 10, 5)
    encoder_chunk_look_back: int = 4
    decoder_chunk_look_back: int = 1
    hotwords: str = ""  # biases the offline model (2pass, offline); paraformer-zh-streaming has no biasing
    itn: bool = True  # accepted and kept: FunASR's ITN is a C++ runtime feature; no Python model applies it
    wav_name: str = ""
    mode: str = "online"

    @property
    def needs_vad(self) -> bool:
        """2pass and offline find sentence ends with the VAD."""
        return self.mode != "online"

    @property
    def needs_streaming(self) -> bool:
        """online and 2pass send partials from the streaming model."""
        return self.mode != "offline"

    @property
    def chunk_samples(self) -> int:
        """Samples in one full chunk: chunk_size[1] × 60 ms."""
        return self.chunk_size[1] * SAMPLES_PER_CHUNK_UNIT

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_samples * BYTES_PER_SAMPLE

    def to_wire(self) -> dict:
        return {
            "chunk_size": list(self.chunk_size),
            "encoder_chunk_look_back": self.encoder_chunk_look_back,
            "decoder_chunk_look_back": self.decoder_chunk_look_back,
            "hotwords": self.hotwords,
            "itn": self.itn,
            "wav_name": self.wav_name,
            "mode": self.mode,
        }

    @classmethod
    def from_wire(cls, data: Any) -> StreamOptions:
        """Validate options from a task payload; anything missing, mistyped or out of range raises
        ProtocolError, so a bad payload fails its own task and never reaches the model."""
        if not isinstance(data, dict):
            raise _bad("stream options must be a mapping")
        missing = [k for k in ("chunk_size", "encoder_chunk_look_back", "decoder_chunk_look_back") if k not in data]
        if missing:
            raise _bad(f"stream options lack {', '.join(missing)}")
        itn = data.get("itn", True)
        if not isinstance(itn, bool):
            raise _bad("itn must be a boolean")
        mode = data.get("mode", "online")
        if mode not in MODES:
            raise _bad(f"mode must be one of {', '.join(MODES)}")
        return cls(
            chunk_size=check_chunk_size(data["chunk_size"]),
            encoder_chunk_look_back=check_int(
                "encoder_chunk_look_back", data["encoder_chunk_look_back"], *LOOK_BACK_RANGE
            ),
            decoder_chunk_look_back=check_int(
                "decoder_chunk_look_back", data["decoder_chunk_look_back"], *LOOK_BACK_RANGE
            ),
            hotwords=check_hotwords(data.get("hotwords", "")),
            itn=itn,
            wav_name=check_wav_name(data.get("wav_name", "")),
            mode=mode,
        )
