"""The packed offline SAN-M encoder against FunASR's own encoder on each utterance alone, bit for bit."""

from __future__ import annotations

import pytest
import torch

from tasks import modelgen
from tasks.batched.offline_encoder import PackedOfflineEncoder, packable
from tasks.batched.rowexact import RowPlanner
from tasks.recognizer import load_automodel


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = modelgen.generate(tmp_path_factory.mktemp("offline-encoder") / "m", "tiny", seed=0, kind="offline")
    return load_automodel(str(folder)).model


def alone(encoder, feats: torch.Tensor) -> torch.Tensor:
    out, lengths, _ = encoder(feats[None], torch.tensor([feats.shape[0]], dtype=torch.int32))
    assert lengths.tolist() == [feats.shape[0]]
    return out[0]


# lengths in LFR frames (60 ms each): 1 frame, GEMV-sized, small-M, odd, and a few seconds
LENGTHS = [1, 2, 3, 7, 13, 58, 120, 58]


@pytest.mark.parametrize("threads", [1, 2])
def test_each_utterance_equals_the_encoder_on_it_alone(model, threads):
    encoder = model.encoder
    assert packable(encoder)
    generator = torch.Generator().manual_seed(threads)
    feats = [torch.randn(n, encoder.encoders0[0].in_size, generator=generator) * 3 for n in LENGTHS]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            packed = PackedOfflineEncoder(encoder, RowPlanner())(feats)
            expected = [alone(encoder, f) for f in feats]
            reordered = PackedOfflineEncoder(encoder, RowPlanner())(feats[::-1])[::-1]
    finally:
        torch.set_num_threads(previous)
    for got, again, want in zip(packed, reordered, expected):
        assert got.shape == want.shape
        assert torch.equal(got, want) and torch.equal(again, want)  # whatever shares its batch, in any order
    assert packed[0].untyped_storage().data_ptr() != packed[1].untyped_storage().data_ptr()  # own storage


def test_other_encoders_and_bad_input_are_refused(model, tmp_path):
    streaming = load_automodel(str(modelgen.generate(tmp_path / "s", "tiny", seed=0))).model
    assert not packable(streaming.encoder) and not packable(None)
    with pytest.raises(NotImplementedError):
        PackedOfflineEncoder(streaming.encoder, None)
    packed = PackedOfflineEncoder(model.encoder, None)
    with pytest.raises(ValueError):
        packed([])
    with pytest.raises(ValueError):
        packed([torch.zeros(0, model.encoder.encoders0[0].in_size)])
