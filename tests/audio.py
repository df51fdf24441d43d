"""Deterministic test audio as 16-bit LE PCM bytes at 16 kHz."""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000


def noise(seconds: float, seed: int = 0, amplitude: float = 0.1) -> bytes:
    """Gaussian noise: the random-weight model emits tokens for it, so transcripts are non-empty."""
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal(int(seconds * SAMPLE_RATE)) * amplitude * 32768
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def tones(seconds: float, seed: int = 0) -> bytes:
    """A few amplitude-modulated tones: speech-like energy envelope without being noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    signal = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(150, 2500, 4))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
    return (signal * envelope * 3000).astype("<i2").tobytes()
