"""Generate FunASR-format model folders of the paraformer-zh-streaming architecture with random weights.

No model hub is reachable where this project is built and tested, so tests and benchmarks run FunASR's real
loading and inference path (``funasr.AutoModel(model=<dir>)``) on folders made here: the real classes
(``ParaformerStreaming`` + ``SANMEncoderChunkOpt`` + ``ParaformerSANMDecoder`` + ``CifPredictorV2`` +
``WavFrontendOnline`` + ``CharTokenizer``) with seeded random weights. Output text is meaningless but
deterministic, which is what faithfulness tests need.

Sizes:
    ``full``  the published architecture: 50 encoder blocks, d=512, 4 heads, ffn 2048, kernel 11; 16 decoder
              blocks; vocab 8404 → 220,084,533 parameters (model.pt ≈ 880 MB).
    ``tiny``  the same classes with 2 encoder / 2 decoder blocks, d=64, ffn 128, vocab 256 (~0.3 M parameters).

Usage::

    python -m tasks.modelgen --size tiny --out models/paraformer-zh-streaming-tiny
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

N_MELS = 80
LFR_M = 7
LFR_N = 6
FEATURE_DIM = N_MELS * LFR_M  # 560: what the encoder sees after low frame rate stacking
MARKER = "GENERATED_BY"  # file in the folder that says what made it and that its weights are random


@dataclass(frozen=True)
class Size:
    """Dimensions of one architecture variant."""

    name: str
    encoder_blocks: int
    decoder_blocks: int
    d_model: int
    heads: int
    ffn: int
    vocab: int


SIZES = {
    "full": Size("full", encoder_blocks=50, decoder_blocks=16, d_model=512, heads=4, ffn=2048, vocab=8404),
    "tiny": Size("tiny", encoder_blocks=2, decoder_blocks=2, d_model=64, heads=4, ffn=128, vocab=256),
}


def build_config(size: Size) -> dict:
    """The config.yaml of paraformer-zh-streaming, scaled to ``size``."""
    return {
        "model": "ParaformerStreaming",
        "model_conf": {
            "ctc_weight": 0.0,
            "lsm_weight": 0.1,
            "length_normalized_loss": True,
            "predictor_weight": 1.0,
            "predictor_bias": 1,
            "sampling_ratio": 0.75,
        },
        "encoder": "SANMEncoderChunkOpt",
        "encoder_conf": {
            "output_size": size.d_model,
            "attention_heads": size.heads,
            "linear_units": size.ffn,
            "num_blocks": size.encoder_blocks,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "pe_online",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": 11,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
            "chunk_size": [12, 15],
            "stride": [8, 10],
            "pad_left": [0, 0],
            "encoder_att_look_back_factor": [4, 4],
            "decoder_att_look_back_factor": [1, 1],
        },
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {
            "attention_heads": size.heads,
            "linear_units": size.ffn,
            "num_blocks": size.decoder_blocks,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "self_attention_dropout_rate": 0.1,
            "src_attention_dropout_rate": 0.1,
            "att_layer_num": size.decoder_blocks,
            "kernel_size": 11,
            "sanm_shfit": 5,
        },
        "predictor": "CifPredictorV2",
        "predictor_conf": {
            "idim": size.d_model,
            "threshold": 1.0,
            "l_order": 1,
            "r_order": 1,
            "tail_threshold": 0.45,
        },
        "frontend": "WavFrontendOnline",
        "frontend_conf": {
            "fs": 16000,
            "window": "hamming",
            "n_mels": N_MELS,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": LFR_M,
            "lfr_n": LFR_N,
            "dither": 0.0,  # inference must be deterministic; FunASR's default of 1.0 adds noise
        },
        "specaug": None,
        "normalize": None,
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
    }


def build_tokens(vocab: int) -> list[str]:
    """``<blank>``, ``<s>``, ``</s>``, CJK characters from U+4E00 on, and ``<unk>`` last."""
    chars = [chr(0x4E00 + i) for i in range(vocab - 4)]
    return ["<blank>", "<s>", "</s>", *chars, "<unk>"]


def build_cmvn(seed: int) -> str:
    """A Kaldi nnet-format am.mvn (AddShift/Rescale over 560 dims) with plausible fbank statistics."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shift = -(rng.uniform(8.0, 16.0, FEATURE_DIM))
    scale = rng.uniform(0.15, 0.35, FEATURE_DIM)

    def row(values) -> str:
        return " ".join(f"{v:.6f}" for v in values)

    return (
        "<Nnet>\n"
        f"<Splice> {FEATURE_DIM} {FEATURE_DIM}\n[ 0 ]\n"
        f"<AddShift> {FEATURE_DIM} {FEATURE_DIM}\n<LearnRateCoef> 0 [ {row(shift)} ]\n"
        f"<Rescale> {FEATURE_DIM} {FEATURE_DIM}\n<LearnRateCoef> 0 [ {row(scale)} ]\n"
        "</Nnet>\n"
    )


def instantiate(config: dict, vocab: int):
    """Build the torch module exactly the way ``AutoModel.build_model`` does."""
    import funasr  # noqa: F401  (registers the model classes)
    from funasr.register import tables

    model_class = tables.model_classes.get(config["model"])
    if model_class is None:
        raise RuntimeError(f"FunASR does not register {config['model']!r}; is funasr importable?")
    conf = dict(config.get("model_conf", {}))
    conf.update(config)
    conf.update(input_size=FEATURE_DIM, vocab_size=vocab)
    return model_class(**conf)


def generate(out: str | os.PathLike, size: str = "tiny", seed: int = 0, force: bool = False) -> Path:
    """Write a complete FunASR model folder to ``out`` and return its path.

    The folder is written beside ``out`` and renamed into place, so a reader never sees half a model. An existing
    folder made by this function with the same size and seed is kept unless ``force`` is set.
    """
    import torch

    spec = SIZES[size]
    out = Path(out)
    marker = {"generator": "tasks.modelgen", "size": size, "seed": seed, "weights": "random"}
    if out.exists() and not force:
        existing = out / MARKER
        if existing.exists() and json.loads(existing.read_text()) == marker and (out / "model.pt").exists():
            return out
        if any(out.iterdir()):
            raise FileExistsError(f"{out} exists and was not generated with size={size} seed={seed}")
    out.parent.mkdir(parents=True, exist_ok=True)
    config = build_config(spec)
    torch.manual_seed(seed)
    model = instantiate(config, spec.vocab)
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        (tmp_path / "tokens.json").write_text(json.dumps(build_tokens(spec.vocab), ensure_ascii=False))
        (tmp_path / "am.mvn").write_text(build_cmvn(seed))
        torch.save(model.state_dict(), tmp_path / "model.pt")
        (tmp_path / MARKER).write_text(json.dumps(marker))
        if out.exists():
            for child in out.iterdir():
                child.unlink()
            out.rmdir()
        os.replace(tmp_path, out)
        tmp_path.mkdir()  # TemporaryDirectory wants something to remove
    logger.info("generated %s model (%s parameters, random weights) in %s", size, f"{n_params:,}", out)
    return out


def describe(path: str | os.PathLike) -> dict | None:
    """The generator marker of a folder made here, or None for a real model."""
    marker = Path(path) / MARKER
    if marker.exists():
        return json.loads(marker.read_text())
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite an existing folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate(args.out, args.size, args.seed, args.force)


if __name__ == "__main__":
    main()
