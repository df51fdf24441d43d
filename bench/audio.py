"""Audio for load tests: 16-bit LE mono PCM at 16 kHz, from a WAV file or generated.

Generated audio is Gaussian noise: the tiny random-weight model emits tokens for it, so (almost) every chunk gets
a non-empty partial and chunk latency can be measured on it. Silence would produce no partials at all, because the
gateway, like FunASR's own servers, sends nothing for a chunk whose text is empty.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
BYTES_PER_SECOND = SAMPLE_RATE * 2


class AudioError(ValueError):
    """The audio file cannot be streamed as 16 kHz mono 16-bit PCM."""


def noise(seconds: float, seed: int = 0, amplitude: float = 0.1) -> bytes:
    """``seconds`` of deterministic Gaussian noise as 16-bit LE PCM (``amplitude`` relative to full scale)."""
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal(int(seconds * SAMPLE_RATE)) * amplitude * 32768
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def load_wav(path: str | Path) -> bytes:
    """PCM bytes of a 16 kHz, 16-bit WAV file; stereo is mixed down to mono. Raises AudioError otherwise."""
    try:
        with wave.open(str(path), "rb") as wav:
            rate, width, channels = wav.getframerate(), wav.getsampwidth(), wav.getnchannels()
            frames = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise AudioError(f"cannot read {path}: {exc}") from exc
    if rate != SAMPLE_RATE or width != 2:
        raise AudioError(f"{path} is {rate} Hz, {8 * width}-bit; the protocol needs 16000 Hz 16-bit PCM")
    if channels == 1:
        return frames
    samples = np.frombuffer(frames, dtype="<i2").reshape(-1, channels).astype(np.int32)
    return (samples.mean(axis=1)).astype("<i2").tobytes()


def duration(pcm: bytes) -> float:
    """Seconds of audio in 16 kHz 16-bit mono ``pcm``."""
    return len(pcm) / BYTES_PER_SECOND
