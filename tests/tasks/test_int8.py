"""ASR_PRECISION=int8: each stream's result is bitwise the same whatever shares its batch (tasks.batched.int8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tasks.batched import BatchedParaformerRecognizer
from tasks.batched.int8 import Int8Linears, QuantizedLinear
from tasks.recognizer import ChunkWork, StreamOptions
from tests.tasks.test_batched_parity import run_batched


def rows(seed: int, n: int, k: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("threads", [1, 2])
def test_rows_are_bitwise_the_same_alone_and_beside_any_companions(threads):
    layer = nn.Linear(512, 2048)
    q = QuantizedLinear.of(layer)
    probe = rows(1, 10, 512)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        alone = q(probe)
        for companions in (rows(2, 1, 512, 100.0), rows(3, 300, 512, 0.01), rows(4, 37, 512)):
            for batch in (torch.cat([probe, companions]), torch.cat([companions, probe])):
                out = q(batch)
                got = out[:10] if batch[0].equal(probe[0]) else out[-10:]
                assert torch.equal(got, alone)
        assert torch.equal(q(probe[3:4]), alone[3:4]), "one row alone (a GEMV-sized call)"
    finally:
        torch.set_num_threads(previous)
    reference = layer(probe)
    assert (alone - reference).abs().max() < 0.05 * reference.abs().max(), "close to float32"
    assert not torch.equal(alone, reference.detach()), "and actually int8"


def test_per_tensor_dynamic_quantization_is_not_batch_invariant_which_is_why_rows_get_their_own_scale():
    layer = nn.Linear(512, 2048)
    dynamic = torch.ao.quantization.quantize_dynamic(nn.Sequential(layer), {nn.Linear}, dtype=torch.qint8)
    probe = rows(1, 10, 512)
    with torch.no_grad():
        alone = dynamic(probe)
        beside_loud = dynamic(torch.cat([probe, rows(2, 1, 512, 100.0)]))[:10]
    assert not torch.equal(alone, beside_loud)


def test_what_is_quantized_and_what_stays_float():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 16))
    int8 = Int8Linears(keep=[model[1]])
    assert isinstance(int8.get(model[0]), QuantizedLinear) and int8.get(model[1]) is None
    assert int8.quantized == 1
    zero = QuantizedLinear.of(model[0])(torch.zeros(2, 64))
    assert torch.equal(zero, model[0].bias.detach().expand(2, 64)), "an all-zero row gives the bias"


@pytest.fixture(scope="module")
def int8_recognizer(tiny_model):
    recognizer = BatchedParaformerRecognizer.load(str(tiny_model), ncpu=2, precision="int8")
    yield recognizer
    recognizer.close()


def schedule(seed: int, chunks: int, scale: float) -> list:
    """``chunks`` full chunks of noise at ``scale``, then a short final chunk."""
    rng = np.random.default_rng(seed)

    def noise(n: int) -> np.ndarray:
        return np.clip(rng.standard_normal(n) * scale, -1, 0.99997).astype(np.float32)

    samples = StreamOptions().chunk_samples
    return [(noise(samples), False) for _ in range(chunks)] + [(noise(3000), True)]


def test_a_streams_int8_texts_do_not_depend_on_its_batch(int8_recognizer, tiny_model):
    probe = schedule(1, 5, 0.1)
    opts = StreamOptions()
    [alone] = run_batched(int8_recognizer, [opts], [probe])
    assert any(alone), "the probe stream produced text: the test has teeth"
    for companions in ([schedule(2, 5, 0.3)], [schedule(3, 3, 0.001), schedule(4, 7, 0.5)]):
        late = [None, None] + probe  # the probe joins two rounds late, beside streams already running
        texts = run_batched(int8_recognizer, [opts] * (1 + len(companions)), [late, *companions])
        assert [t for t in texts[0] if t is not None] == alone
    fp32 = BatchedParaformerRecognizer.load(str(tiny_model), ncpu=2)
    try:
        state = fp32.open_stream(opts)
        float_texts = [fp32.process([ChunkWork(state, *chunk)])[0] for chunk in probe]
    finally:
        fp32.close()
    assert int8_recognizer.model.int8.quantized > 0 and len(float_texts) == len(alone)
