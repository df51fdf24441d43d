"""Row-exact batched Linear layers: each stream's rows come out bit-identical to a per-stream call.

FunASR's per-stream path calls every Linear on one stream's rows: 20 frames per chunk in the encoder, a few tokens
in the decoder. MKL picks its sgemm kernel by the row count M and the thread count, and its kernels round
differently. Measured on this project's machines (MKL 2024.2, AVX2):

    rows M in the call     1 thread          2 threads
    1                      GEMV              GEMV
    2, 3                   small-M kernel    small-M kernel
    4, 8, >= 12            large kernel      large kernel (the one every row of a big GEMM gets)
    5-7, 9-11              large kernel      first 4 * (M // 4) rows large, the rest small-M

One big GEMM over all streams gives every row the large kernel's result, a few ULP away from what FunASR computes
for its GEMV and small-M rows. That rarely flips a token (log-probabilities move by ~1e-6), but parity is the
contract, so in exact mode :class:`RowRouter` sends each row through a call that reproduces its kernel: the
large-kernel rows of all streams through one GEMM, small-M rows through 2-row calls, GEMV rows through 1-row calls,
and a stream whose rows fit none of these through a call of its own (exact by construction). Encoder chunks are 20
rows, so each encoder Linear stays one GEMM; the decoder's few tokens per stream cost about what they cost FunASR.

The table is measured, not hard-coded: :class:`RowPlanner` compares each route with a per-stream call on random
data, lazily per (layer shape, bias, dtype, device, thread count, M) — kernel choice depends on shapes, strides
and threads, never on values — so exact mode follows another MKL, CPU or thread count. A big-GEMM call of at
least :data:`LARGE_ROWS_PER_THREAD` rows per thread is trusted to use the large kernel for every row; smaller ones
are zero-padded up to a row count measured to be all-large. With ``exact=False`` (the CUDA default: cuBLAS gives
no such guarantee) every row goes through the one big GEMM.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tasks.batched.int8 import Int8Linears

logger = logging.getLogger(__name__)

#: Rows per thread from which an sgemm call is trusted to compute every row with the large kernel.
LARGE_ROWS_PER_THREAD = 32


@dataclass(frozen=True)
class RowPlan:
    """How to reproduce an M-row Linear call row by row: which of its rows go through which kind of call."""

    large: tuple[int, ...]  # rows that get the large kernel: computed inside one big GEMM
    pair: tuple[int, ...]  # rows that get the small-M kernel: computed in 2-row calls
    single: tuple[int, ...]  # rows that get the GEMV kernel: computed in 1-row calls

    @property
    def all_large(self) -> bool:
        return not self.pair and not self.single


class RowPlanner:
    """Measured :class:`RowPlan` of M-row Linear calls, per layer shape and thread count. Not thread-safe."""

    def __init__(self, seed: int = 0) -> None:
        self._generator = torch.Generator().manual_seed(seed)
        self._plans: dict[tuple, RowPlan | None] = {}
        self._all_large: dict[tuple, bool] = {}

    def plan(self, layer: nn.Linear, m: int) -> RowPlan | None:
        """The plan for ``layer(x[None])`` with ``m`` rows, or None if some row fits no route."""
        key = (*_shape_key(layer), m)
        if key not in self._plans:
            self._plans[key] = self._measure(layer, m)
            logger.debug("GEMM row plan for %s, M=%d: %s", key[:-1], m, self._plans[key])
        return self._plans[key]

    def large_call_rows(self, layer: nn.Linear, n: int) -> int:
        """Rows to run a big-GEMM call of ``n`` rows with (``n`` plus zero padding) so all rows are large."""
        threshold = LARGE_ROWS_PER_THREAD * torch.get_num_threads()
        rows = n
        while rows < threshold and not self._is_all_large(layer, rows):
            rows += 1
        return rows

    def _is_all_large(self, layer: nn.Linear, m: int) -> bool:
        key = (*_shape_key(layer), m)
        if key not in self._all_large:
            if key in self._plans:
                plan = self._plans[key]
                self._all_large[key] = plan is not None and plan.all_large
            else:  # two calls instead of a full measurement
                x = self._random(layer, m + LARGE_ROWS_PER_THREAD * torch.get_num_threads())
                self._all_large[key] = torch.equal(layer(x[:m].unsqueeze(0))[0], layer(x)[:m])
        return self._all_large[key]

    def _measure(self, layer: nn.Linear, m: int) -> RowPlan | None:
        """Try each route on random rows, cheapest first; a row goes to the first route that reproduces it.

        Each route is tried in two surroundings (position in the big GEMM, first or second row of a pair); both
        must reproduce the per-stream call, or the route is not used for that row.
        """
        filler = LARGE_ROWS_PER_THREAD * torch.get_num_threads()
        x = self._random(layer, m + filler + 1)
        probe = x[:m]
        reference = layer(probe.unsqueeze(0))[0]
        routes = [
            lambda rows: [layer(x[: m + filler])[rows], layer(x.flip(0))[-m:].flip(0)[rows]],
            lambda rows: [_pair_rows(layer, probe[rows], x[-1], first) for first in (True, False)],
            lambda rows: [torch.cat([layer(row.view(1, 1, -1))[0] for row in probe[rows]])],
        ]
        assigned: list[list[int]] = [[], [], []]
        left = list(range(m))
        for route, rows_out in zip(routes, assigned):
            if not left:
                break
            rows = torch.tensor(left, dtype=torch.long, device=x.device)
            same = torch.stack([(out == reference[rows]).all(dim=1) for out in route(rows)]).all(dim=0).tolist()
            rows_out.extend(i for i, ok in zip(left, same) if ok)
            left = [i for i, ok in zip(left, same) if not ok]
        if left:
            return None
        return RowPlan(*(tuple(rows) for rows in assigned))

    def _random(self, layer: nn.Linear, rows: int) -> torch.Tensor:
        x = torch.randn(rows, layer.in_features, generator=self._generator)
        return x.to(device=layer.weight.device, dtype=layer.weight.dtype)


def _pair_rows(layer: nn.Linear, probe: torch.Tensor, other: torch.Tensor, first: bool) -> torch.Tensor:
    """Each probe row computed in a 2-row call, as the first (or second) row beside ``other``."""
    outs = []
    for row in probe:
        pair = torch.stack([row, other] if first else [other, row])
        outs.append(layer(pair.unsqueeze(0))[0][0 if first else 1])
    return torch.stack(outs)


def _shape_key(layer: nn.Linear) -> tuple:
    weight = layer.weight
    return (
        layer.in_features,
        layer.out_features,
        layer.bias is not None,
        weight.dtype,
        weight.device,
        torch.get_num_threads(),
    )


@dataclass(frozen=True)
class _Route:
    """Where each packed row goes: the big GEMM, 2-row calls, 1-row calls, or its stream's own call."""

    large: torch.Tensor | None  # packed row indices for the big GEMM; None means every row
    large_rows: int  # rows the big GEMM is run with (zero padding beyond the real ones)
    pairs: torch.Tensor  # (P, 2) row indices; the last pair's second entry repeats a row when the count is odd
    odd_pair: bool  # whether the last pair's second row is padding (computed, then discarded)
    singles: tuple[int, ...]
    alone: tuple[slice, ...]


_NO_ROWS = torch.zeros(0, 2, dtype=torch.long)


class RowRouter:
    """Applies Linear layers to a packed batch whose streams have ``lengths`` rows each (see module docstring).

    One router serves one batch; routes are cached per layer shape, so the 50 encoder layers share four.
    ``planner=None`` turns routing off: one big GEMM per layer. A batch of one stream makes the call FunASR makes
    (no routing, no padding: nothing to share a weight read with). With ``int8``, the layers it quantizes run as
    batch-invariant int8 GEMMs (:mod:`tasks.batched.int8`) and only the others are routed.
    """

    def __init__(self, lengths: Sequence[int], planner: RowPlanner | None, int8: Int8Linears | None = None) -> None:
        self.lengths = tuple(lengths)
        self.total = sum(self.lengths)
        self._planner = planner
        self._int8 = int8
        self._routes: dict[tuple, _Route] = {}

    def __call__(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """``layer`` applied to packed rows ``x`` (R, in) → (R, out)."""
        if self._int8 is not None:
            quantized = self._int8.get(layer)
            if quantized is not None:  # batch-invariant by construction (tasks.batched.int8): no routing needed
                return quantized(x)
        if self._planner is None:
            return layer(x)
        if len(self.lengths) == 1:  # one stream: its own call is exact by definition, and the cheapest
            return layer(x.unsqueeze(0))[0]
        key = _shape_key(layer)
        if key not in self._routes:
            self._routes[key] = self._route(layer, self._planner)
        return _apply(layer, x, self._routes[key])

    def _route(self, layer: nn.Linear, planner: RowPlanner) -> _Route:
        device = layer.weight.device
        exact_type = type(layer) is nn.Linear  # subclasses (LoRA) may compute differently: give them own calls
        plans = {m: planner.plan(layer, m) if exact_type else None for m in set(self.lengths)}
        if all(plan is not None and plan.all_large for plan in plans.values()):  # the usual encoder batch
            return _Route(None, planner.large_call_rows(layer, self.total), _NO_ROWS.to(device), False, (), ())
        large: list[int] = []
        paired: list[int] = []
        singles: list[int] = []
        alone: list[slice] = []
        offset = 0
        for m in self.lengths:
            plan = plans[m]
            if plan is None:
                alone.append(slice(offset, offset + m))
            else:
                large.extend(offset + i for i in plan.large)
                paired.extend(offset + i for i in plan.pair)
                singles.extend(offset + i for i in plan.single)
            offset += m
        odd_pair = len(paired) % 2 == 1
        if odd_pair:
            paired.append(paired[-1])
        return _Route(
            large=torch.tensor(large, dtype=torch.long, device=device),
            large_rows=planner.large_call_rows(layer, len(large)) if large else 0,
            pairs=torch.tensor(paired, dtype=torch.long, device=device).view(-1, 2),
            odd_pair=odd_pair,
            singles=tuple(singles),
            alone=tuple(alone),
        )


def _apply(layer: nn.Linear, x: torch.Tensor, route: _Route) -> torch.Tensor:
    if route.large is None:
        return _large_call(layer, x, route.large_rows)
    out = x.new_empty(x.shape[0], layer.out_features)
    if route.large.numel():
        out.index_copy_(0, route.large, _large_call(layer, x.index_select(0, route.large), route.large_rows))
    if route.pairs.numel():
        rows = route.pairs.flatten()
        stacked = x.index_select(0, rows).view(-1, 2, x.shape[-1])
        results = torch.cat([layer(pair.unsqueeze(0))[0] for pair in stacked])
        kept = slice(0, rows.numel() - int(route.odd_pair))
        out.index_copy_(0, rows[kept], results[kept])
    for row in route.singles:
        out[row] = layer(x[row].view(1, 1, -1))[0, 0]
    for span in route.alone:
        out[span] = layer(x[span].unsqueeze(0))[0]
    return out


def _large_call(layer: nn.Linear, x: torch.Tensor, rows: int) -> torch.Tensor:
    """``layer(x)`` with ``x`` zero-padded to ``rows`` rows, so every real row gets the large kernel."""
    if rows <= x.shape[0]:
        return layer(x)
    padded = torch.cat([x, x.new_zeros(rows - x.shape[0], x.shape[1])])
    return layer(padded)[: x.shape[0]]
