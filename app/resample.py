"""Client audio at another sample rate (``audio_fs``, e.g. 8 kHz telephony) converted to the models' 16 kHz.

The gateway resamples as frames arrive, with soxr's streaming resampler (libsoxr, "HQ" quality) — one per
utterance, so its filter state carries across frames exactly as over one long signal, and the rest of the service
(chunking, replay, VAD times) only ever sees 16 kHz. soxr needs numpy, which the gateway otherwise never loads: both
are imported on the first session that asks for another rate. Bound: soxr holds a filter's worth of samples
(a few ms) between calls; output is emitted as it is ready and flushed at the end of the utterance.
"""

from __future__ import annotations

from typing import Any

from tasks.options import SAMPLE_RATE


class Resampler:
    """16-bit mono PCM at ``rate`` Hz in, 16-bit mono PCM at 16 kHz out, frame by frame."""

    def __init__(self, rate: int) -> None:
        import numpy  # noqa: PLC0415 - lazily: only sessions at another rate pay for numpy and soxr
        import soxr  # noqa: PLC0415

        self.rate = rate
        self._np: Any = numpy
        self._soxr: Any = soxr
        self._stream: Any = None

    def feed(self, pcm: bytes) -> bytes:
        """Resample one frame (whole 16-bit samples); may return fewer bytes than a full conversion while the
        filter fills, never more than the input's worth plus what was held back."""
        if self._stream is None:
            self._stream = self._soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="int16", quality="HQ")
        samples = self._np.frombuffer(pcm, dtype="<i2")
        return self._stream.resample_chunk(samples, last=False).astype("<i2").tobytes()

    def flush(self) -> bytes:
        """End of the utterance: what the filter still holds. The next frame starts a fresh resampler."""
        if self._stream is None:
            return b""
        tail = self._stream.resample_chunk(self._np.zeros(0, dtype="<i2"), last=True).astype("<i2").tobytes()
        self._stream = None
        return tail
