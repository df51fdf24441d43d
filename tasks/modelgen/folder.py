"""Model folders: build a kind's module through FunASR's registry, write config.yaml, model.pt, tokens and CMVN."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.modelgen.paraformer import FEATURE_DIM, SIZES, build_config, build_contextual_config, build_offline_config
from tasks.modelgen.punc import PUNC_SIZES, build_punc_config
from tasks.modelgen.vad import VAD_FEATURE_DIM, VAD_SIZES, build_vad_config

logger = logging.getLogger(__name__)

MARKER = "GENERATED_BY"  # file in the folder that says what made it and that its weights are random


@dataclass(frozen=True)
class Kind:
    """One architecture: its sizes, its config.yaml, and the encoder input its frontend produces."""

    name: str
    sizes: Mapping[str, Any]
    config: Callable[[Any], dict]
    feature_dim: int | None  # None: a text model without frontend or am.mvn


KINDS = {
    "streaming": Kind("streaming", SIZES, build_config, FEATURE_DIM),
    "offline": Kind("offline", SIZES, build_offline_config, FEATURE_DIM),
    "contextual": Kind("contextual", SIZES, build_contextual_config, FEATURE_DIM),
    "punc": Kind("punc", PUNC_SIZES, build_punc_config, None),
    "vad": Kind("vad", VAD_SIZES, build_vad_config, VAD_FEATURE_DIM),
}


def build_tokens(vocab: int) -> list[str]:
    """``<blank>``, ``<s>``, ``</s>``, CJK characters from U+4E00 on, and ``<unk>`` last.

    Past U+D7FF the characters skip the UTF-16 surrogates, which UTF-8 cannot encode (punctuation's 272,727).
    """
    n = vocab - 4
    below_surrogates = min(n, 0xD800 - 0x4E00)
    chars = [chr(0x4E00 + i) for i in range(below_surrogates)]
    chars += [chr(0xE000 + i) for i in range(n - below_surrogates)]
    return ["<blank>", "<s>", "</s>", *chars, "<unk>"]


def build_cmvn(seed: int, dim: int = FEATURE_DIM) -> str:
    """A Kaldi nnet-format am.mvn (AddShift/Rescale over ``dim`` features) with plausible fbank statistics."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shift = -(rng.uniform(8.0, 16.0, dim))
    scale = rng.uniform(0.15, 0.35, dim)

    def row(values) -> str:
        return " ".join(f"{v:.6f}" for v in values)

    return (
        "<Nnet>\n"
        f"<Splice> {dim} {dim}\n[ 0 ]\n"
        f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {row(shift)} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {row(scale)} ]\n"
        "</Nnet>\n"
    )


def instantiate(config: dict, vocab: int | None, input_size: int | None = FEATURE_DIM):
    """Build the torch module exactly the way ``AutoModel.build_model`` does.

    ``vocab`` None and ``input_size`` None stand for no tokenizer and no frontend (AutoModel passes -1 and None).
    """
    import funasr  # noqa: F401  (registers the model classes)
    from funasr.register import tables

    model_class = tables.model_classes.get(config["model"])
    if model_class is None:
        raise RuntimeError(f"FunASR does not register {config['model']!r}; is funasr importable?")
    conf = dict(config.get("model_conf", {}))
    conf.update(config)
    conf.update(input_size=input_size, vocab_size=-1 if vocab is None else vocab)
    return model_class(**conf)


def build(kind: str, size: str, seed: int = 0) -> tuple[dict, Any]:
    """The config.yaml contents and the seeded random-weight torch module of one kind and size, nothing written."""
    import torch

    spec = KINDS[kind]
    dims = spec.sizes[size]
    config = spec.config(dims)
    torch.manual_seed(seed)
    return config, instantiate(config, dims.vocab, spec.feature_dim)


def _write_folder(path: Path, kind: Kind, size: str, seed: int, config: dict, state: dict) -> None:
    """config.yaml, model.pt, and tokens.json / am.mvn where the kind has a tokenizer / a frontend."""
    import torch

    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    (path / "config.yaml").write_text(text, encoding="utf-8")
    vocab = kind.sizes[size].vocab
    if vocab is not None:
        token_list = build_tokens(vocab)
        (path / "tokens.json").write_text(json.dumps(token_list, ensure_ascii=False), encoding="utf-8")
        if config.get("model") == "SeacoParaformer":
            # Hub SeACo folders ship a seg_dict that splits hotwords into tokens; without one every hotword is <unk>
            # and the biasing cannot tell words apart. Here each token stands for itself.
            entries = "".join(f"{t} {t}\n" for t in token_list[3:-1])
            (path / "seg_dict").write_text(entries, encoding="utf-8")
    if kind.feature_dim is not None:
        (path / "am.mvn").write_text(build_cmvn(seed, kind.feature_dim))
    torch.save(state, path / "model.pt")


def generate(
    out: str | os.PathLike, size: str = "tiny", seed: int = 0, force: bool = False, kind: str = "streaming"
) -> Path:
    """Write a complete FunASR model folder of ``kind`` to ``out`` and return its path.

    The folder is written beside ``out`` and renamed into place, so a reader never sees half a model. An existing
    folder made by this function with the same kind, size and seed is kept unless ``force`` is set.
    """
    if kind not in KINDS or size not in KINDS[kind].sizes:
        raise ValueError(f"no {kind!r} model of size {size!r}; kinds {sorted(KINDS)}, sizes {sorted(SIZES)}")
    out = Path(out)
    marker: dict[str, Any] = {"generator": "tasks.modelgen", "size": size, "seed": seed, "weights": "random"}
    if kind != "streaming":  # streaming folders made before kinds existed keep matching
        marker["kind"] = kind
    if out.exists() and not force:
        existing = out / MARKER
        if existing.exists() and json.loads(existing.read_text()) == marker and (out / "model.pt").exists():
            return out
        if any(out.iterdir()):
            raise FileExistsError(f"{out} exists and was not generated with kind={kind} size={size} seed={seed}")
    out.parent.mkdir(parents=True, exist_ok=True)
    config, model = build(kind, size, seed)
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        tmp_path = Path(tmp)
        _write_folder(tmp_path, KINDS[kind], size, seed, config, model.state_dict())
        (tmp_path / MARKER).write_text(json.dumps(marker))
        if out.exists():
            for child in out.iterdir():
                child.unlink()
            out.rmdir()
        os.replace(tmp_path, out)
        tmp_path.mkdir()  # TemporaryDirectory wants something to remove
    logger.info("generated %s %s model (%s parameters, random weights) in %s", size, kind, f"{n_params:,}", out)
    return out


def describe(path: str | os.PathLike) -> dict | None:
    """The generator marker of a folder made here, or None for a real model."""
    marker = Path(path) / MARKER
    if marker.exists():
        return json.loads(marker.read_text())
    return None
