"""What FunASR itself returns for audio fed in the gateway's chunking: the faithfulness reference."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tasks.recognizer import ChunkWork, FunASRStreamingRecognizer, StreamOptions


@lru_cache(maxsize=4)
def recognizer(model_dir: str) -> FunASRStreamingRecognizer:
    return FunASRStreamingRecognizer.load(model_dir, device="cpu", ncpu=1)


def chunk_texts(model_dir: str, pcm: bytes, options: StreamOptions | None = None) -> list[str]:
    """Per-chunk texts of ``AutoModel.generate`` on full chunks of ``pcm`` and a final remainder chunk."""
    options = options or StreamOptions()
    rec = recognizer(model_dir)
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    step = options.chunk_samples
    full = len(audio) // step
    pieces = [(audio[i * step : (i + 1) * step], False) for i in range(full)] + [(audio[full * step :], True)]
    state = rec.open_stream(options)
    return [rec.recognize_one(ChunkWork(state, piece, final)) for piece, final in pieces]
