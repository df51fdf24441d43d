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


def say(text: str, voice: str = "en", speed: int = 160) -> bytes:
    """One sentence spoken by espeak-ng, as 16 kHz mono 16-bit PCM (espeak-ng → sox). Raises AudioError
    without the two tools (Debian packages espeak-ng, sox)."""
    import shutil
    import subprocess
    import tempfile

    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise AudioError(f"{tool} is not installed (apt-get install espeak-ng sox)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "say.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True)
        return subprocess.run(
            ["sox", str(wav), "-t", "raw", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed", "-"],
            check=True,
            capture_output=True,
        ).stdout


def speech(
    sentences: list[str] | tuple[str, ...], *, pause: float = 1.2, lead: float = 0.5, voice: str = "en"
) -> bytes:
    """``sentences`` spoken one after another with ``pause`` seconds of silence between them and ``lead``
    seconds before the first and after the last: real speech with real sentence ends, for VAD and 2pass."""
    silence = b"\x00\x00" * int(lead * SAMPLE_RATE)
    gap = b"\x00\x00" * int(pause * SAMPLE_RATE)
    return silence + gap.join(say(s, voice) for s in sentences) + silence
