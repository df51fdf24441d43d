"""The generated folders load through FunASR's own AutoModel path, with every tensor as saved."""

from __future__ import annotations

import json

import pytest
import torch

from tasks import modelgen
from tasks.recognizer import load_automodel


def test_tiny_folder_loads_through_automodel_with_every_tensor_as_saved(tiny_model):
    automodel = load_automodel(str(tiny_model))
    saved = torch.load(tiny_model / "model.pt", map_location="cpu")
    loaded = automodel.model.state_dict()
    # FunASR skips tensors whose shape does not match without a word: compare everything.
    assert set(saved) == set(loaded)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert type(automodel.model).__name__ == "ParaformerStreaming"
    assert type(automodel.model.encoder).__name__ == "SANMEncoderChunkOpt"
    assert modelgen.describe(tiny_model)["weights"] == "random"


def test_generation_is_deterministic_and_refuses_to_overwrite_other_folders(tmp_path):
    a = modelgen.generate(tmp_path / "a", "tiny", seed=3)
    b = modelgen.generate(tmp_path / "b", "tiny", seed=3)
    sa, sb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert modelgen.generate(tmp_path / "a", "tiny", seed=3) == a  # kept, not regenerated
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "model.pt").write_bytes(b"weights")
    with pytest.raises(FileExistsError):
        modelgen.generate(tmp_path / "real", "tiny")


def test_full_size_is_the_published_architecture():
    config = modelgen.build_config(modelgen.SIZES["full"])
    torch.manual_seed(0)
    model = modelgen.instantiate(config, modelgen.SIZES["full"].vocab)
    assert sum(p.numel() for p in model.parameters()) == 220_084_533
    assert len(model.encoder.encoders0) + len(model.encoder.encoders) == 50
    assert len(model.decoder.decoders) == 16


def test_tokens_start_with_the_special_symbols_and_end_with_unk(tiny_model):
    tokens = json.loads((tiny_model / "tokens.json").read_text())
    assert tokens[:3] == ["<blank>", "<s>", "</s>"] and tokens[-1] == "<unk>" and len(tokens) == 256
