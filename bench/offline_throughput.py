"""2pass second-pass throughput: SentencePipeline one call per sentence and one call of N, against FunASR's batched
``generate(batch_size=N)``, in the same run on the same sentences.

Sentences are N clips of noise at varying loudness (``--seconds`` long each; the mixed row draws lengths from 0.5x
to 1.5x that, to show what zero padding does to batched outputs). Every figure is the best of ``--repeats`` timed
passes after one untimed warm-up pass. Rows:

* pipeline, one call per sentence — ``SentencePipeline.process([s])`` for each sentence: offline ASR + punctuation.
* pipeline, one call of N — ``process([s1 … sN])``: the encoder runs once over all N sentences packed
  (:mod:`tasks.batched.offline_encoder`), the rest per sentence; "same" says whether every output equals the
  one-call-per-sentence row (the contract), "vs alone" is its speed-up over that row. The mixed rows repeat both
  on sentences of different lengths.
* FunASR ASR alone, one at a time — ``generate(input=s)`` per sentence: the baseline of the batched row.
* FunASR batched — ``generate(input=[s1 … sN], batch_size=N)``: ASR only, one hotword list for all. "same" says
  whether its texts / timestamps equal the one-at-a-time ones (the pipeline's faithfulness contract). The mixed
  rows repeat both on sentences of different lengths, which FunASR zero-pads in a batch. "vs alone" is a batched
  row's speed-up over the same sentences one at a time.
* punctuation alone — ``punc.generate`` per sentence, on the session's carried cache.

    python -m tasks.modelgen --kind offline --size full --out models/offline-full   # once
    python -m tasks.modelgen --kind punc --size full --out models/punc-full         # once
    python -m bench.offline_throughput [--asr DIR --punc DIR --threads 2 --sentences 8 --seconds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from bench.models import ensure
from bench.table import num
from config.settings import ROOT
from tasks.offline import SentenceOutput, SentencePipeline, SentenceWork


def sentences(count: int, seconds: float, seed: int = 0, mixed: bool = False) -> list[np.ndarray]:
    """``count`` clips of noise, ``seconds`` long (or 0.5x-1.5x that when ``mixed``), float32 in [-1, 1)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        length = seconds * (rng.uniform(0.5, 1.5) if mixed else 1.0)
        audio = rng.standard_normal(int(length * 16000)) * rng.uniform(0.03, 0.3)
        out.append(np.clip(audio, -1.0, 0.99997).astype(np.float32))
    return out


T = TypeVar("T")


def best_of(repeats: int, run: Callable[[], T]) -> tuple[float, T]:
    """One untimed warm-up call, then the shortest of ``repeats`` timed calls, and the last call's result."""
    result = run()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - t0)
    return best, result


def outputs_of(results: list) -> list[tuple[str, list]]:
    return [(r["text"], r.get("timestamp", [])) if r else ("", []) for r in results]


def compare(got: list[tuple[str, list]], want: list[tuple[str, list]]) -> str:
    texts = sum(g[0] == w[0] for g, w in zip(got, want))
    stamps = sum(g[1] == w[1] for g, w in zip(got, want))
    return f"{texts}/{len(want)} texts, {stamps}/{len(want)} timestamps"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--asr", default=str(ROOT / "models" / "offline-full"), help="SeACo-Paraformer folder")
    parser.add_argument("--punc", default=str(ROOT / "models" / "punc-full"), help="CT-Transformer folder")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (and FunASR's ncpu)")
    parser.add_argument("--sentences", type=int, default=8, help="sentences per pass (= the batch size N)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each sentence")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per row (the best one counts)")
    parser.add_argument("--out", help="write the results as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    ensure(args.asr, "offline")
    ensure(args.punc, "punc")
    torch.set_num_threads(args.threads)
    n, reps = args.sentences, args.repeats
    t0 = time.perf_counter()
    pipeline = SentencePipeline(args.asr, args.punc, ncpu=args.threads)
    loaded = time.perf_counter() - t0
    asr, punc = pipeline.asr, pipeline.punc
    audio, mixed = sentences(n, args.seconds), sentences(n, args.seconds, seed=1, mixed=True)
    print(
        f"asr {args.asr} | punc {args.punc} | threads {args.threads} | {n} sentences x {args.seconds:.1f} s | "
        f"best of {reps} | models loaded in {loaded:.1f} s",
        flush=True,
    )

    rows: list[dict] = []

    def add(label: str, seconds: float, items: int, same: str = "", alone: int | None = None) -> None:
        """``alone``: the row of the same sentences one at a time, for the batched rows' speed-up."""
        row = {"case": label, "seconds": seconds, "per_s": items / seconds, "same": same}
        row["vs_alone"] = row["per_s"] / rows[alone]["per_s"] if alone is not None else None
        rows.append(row)
        print(f"  {label}: {seconds:.2f} s", flush=True)

    def pipeline_rows(clips: list[np.ndarray], label: str) -> list[SentenceOutput]:
        work = [SentenceWork(a) for a in clips]
        t, singles = best_of(reps, lambda: [pipeline.process([w])[0] for w in work])
        add(f"pipeline{label}, one call per sentence", t, n)
        packed_before = pipeline.packed_items
        t, together = best_of(reps, lambda: pipeline.process(work))
        assert all(isinstance(o, SentenceOutput) for o in together)
        assert pipeline.packed_items > packed_before, "the packed encoder did not run"
        add(f"pipeline{label}, one call of {n} (packed encoder)", t, n, yes(together == singles), len(rows) - 1)
        return singles

    def yes(same: bool) -> str:
        return "yes" if same else "NO"

    singles = pipeline_rows(audio, "")
    pipeline_rows(mixed, ", mixed lengths")
    t, alone = best_of(reps, lambda: outputs_of([r for a in audio for r in asr.generate(input=a)[:1]]))
    add("FunASR ASR alone, one at a time", t, n)
    t, batched = best_of(reps, lambda: outputs_of(asr.generate(input=audio, batch_size=n)))
    add(f"FunASR batched, batch_size={n}", t, n, compare(batched, alone), len(rows) - 1)
    t, mixed_alone = best_of(reps, lambda: outputs_of([r for a in mixed for r in asr.generate(input=a)[:1]]))
    add("FunASR ASR alone, mixed lengths, one at a time", t, n)
    t, mixed_batched = best_of(reps, lambda: outputs_of(asr.generate(input=mixed, batch_size=n)))
    same = compare(mixed_batched, mixed_alone)
    add(f"FunASR batched, mixed lengths, batch_size={n}", t, n, same, len(rows) - 1)

    texts = [o.raw_text for o in singles if isinstance(o, SentenceOutput)]

    def punctuate() -> None:
        cache: dict = {}
        for text in texts:
            punc.generate(input=text, cache=cache)

    t, _ = best_of(reps, punctuate)
    add("punctuation alone, per session", t, len(texts))

    base = rows[0]["per_s"]
    print()
    print(f"{'case':<56}{'sentences/s':>12}{'ms/sentence':>13}{'vs pipeline':>13}{'vs alone':>10}  same outputs")
    for r in rows:
        r["vs_pipeline"] = r["per_s"] / base
        print(
            f"{r['case']:<56}{num(r['per_s']):>12}{num(1000 / r['per_s'], 0):>13}"
            f"{num(r['vs_pipeline']):>12}x{num(r['vs_alone']) + ('x' if r['vs_alone'] else ''):>10}  {r['same']}"
        )
    punc_share = rows[-1]["seconds"] / rows[0]["seconds"]
    print(f"punctuation share of the pipeline's time: {100 * punc_share:.1f} %")
    if args.out:
        meta = {"asr": args.asr, "punc": args.punc, "threads": args.threads, "sentences": n, "seconds": args.seconds}
        Path(args.out).write_text(json.dumps({**meta, "rows": rows}, indent=2))
    pipeline.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
