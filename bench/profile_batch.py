"""Where a batch's time goes in the batched recognizer, at several batch sizes, beside FunASR's ``generate``.

Each component of :class:`~tasks.batched.paraformer.BatchedParaformer` is timed with an exclusive-time stack: a
component's time excludes the components it calls, so the rows add up to the whole ``process`` call. GEMMs are
every ``nn.Linear`` (and int8 ``QuantizedLinear``) call, split by encoder and decoder; *routing* is what
:class:`~tasks.batched.rowexact.RowRouter` adds around them (row gathers, pads, scatters); *Python glue* is the
recognizer's own work (planning steps, commits, text post-processing) and the step's packing. Streams are the
model benchmark's (:mod:`bench.model_throughput`): staggered, utterances of varying length and loudness, finals.

    python -m bench.profile_batch                         # full model, batches 1,16,64, fp32, 2 threads
    python -m bench.profile_batch --precision int8 --batches 1,16,64
    python -m bench.profile_batch --size tiny --batches 1,4 --rounds 2

The timers cost a few microseconds per call (a B=1 chunk makes ~700 calls); the FunASR line is timed without
them, in the same run, for scale.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.model_throughput import OPTIONS
from bench.models import ensure
from config.settings import ROOT

ROWS = (
    ("fbank", "fbank + LFR + CMVN (frontend)"),
    ("embed", "encoder: scale + position encoding"),
    ("enc_gemm", "encoder GEMMs (Q/K/V, out, feed-forward)"),
    ("enc_attn", "encoder attention + FSMN memory"),
    ("enc_rest", "encoder norms, activations, residuals, packing"),
    ("cif", "CIF predictor"),
    ("dec_gemm", "decoder GEMMs (incl. vocabulary projection)"),
    ("dec_attn", "decoder cross-attention + FSMN"),
    ("dec_rest", "decoder norms, activations, packing, argmax"),
    ("routing", "exact-GEMM routing (gathers, pads, scatters)"),
    ("python", "Python glue (plan, commit, texts, step)"),
)


class StackTimer:
    """Exclusive time per label: a wrapped call's time minus the wrapped calls it makes."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[list[Any]] = []  # [label, start, child seconds]
        self.enabled = False

    def wrap(self, label: str | Callable[[list[list[Any]]], str], fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            if not self.enabled:
                return fn(*args, **kwargs)
            name = label(self.stack) if callable(label) else label
            frame = [name, time.perf_counter(), 0.0]
            self.stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                self.stack.pop()
                elapsed = time.perf_counter() - frame[1]
                self.totals[name] += elapsed - frame[2]
                if self.stack:
                    self.stack[-1][2] += elapsed

        return timed


def _inside(stack: list[list[Any]]) -> str:
    """GEMM label by the nearest enclosing encoder/decoder component."""
    for name, *_ in reversed(stack):
        if name.startswith("enc") or name == "embed":
            return "enc_gemm"
        if name.startswith("dec"):
            return "dec_gemm"
    return "dec_gemm"


def instrument(timer: StackTimer) -> None:
    """Wrap the batched recognizer's components (class attributes, so every instance is timed)."""
    from torch import nn

    from tasks.batched import decoder, encoder, int8, paraformer, predictor, recognizer, rowexact

    patches = [
        (recognizer.BatchedParaformerRecognizer, "process", "python"),
        (paraformer.BatchedParaformer, "step", "python"),
        (paraformer.BatchedParaformer, "_features", "fbank"),
        (paraformer.BatchedParaformer, "_decode", "dec_rest"),
        (encoder.BatchedEncoder, "__call__", "enc_rest"),
        (encoder.BatchedEncoder, "_embed", "embed"),
        (encoder.BatchedEncoder, "_attention", "enc_attn"),
        (predictor.BatchedCif, "__call__", "cif"),
        (decoder.BatchedDecoder, "__call__", "dec_rest"),
        (rowexact.RowRouter, "__call__", "routing"),
        (nn.Linear, "forward", _inside),
        (int8.QuantizedLinear, "__call__", _inside),
    ]
    for owner, name, label in patches:
        setattr(owner, name, timer.wrap(label, getattr(owner, name)))
    for name in ("_cross_attention", "_fsmn"):  # module functions, looked up by name at call time
        setattr(decoder, name, timer.wrap("dec_attn", getattr(decoder, name)))


def run_rounds(rec: Any, streams: list, rounds: int, untimed: int, timer: StackTimer) -> list[float]:
    """One chunk per stream per round, as bench.model_throughput; the timer on only for rounds >= ``untimed``."""
    from tasks.recognizer import ChunkWork

    states = [rec.open_stream(OPTIONS) for _ in streams]
    timer.totals.clear()
    seconds = []
    for r in range(rounds):
        active = [k for k, s in enumerate(streams) if r >= s.start]
        work = [ChunkWork(states[k], *streams[k].chunks[r - streams[k].start]) for k in active]
        timer.enabled = r >= untimed
        t0 = time.perf_counter()
        rec.process(work)
        if timer.enabled:
            seconds.append(time.perf_counter() - t0)
    timer.enabled = False
    return seconds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--model", help="FunASR model folder (default: models/<size>, generated if missing)")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds per batch size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ncpu", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    parser.add_argument("--funasr-chunks", type=int, default=12, help="chunks of FunASR generate timed for scale")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from bench.model_throughput import STAGGER, make_streams, run_unbatched
    from tasks.batched import BatchedParaformerRecognizer
    from tasks.recognizer import FunASRStreamingRecognizer

    args = parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    model = ensure(Path(args.model) if args.model else ROOT / "models" / args.size, "streaming", args.size)
    rounds = STAGGER + args.warmup + args.rounds
    streams = make_streams(max(batches), rounds)

    funasr = FunASRStreamingRecognizer.load(str(model), ncpu=args.ncpu)
    one = make_streams(1, args.funasr_chunks + 2, seed=1)
    _, seconds = run_unbatched(funasr, one, args.funasr_chunks + 2)
    funasr.close()
    funasr_ms = 1000 * statistics.mean(seconds[2:])

    timer = StackTimer()
    instrument(timer)
    rec = BatchedParaformerRecognizer.load(str(model), ncpu=args.ncpu, precision=args.precision)
    columns: dict[int, dict[str, float]] = {}
    wall: dict[int, float] = {}
    for batch in batches:
        seconds = run_rounds(rec, streams[:batch], rounds, STAGGER + args.warmup, timer)
        wall[batch] = 1000 * statistics.mean(seconds)
        columns[batch] = {k: 1000 * v / len(seconds) for k, v in timer.totals.items()}
        print(f"  B={batch}: {wall[batch]:.0f} ms per batch", flush=True)
    rec.close()

    print(
        f"\nmodel {model} | {args.precision} | ncpu {args.ncpu} | {args.rounds} timed rounds | "
        f"FunASR generate: {funasr_ms:.1f} ms per chunk (no timers)\n"
    )
    head = "| component | " + " | ".join(f"B={b} ms (share)" for b in batches) + " |"
    print(head)
    print("|---|" + "---|" * len(batches))
    for key, title in ROWS:
        cells = []
        for b in batches:
            ms = columns[b].get(key, 0.0)
            total = sum(columns[b].values()) or 1.0
            cells.append(f"{ms:.1f} ({100 * ms / total:.0f} %)")
        print(f"| {title} | " + " | ".join(cells) + " |")
    totals = [sum(columns[b].values()) for b in batches]
    print("| **whole batch** | " + " | ".join(f"**{t:.1f}**" for t in totals) + " |")
    print("| per stream-chunk | " + " | ".join(f"{t / b:.1f}" for t, b in zip(totals, batches)) + " |")
    print("| vs FunASR per chunk | " + " | ".join(f"{funasr_ms * b / t:.2f}×" for t, b in zip(totals, batches)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
