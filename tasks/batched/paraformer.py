"""FunASR's ``ParaformerStreaming.inference``, one model step for many streams at once.

A call ``generate(input=chunk, cache=…, is_final=…)`` first prepends the samples the stream kept from its last call
and cuts the result into *steps* of ``chunk_size[1] * 960`` samples (:func:`plan_steps`); each step then runs
frontend → encoder → CIF predictor → decoder, and the tokens of all steps become the call's text. Here a *step
batch* holds one step from each of many streams — at any chunk index, some final, some not, with any options — and
each component processes the whole batch (see the modules named below for how each one stays exact):

* :mod:`tasks.batched.frontend` — fbank, LFR, CMVN;
* :mod:`tasks.batched.encoder` — streaming SAN-M encoder with per-stream positions and look-back caches;
* :mod:`tasks.batched.predictor` — continuous integrate-and-fire;
* :mod:`tasks.batched.decoder` — only for the streams that fired at least one token, as in FunASR.

A final step shorter than 960 samples is a *tail* step: FunASR skips the frontend and re-encodes the encoder's
cached overlap frames, so the CIF tail weight can fire the last token.

Every stream's state is one immutable :class:`StreamCache`; :meth:`BatchedParaformer.step` returns new ones and never
touches the old, which is what lets the recognizer keep its all-or-nothing failure contract.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from tasks.batched.decoder import BatchedDecoder, DecoderCache, DecoderChunk
from tasks.batched.encoder import BatchedEncoder, EncoderCache, EncoderChunk
from tasks.batched.frontend import BatchedFrontend, FrontendCache, FrontendChunk
from tasks.batched.int8 import Int8Linears
from tasks.batched.predictor import BatchedCif, CifCache, CifChunk
from tasks.batched.rowexact import RowPlanner
from tasks.options import SAMPLES_PER_CHUNK_UNIT, StreamOptions

logger = logging.getLogger(__name__)

#: A final step shorter than this (samples) takes FunASR's tail path: no frontend, cached features re-encoded.
TAIL_SAMPLES = 960


@dataclass(frozen=True)
class StreamCache:
    """Everything a stream's recognition depends on between calls; what this recognizer keeps in ``state.cache``."""

    prev_samples: np.ndarray  # float32 samples of an incomplete step, kept for the next call
    frontend: FrontendCache
    encoder: EncoderCache
    cif: CifCache
    decoder: DecoderCache


@dataclass(frozen=True)
class Step:
    """One model step of a call: ``audio`` (empty for some tail steps) and whether it ends the utterance."""

    audio: np.ndarray
    is_final: bool

    @property
    def tail(self) -> bool:
        return self.is_final and self.audio.shape[0] < TAIL_SAMPLES


def plan_steps(
    prev_samples: np.ndarray, audio: np.ndarray, is_final: bool, options: StreamOptions
) -> tuple[list[Step], np.ndarray]:
    """Cut a call into model steps the way ``ParaformerStreaming.inference`` does; also return the samples kept.

    A final call always ends with a final step, possibly empty: a final call of exactly one chunk is a full
    non-final step followed by an empty tail step.
    """
    stride = options.chunk_size[1] * SAMPLES_PER_CHUNK_UNIT
    samples = np.concatenate([prev_samples, audio])
    count = samples.shape[0] // stride + int(is_final)
    kept = samples.shape[0] % stride * (1 - int(is_final))
    steps = [Step(samples[i * stride : (i + 1) * stride], is_final and i == count - 1) for i in range(count)]
    return steps, samples[-kept:] if kept > 0 else np.zeros(0, dtype=np.float32)


@dataclass(frozen=True)
class StepInput:
    """One stream's step in a step batch."""

    cache: StreamCache
    step: Step
    options: StreamOptions


class BatchedParaformer:
    """FunASR's ParaformerStreaming model (weights and modules) driven one step batch at a time.

    ``planner`` turns on exact GEMM routing (:mod:`tasks.batched.rowexact`); ``int8`` runs the encoder's and
    decoder's Linear layers as batch-invariant int8 GEMMs (:mod:`tasks.batched.int8`); ``dtype`` runs the encoder
    and decoder under CUDA autocast; ``frontend_workers`` threads compute fbank features. Not thread-safe;
    :meth:`close` it.
    """

    def __init__(
        self,
        model: Any,
        frontend: Any,
        tokenizer: Any,
        *,
        planner: RowPlanner | None,
        dtype: torch.dtype | None = None,
        frontend_workers: int = 1,
        int8: bool = False,
    ) -> None:
        if model.training:
            raise ValueError("the model must be in eval mode (dropout off)")
        if getattr(model, "beam_search", None) is not None:
            raise NotImplementedError("beam search (CTC/LM rescoring) is not supported; greedy decoding only")
        self.device = next(model.parameters()).device
        self.frontend = BatchedFrontend(frontend, frontend_workers)
        # int8: FunASR's export keeps the vocabulary projection (its only "output" MatMul here) in float
        self.int8 = Int8Linears(keep=[model.decoder.output_layer]) if int8 else None
        self.encoder = BatchedEncoder(model.encoder, planner, self.int8)
        self.cif = BatchedCif(model.predictor)
        self.decoder = BatchedDecoder(model.decoder, planner, self.int8)
        self.tokenizer = tokenizer
        self.hidden_size = model.encoder.output_size()
        self.skip_ids = {model.sos, model.eos, model.blank_id}
        self.dtype = dtype

    def close(self) -> None:
        self.frontend.close()

    def fresh(self, options: StreamOptions) -> StreamCache:
        """The state of a stream before its first chunk (also after each final one)."""
        return StreamCache(
            prev_samples=np.zeros(0, dtype=np.float32),
            frontend=self.frontend.fresh(),
            encoder=self.encoder.fresh(options.chunk_size, self.device),
            cif=self.cif.fresh(self.hidden_size, self.device),
            decoder=self.decoder.fresh(),
        )

    def step(self, items: Sequence[StepInput]) -> tuple[list[list[str]], list[StreamCache]]:
        """Run one step for each item; return each item's tokens and its new cache (input order)."""
        feats, frontends = self._features(items)
        with self._autocast():
            encoded = self.encoder(
                [
                    EncoderChunk(it.cache.encoder, f, it.options.chunk_size, it.options.encoder_chunk_look_back)
                    for it, f in zip(items, feats)
                ]
            )
        hidden = [encoded.rows[span].float() for span in encoded.spans]
        embeds, cifs = self.cif(
            [CifChunk(it.cache.cif, h, it.options.chunk_size, it.step.is_final) for it, h in zip(items, hidden)]
        )
        tokens, decoders = self._decode(items, hidden, embeds)
        caches = [
            replace(it.cache, frontend=fe, encoder=enc, cif=cif, decoder=dec)
            for it, fe, enc, cif, dec in zip(items, frontends, encoded.caches, cifs, decoders)
        ]
        return tokens, caches

    def _features(self, items: Sequence[StepInput]) -> tuple[list[torch.Tensor | None], list[FrontendCache]]:
        """Encoder features per item (None for tail steps) and new frontend caches (unchanged for tail steps)."""
        chunks = [FrontendChunk(it.cache.frontend, it.step.audio, it.step.is_final) for it in items if not it.step.tail]
        feats: list[torch.Tensor | None] = [None] * len(items)
        frontends = [it.cache.frontend for it in items]
        if chunks:
            packed, lengths, caches = self.frontend(chunks)
            per_chunk = iter(zip(packed.to(self.device).split(lengths), caches))
            for i, it in enumerate(items):
                if not it.step.tail:
                    feats[i], frontends[i] = next(per_chunk)
        return feats, frontends

    def _decode(
        self, items: Sequence[StepInput], hidden: list[torch.Tensor], embeds: list[torch.Tensor]
    ) -> tuple[list[list[str]], list[DecoderCache]]:
        """Decode the items that fired tokens; the others keep their decoder cache and add no token."""
        fired = [i for i, e in enumerate(embeds) if e.shape[0] > 0]
        decoders = [it.cache.decoder for it in items]
        tokens: list[list[str]] = [[] for _ in items]
        if not fired:
            return tokens, decoders
        with self._autocast():
            scores, caches = self.decoder(
                [
                    DecoderChunk(
                        items[i].cache.decoder,
                        embeds[i],
                        hidden[i],
                        items[i].options.chunk_size,
                        items[i].options.decoder_chunk_look_back,
                    )
                    for i in fired
                ]
            )
        ids = torch.cat(scores).argmax(dim=-1).tolist()  # greedy, as generate_chunk; one device sync in all
        offset = 0
        for i, stream_scores, cache in zip(fired, scores, caches):
            kept = [t for t in ids[offset : offset + stream_scores.shape[0]] if t not in self.skip_ids]
            offset += stream_scores.shape[0]
            tokens[i] = self.tokenizer.ids2tokens(kept)
            decoders[i] = cache
        return tokens, decoders

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)
