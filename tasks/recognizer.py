"""The streaming recognizer interface, FunASR's own per-stream path behind it, and a small fake.

A recognizer turns chunks of many streams into text. The engine (tasks.engine) owns one recognizer per worker
process, calls it from a single thread, and keeps one :class:`StreamState` per open stream. Implementations:

* :class:`FunASRStreamingRecognizer` — FunASR's reference path: one ``AutoModel.generate`` call per stream-chunk.
* ``tasks.batched.BatchedParaformerRecognizer`` — many streams' chunks in one forward pass, same output.
* :class:`FakeRecognizer` — deterministic text from audio statistics, for unit tests of the layers above.

All take 16 kHz mono float32 audio scaled to [-1, 1), i.e. int16 PCM divided by 32768.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.errors import ModelLoadError, RecognitionFailed
from tasks.options import StreamOptions

logger = logging.getLogger(__name__)


@dataclass
class StreamState:
    """One stream's model state. Recognizers keep what they need in ``cache``; only they touch it.

    ``chunks_done`` counts the chunks of the current utterance recognized so far; the engine maintains it.
    """

    options: StreamOptions
    cache: Any = field(default_factory=dict)
    chunks_done: int = 0


@dataclass
class ChunkWork:
    """One stream-chunk to recognize: ``audio`` is float32 in [-1, 1); ``is_final`` ends the utterance."""

    state: StreamState
    audio: np.ndarray
    is_final: bool


class StreamingRecognizer(ABC):
    """Recognizes chunks of many streams. Not thread-safe: the engine calls it from one thread.

    :meth:`process` returns, for each item in order, the chunk's text or a :class:`RecognitionFailed` for an
    item that failed (that stream's state is then unusable). If it raises instead, it must have left every
    state unchanged, so the engine can retry the items one by one to find the culprit. After a final chunk the
    state is ready for a new utterance.
    """

    #: Short name for logs, /healthz and benchmark tables.
    name = "abstract"
    #: Human description of the model behind it (path, size, device).
    description = ""

    def open_stream(self, options: StreamOptions) -> StreamState:
        return StreamState(options=options)

    @abstractmethod
    def process(self, work: Sequence[ChunkWork]) -> list[str | RecognitionFailed]:
        """Recognize one chunk for each item; see the class docstring for the failure contract."""

    def close(self) -> None:  # noqa: B027 - optional hook: most recognizers hold nothing to release
        """Release the model. The recognizer is unusable afterwards."""

    def warm_up(self, batch_sizes: Sequence[int] = (1, 8)) -> None:
        """Recognize a few throwaway chunks of noise (two per stream, the second final) at each batch size, so
        one-time lazy work — the batched path's kernel planning, allocator growth — happens before the first
        real session instead of delaying its first batches."""
        noise = np.random.default_rng(0).standard_normal(StreamOptions().chunk_samples).astype(np.float32) * 0.1
        for size in batch_sizes:
            states = [self.open_stream(StreamOptions()) for _ in range(size)]
            for final in (False, True):
                self.process([ChunkWork(state, noise, final) for state in states])


def load_automodel(model: str, *, device: str = "cpu", ncpu: int = 1, revision: str = "") -> Any:
    """Load a FunASR model the one supported way: ``AutoModel(model=…)`` with updates and progress off.

    ``model`` is a local FunASR model folder or a hub name. Errors are translated into :class:`ModelLoadError`.
    """
    try:
        from funasr import AutoModel
    except ImportError as exc:  # torchaudio CUDA builds and missing extras surface here
        raise ModelLoadError(f"cannot import funasr: {exc}") from exc
    if not os.path.isdir(model) and importlib.util.find_spec("modelscope") is None:
        # FunASR would fail later with a misleading "<model> is not registered".
        raise ModelLoadError(
            f"{model!r} is not a local folder, and downloading it from the model hub needs the hub client: "
            "pip install -r requirements-hub.txt, or point ASR_MODEL at a FunASR model folder"
        )
    kwargs: dict[str, Any] = dict(
        model=model, device=device, ncpu=ncpu, disable_update=True, disable_pbar=True, disable_log=True
    )
    if revision:
        kwargs["model_revision"] = revision
    try:
        return AutoModel(**kwargs)
    except Exception as exc:  # FunASR raises bare AssertionError/RuntimeError/KeyError for bad folders
        raise ModelLoadError(f"cannot load FunASR model {model!r}: {exc}") from exc


class FunASRStreamingRecognizer(StreamingRecognizer):
    """FunASR's own streaming path: ``AutoModel.generate(input=chunk, cache=…, is_final=…)`` per stream-chunk.

    This is the reference the batched recognizer must match, and what a worker runs with batching off.
    """

    name = "funasr"

    def __init__(self, automodel: Any, *, description: str = "") -> None:
        self.automodel = automodel
        self.description = description

    @classmethod
    def load(cls, model: str, *, device: str = "cpu", ncpu: int = 1, revision: str = "") -> FunASRStreamingRecognizer:
        automodel = load_automodel(model, device=device, ncpu=ncpu, revision=revision)
        return cls(automodel, description=f"{model} on {device}")

    def process(self, work: Sequence[ChunkWork]) -> list[str | RecognitionFailed]:
        out: list[str | RecognitionFailed] = []
        for item in work:
            try:
                out.append(self.recognize_one(item))
            except Exception as exc:  # noqa: BLE001 - isolate one stream's failure from the batch
                logger.exception("recognizer failed on stream %r", item.state.options.wav_name)
                out.append(RecognitionFailed(f"recognizer failed: {type(exc).__name__}: {exc}"))
        return out

    def recognize_one(self, item: ChunkWork) -> str:
        opts = item.state.options
        result = self.automodel.generate(
            input=item.audio,
            cache=item.state.cache,
            is_final=item.is_final,
            chunk_size=list(opts.chunk_size),
            encoder_chunk_look_back=opts.encoder_chunk_look_back,
            decoder_chunk_look_back=opts.decoder_chunk_look_back,
        )
        return result[0]["text"] if result else ""


class FakeRecognizer(StreamingRecognizer):
    """Deterministic stand-in for unit tests of the engine and gateway: no torch, no FunASR.

    The text of a chunk names the stream, the chunk number and the chunk's sample count, so tests can check
    routing and order: ``"<wav_name>#<n>:<samples>"`` (and ``"!"`` appended on a final chunk).
    """

    name = "fake"
    description = "fake recognizer (tests only)"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[int] = []  # batch sizes seen, for tests of the batcher
        self._lock = threading.Lock()

    def process(self, work: Sequence[ChunkWork]) -> list[str | RecognitionFailed]:
        with self._lock:
            self.calls.append(len(work))
        if self.delay:
            threading.Event().wait(self.delay)
        out: list[str | RecognitionFailed] = []
        for item in work:
            text = f"{item.state.options.wav_name}#{item.state.chunks_done}:{len(item.audio)}"
            out.append(text + ("!" if item.is_final else ""))
        return out


class FaultInjectingRecognizer(StreamingRecognizer):
    """Chaos-testing wrapper (``ASR_FAULT_INJECTION=1`` only): makes one chunk of a chosen stream fail.

    A stream whose ``wav_name`` is ``__raise__N`` fails on chunk number N (0-based) of each utterance, every
    time it is tried; every other stream is passed through untouched. The failure is raised for the whole
    batch, as a real model error inside a batched forward pass would be.
    """

    PREFIX = "__raise__"

    def __init__(self, inner: StreamingRecognizer) -> None:
        self.inner = inner
        self.name = f"{inner.name}+faults"
        self.description = inner.description

    def open_stream(self, options: StreamOptions) -> StreamState:
        return self.inner.open_stream(options)

    def process(self, work: Sequence[ChunkWork]) -> list[str | RecognitionFailed]:
        for item in work:
            name = item.state.options.wav_name
            if name.startswith(self.PREFIX):
                target = int(name[len(self.PREFIX) :] or 0)
                if item.state.chunks_done == target:
                    raise RuntimeError(f"injected fault on chunk {target} of {name}")
        return self.inner.process(work)

    def close(self) -> None:
        self.inner.close()
