"""FunASR's offline SAN-M encoder (``SANMEncoder.forward``) over many utterances at once, with the same numbers.

The offline Paraformers of the 2pass second pass (SeACo, contextual, plain) spend most of a sentence in their
encoder: 58 % of a full-size SeACo sentence here (``bench/offline_throughput.py``). FunASR batches utterances by
zero-padding them to the longest one, which changes the outputs of the shorter ones (see :mod:`tasks.offline`).
This module packs them instead, the way :mod:`tasks.batched.encoder` packs streaming chunks:

* Embedding: each utterance is scaled by sqrt(d) and given its sinusoidal positions by FunASR's own modules, on
  its own (elementwise, cheap).
* Layers: the rows of all utterances are concatenated. Row-wise work — LayerNorms and the Q/K/V, output and
  feed-forward Linears — runs once over all rows through a :class:`~tasks.batched.rowexact.RowRouter`, which
  sends each row through a GEMM that computes it exactly as the utterance's own call would. Attention and the
  FSMN memory (a convolution over time) run per utterance with FunASR's own code. Nothing is padded, so nothing
  is masked: FunASR's mask for a batch of one is all true, and its ``masked_fill``/``* mask`` then change no bit.

Each utterance's output equals ``encoder(feats[None], tensor([T]))[0][0]`` bit for bit when a planner is given
(the CPU float32 default); without one (CUDA) the Linears run as one plain GEMM. Supported: ``SANMEncoder`` with
a ``SinusoidalPositionEncoder`` input layer, no intermediate CTC and no ``concat_after`` — the encoder of
``paraformer-zh`` (SeACo), the contextual Paraformer and Paraformer-large. :func:`packable` says whether a
model's encoder is one.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from tasks.batched.encoder import sanm_layer
from tasks.batched.rowexact import RowPlanner, RowRouter


def packable(encoder: Any) -> bool:
    """Whether :class:`PackedOfflineEncoder` reproduces ``encoder``'s forward (see the module docstring)."""
    try:
        from funasr.models.sanm.attention import MultiHeadedAttentionSANM
        from funasr.models.sanm.encoder import EncoderLayerSANM, SANMEncoder
        from funasr.models.transformer.embedding import SinusoidalPositionEncoder
        from funasr.models.transformer.positionwise_feed_forward import PositionwiseFeedForward
    except ImportError:
        return False
    if type(encoder) is not SANMEncoder or type(encoder.embed) is not SinusoidalPositionEncoder:
        return False
    if encoder.interctc_layer_idx or len(encoder.encoders0) != 1:
        return False
    layers = [*encoder.encoders0, *encoder.encoders]
    return all(
        type(layer) is EncoderLayerSANM
        and not layer.concat_after
        and type(layer.self_attn) is MultiHeadedAttentionSANM
        and type(layer.feed_forward) is PositionwiseFeedForward
        for layer in layers
    )


class PackedOfflineEncoder:
    """Runs an offline ``SANMEncoder`` over many utterances in one pass (see the module docstring).

    Call it under ``torch.no_grad()`` with the thread count FunASR's ``generate`` would use: row routing is
    measured per thread count.
    """

    def __init__(self, encoder: Any, planner: RowPlanner | None) -> None:
        if not packable(encoder):
            raise NotImplementedError(f"{type(encoder).__name__} is not an offline SAN-M encoder this module packs")
        self.encoder: Any = encoder  # FunASR's modules are untyped
        self.layers: list[Any] = [*encoder.encoders0, *encoder.encoders]
        self.planner = planner
        self.scale = encoder.output_size() ** 0.5

    def __call__(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Encoder outputs (T_i, d) of utterances given as features (T_i, feat_dim), T_i >= 1, in order.

        Each output has its own storage (no view of the batch outlives the call).
        """
        if not feats or any(f.ndim != 2 or f.shape[0] == 0 for f in feats):
            raise ValueError("each utterance must be a non-empty (frames, features) tensor")
        lengths = [f.shape[0] for f in feats]
        # FunASR: xs_pad * sqrt(d), then embed(xs_pad) adds positions 1..T; per utterance, as it would be alone
        x = torch.cat([self.encoder.embed(f[None] * self.scale)[0] for f in feats])
        router = RowRouter(lengths, self.planner)
        for layer in self.layers:
            attend = functools.partial(self._attention, layer.self_attn, lengths=lengths, router=router)
            x = sanm_layer(layer, x, router, attend)
        if self.encoder.normalize_before:
            x = self.encoder.after_norm(x)
        return [part.clone() for part in x.split(lengths)]

    def _attention(self, attn: Any, x: torch.Tensor, *, lengths: list[int], router: RowRouter) -> torch.Tensor:
        """``MultiHeadedAttentionSANM.forward`` with an all-true mask: attention and FSMN per utterance."""
        qkv = router(attn.linear_q_k_v, x)
        contexts, memories = [], []
        for part in qkv.split(lengths):
            t = part.shape[0]
            q, k, v = torch.split(part[None], attn.h * attn.d_k, dim=-1)
            q_h, k_h, v_h = (torch.reshape(p, (1, t, attn.h, attn.d_k)).transpose(1, 2) for p in (q, k, v))
            memories.append(attn.forward_fsmn(v, None)[0])
            scores = torch.matmul(q_h * attn.d_k ** (-0.5), k_h.transpose(-2, -1))
            context = torch.matmul(torch.softmax(scores, dim=-1), v_h)
            contexts.append(context.transpose(1, 2).contiguous().view(t, attn.h * attn.d_k))
        context = torch.cat(contexts) if len(contexts) > 1 else contexts[0]
        memory = torch.cat(memories) if len(memories) > 1 else memories[0]
        return router(attn.linear_out, context) + memory
