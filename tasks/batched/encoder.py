"""``SANMEncoderChunkOpt.forward_chunk`` for many streams at different positions, with the same numbers.

Per stream and chunk FunASR's encoder (1) scales the new LFR features by sqrt(d) and adds the streaming sinusoidal
position encoding from the stream's own offset, (2) prepends the last ``chunk_size[0] + chunk_size[2]`` embedded
frames of the previous chunk, then (3) runs each SAN-M layer, whose self-attention also attends to look-back keys
and values cached from earlier chunks. This module does the same for a batch:

* Embedding: the features of all streams are scaled and offset in one elementwise pass; the encoding of position
  p does not depend on which other positions are computed with it (checked in the parity tests).
* Layers: streams are packed (see :mod:`tasks.batched.layout`) and sorted by (rows, look-back length, options).
  Row-wise work — LayerNorms, the Q/K/V, output and feed-forward Linears — runs once over all rows of all streams
  through a :class:`~tasks.batched.rowexact.RowRouter`. Attention and the FSMN memory run per run of streams with
  identical shapes, as one batched call each, using FunASR's own modules. A batch in steady state is a single run;
  streams that just started (shorter look-back) or end with a short chunk form a few more. Nothing is padded, so
  nothing is masked, and each stream's scores, softmax and convolution see exactly what they would alone.
* Tail chunks (a final chunk under 960 samples) re-encode the cached overlap frames, scaled by sqrt(d) a second
  time, exactly as FunASR's in-place ``xs_pad *= sqrt(d)`` on its cached features does.

Caches are immutable :class:`EncoderCache` values; a call returns new ones and never writes into old tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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

ChunkSize = tuple[int, int, int]


@dataclass(frozen=True)
class EncoderCache:
    """One stream's encoder state between chunks (tensors on the model's device, never mutated)."""

    start_idx: int  # LFR frames embedded so far: the position-encoding offset of the next chunk
    feats: torch.Tensor  # (chunk_size[0] + chunk_size[2], feat_dim) embedded frames overlapped into the next chunk
    kv: torch.Tensor | None  # (layers, 2, heads, L, d_k) look-back keys and values; None before the first chunk


@dataclass(frozen=True)
class EncoderChunk:
    """One stream's encoder input: LFR+CMVN features (n, feat_dim), or None for a tail chunk."""

    cache: EncoderCache
    feats: torch.Tensor | None
    chunk_size: ChunkSize
    look_back: int


@dataclass(frozen=True)
class EncoderOutput:
    """Encoder output of a batch: packed rows, the rows of each input chunk, and the new caches (input order)."""

    rows: torch.Tensor  # (R, d)
    spans: list[slice]
    caches: list[EncoderCache]


class BatchedEncoder:
    """Runs FunASR's streaming SAN-M encoder over chunks of many streams (see module docstring)."""

    def __init__(self, encoder: nn.Module, planner: RowPlanner | None, int8: Int8Linears | None = None) -> None:
        from funasr.models.transformer.embedding import StreamSinusoidalPositionEncoder

        if not isinstance(encoder.embed, StreamSinusoidalPositionEncoder) or len(encoder.encoders0) != 1:
            raise NotImplementedError("only the paraformer-streaming encoder (pe_online, one input layer) is supported")
        self.encoder = encoder
        self.layers: list[nn.Module] = [*encoder.encoders0, *encoder.encoders]
        self.planner = planner
        self.int8 = int8
        self.scale = encoder.output_size() ** 0.5
        self.feat_dim = encoder.encoders0[0].in_size

    def fresh(self, chunk_size: ChunkSize, device: torch.device) -> EncoderCache:
        overlap = chunk_size[0] + chunk_size[2]
        return EncoderCache(start_idx=0, feats=torch.zeros(overlap, self.feat_dim, device=device), kv=None)

    def __call__(self, chunks: Sequence[EncoderChunk]) -> EncoderOutput:
        inputs, overlaps, starts = self._embed(chunks)
        keys = [_run_key(chunk, x) for chunk, x in zip(chunks, inputs)]
        order = sort_by_key(keys)
        packing = Packing([inputs[i].shape[0] for i in order], [keys[i] for i in order])
        x = torch.cat([inputs[i] for i in order])
        router = RowRouter(packing.lengths, self.planner, self.int8)
        kv_in = [stack_optional([chunks[i].cache.kv for i in order[run.streams]]) for run in packing.runs]
        kv_out: list[list[KeptKV]] = [[] for _ in packing.runs]
        for li, layer in enumerate(self.layers):
            layer_kv = [None if kv is None else kv[:, li] for kv in kv_in]
            x, new_kv = self._layer(layer, x, packing, router, layer_kv)
            for per_run, kv in zip(kv_out, new_kv):
                per_run.append(kv)
        if self.encoder.normalize_before:
            x = self.encoder.after_norm(x)
        return self._output(chunks, x, packing, order, kv_out, overlaps, starts)

    def _embed(self, chunks: Sequence[EncoderChunk]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
        """Per chunk: the encoder input rows, the overlap frames to cache, and the next position offset."""
        fresh = [(c.cache.start_idx, c.feats) for c in chunks if c.feats is not None]
        embedded: list[torch.Tensor] = []
        if fresh:
            feats = torch.cat([f for _, f in fresh]) * self.scale
            positions = torch.cat([torch.arange(start + 1, start + f.shape[0] + 1) for start, f in fresh])
            # FunASR computes the encoding on the CPU and moves it to the device; do the same
            encoding = self.encoder.embed.encode(positions[None], self.feat_dim, feats.dtype)[0].to(feats.device)
            embedded = list((feats + encoding).split([f.shape[0] for _, f in fresh]))
        inputs, overlaps, starts = [], [], []
        new = iter(embedded)
        for chunk in chunks:
            if chunk.feats is None:  # tail: the cached frames, scaled again (FunASR scales them in place)
                x = chunk.cache.feats * self.scale
                inputs.append(x)
                overlaps.append(x)
                starts.append(chunk.cache.start_idx + x.shape[0])
                continue
            x = torch.cat((chunk.cache.feats, next(new)))
            inputs.append(x)
            overlaps.append(x[-(chunk.chunk_size[0] + chunk.chunk_size[2]) :])  # FunASR's slice, -0 case included
            starts.append(chunk.cache.start_idx + chunk.feats.shape[0])
        return inputs, overlaps, starts

    def _layer(
        self, layer: nn.Module, x: torch.Tensor, packing: Packing, router: RowRouter, kv: list[torch.Tensor | None]
    ) -> tuple[torch.Tensor, list[KeptKV]]:
        """``EncoderLayerSANM.forward_chunk`` on packed rows."""
        kept: list[KeptKV] = []

        def attend(rows: torch.Tensor) -> torch.Tensor:
            out, new_kv = self._attention(layer.self_attn, rows, packing, router, kv)
            kept.extend(new_kv)
            return out

        return sanm_layer(layer, x, router, attend), kept

    def _attention(
        self, attn: nn.Module, x: torch.Tensor, packing: Packing, router: RowRouter, kv: list[torch.Tensor | None]
    ) -> tuple[torch.Tensor, list[KeptKV]]:
        """``MultiHeadedAttentionSANM.forward_chunk``: one batched attention and FSMN call per run."""
        qkv = router(attn.linear_q_k_v, x)
        contexts, memories, new_kv = [], [], []
        for run, cache in zip(packing.runs, kv):
            _, _, chunk_size, look_back = run.key
            q, k, v = torch.split(run.view(qkv), attn.h * attn.d_k, dim=-1)
            q_h, k_h, v_h = (
                torch.reshape(t, (run.count, run.length, attn.h, attn.d_k)).transpose(1, 2) for t in (q, k, v)
            )
            k_h, v_h, kept = _look_back(k_h, v_h, cache, chunk_size, look_back)
            memories.append(attn.forward_fsmn(v, None).reshape(run.count * run.length, -1))
            scores = torch.matmul(q_h * attn.d_k ** (-0.5), k_h.transpose(-2, -1))
            context = torch.matmul(torch.softmax(scores, dim=-1), v_h)
            contexts.append(context.transpose(1, 2).contiguous().view(run.count * run.length, -1))
            new_kv.append(kept)
        context = torch.cat(contexts) if len(contexts) > 1 else contexts[0]
        memory = torch.cat(memories) if len(memories) > 1 else memories[0]
        return router(attn.linear_out, context) + memory, new_kv

    def _output(
        self,
        chunks: Sequence[EncoderChunk],
        x: torch.Tensor,
        packing: Packing,
        order: list[int],
        kv_out: list[list[KeptKV]],
        feats: list[torch.Tensor],
        starts: list[int],
    ) -> EncoderOutput:
        spans: list[slice] = [slice(0)] * len(chunks)
        kvs: list[torch.Tensor | None] = [None] * len(chunks)
        for run, per_layer in zip(packing.runs, kv_out):
            for j, position in enumerate(range(run.first, run.first + run.count)):
                i = order[position]
                spans[i] = packing.rows_of(position)
                kvs[i] = per_stream_kv(per_layer, j)  # its own storage: no batch-wide tensor outlives the call
        caches = [EncoderCache(start_idx=s, feats=f.clone(), kv=kv) for s, f, kv in zip(starts, feats, kvs)]
        return EncoderOutput(rows=x, spans=spans, caches=caches)


def sanm_layer(layer: Any, x: torch.Tensor, router: RowRouter, attend: Callable[[torch.Tensor], torch.Tensor]):
    """An ``EncoderLayerSANM`` on packed rows in eval mode (dropout and stochastic depth are the identity): its
    norms, residuals and feed-forward around ``attend``, its self-attention (streaming or offline)."""
    residual = x
    if layer.normalize_before:
        x = layer.norm1(x)
    attn = attend(x)
    x = residual + attn if layer.in_size == layer.size else attn
    if not layer.normalize_before:
        x = layer.norm1(x)
    residual = x
    if layer.normalize_before:
        x = layer.norm2(x)
    ff = layer.feed_forward  # w_2(dropout(activation(w_1(x))))
    x = residual + router(ff.w_2, ff.activation(router(ff.w_1, x)))
    if not layer.normalize_before:
        x = layer.norm2(x)
    return x


def _run_key(chunk: EncoderChunk, x: torch.Tensor) -> tuple:
    """Streams may share a run when rows, look-back length (-1: no cache yet) and options agree."""
    cached = -1 if chunk.cache.kv is None else chunk.cache.kv.shape[-2]
    return (x.shape[0], cached, chunk.chunk_size, chunk.look_back)


def _look_back(
    k_h: torch.Tensor, v_h: torch.Tensor, cache: torch.Tensor | None, chunk_size: ChunkSize, look_back: int
) -> tuple[torch.Tensor, torch.Tensor, KeptKV]:
    """Keys/values to attend to and (views of) the look-back to keep, as ``MultiHeadedAttentionSANM.forward_chunk``.

    FunASR keeps ``cat(cache, k_h[:, :, :-chunk_size[2]])`` trimmed to ``look_back * chunk_size[1]`` frames (not
    trimmed on the first chunk); that is a prefix of the keys it attends to, so the kept part is a view of them.
    """
    if not (look_back > 0 or look_back == -1):
        return k_h, v_h, None
    stride = len(range(k_h.shape[2])[: -(chunk_size[2])])  # frames in k_h[:, :, :-cs2]: none when cs2 == 0
    if cache is None:
        return k_h, v_h, (k_h[:, :, :stride], v_h[:, :, :stride])
    cached = cache.shape[-2]
    k_h, v_h = torch.cat((cache[:, 0], k_h), dim=2), torch.cat((cache[:, 1], v_h), dim=2)
    kept_k, kept_v = k_h[:, :, : cached + stride], v_h[:, :, : cached + stride]
    if look_back != -1:
        kept_k, kept_v = kept_k[:, :, -(look_back * chunk_size[1]) :], kept_v[:, :, -(look_back * chunk_size[1]) :]
    return k_h, v_h, (kept_k, kept_v)
