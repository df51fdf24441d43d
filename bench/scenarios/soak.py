"""Soak: sessions opened and closed continuously; does the service's resident memory stay flat?

``--streams`` slots each open a session (``--seconds`` of audio at real time), wait for its final, and open the
next, until ``--sessions`` sessions were started. The RSS of the gateway and of each worker is read after
``--warmup`` sessions (model, caches and pools are warm by then) and again at the end, after the last session
closed. Checks: every session completed, and no process grew by more than ``--max-growth`` percent.
"""

from __future__ import annotations

import argparse

from bench import audio
from bench.loadtest import run_load
from bench.machine import CpuAccount, format_cpu
from bench.runner import LoadPlan
from bench.scenarios.base import (
    Checks,
    Options,
    running_stack,
    save_figures,
    save_run,
    stack_pids,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sessions", type=int, default=1000, help="sessions opened and closed")
    p.add_argument("--streams", type=int, default=20, help="sessions open at once")
    p.add_argument("--seconds", type=float, default=3.0, help="audio per session, seconds")
    p.add_argument("--warmup", type=int, default=100, help="sessions before the start memory sample")
    p.add_argument("--max-growth", type=float, default=20.0, help="allowed RSS growth per process, percent")
    p.add_argument("--concurrency", type=int, default=16, help="chunks per worker at once")
    p.add_argument("--timeout", type=float, default=60.0, help="per-session client timeout, seconds")


def run(opts: Options, args: argparse.Namespace) -> int:
    if opts.quick:
        args.sessions, args.streams = min(args.sessions, 200), min(args.streams, 10)
        args.seconds, args.warmup = min(args.seconds, 2.0), min(args.warmup, 40)
    workers = [("w1", args.concurrency), ("w2", args.concurrency)]
    with running_stack(opts, "soak", workers=workers) as stack:
        plan = LoadPlan(
            url=stack.url,
            pcm=audio.noise(args.seconds, seed=6),
            streams=args.streams,
            ramp=args.seconds,
            frame_ms=opts.frame_ms,
            timeout=args.timeout,
            soak_sessions=args.sessions,
            warmup_sessions=args.warmup,
            memory_interval=2.0,
            label="soak",
        )
        account = CpuAccount(stack_pids(stack)).begin()
        result = run_load(plan, progress=opts.progress)
        cpu = account.end()
    out = opts.out / "soak"
    report = save_run(result, out, f"soak: {args.sessions} sessions, {args.streams} at once")
    print(format_cpu(cpu))
    s, memory = report["sessions"], report["memory"]["change"]
    checks = Checks()
    checks.check("every session completed", s["completed"] == s["attempted"], f"{s['completed']}/{s['attempted']}")
    checks.check(
        "memory was measured at start and end",
        bool(memory) and all(m["change_pct"] is not None for m in memory.values()),
        ", ".join(memory) or "no processes found",
    )
    for name, m in memory.items():
        growth = m["change_pct"]
        checks.check(
            f"{name} RSS grew at most {args.max_growth:.0f} %",
            growth is not None and growth <= args.max_growth,
            f"{m['start_mb']} -> {m['end_mb']} MiB ({growth} %)",
        )
    print("\n" + checks.render())
    save_figures(out, {"memory": memory, "sessions": s}, checks)
    return checks.exit_code()
