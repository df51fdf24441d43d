"""Model-level throughput: FunASR's per-stream ``generate`` against the batched recognizer, in the same run.

Both recognizers get the same streams: each stream is a sequence of utterances (4-12 chunks of noise at varying
loudness, the last chunk final and of a random size class: full, partial, under 960 samples, or empty). Stream k
joins k % STAGGER rounds late, so in the timed rounds the streams sit at different chunk indices, some starting an
utterance, some ending one. For each batch size B the batched recognizer runs streams 0..B-1 in rounds of one
chunk per stream; the first rounds (stagger + warm-up) are not timed, and small batch sizes repeat the whole run
(fresh streams) until ``--min-chunks`` stream-chunks are timed. FunASR's path runs every stream alone,
chunk by chunk, which gives both its speed and the reference texts. Every text the batched path produced is
compared with the reference: the run ends with PASS or FAIL.

Columns: B; stream-chunks/s (B / mean round time); p50 / p95 milliseconds per round (one batch); max real-time
streams (= stream-chunks/s x chunk duration, 0.6 s for chunk_size [5, 10, 5]); speed-up over unbatched, against
FunASR's time on exactly the stream-chunks that batch size timed (its whole-stream mean when ``--parity-streams``
ran fewer streams than B).

    python -m bench.model_throughput                          # full model (generated if missing), CPU, ncpu 2
    python -m bench.model_throughput --size tiny --batches 1,4,16
    python -m bench.model_throughput --device cuda --batches 1,2,4,...,1024 --parity-streams 64 --out r.json
    python -m bench.model_throughput --precision int8 --batches 1,8,16,32

With ``--precision int8`` the batched path's texts are int8's, so instead of parity the run reports agreement
with FunASR's float32 texts (identical stream-chunk texts, and the character edit distance over all of them as a
share of the reference's characters) and checks batch invariance: every stream's texts must be the same at every
batch size (PASS/FAIL). With random weights agreement is pessimistic: no training made the logits confident, so
near-ties between tokens are common and small int8 rounding flips them far more often than in a trained model.

With ``--funasr-onnx`` (``int8``, the default, ``fp32`` or ``int8,fp32``) FunASR's own CPU deployment path runs too,
after the reference and like it unbatched: the model exported by FunASR's ONNX export and run by funasr-onnx
(bench/onnx_peer.py, which also says why even its fp32 texts differ from the reference's). One line per variant:
its speed, and its agreement with FunASR's float32 texts as above. Its dependencies are in requirements-bench.txt.

    python -m bench.model_throughput --batches 1,8 --funasr-onnx int8,fp32
    python -m bench.model_throughput --precision int8 --look-back 0,0 --funasr-onnx int8,fp32   # like for like

funasr-onnx attends to no earlier chunk, so ``--look-back 0,0`` (encoder, decoder chunks; default 4,1 as FunASR's
clients send) runs every path without look-back: the same work, and funasr-onnx's fp32 texts equal the
reference's.

With B=1 among the batch sizes, ``--interleaved`` streams also run through FunASR and the batched path chunk by
chunk in alternating order: on a shared machine whose speed drifts between the two timed runs, the median of the
per-chunk ratios is the robust answer to "is one stream slower than FunASR?".
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from config.settings import ROOT
from tasks.modelgen import generate
from tasks.recognizer import ChunkWork, StreamingRecognizer, StreamOptions

STAGGER = 5  # stream k joins k % STAGGER rounds late
OPTIONS = StreamOptions(chunk_size=(5, 10, 5), encoder_chunk_look_back=4, decoder_chunk_look_back=1)
CHUNK_SECONDS = OPTIONS.chunk_samples / 16000


@dataclass
class Stream:
    """One synthetic stream: its chunks (audio, is_final) and the round it joins."""

    start: int
    chunks: list[tuple[np.ndarray, bool]] = field(default_factory=list)


def make_streams(count: int, length: int, seed: int = 0) -> list[Stream]:
    """``count`` streams with at least ``length`` chunks each (see module docstring)."""
    rng = np.random.default_rng(seed)
    streams = []
    for k in range(count):
        stream = Stream(start=k % STAGGER)
        while len(stream.chunks) < length:
            loudness = float(rng.uniform(0.02, 0.3))
            for _ in range(int(rng.integers(3, 12))):
                stream.chunks.append((_noise(rng, OPTIONS.chunk_samples, loudness), False))
            final = {
                0: OPTIONS.chunk_samples,
                1: int(rng.integers(960, OPTIONS.chunk_samples)),
                2: int(rng.integers(1, 960)),
                3: 0,
            }[int(rng.integers(0, 4))]
            stream.chunks.append((_noise(rng, final, loudness), True))
        streams.append(stream)
    return streams


def _noise(rng: np.random.Generator, n: int, loudness: float) -> np.ndarray:
    return np.clip(rng.standard_normal(n) * loudness, -1.0, 0.99997).astype(np.float32)


def run_unbatched(rec: StreamingRecognizer, streams: list[Stream], rounds: int) -> tuple[list[list[str]], list[float]]:
    """Each stream alone, chunk by chunk: its texts and the seconds each call took."""
    texts, seconds = [], []
    for k, stream in enumerate(streams):
        state = rec.open_stream(OPTIONS)
        out = []
        for audio, final in stream.chunks[: rounds - stream.start]:
            t0 = time.perf_counter()
            out.append(rec.process([ChunkWork(state, audio, final)])[0])
            seconds.append(time.perf_counter() - t0)
        texts.append(out)
        print(f"\r  unbatched: stream {k + 1}/{len(streams)}", end="", flush=True)
    print()
    return texts, seconds


def run_batched(
    rec: StreamingRecognizer, streams: list[Stream], rounds: int, untimed: int
) -> tuple[list[list[str]], list[float]]:
    """All streams together, one chunk each per round: texts and the seconds of each timed round."""
    states = [rec.open_stream(OPTIONS) for _ in streams]
    texts: list[list[str]] = [[] for _ in streams]
    seconds = []
    for r in range(rounds):
        active = [k for k, s in enumerate(streams) if r >= s.start]
        work = [ChunkWork(states[k], *streams[k].chunks[r - streams[k].start]) for k in active]
        t0 = time.perf_counter()
        out = rec.process(work)
        elapsed = time.perf_counter() - t0
        if r >= untimed:
            seconds.append(elapsed)
        for k, text in zip(active, out):
            texts[k].append(text if isinstance(text, str) else f"<failed: {text}>")
    return texts, seconds


def run_interleaved(reference: StreamingRecognizer, batched: StreamingRecognizer, streams: list[Stream], rounds: int):
    """One stream at a time through both paths, chunk by chunk in alternating order: the B=1 ratio that machine
    drift between the two runs above cannot bias. Prints and returns the medians."""
    ref_s: list[float] = []
    ours_s: list[float] = []
    for k, stream in enumerate(streams):
        states = (reference.open_stream(OPTIONS), batched.open_stream(OPTIONS))
        for j, (audio, final) in enumerate(stream.chunks[: rounds - stream.start]):
            for side in (0, 1) if (j + k) % 2 == 0 else (1, 0):
                t0 = time.perf_counter()
                (reference, batched)[side].process([ChunkWork(states[side], audio, final)])
                (ref_s, ours_s)[side].append(time.perf_counter() - t0)
    if not ref_s:
        return None
    ratio = statistics.median(r / o for r, o in zip(ref_s, ours_s))
    result = {
        "chunks": len(ref_s),
        "funasr_ms_median": 1000 * statistics.median(ref_s),
        "batched_ms_median": 1000 * statistics.median(ours_s),
        "speed_vs_funasr_median": ratio,
    }
    print(
        f"B=1 interleaved with FunASR generate ({len(ref_s)} chunks): FunASR {result['funasr_ms_median']:.0f} ms, "
        f"batched {result['batched_ms_median']:.0f} ms median per chunk; per-chunk speed ratio median {ratio:.2f}x",
        flush=True,
    )
    return result


def per_stream_seconds(seconds: list[float], streams: list[Stream], rounds: int) -> list[list[float]]:
    """run_unbatched's flat per-call seconds split back into each stream's chunks (chunk j of stream k is round
    ``start + j``)."""
    out, i = [], 0
    for stream in streams:
        n = len(stream.chunks[: rounds - stream.start])
        out.append(seconds[i : i + n])
        i += n
    return out


def same_work_baseline(per_chunk: list[list[float]], batch: int, untimed: int) -> float | None:
    """FunASR's chunks/s on exactly the stream-chunks the batched run times at this batch size (streams < B,
    rounds >= ``untimed``): the stagger leaves early, cheaper chunks (short look-back) out of the timed rounds, so
    comparing with FunASR's mean over whole streams would favour FunASR. None if the reference ran fewer streams."""
    if batch > len(per_chunk):
        return None
    timed = [t for k in range(batch) for t in per_chunk[k][max(0, untimed - k % STAGGER) :]]
    return 1 / statistics.mean(timed) if timed else None


def row(batch: int, seconds: list[float], baseline: float | None) -> dict:
    per_second = batch / statistics.mean(seconds)
    return {
        "B": batch,
        "chunks_per_s": per_second,
        "batch_ms_p50": 1000 * float(np.percentile(seconds, 50)),
        "batch_ms_p95": 1000 * float(np.percentile(seconds, 95)),
        "max_realtime_streams": per_second * CHUNK_SECONDS,
        "vs_unbatched": per_second / baseline if baseline else 1.0,
    }


HEADER = f"{'B':>5} {'chunks/s':>9} {'p50 ms':>9} {'p95 ms':>9} {'RT streams':>11} {'vs unbatched':>13}"


def format_row(r: dict) -> str:
    return (
        f"{r['B']:>5} {r['chunks_per_s']:>9.2f} {r['batch_ms_p50']:>9.0f} {r['batch_ms_p95']:>9.0f} "
        f"{r['max_realtime_streams']:>11.1f} {r['vs_unbatched']:>12.2f}x"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="FunASR model folder (default: models/<size>, generated if missing)")
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds per batch size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds after the stagger")
    parser.add_argument(
        "--min-chunks", type=int, default=24, help="repeat a batch size's run until this many stream-chunks are timed"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ncpu", type=int, default=2)
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], help="autocast dtype for the batched path (CUDA)")
    parser.add_argument("--fast", action="store_true", help="batched path without exact GEMM routing")
    parser.add_argument("--precision", choices=["fp32", "int8"], default="fp32", help="the batched path's Linears")
    parser.add_argument("--parity-streams", type=int, help="run the unbatched reference on only this many streams")
    parser.add_argument(
        "--funasr-onnx", nargs="?", const="int8", help="also run FunASR's ONNX export: int8 (default), fp32 or both"
    )
    parser.add_argument(
        "--interleaved", type=int, default=8, help="streams for the B=1 comparison interleaved with FunASR (0: off)"
    )
    parser.add_argument("--look-back", default="4,1", help="encoder,decoder look-back chunks for every path")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.funasr_onnx and not set(args.funasr_onnx.split(",")) <= {"int8", "fp32"}:
        parser.error("--funasr-onnx takes int8, fp32 or int8,fp32")
    return args


def main(argv: list[str] | None = None) -> int:
    from tasks.batched import BatchedParaformerRecognizer
    from tasks.recognizer import FunASRStreamingRecognizer

    global OPTIONS
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    encoder_look_back, decoder_look_back = (int(n) for n in args.look_back.split(","))
    OPTIONS = replace(OPTIONS, encoder_chunk_look_back=encoder_look_back, decoder_chunk_look_back=decoder_look_back)
    batches = [int(b) for b in args.batches.split(",")]
    model = Path(args.model) if args.model else ROOT / "models" / args.size
    if not (model / "model.pt").exists():
        print(f"generating the {args.size} model into {model} …", flush=True)
        generate(model, args.size)
    rounds = STAGGER + args.warmup + args.rounds
    streams = make_streams(max(*batches, args.interleaved), rounds)
    reference_streams = streams[: args.parity_streams or len(streams)]

    print(
        f"model {model} | device {args.device} | ncpu {args.ncpu} | look-back {args.look_back} | "
        f"rounds {args.rounds} timed "
        f"(+{STAGGER + args.warmup} untimed) | batched: {'fast' if args.fast else 'exact'} GEMMs, {args.precision}"
        f"{f', autocast {args.dtype}' if args.dtype else ''}",
        flush=True,
    )
    reference = FunASRStreamingRecognizer.load(str(model), device=args.device, ncpu=args.ncpu)
    expected, seconds = run_unbatched(reference, reference_streams, rounds)
    per_chunk = per_stream_seconds(seconds, reference_streams, rounds)
    baseline = 1 / statistics.mean(seconds)
    unbatched = row(1, seconds, None)
    print(
        f"unbatched FunASR generate: {baseline:.2f} chunks/s, {unbatched['batch_ms_p50']:.0f} ms p50, "
        f"{unbatched['batch_ms_p95']:.0f} ms p95 per chunk, {unbatched['max_realtime_streams']:.1f} "
        f"real-time streams",
        flush=True,
    )
    peers = run_onnx_peer(args, model, reference_streams, rounds, expected, baseline) if args.funasr_onnx else None

    batched = BatchedParaformerRecognizer.load(
        str(model),
        device=args.device,
        ncpu=args.ncpu,
        dtype=args.dtype,
        exact=False if args.fast else None,
        precision=args.precision,
    )
    lone = run_interleaved(reference, batched, streams[: args.interleaved], rounds) if 1 in batches else None
    reference.close()
    rows, compared, mismatches = [], 0, []
    seen: dict[int, list[str]] = {}  # stream → its texts at the first batch size that ran it
    variant = []
    print(HEADER, flush=True)
    for batch in batches:
        seconds = []
        for _ in range(max(1, math.ceil(args.min_chunks / (batch * args.rounds)))):  # small B: repeat the run
            texts, timed = run_batched(batched, streams[:batch], rounds, STAGGER + args.warmup)
            seconds += timed
        rows.append(row(batch, seconds, same_work_baseline(per_chunk, batch, STAGGER + args.warmup) or baseline))
        for k, (got, want) in enumerate(zip(texts, expected[:batch])):
            compared += len(want)
            mismatches += [(batch, k, j, w, g) for j, (g, w) in enumerate(zip(got, want)) if g != w]
        for k, got in enumerate(texts):
            if seen.setdefault(k, got) != got:
                variant.append((batch, k))
        print(format_row(rows[-1]), flush=True)
    if args.precision == "int8":
        return report_int8(args, rows, variant, expected, seen, peers, lone)
    verdict = "PASS" if not mismatches else "FAIL"
    print(f"parity: {verdict} ({compared} stream-chunk texts compared, {len(mismatches)} differ)")
    for batch, k, j, want, got in mismatches[:10]:
        print(f"  B={batch} stream {k} chunk {j}: unbatched {want!r} batched {got!r}")
    if args.out:
        result = {
            "model": str(model),
            "device": args.device,
            "ncpu": args.ncpu,
            "dtype": args.dtype,
            "exact": not args.fast,
            "rounds": args.rounds,
            "unbatched": unbatched,
            "interleaved_b1": lone,
            "batched": rows,
            "parity": {"verdict": verdict, "compared": compared, "mismatches": len(mismatches)},
            "funasr_onnx": peers,
        }
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0 if not mismatches else 1


def report_int8(args, rows, variant, expected, texts, peers=None, lone=None) -> int:
    """Agreement of int8's texts with FunASR's float32 ones, and batch invariance (module docstring).

    Each stream counts once: its texts are the same at every batch size (the invariance check), so agreement is
    taken from the first batch size that ran it.
    """
    a = agreement([texts[k] for k in sorted(texts) if k < len(expected)], expected)
    verdict = "PASS" if not variant else "FAIL"
    print(
        f"int8 vs float32: {a['identical']}/{a['compared']} stream-chunk texts identical, "
        f"character edit distance {a['edits']}/{a['chars']}"
    )
    print(f"int8 batch invariance: {verdict} (every stream's texts equal at every batch size; {len(variant)} differ)")
    if args.out:
        result = {"precision": "int8", "batched": rows, **a, "invariant": not variant, "funasr_onnx": peers}
        result["interleaved_b1"] = lone
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0 if not variant else 1


def run_onnx_peer(args, model: Path, streams, rounds: int, expected, baseline: float) -> list[dict]:
    """FunASR's ONNX export run by funasr-onnx, unbatched, per variant: speed and agreement with the reference."""
    from bench.onnx_peer import FunASROnnxRecognizer, export_quantized

    folder = export_quantized(model, ncpu=args.ncpu)
    results, texts = [], {}
    for precision in args.funasr_onnx.split(","):
        peer = FunASROnnxRecognizer(folder, quantize=precision == "int8", ncpu=args.ncpu)
        texts[precision], seconds = run_unbatched(peer, streams, rounds)
        peer.close()
        r = {"precision": precision, **row(1, seconds, baseline), **agreement(texts[precision], expected)}
        results.append(r)
        print(
            f"funasr-onnx {precision}: {r['chunks_per_s']:.2f} chunks/s, {r['batch_ms_p50']:.0f} ms p50, "
            f"{r['batch_ms_p95']:.0f} ms p95 per chunk, {r['max_realtime_streams']:.1f} real-time streams, "
            f"{r['vs_unbatched']:.2f}x FunASR generate; vs FunASR float32: {r['identical']}/{r['compared']} "
            f"stream-chunk texts identical, character edit distance {r['edits']}/{r['chars']}",
            flush=True,
        )
    if len(texts) == 2:  # int8 rounding alone, without funasr-onnx's other differences from the reference
        a = agreement(texts["int8"], texts["fp32"])
        print(
            f"funasr-onnx int8 vs its fp32: {a['identical']}/{a['compared']} identical, edits {a['edits']}/{a['chars']}"
        )
    return results


def agreement(got: list[list[str]], expected: list[list[str]]) -> dict:
    """Identical stream-chunk texts and the character edit distance over all of them, against ``expected``."""
    from rapidfuzz.distance import Levenshtein

    pairs = [(g, w) for gs, ws in zip(got, expected) for g, w in zip(gs, ws)]
    return {
        "identical": sum(g == w for g, w in pairs),
        "compared": len(pairs),
        "edits": sum(Levenshtein.distance(g, w) for g, w in pairs),
        "chars": sum(len(w) for _, w in pairs) or 1,
    }


if __name__ == "__main__":
    sys.exit(main())
