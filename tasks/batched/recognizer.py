"""The cross-stream batched recognizer: many streams' chunks in one forward pass, FunASR's texts.

:class:`BatchedParaformerRecognizer` implements :class:`~tasks.recognizer.StreamingRecognizer` on top of
:class:`~tasks.batched.paraformer.BatchedParaformer`. One :meth:`~BatchedParaformerRecognizer.process` call:

1. checks each item on its own (audio shape, state ownership) and answers the bad ones with ``RecognitionFailed``
   in place — the only failures that can be pinned on one stream before the shared forward pass;
2. cuts each item's audio into model steps exactly as ``AutoModel.generate`` would (usually one; two for a final
   full chunk, whose second is the empty tail step);
3. runs step batches — the first step of every item, then the second of those that have one — carrying the new
   caches from one step batch to the next without touching the streams' states;
4. only when every step batch has succeeded, commits the new caches (a fresh one after a final chunk) and returns
   the texts. If anything raises, no state has changed, as the interface requires.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from tasks.batched.paraformer import (
    BatchedParaformer,
    Step,
    StepInput,
    StreamCache,
    plan_steps,
)
from tasks.batched.rowexact import RowPlanner
from tasks.errors import RecognitionFailed
from tasks.recognizer import (
    ChunkWork,
    StreamingRecognizer,
    StreamOptions,
    StreamState,
    load_automodel,
)

logger = logging.getLogger(__name__)

_DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


@dataclass
class _Job:
    """One work item's plan and its staged (uncommitted) cache."""

    index: int
    state: StreamState
    steps: list[Step]
    kept: np.ndarray
    cache: StreamCache
    is_final: bool
    tokens: list[str]


PRECISIONS = ("fp32", "int8")


class BatchedParaformerRecognizer(StreamingRecognizer):
    """FunASR's streaming Paraformer, batched across streams, with FunASR's per-stream texts.

    ``precision="int8"`` (CPU) runs the encoder's and decoder's Linear layers in int8 with per-row activation
    scales (:mod:`tasks.batched.int8`): a stream's texts are bitwise the same whatever shares its batch, but they
    are int8's texts, not FunASR's float32 ones; the float layers left stay exact.
    ``exact`` (default: on for CPU float32) reproduces FunASR's per-stream GEMM kernels bit for bit, so logits,
    and therefore texts, are identical; off, small-row GEMMs are batched too and logits may differ in the last
    bits (see :mod:`tasks.batched.rowexact`). ``dtype`` (``"float16"``/``"bfloat16"``, CUDA only) runs the encoder
    and decoder under autocast; texts then match only as far as the benchmark measures. Not thread-safe.
    """

    name = "batched"

    def __init__(
        self,
        automodel: Any,
        *,
        ncpu: int = 1,
        dtype: torch.dtype | None = None,
        exact: bool | None = None,
        precision: str = "fp32",
        description: str = "",
    ) -> None:
        device = next(automodel.model.parameters()).device
        if dtype is not None and device.type != "cuda":
            raise ValueError(f"autocast dtype {dtype} is only supported on CUDA, not {device}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if precision == "int8" and (device.type != "cpu" or dtype is not None):
            raise ValueError("int8 runs on the CPU, without autocast")
        self.precision = precision
        if exact is None:
            exact = device.type == "cpu" and dtype is None
        self.ncpu = ncpu
        self.exact = exact
        self.model = BatchedParaformer(
            automodel.model,
            automodel.kwargs["frontend"],
            automodel.kwargs["tokenizer"],
            planner=RowPlanner() if exact else None,
            dtype=dtype,
            frontend_workers=ncpu,
            int8=precision == "int8",
        )
        self.description = description

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str = "cpu",
        ncpu: int = 1,
        revision: str = "",
        dtype: str | torch.dtype | None = None,
        exact: bool | None = None,
        precision: str = "fp32",
    ) -> BatchedParaformerRecognizer:
        """Load a FunASR model folder (or hub name) with :func:`~tasks.recognizer.load_automodel`."""
        torch_dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
        automodel = load_automodel(model, device=device, ncpu=ncpu, revision=revision)
        recognizer = cls(automodel, ncpu=ncpu, dtype=torch_dtype, exact=exact, precision=precision)
        mode = ("exact" if recognizer.exact else "fast") + (f", {torch_dtype}" if torch_dtype else "")
        mode += ", int8 (batch-invariant)" if precision == "int8" else ""
        recognizer.description = f"{model} on {device}, batched ({mode})"
        return recognizer

    def close(self) -> None:
        self.model.close()

    def open_stream(self, options: StreamOptions) -> StreamState:
        return StreamState(options=options, cache=self.model.fresh(options))

    def process(self, work: Sequence[ChunkWork]) -> list[str | RecognitionFailed]:
        if len({id(item.state) for item in work}) != len(work):
            raise ValueError("process() takes at most one item per stream")
        if self.model.device.type == "cpu" and torch.get_num_threads() != self.ncpu:
            torch.set_num_threads(self.ncpu)  # as AutoModel.generate does; GEMM kernels depend on it
        results: list[str | RecognitionFailed] = [""] * len(work)
        jobs: list[_Job] = []
        for index, item in enumerate(work):
            job = self._plan(index, item)
            if isinstance(job, RecognitionFailed):
                results[index] = job
            else:
                jobs.append(job)
        with torch.inference_mode():
            self._run(jobs)
            caches = [
                self.model.fresh(job.state.options) if job.is_final else replace(job.cache, prev_samples=job.kept)
                for job in jobs
            ]
        texts = [_text(job.tokens) for job in jobs]
        for job, cache, text in zip(jobs, caches, texts):  # commit; nothing before this line touched a state
            job.state.cache = cache
            results[job.index] = text
        return results

    def _plan(self, index: int, item: ChunkWork) -> _Job | RecognitionFailed:
        """The item's steps and starting cache, or why this item alone cannot be processed."""
        try:
            audio = np.asarray(item.audio, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            return _failed(item, f"audio is not numeric: {exc}")
        if audio.ndim != 1:
            return _failed(item, f"audio must be one-dimensional, got shape {audio.shape}")
        cache = item.state.cache
        if isinstance(cache, dict) and not cache:
            cache = self.model.fresh(item.state.options)  # a StreamState made without open_stream()
        if not isinstance(cache, StreamCache):
            return _failed(item, f"stream state holds a {type(cache).__name__}, not this recognizer's cache")
        chunk_size = tuple(item.state.options.chunk_size)
        if len(chunk_size) != 3 or chunk_size[1] < 1 or min(chunk_size) < 0:
            return _failed(item, f"chunk_size {chunk_size} is not [left context, chunk >= 1, right context]")
        steps, kept = plan_steps(cache.prev_samples, audio, item.is_final, item.state.options)
        return _Job(index, item.state, steps, kept, cache, item.is_final, [])

    def _run(self, jobs: list[_Job]) -> None:
        """Run the step batches of all jobs, updating the jobs' staged caches and tokens (not the states)."""
        depth = max((len(job.steps) for job in jobs), default=0)
        for k in range(depth):
            active = [job for job in jobs if k < len(job.steps)]
            tokens, caches = self.model.step([StepInput(job.cache, job.steps[k], job.state.options) for job in active])
            for job, new_tokens, cache in zip(active, tokens, caches):
                job.tokens.extend(new_tokens)
                job.cache = cache
        logger.debug("processed %d items in %d step batches", len(jobs), depth)


def _text(tokens: list[str]) -> str:
    from funasr.utils.postprocess_utils import sentence_postprocess

    return sentence_postprocess(tokens)[0]


def _failed(item: ChunkWork, reason: str) -> RecognitionFailed:
    logger.warning("rejected chunk of stream %r: %s", item.state.options.wav_name, reason)
    return RecognitionFailed(reason)
