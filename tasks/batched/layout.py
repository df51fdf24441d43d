"""How one batch of streams is laid out in tensors: packed rows, grouped into runs of equal shape.

Every batched component (encoder, decoder) holds the batch in *packed* form: the rows (frames or tokens) of all
streams stacked into one ``(R, d)`` matrix, stream after stream, with no padding. Row-wise layers — Linear,
LayerNorm, the feed-forward blocks — run once over that matrix. Operations whose arithmetic depends on a
sequence's shape (attention over look-back caches, the FSMN convolutions) run per *run*: a maximal stretch of
consecutive streams that share a shape key, whose rows form a free ``(G, T, d)`` view of the packed matrix.

Callers sort the streams by key before packing (:func:`sort_by_key`), so each shape forms a single run and a
batch of streams in steady state — same chunk size, same look-back fill — is one run. Nothing here is padded,
so nothing needs masking: each run computes exactly the shapes a stream alone would have.

Look-back caches follow the same split: per-stream tensors are stacked per run on the way in
(:func:`stack_optional`) and copied back out into tensors of each stream's own (:func:`per_stream_kv`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

K = TypeVar("K", bound=Hashable)

#: One layer's look-back keys and values kept for the next chunk, (G, heads, L, d_k) each; None when not cached.
KeptKV = tuple[torch.Tensor, torch.Tensor] | None


def sort_by_key(keys: Sequence[K]) -> list[int]:
    """Indices of ``keys`` in packing order: grouped by key, first-seen key first, stable within a key."""
    first_seen: dict[K, int] = {}
    for key in keys:
        first_seen.setdefault(key, len(first_seen))
    return sorted(range(len(keys)), key=lambda i: first_seen[keys[i]])


@dataclass(frozen=True)
class Run:
    """Streams ``first … first + count - 1`` (packing positions), each ``length`` rows, from row ``row0`` on."""

    key: Hashable
    first: int
    count: int
    length: int
    row0: int

    @property
    def rows(self) -> slice:
        return slice(self.row0, self.row0 + self.count * self.length)

    @property
    def streams(self) -> slice:
        return slice(self.first, self.first + self.count)

    def view(self, packed: torch.Tensor) -> torch.Tensor:
        """The run's rows of ``packed`` (R, d) as a ``(count, length, d)`` view (no copy)."""
        return packed[self.rows].view(self.count, self.length, packed.shape[-1])


class Packing:
    """Row lengths of streams in packing order, their offsets, and the runs of equal shape key.

    ``keys[i]`` must determine ``lengths[i]``; streams with equal keys must be adjacent (see :func:`sort_by_key`).
    """

    def __init__(self, lengths: Sequence[int], keys: Sequence[Hashable]) -> None:
        if len(lengths) != len(keys):
            raise ValueError("one key per stream")
        self.lengths: tuple[int, ...] = tuple(int(n) for n in lengths)
        self.offsets: tuple[int, ...] = tuple(_cumulative(self.lengths))
        self.total = self.offsets[-1] + self.lengths[-1] if self.lengths else 0
        self.runs: tuple[Run, ...] = tuple(self._runs(keys))

    def __len__(self) -> int:
        return len(self.lengths)

    def rows_of(self, i: int) -> slice:
        """Packed rows of the stream at packing position ``i``."""
        return slice(self.offsets[i], self.offsets[i] + self.lengths[i])

    def row_index(self, device: torch.device) -> torch.Tensor:
        """For each packed row, its stream's packing position (LongTensor of length ``total``)."""
        counts = torch.tensor(self.lengths, dtype=torch.long)
        return torch.repeat_interleave(torch.arange(len(self.lengths)), counts).to(device)

    def _runs(self, keys: Sequence[Hashable]) -> list[Run]:
        runs: list[Run] = []
        seen: set[Hashable] = set()
        for i, key in enumerate(keys):
            if runs and runs[-1].key == key:
                last = runs[-1]
                runs[-1] = Run(key, last.first, last.count + 1, last.length, last.row0)
                continue
            if key in seen:
                raise ValueError(f"streams with key {key!r} are not adjacent; sort them with sort_by_key")
            seen.add(key)
            runs.append(Run(key, i, 1, self.lengths[i], self.offsets[i]))
        for run in runs:
            if any(self.lengths[j] != run.length for j in range(run.first, run.first + run.count)):
                raise ValueError(f"streams sharing key {run.key!r} have different lengths")
        return runs


def stack_optional(tensors: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """The caches of a run's streams (all None, or all of one shape) as one batch tensor."""
    if tensors[0] is None:
        return None
    if len(tensors) == 1:  # a view: caches are never written to, and a lone stream's need no copy
        return tensors[0].unsqueeze(0)
    return torch.stack(list(tensors))  # type: ignore[arg-type]


def per_stream_kv(per_layer: Sequence[KeptKV], j: int) -> torch.Tensor | None:
    """Stream ``j`` of a run: its kept keys/values of every layer as one (layers, 2, heads, L, d_k) tensor.

    The result has its own storage, so no batch-wide tensor outlives the call through a stream's cache.
    """
    if per_layer[0] is None:
        return None
    stacked = torch.stack([t[j] for kept in per_layer for t in kept])  # type: ignore[union-attr]
    return stacked.view(len(per_layer), 2, *stacked.shape[1:])


def _cumulative(lengths: Sequence[int]) -> list[int]:
    offsets, total = [], 0
    for n in lengths:
        offsets.append(total)
        total += n
    return offsets
