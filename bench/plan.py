"""Capacity planner: how many workers (and cores or GPUs) a number of concurrent streams needs, from a benchmark.

    python -m bench.plan RESULT.json --streams 500 [--mode online] [--utilisation 0.7] [--max-batch 16]
    funasr-stream plan RESULT.json --streams 500

RESULT.json is either
  * ``python -m bench.model_throughput --out r.json`` (make bench-model): stream-chunks per second of one worker
    process at each batch size B. The planner finds the most streams S one worker sustains at ``utilisation``:
    a worker holding S streams batches about S chunks at a time (one chunk each in flight, at most
    ``--max-batch`` = the worker's ``--concurrency``: 16 on CPU, 64 on GPU in docker/k8s), so it keeps up while
    ``utilisation x RT(S) >= S``, with RT(B) = the real-time streams the benchmark measured at batch B
    (interpolated linearly between measured batch sizes, never extrapolated past the largest);
  * a load test's ``report.json`` (bench.loadtest, bench.scenario): the forward-pass seconds per stream-chunk
    the workers reported (mean ``compute`` / mean ``batch`` of the partials, run with ``timing``), i.e. the
    real-time factor at the batch size that run reached; plus what the run itself served, as a cross-check.

Beside it the planner prints the earlier sizing rule, ``workers = streams x RTF / utilisation``, with RTF the
compute seconds per second of audio of one stream: with the unbatched RTF (every chunk alone, the original
design) and with the RTF at the batch the workers actually reach (which is the same estimate as the first).

Modes: only ``online`` is served today. ``offline`` and ``2pass`` are refused by the gateway, so there is
nothing to measure for them yet; the planner says so instead of guessing.

Cores and GPUs: one worker process per pod, ``ASR_NCPU`` cores each (the benchmark's ``ncpu``, else 2 as in
docker/k8s), one GPU per worker on ``cuda``. Figures are estimates from one benchmark machine: the load test on
the target hardware is the measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_UTILISATION = 0.7  # share of a worker's measured throughput planned for: headroom for bursts and replays
CHUNK_SECONDS = 0.6  # audio per chunk for FunASR's default chunk_size [5, 10, 5] (10 x 60 ms)
DEFAULT_NCPU = 2  # ASR_NCPU in docker/k8s/worker*.yaml
MAX_BATCH = {"cpu": 16, "cuda": 64}  # worker --concurrency in docker/k8s/worker.yaml / worker-gpu.yaml
MODES = ("online", "offline", "2pass")
SERVED_MODES = ("online",)


class PlanError(ValueError):
    """The benchmark file cannot be planned from (unknown format, no usable figures)."""


@dataclass(frozen=True)
class Measurement:
    """What a benchmark says about one worker process.

    ``points``: (batch size, real-time streams one worker sustains at that batch), ascending by batch.
    ``unbatched_rtf``: compute seconds per audio second of one stream processed alone (None if not measured).
    """

    source: str
    device: str
    ncpu: int
    points: tuple[tuple[float, float], ...]
    unbatched_rtf: float | None = None
    observed: str | None = None  # what a load test itself served, for the printout


@dataclass(frozen=True)
class Plan:
    streams: int
    utilisation: float
    streams_per_worker: float  # sustained at ``utilisation``; < 1: a worker cannot keep up with one stream
    batch: float  # the batch a worker then runs at
    workers: int
    cores: int  # ASR_NCPU per worker, GPU workers included (fbank, CIF and bookkeeping run on the CPU)
    gpus: int
    rtf: float  # worker-seconds of compute per second of one stream's audio, at ``batch``
    seed_workers: float  # streams x rtf / utilisation
    seed_workers_unbatched: float | None


def load(path: Path, *, chunk_seconds: float = CHUNK_SECONDS) -> Measurement:
    """Read a bench.model_throughput JSON or a load-test report.json."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PlanError(f"{path}: {exc}") from exc
    if isinstance(data, dict) and "batched" in data:
        return from_throughput(data)
    if isinstance(data, dict) and {"plan", "sessions", "breakdown"} <= set(data):
        return from_report(data, chunk_seconds=chunk_seconds)
    raise PlanError(f"{path}: neither a bench.model_throughput result nor a load-test report.json")


def from_throughput(data: dict) -> Measurement:
    points = sorted((float(r["B"]), float(r["max_realtime_streams"])) for r in data["batched"])
    if not points:
        raise PlanError("the throughput result has no batched rows")
    unbatched = data.get("unbatched") or {}
    rt1 = unbatched.get("max_realtime_streams")
    return Measurement(
        source="bench.model_throughput",
        device=_device(data.get("device")),
        ncpu=int(data.get("ncpu") or DEFAULT_NCPU),
        points=tuple(points),
        unbatched_rtf=1 / rt1 if rt1 else None,
    )


def from_report(data: dict, *, chunk_seconds: float = CHUNK_SECONDS) -> Measurement:
    breakdown = data["breakdown"]
    compute, batch = breakdown.get("compute", {}).get("mean"), breakdown.get("batch", {}).get("mean")
    if not compute or not batch:
        raise PlanError("the report has no per-chunk timing: run the load test with timing on (the default)")
    per_stream_chunk = compute / batch  # a batch's forward pass is shared by its chunks
    sessions, workers = data["sessions"], len(data.get("workers") or [])
    observed = (
        f"{sessions.get('realtime', 0)} of {data['plan'].get('streams', '?')} streams served in real time "
        f"by {workers or '?'} worker(s)"
    )
    return Measurement(
        source="load-test report",
        device="cpu",
        ncpu=DEFAULT_NCPU,
        points=((float(batch), chunk_seconds / per_stream_chunk),),
        observed=observed,
    )


def _device(device: str | None) -> str:
    return "cuda" if str(device or "cpu").startswith("cuda") else "cpu"


def realtime_streams(points: Sequence[tuple[float, float]], batch: float) -> float:
    """RT(batch): linear between measured batch sizes; the nearest measured value outside them."""
    if batch <= points[0][0]:
        return points[0][1]
    for (b0, r0), (b1, r1) in zip(points, points[1:]):
        if batch <= b1:
            return r0 + (r1 - r0) * (batch - b0) / (b1 - b0)
    return points[-1][1]


def streams_per_worker(points: Sequence[tuple[float, float]], utilisation: float, max_batch: float) -> float:
    """The most streams S one worker sustains: the largest S <= max_batch with utilisation x RT(S) >= S.

    f(S) = utilisation x RT(S) - S is linear between the candidate sizes (measured batches, and max_batch), and
    RT is taken as constant below the smallest measured batch; the walk stops at the first piece where f turns
    negative and solves that piece. A result below 1 means one worker cannot keep up with a single stream.
    """

    def spare(s: float) -> float:
        return utilisation * realtime_streams(points, s) - s

    candidates = sorted({b for b, _ in points if b <= max_batch} | {float(max_batch)})
    best = 0.0
    for lo, hi in zip([0.0, *candidates], candidates):
        if spare(hi) >= 0:
            best = hi
            continue
        f_lo, f_hi = spare(lo), spare(hi)  # f_lo >= 0: f(0) > 0, and every earlier piece ended >= 0
        best = lo + (hi - lo) * f_lo / (f_lo - f_hi)
        break
    return best


def plan(
    m: Measurement, streams: int, *, utilisation: float = DEFAULT_UTILISATION, max_batch: float | None = None
) -> Plan:
    if streams < 1 or not 0 < utilisation <= 1:
        raise PlanError("streams must be >= 1 and utilisation in (0, 1]")
    max_batch = max_batch or MAX_BATCH[m.device]
    per_worker = streams_per_worker(m.points, utilisation, max_batch)
    batch = max(1.0, min(per_worker, max_batch))
    rtf = 1 / realtime_streams(m.points, batch)  # a worker carries RT streams: each costs 1/RT of it
    # A stream lives on one worker: a worker that cannot carry one stream cannot be helped by more workers.
    workers = math.ceil(streams / per_worker - 1e-9) if per_worker >= 1 else 0
    return Plan(
        streams=streams,
        utilisation=utilisation,
        streams_per_worker=per_worker,
        batch=batch,
        workers=workers,
        cores=workers * m.ncpu,
        gpus=workers if m.device == "cuda" else 0,
        rtf=rtf,
        seed_workers=streams * rtf / utilisation,
        seed_workers_unbatched=streams * m.unbatched_rtf / utilisation if m.unbatched_rtf else None,
    )


def format_plan(m: Measurement, p: Plan) -> str:
    lines = [
        f"from {m.source}: device {m.device}, {m.ncpu} cores per worker, measured at batch sizes "
        f"{', '.join(f'{b:g}' for b, _ in m.points)}"
    ]
    if m.observed:
        lines.append(f"that run: {m.observed}")
    if p.workers == 0:
        lines.append(
            f"one worker sustains only {p.streams_per_worker:.2f} real-time streams at utilisation "
            f"{p.utilisation:g}: it cannot keep up with a single stream; a faster worker is needed"
        )
        return "\n".join(lines)
    hardware = f"{p.gpus} GPUs" if m.device == "cuda" else f"{p.cores} cores"
    lines += [
        f"{p.streams} online streams: {p.workers} workers ({hardware}); one worker sustains "
        f"{p.streams_per_worker:.1f} streams at utilisation {p.utilisation:g} (batches of ~{p.batch:.0f})",
        f"seed formula workers = streams x RTF / utilisation: {p.streams} x {p.rtf:.4f} / {p.utilisation:g} = "
        f"{p.seed_workers:.1f} (RTF at batch ~{p.batch:.0f})",
    ]
    if p.seed_workers_unbatched is not None:
        lines.append(
            f"  with the unbatched RTF ({p.seed_workers_unbatched * p.utilisation / p.streams:.4f}, every "
            f"chunk alone): {p.seed_workers_unbatched:.1f} workers"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("result", type=Path, help="bench.model_throughput --out JSON, or a load test's report.json")
    parser.add_argument("--streams", type=int, required=True, help="concurrent real-time streams to serve")
    parser.add_argument("--mode", choices=MODES, default="online", help="only online is served (and measurable)")
    parser.add_argument(
        "--utilisation",
        type=float,
        default=DEFAULT_UTILISATION,
        help=f"share of measured throughput to plan for (default {DEFAULT_UTILISATION})",
    )
    parser.add_argument(
        "--max-batch", type=int, help="the workers' --concurrency (default 16 on CPU, 64 on GPU, as in docker/k8s)"
    )
    parser.add_argument("--ncpu", type=int, help="cores per worker (default: the benchmark's ncpu, else 2)")
    parser.add_argument(
        "--chunk-seconds",
        type=float,
        default=CHUNK_SECONDS,
        help="audio per chunk of a load-test report (default 0.6: chunk_size [5, 10, 5])",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode not in SERVED_MODES:
        print(
            f"mode {args.mode}: not measurable yet: the gateway serves only {', '.join(SERVED_MODES)} "
            "(it refuses offline and 2pass), so no benchmark exists to plan from",
            file=sys.stderr,
        )
        return 2
    try:
        m = load(args.result, chunk_seconds=args.chunk_seconds)
        if args.ncpu:
            m = Measurement(m.source, m.device, args.ncpu, m.points, m.unbatched_rtf, m.observed)
        p = plan(m, args.streams, utilisation=args.utilisation, max_batch=args.max_batch)
    except PlanError as exc:
        print(f"cannot plan: {exc}", file=sys.stderr)
        return 2
    print(format_plan(m, p))
    return 0 if p.workers else 1


if __name__ == "__main__":
    sys.exit(main())
