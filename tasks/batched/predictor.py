"""``CifPredictorV2.forward_chunk`` (continuous integrate-and-fire) for many streams, with the same numbers.

The predictor turns a chunk's encoder output into token embeddings: a convolution and a Linear give each frame a
weight alpha in [0, 1]; weights accumulate, and every time the running sum reaches the threshold (1.0) a token
fires, its embedding the alpha-weighted sum of the frames since the last one. What is left below the threshold
carries over to the next chunk (``cif_alpha``, ``cif_hidden``).

* Alphas: computed per stream with FunASR's own layers. The convolution's arithmetic depends on the batch size
  (oneDNN picks kernels by shape), so a batched call would differ in the last bits; it is a small share of the
  work (about 1 ms of 60 per stream-chunk on the full model).
* Integrate-and-fire: FunASR loops over streams and frames in Python on scalar tensors, and its cache only works
  for one stream. Here the frame loop runs once for all streams: each step does FunASR's float32 operations —
  the same additions, products and comparison, in the same order — on a vector of streams, and ``torch.where``
  picks each stream's branch. Streams with fewer frames are padded; padded steps leave their state untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CifCache:
    """One stream's predictor state between chunks: the weight and hidden left below the firing threshold."""

    alpha: torch.Tensor  # () float32
    hidden: torch.Tensor  # (d,)


@dataclass(frozen=True)
class CifChunk:
    """One stream's encoder output for one chunk and what masks its alphas."""

    cache: CifCache
    hidden: torch.Tensor  # (T, d) encoder output rows
    chunk_size: tuple[int, int, int]
    is_final: bool


class BatchedCif:
    """Runs FunASR's streaming CIF predictor over chunks of many streams (see module docstring)."""

    def __init__(self, predictor: nn.Module) -> None:
        from funasr.models.paraformer.cif_predictor import CifPredictorV2

        if not isinstance(predictor, CifPredictorV2):
            raise NotImplementedError(f"only CifPredictorV2 is supported, not {type(predictor).__name__}")
        self.predictor = predictor

    def fresh(self, hidden_size: int, device: torch.device) -> CifCache:
        return CifCache(alpha=torch.zeros((), device=device), hidden=torch.zeros(hidden_size, device=device))

    def __call__(self, chunks: Sequence[CifChunk]) -> tuple[list[torch.Tensor], list[CifCache]]:
        """Token embeddings (n_i, d) fired in each chunk, and the new caches, both in input order."""
        alphas, hiddens = zip(*(self._sequence(chunk) for chunk in chunks))
        lengths = [a.shape[0] for a in alphas]
        alpha = nn.utils.rnn.pad_sequence(list(alphas), batch_first=True)
        hidden = nn.utils.rnn.pad_sequence(list(hiddens), batch_first=True)
        valid = (
            torch.arange(alpha.shape[1], device=alpha.device)[None, :]
            < torch.tensor(lengths, device=alpha.device)[:, None]
        )
        fired, emitted, integrate, frames = self._integrate_and_fire(alpha, hidden, valid)
        left = torch.where((integrate > 0.0)[:, None], frames / integrate[:, None], frames)
        tokens = [emitted[i][fired[i]] for i in range(len(chunks))]
        caches = [CifCache(alpha=integrate[i].clone(), hidden=left[i].clone()) for i in range(len(chunks))]
        return tokens, caches

    def _sequence(self, chunk: CifChunk) -> tuple[torch.Tensor, torch.Tensor]:
        """The alphas and frames one stream integrates: carried-over state, this chunk, the final tail."""
        p = self.predictor
        hidden = chunk.hidden.unsqueeze(0)
        output = torch.relu(p.cif_conv1d(p.pad(hidden.transpose(1, 2)))).transpose(1, 2)
        alphas = torch.sigmoid(p.cif_output(output))
        alphas = nn.functional.relu(alphas * p.smooth_factor - p.noise_threshold).squeeze(-1)[0]
        cs = chunk.chunk_size
        alphas[: cs[0]] = 0.0
        if not chunk.is_final:
            alphas[sum(cs[:2]) :] = 0.0
        parts_a = [chunk.cache.alpha.reshape(1), alphas]
        parts_h = [chunk.cache.hidden.reshape(1, -1), chunk.hidden]
        if chunk.is_final:
            parts_a.append(torch.tensor([p.tail_threshold], device=alphas.device))
            parts_h.append(torch.zeros((1, chunk.hidden.shape[1]), device=chunk.hidden.device))
        return torch.cat(parts_a), torch.cat(parts_h)

    def _integrate_and_fire(
        self, alpha: torch.Tensor, hidden: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """FunASR's per-frame loop, vectorized over streams: (fired, emitted, integrate, frames).

        ``fired`` (S, T) marks the frames where a token fires, ``emitted`` (S, T, d) its embedding there.
        """
        threshold = self.predictor.threshold
        streams, steps, _ = hidden.shape
        integrate = torch.zeros(streams, dtype=alpha.dtype, device=alpha.device)
        frames = torch.zeros(streams, hidden.shape[2], dtype=hidden.dtype, device=hidden.device)
        fired, emitted = [], []
        for t in range(steps):
            a, h, ok = alpha[:, t], hidden[:, t], valid[:, t]
            fire = ~(a + integrate < threshold) & ok  # FunASR: `if alpha + integrate < threshold` … else fire
            emitted.append(frames + (threshold - integrate)[:, None] * h)
            after_fire = (integrate + a) - threshold
            integrate_next = torch.where(fire, after_fire, integrate + a)
            frames_next = torch.where(fire[:, None], after_fire[:, None] * h, frames + a[:, None] * h)
            integrate = torch.where(ok, integrate_next, integrate)
            frames = torch.where(ok[:, None], frames_next, frames)
            fired.append(fire)
        return torch.stack(fired, dim=1), torch.stack(emitted, dim=1), integrate, frames
