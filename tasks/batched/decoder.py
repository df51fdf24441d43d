"""``ParaformerSANMDecoder.forward_chunk`` for many streams, with the same numbers.

The decoder turns each stream's fired token embeddings into token scores. Each layer is a feed-forward block, an
FSMN block (a depthwise convolution over the token sequence that remembers the previous ``kernel - 1`` positions
of the stream, across chunks) and cross-attention to the chunk's encoder output plus a look-back of the encoder
output of earlier chunks. A stream that fired no token skips the decoder, and its caches stay as they were.

* Tokens and encoder frames are packed (see :mod:`tasks.batched.layout`), sorted by (tokens, frames, look-back
  length, options). Row-wise layers run once over all tokens — or all frames, for the cross-attention keys and
  values — through a :class:`~tasks.batched.rowexact.RowRouter`; in exact mode that router also reproduces the
  small-row GEMM kernels FunASR's few-token calls use, which is where most of the decoder's time goes.
* FSMN: every stream's convolution input is its cached ``kernel - 1`` positions followed by its tokens (FunASR's
  first call left-pads with as many zeros, the same thing). All streams go through one convolution, zero-padded on
  the right to the longest: the padding only reaches outputs past a stream's last token, which are dropped, and the
  depthwise kernel computes each output from its own window whatever the batch. Each stream's new cache is
  gathered from its own last ``kernel - 1`` positions, so padding never enters a cache.
* Cross-attention: per run of equal shapes, batched, as in the encoder; nothing padded, nothing masked.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tasks.batched.int8 import Int8Linears
from tasks.batched.layout import (
    KeptKV,
    Packing,
    per_stream_kv,
    sort_by_key,
    stack_optional,
)
from tasks.batched.rowexact import RowPlanner, RowRouter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecoderCache:
    """One stream's decoder state between chunks (tensors on the model's device, never mutated)."""

    fsmn: torch.Tensor | None  # (layers, d, kernel - 1) last FSMN inputs; None before the first token (zeros)
    kv: torch.Tensor | None  # (layers, 2, heads, L, d_k) cross-attention look-back; None before the first token


@dataclass(frozen=True)
class DecoderChunk:
    """One stream's decoder input: its fired token embeddings (n >= 1, d) and encoder output (T, d)."""

    cache: DecoderCache
    tokens: torch.Tensor
    memory: torch.Tensor
    chunk_size: tuple[int, int, int]
    look_back: int


class BatchedDecoder:
    """Runs FunASR's streaming Paraformer decoder over chunks of many streams (see module docstring)."""

    def __init__(self, decoder: nn.Module, planner: RowPlanner | None, int8: Int8Linears | None = None) -> None:
        if decoder.num_blocks - decoder.att_layer_num > 1:
            raise NotImplementedError("decoders without cross-attention (decoders2) are not supported")
        fsmn = decoder.decoders[0].self_attn
        left, right = fsmn.pad_fn.padding
        if (left, right) != (fsmn.kernel_size - 1, 0):
            raise NotImplementedError("only causal decoder FSMN blocks (sanm_shfit = (kernel - 1) / 2) are supported")
        self.decoder = decoder
        self.planner = planner
        self.int8 = int8
        self.context = fsmn.kernel_size - 1

    def fresh(self) -> DecoderCache:
        return DecoderCache(fsmn=None, kv=None)

    def __call__(self, chunks: Sequence[DecoderChunk]) -> tuple[list[torch.Tensor], list[DecoderCache]]:
        """Per chunk (input order): token log-probabilities (n_i, vocab), as FunASR's
        ``cal_decoder_with_predictor_chunk`` returns them, and the new cache."""
        keys = [_run_key(c) for c in chunks]
        order = sort_by_key(keys)
        tokens = Packing([chunks[i].tokens.shape[0] for i in order], [keys[i] for i in order])
        frames = Packing([chunks[i].memory.shape[0] for i in order], [keys[i] for i in order])
        token_rows = RowRouter(tokens.lengths, self.planner, self.int8)
        frame_rows = RowRouter(frames.lengths, self.planner, self.int8)
        x = torch.cat([chunks[i].tokens for i in order])
        memory = torch.cat([chunks[i].memory for i in order])
        fsmn_in = self._fsmn_states([chunks[i].cache for i in order], x)
        layout = _FsmnLayout.of(tokens, self.context, x.device)
        kv_in = [stack_optional([chunks[i].cache.kv for i in order[run.streams]]) for run in tokens.runs]
        fsmn_out, kv_out = [], []
        for li, layer in enumerate(self.decoder.decoders):  # DecoderLayerSANM.forward_chunk on packed rows
            residual = x
            x = _feed_forward(layer, x, token_rows)
            normed = layer.norm2(x) if layer.normalize_before else x
            out, state = _fsmn(layer.self_attn, normed, fsmn_in[:, li], layout)
            x = residual + out
            normed = layer.norm3(x) if layer.normalize_before else x
            out, kept = _cross_attention(
                layer.src_attn,
                normed,
                memory,
                (tokens, frames),
                (token_rows, frame_rows),
                [None if kv is None else kv[:, li] for kv in kv_in],
            )
            x = x + out
            fsmn_out.append(state)
            kv_out.append(kept)
        for layer in self.decoder.decoders3:  # feed-forward only, and no residual
            x = _feed_forward(layer, x, token_rows)
        if self.decoder.normalize_before:
            x = self.decoder.after_norm(x)
        scores = torch.log_softmax(token_rows(self.decoder.output_layer, x), dim=-1)
        return self._output(chunks, order, scores, tokens, torch.stack(fsmn_out, dim=1), kv_out)

    def _fsmn_states(self, caches: Sequence[DecoderCache], x: torch.Tensor) -> torch.Tensor:
        """(S, layers, d, kernel - 1) FSMN memories in packing order; zeros for a stream's first tokens."""
        zeros = x.new_zeros(len(self.decoder.decoders), x.shape[1], self.context)
        return torch.stack([zeros if c.fsmn is None else c.fsmn for c in caches])

    def _output(
        self,
        chunks: Sequence[DecoderChunk],
        order: list[int],
        scores: torch.Tensor,
        tokens: Packing,
        fsmn: torch.Tensor,
        kv_out: list[list[KeptKV]],
    ) -> tuple[list[torch.Tensor], list[DecoderCache]]:
        out_scores: list[torch.Tensor] = [scores] * len(chunks)
        caches: list[DecoderCache] = [self.fresh()] * len(chunks)
        for r, run in enumerate(tokens.runs):
            per_layer = [layer_kv[r] for layer_kv in kv_out]
            for j, position in enumerate(range(run.first, run.first + run.count)):
                i = order[position]
                out_scores[i] = scores[tokens.rows_of(position)]
                kv = per_stream_kv(per_layer, j) if chunks[i].look_back > 0 else chunks[i].cache.kv
                caches[i] = DecoderCache(fsmn=fsmn[position].clone(), kv=kv)
        return out_scores, caches


@dataclass(frozen=True)
class _FsmnLayout:
    """Where packed token rows sit in the padded (streams, d, kernel - 1 + width) FSMN input, and each stream's
    last ``kernel - 1`` positions in it (the new cache)."""

    slot: torch.Tensor  # (R,) row of the padded (streams * width, d) token matrix for each packed row
    width: int  # most tokens of any stream
    window: torch.Tensor  # (streams, 1, kernel - 1) positions of each stream's new cache in the FSMN input

    @classmethod
    def of(cls, tokens: Packing, context: int, device: torch.device) -> _FsmnLayout:
        width = max(tokens.lengths)
        stream = tokens.row_index(device)
        offsets = torch.tensor(tokens.offsets, dtype=torch.long, device=device)
        slot = stream * width + torch.arange(tokens.total, device=device) - offsets[stream]
        lengths = torch.tensor(tokens.lengths, dtype=torch.long, device=device)
        window = (lengths[:, None] + torch.arange(context, device=device)[None, :])[:, None, :]
        return cls(slot=slot, width=width, window=window)


def _fsmn(
    fsmn: nn.Module, x: torch.Tensor, state: torch.Tensor, layout: _FsmnLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """``MultiHeadedAttentionSANMDecoder.forward`` with a cache, all streams in one convolution.

    ``state`` (S, d, kernel - 1) holds each stream's previous FSMN inputs; returns the block's output for the
    packed rows ``x`` (R, d) and the new state.
    """
    streams, d = state.shape[0], x.shape[1]
    padded = x.new_zeros(streams * layout.width, d).index_copy_(0, layout.slot, x).view(streams, layout.width, d)
    conv_in = torch.cat((state, padded.transpose(1, 2)), dim=2)
    out = fsmn.fsmn_block(conv_in).transpose(1, 2).reshape(streams * layout.width, d).index_select(0, layout.slot)
    new_state = torch.gather(conv_in, 2, layout.window.expand(streams, d, layout.window.shape[-1]))
    return out + x, new_state


def _feed_forward(layer: nn.Module, x: torch.Tensor, rows: RowRouter) -> torch.Tensor:
    """A decoder layer's ``norm1`` + ``PositionwiseFeedForwardDecoderSANM`` (w_2(norm(relu(w_1(x)))))."""
    if layer.normalize_before:
        x = layer.norm1(x)
    ff = layer.feed_forward
    return rows(ff.w_2, ff.norm(ff.activation(rows(ff.w_1, x))))


def _cross_attention(
    attn: nn.Module,
    x: torch.Tensor,
    memory: torch.Tensor,
    packings: tuple[Packing, Packing],
    routers: tuple[RowRouter, RowRouter],
    kv: list[torch.Tensor | None],
) -> tuple[torch.Tensor, list[KeptKV]]:
    """``MultiHeadedAttentionCrossAtt.forward_chunk``: one batched attention call per run."""
    (tokens, frames), (token_rows, frame_rows) = packings, routers
    q = token_rows(attn.linear_q, x)
    k_v = frame_rows(attn.linear_k_v, memory)
    contexts, kept_all = [], []
    for run_t, run_f, cache in zip(tokens.runs, frames.runs, kv):
        *_, chunk_size, look_back = run_t.key
        q_h = torch.reshape(run_t.view(q), (run_t.count, -1, attn.h, attn.d_k)).transpose(1, 2)
        k, v = torch.split(run_f.view(k_v), attn.h * attn.d_k, dim=-1)
        k_h = torch.reshape(k, (run_f.count, -1, attn.h, attn.d_k)).transpose(1, 2)
        v_h = torch.reshape(v, (run_f.count, -1, attn.h, attn.d_k)).transpose(1, 2)
        kept: KeptKV = None
        if look_back > 0:
            if cache is not None:
                k_h, v_h = torch.cat((cache[:, 0], k_h), dim=2), torch.cat((cache[:, 1], v_h), dim=2)
            span = -(look_back * chunk_size[1])
            kept = (k_h[:, :, span:, :], v_h[:, :, span:, :])
        scores = torch.matmul(q_h * attn.d_k ** (-0.5), k_h.transpose(-2, -1))
        context = torch.matmul(torch.softmax(scores, dim=-1), v_h)
        contexts.append(context.transpose(1, 2).contiguous().view(run_t.count * run_t.length, -1))
        kept_all.append(kept)
    context = torch.cat(contexts) if len(contexts) > 1 else contexts[0]
    return token_rows(attn.linear_out, context), kept_all


def _run_key(chunk: DecoderChunk) -> tuple:
    """Streams may share a run when tokens, frames, look-back length (-1: none yet) and options agree."""
    cached = -1 if chunk.cache.kv is None else chunk.cache.kv.shape[-2]
    return (chunk.tokens.shape[0], chunk.memory.shape[0], cached, chunk.chunk_size, chunk.look_back)
