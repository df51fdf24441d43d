"""Generate FunASR-format model folders with random weights: the architectures FunASR's 2pass servers use.

No model hub is reachable where this project is built and tested, so tests and benchmarks run FunASR's real
loading and inference path (``funasr.AutoModel(model=<dir>)``) on folders made here: FunASR's own classes, built
through its registry the way ``AutoModel.build_model`` does, with seeded random weights. Output is meaningless but
deterministic, which is what faithfulness tests need.

Kinds (``--kind``):
    ``streaming``  paraformer-zh-streaming: ``ParaformerStreaming`` + ``SANMEncoderChunkOpt`` +
                   ``ParaformerSANMDecoder`` + ``CifPredictorV2`` + ``WavFrontendOnline`` + ``CharTokenizer``.
                   full: 50 encoder blocks, d=512, 4 heads, ffn 2048, kernel 11; 16 decoder blocks; vocab 8404
                   → 220,084,533 parameters (model.pt ≈ 880 MB). tiny: 2/2 blocks, d=64, ffn 128, vocab 256.
    ``offline``    the 2pass second pass, SeACo-Paraformer (``SeacoParaformer`` + ``SANMEncoder`` (``input_layer:
                   pe``) + ``ParaformerSANMDecoder`` + ``CifPredictorV3`` + ``WavFrontend``). SeACo rather than the
                   contextual Paraformer FunASR's Python server defaults to, because it is what the hub name
                   ``paraformer-zh`` resolves to and it gives both hotword biasing (``generate(hotword="…")``) and
                   timestamps (``CifPredictorV3``'s 3× upsampled alphas: ``SeacoParaformer.inference`` emits
                   ``timestamp`` only when the predictor is named ``CifPredictorV3``, and
                   ``ts_prediction_lfr6_standard`` assumes ``upsample_times: 3``). The hotword path embeds
                   hotwords with the decoder's embedding into an LSTM of ``inner_dim``, so ``inner_dim`` must equal
                   d_model; ``NO_BIAS`` (8377 on the hub) must be a token id below the vocabulary.
                   full: the same encoder/decoder as streaming plus a 6-block SeACo decoder (ffn 1024, kernel 21),
                   a 2-layer hotword LSTM and the ``cnn_blstm`` upsampler → 247,339,018 parameters (model.pt
                   ≈ 990 MB). tiny: 2 encoder / 2 decoder / 2 SeACo blocks, d=64, vocab 256 → 520,546.
    ``contextual`` the contextual Paraformer FunASR's Python server defaults to for its second pass
                   (``ContextualParaformer`` + ``ContextualParaformerDecoder`` + an LSTM hotword encoder +
                   ``CifPredictorV2``): hotwords, no timestamps; the offline kind's encoder and decoder shapes.
    ``punc``       ``punc_ct-transformer_zh-cn-common-vad_realtime-vocab272727``: ``CTTransformerStreaming`` +
                   ``SANMVadEncoder`` + ``CharTokenizer`` (``tokens.json``, no frontend, no am.mvn; punctuation
                   classes ``<unk> _ ， 。 ？ 、``). full: 4 blocks, d=256, 8 heads, ffn 1024, vocab 272,727
                   → 72,990,470 parameters, 69.8 M of them the embedding (model.pt ≈ 292 MB, tokens.json ≈ 2 MB,
                   ≈ 0.3 GB of RAM to build). tiny: 2 blocks, d=64, vocab 256 → 85,254. It punctuates text,
                   not audio: ``generate(input="…", cache={})``.
    ``vad``        fsmn-vad: ``FsmnVADStreaming`` + ``FSMN`` + ``WavFrontendOnline`` (LFR 5/1, 400 features, no
                   tokenizer). full: 4 FSMN layers, linear 250, proj 128, affine 140 → 428,738 parameters, the
                   count of the published weights. tiny: 2 layers, linear 32, proj 16, affine 16 → 14,456.

Where the installed FunASR does not pin a hub shape, the values are the published configs' as far as they can be
known without the hub (the SeACo decoder depth and ``cnn_blstm`` upsampler, the punctuation encoder depth): the
parameter counts above are what these folders have, not a promise that real hub weights would load into them.

Usage::

    python -m tasks.modelgen --size tiny --out models/paraformer-zh-streaming-tiny
    python -m tasks.modelgen --kind offline --size tiny --out models/paraformer-zh-tiny
"""

from __future__ import annotations

import argparse
import logging

from tasks.modelgen.folder import (
    KINDS,
    MARKER,
    build,
    build_cmvn,
    build_tokens,
    describe,
    generate,
    instantiate,
)
from tasks.modelgen.paraformer import (
    FEATURE_DIM,
    SIZES,
    Size,
    build_config,
    build_contextual_config,
    build_offline_config,
)
from tasks.modelgen.punc import PUNC_LIST, PUNC_SIZES, build_punc_config
from tasks.modelgen.vad import VAD_SIZES, build_vad_config

__all__ = [
    "FEATURE_DIM",
    "KINDS",
    "MARKER",
    "PUNC_LIST",
    "PUNC_SIZES",
    "SIZES",
    "VAD_SIZES",
    "Size",
    "build",
    "build_cmvn",
    "build_config",
    "build_contextual_config",
    "build_offline_config",
    "build_punc_config",
    "build_tokens",
    "build_vad_config",
    "describe",
    "generate",
    "instantiate",
    "main",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=sorted(KINDS), default="streaming")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite an existing folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate(args.out, args.size, args.seed, args.force, kind=args.kind)
