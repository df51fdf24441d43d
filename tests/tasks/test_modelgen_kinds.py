"""The offline (SeACo, contextual), punctuation and VAD folders load through AutoModel and run, tensors as saved."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tasks import modelgen

CLASSES = {
    "offline": "SeacoParaformer",
    "contextual": "ContextualParaformer",
    "punc": "CTTransformerStreaming",
    "vad": "FsmnVADStreaming",
}


def load(path):
    from funasr import AutoModel

    return AutoModel(model=str(path), disable_update=True, device="cpu", ncpu=1, disable_pbar=True, disable_log=True)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    return {kind: modelgen.generate(root / kind, "tiny", seed=0, kind=kind) for kind in CLASSES}


@pytest.fixture(scope="module")
def models(folders):
    return {kind: load(path) for kind, path in folders.items()}


@pytest.fixture
def noise():
    """One second of 16 kHz noise, the way the service hands audio to FunASR (float32 numpy)."""
    return (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_folder_loads_through_automodel_with_every_tensor_as_saved(folders, models, kind):
    saved = torch.load(folders[kind] / "model.pt", map_location="cpu")
    loaded = models[kind].model.state_dict()
    # FunASR skips tensors whose shape does not match without a word: compare everything.
    assert set(saved) == set(loaded)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert type(models[kind].model).__name__ == CLASSES[kind]
    assert modelgen.describe(folders[kind]) == {
        "generator": "tasks.modelgen", "size": "tiny", "seed": 0, "weights": "random", "kind": kind,
    }  # fmt: skip


def test_offline_model_gives_one_timestamp_per_token_and_takes_hotwords(models, noise):
    automodel = models["offline"]
    [result] = automodel.generate(input=noise)
    tokens = result["text"].split()
    assert tokens and len(result["timestamp"]) == len(tokens)
    assert all(0 <= start < end <= 1100 for start, end in result["timestamp"])  # ms within the second (+ tail)
    [biased] = automodel.generate(input=noise, hotword="一丁 七万")
    assert automodel.model.hotword_list[-1] == [automodel.model.sos]  # two hotwords + the no-bias entry
    assert len(automodel.model.hotword_list) == 3 and biased["text"]


def test_punctuation_keeps_the_text_and_streams_with_a_cache(models):
    text = "".join(modelgen.build_tokens(256)[3:40])  # 37 characters: two of the realtime model's mini-sentences
    cache: dict = {}
    [result] = models["punc"].generate(input=text, cache=cache)
    marks = set(modelgen.PUNC_LIST) - {"_", "<unk>"}
    assert "".join(c for c in result["text"].replace("<unk>", "") if c not in marks) == text
    assert "pre_text" in cache
    [again] = models["punc"].generate(input=text, cache=cache)  # the realtime model's next VAD segment
    assert again["text"]


def test_vad_segments_a_second_offline_and_in_200_ms_chunks(models, noise):
    [result] = models["vad"].generate(input=noise)
    assert all(0 <= start < end <= 1000 for start, end in result["value"])
    cache: dict = {}
    chunks = [noise[i : i + 3200] for i in range(0, len(noise), 3200)]
    for i, chunk in enumerate(chunks):
        [step] = models["vad"].generate(input=chunk, cache=cache, is_final=i == len(chunks) - 1, chunk_size=200)
        assert isinstance(step["value"], list)


@pytest.mark.parametrize(
    "kind,count", [("offline", 247_339_018), ("punc", 72_990_470), ("vad", 428_738), ("streaming", 220_084_533)]
)
def test_full_sizes_are_the_published_architectures(kind, count):
    _, model = modelgen.build(kind, "full")
    assert sum(p.numel() for p in model.parameters()) == count
    if kind == "offline":
        assert len(model.encoder.encoders0) + len(model.encoder.encoders) == 50
        assert len(model.decoder.decoders) == 16 and model.decoder.output_layer.out_features == 8404
    elif kind == "punc":
        assert model.embed.num_embeddings == 272_727 and len(model.encoder.encoders0) + len(model.encoder.encoders) == 4
    elif kind == "vad":
        assert len(model.encoder.fsmn) == 4


def test_cli_writes_the_kind_and_refuses_to_overwrite_another_kind(tmp_path):
    modelgen.main(["--kind", "vad", "--size", "tiny", "--out", str(tmp_path / "vad")])
    assert modelgen.describe(tmp_path / "vad")["kind"] == "vad"
    assert not (tmp_path / "vad" / "tokens.json").exists()  # no tokenizer: AutoModel must not look for one
    modelgen.main(["--size", "tiny", "--out", str(tmp_path / "asr")])
    assert "kind" not in modelgen.describe(tmp_path / "asr")  # streaming folders from before kinds still match
    with pytest.raises(FileExistsError):
        modelgen.generate(tmp_path / "asr", "tiny", kind="offline")
    with pytest.raises(ValueError):
        modelgen.generate(tmp_path / "x", "tiny", kind="lm")


def test_the_272727_token_punctuation_vocabulary_is_distinct_and_utf8():
    tokens = modelgen.build_tokens(272_727)
    assert len(set(tokens)) == 272_727 and tokens[-1] == "<unk>"
    json.dumps(tokens, ensure_ascii=False).encode("utf-8")  # surrogates would raise here
