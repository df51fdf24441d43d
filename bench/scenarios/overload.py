"""Overload: capacity for K streams, and thousands of clients arriving: nobody may wait in silence.

The workers accept ``--capacity`` streams in all (``ASR_WORKER_MAX_STREAMS`` = capacity / workers) and the
gateway refuses new sessions while more than ``--max-pending`` chunk tasks wait. ``--clients`` sessions start over
``--ramp`` seconds. Every client must end in one of three ways: served (final received), shown its queue position
(got ``queue_status``) or an error message, or refused at the start with HTTP 503 — the check fails if any client
hit its timeout, or failed, without having been told anything.
"""

from __future__ import annotations

import argparse
import math

from bench import audio
from bench.loadtest import run_load
from bench.machine import CpuAccount, format_cpu
from bench.report import figures_of
from bench.runner import LoadPlan
from bench.scenarios.base import (
    Checks,
    Options,
    running_stack,
    save_figures,
    save_run,
    stack_pids,
)
from bench.stats import COMPLETED, FAILED, REFUSED, TIMED_OUT


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--capacity", type=int, default=20, help="streams the workers accept in all (K)")
    p.add_argument("--clients", type=int, default=5000, help="sessions attempted")
    p.add_argument("--ramp", type=float, default=30.0, help="seconds over which the clients arrive")
    p.add_argument("--seconds", type=float, default=5.0, help="audio each session streams, seconds")
    p.add_argument("--timeout", type=float, default=60.0, help="per-session client timeout, seconds")
    p.add_argument("--max-pending", type=int, default=200, help="ASR_MAX_PENDING: backlog that refuses (tasks)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=16, help="chunks per worker at once")


def run(opts: Options, args: argparse.Namespace) -> int:
    if opts.quick:
        args.clients, args.capacity = min(args.clients, 500), min(args.capacity, 10)
        args.ramp, args.seconds = min(args.ramp, 10.0), min(args.seconds, 3.0)
    per_worker = math.ceil(args.capacity / args.workers)
    workers = [(f"w{i + 1}", args.concurrency) for i in range(args.workers)]
    with running_stack(
        opts, "overload", workers=workers, worker_max_streams=per_worker, max_pending=args.max_pending
    ) as stack:
        plan = LoadPlan(
            url=stack.url,
            pcm=audio.noise(args.seconds, seed=2),
            streams=args.clients,
            ramp=args.ramp,
            frame_ms=opts.frame_ms,
            timeout=args.timeout,
            label="overload",
        )
        account = CpuAccount(stack_pids(stack)).begin()
        result = run_load(plan, progress=opts.progress)
        cpu = account.end()
    out = opts.out / "overload"
    report = save_run(result, out, f"overload: capacity {per_worker * args.workers} streams, {args.clients} clients")
    print(format_cpu(cpu))
    return verdict(result, report, per_worker * args.workers, out)


def verdict(result, report: dict, capacity: int, out) -> int:
    figures = figures_of(result)
    served = [f for f in figures if f.outcome == COMPLETED]
    realtime = report["sessions"]["realtime"]
    refused_503 = [f for f in figures if f.outcome == REFUSED and f.refused_status == 503]
    other_refusals = [f for f in figures if f.outcome == REFUSED and f.refused_status != 503]
    told_failures = [f for f in figures if f.outcome in (TIMED_OUT, FAILED) and f.told]
    untold = [f for f in figures if f.outcome in (TIMED_OUT, FAILED) and not f.told]
    streams_max = report["queue"]["streams_max"]
    print(
        f"\nclients {len(figures)}: served {len(served)} ({realtime} in real time, {len(served) - realtime} late), "
        f"refused with 503 {len(refused_503)}, refused otherwise {len(other_refusals)}, "
        f"ended with an error or queue_status but no final {len(told_failures)}, untold {len(untold)}; "
        f"peak open streams {streams_max} (capacity {capacity})"
    )
    if told_failures:
        print("  told but not served: " + ", ".join(f"{k} x{v}" for k, v in _count(told_failures).items()))
    checks = Checks()
    checks.check(
        "no client timed out or failed without being told",
        not untold,
        ", ".join(f"{k} x{v}" for k, v in _count(untold).items()),
    )
    checks.check(
        "every refusal at the start was a 503",
        not other_refusals,
        ", ".join(sorted({str(f.refused_status) for f in other_refusals})),
    )
    checks.check(
        "open streams never exceeded the capacity",
        (streams_max or 0) <= capacity,
        f"peak {streams_max}, capacity {capacity}",
    )
    checks.check("some clients were served", bool(served), f"{len(served)} served")
    print("\n" + checks.render())
    save_figures(
        out,
        {
            "clients": len(figures),
            "served": len(served),
            "served_realtime": realtime,
            "refused_503": len(refused_503),
            "refused_other": len(other_refusals),
            "told_not_served": _count(told_failures),
            "untold": _count(untold),
            "peak_streams": streams_max,
            "capacity": capacity,
        },
        checks,
    )
    return checks.exit_code()


def _count(figures) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in figures:
        key = f"{f.outcome}: {f.error or '?'}"
        counts[key] = counts.get(key, 0) + 1
    return counts
