"""Batch-invariant int8 Linear layers for the batched recognizer on CPU (``ASR_PRECISION=int8``).

A stream's result must not depend on which other streams share its batch. Dynamic int8 quantization as
``torch.ao.quantization.quantize_dynamic`` (and onnxruntime's, which FunASR's export uses) scales activations per
*tensor*: one loud stream changes every other row's scale, and so its outputs (``tests/tasks/test_int8.py``
measures it). Here every row — one frame or token of one stream — is quantized with its own scale:

* weights: symmetric int8 per output channel, ``scale_w[n] = max|W[n, :]| / 127``, made once per layer;
* activations: symmetric int8 per row, ``scale_x[m] = max|x[m, :]| / 127`` (1 for an all-zero row);
* ``torch._int_mm`` multiplies them with int32 accumulation, which is exact (|sum| <= 127 * 127 * K < 2**31 for
  K <= 2**17), so a row's integers do not depend on the other rows or on the kernel's blocking;
* ``y = acc * scale_x * scale_w + bias`` elementwise in float32, the same for a row wherever it sits.

Every step is per row or exact, so a row's output is bitwise the same alone and in any batch. Which layers:
FunASR's export quantizes every MatMul except those named ``output`` or ``bias_encoder``/``bias_decoder``
(``funasr/utils/export_utils.py``); for the streaming Paraformer that leaves the decoder's ``output_layer`` (the
vocabulary projection) in float32, as here, so FunASR's published int8 accuracy is the reference. A layer whose
shape ``torch._int_mm`` refuses stays float32 too (logged once).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

QMAX = 127


@dataclass(frozen=True)
class QuantizedLinear:
    """One Linear layer's int8 weights: (in, out) int8 (``_int_mm``'s right operand), per-channel scales, bias."""

    weight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def of(cls, layer: nn.Linear) -> QuantizedLinear:
        w = layer.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / QMAX
        q = torch.round(w / scale[:, None]).clamp(-QMAX, QMAX).to(torch.int8)
        bias = None if layer.bias is None else layer.bias.detach().float().clone()
        return cls(q.t().contiguous(), scale, bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on rows ``x`` (..., in), each row quantized on its own (module docstring)."""
        rows = x.reshape(-1, x.shape[-1]).float()
        amax = torch.linalg.vector_norm(rows, float("inf"), dim=1, keepdim=True)  # max |x|, one pass
        scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
        q = torch.div(rows, scale).round_().clamp_(-QMAX, QMAX).to(torch.int8)
        out = torch._int_mm(q, self.weight).float().mul_(scale).mul_(self.scale)  # in place: one (M, N) buffer
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*x.shape[:-1], out.shape[-1])


class Int8Linears:
    """The int8 form of each Linear layer a router is asked to apply, made on first use; ``keep`` stays float."""

    def __init__(self, keep: Iterable[nn.Module] = ()) -> None:
        self._keep = {id(m) for m in keep}
        self._layers: dict[int, QuantizedLinear | None] = {}

    def get(self, layer: nn.Linear) -> QuantizedLinear | None:
        """The layer's int8 form, or None to run it in float32 (kept, not a plain Linear, or unsupported)."""
        key = id(layer)
        if key not in self._layers:
            self._layers[key] = self._quantize(layer)
        return self._layers[key]

    @property
    def quantized(self) -> int:
        return sum(q is not None for q in self._layers.values())

    def _quantize(self, layer: nn.Linear) -> QuantizedLinear | None:
        if id(layer) in self._keep or type(layer) is not nn.Linear or layer.weight.device.type != "cpu":
            return None
        q = QuantizedLinear.of(layer)
        try:
            q(torch.zeros(1, layer.in_features))
        except RuntimeError as exc:  # a shape torch._int_mm does not take on this build
            logger.warning("int8: %s stays float32 (%s)", tuple(layer.weight.shape), exc)
            return None
        return q
