"""The 500-stream experiment, rerun on this service: the original design against the scaled one.

The earlier system served 22 % of 500 concurrent real-time streams within a 60 s client timeout, because one
Python worker processed every chunk serially. Both runs here send the same client load (``--streams`` sessions
ramped over ``--ramp`` s, each streaming ``--seconds`` of audio at real-time pace, 60 s timeout) to:

* **original** — one worker process, batching off, ``--concurrency 1``: every chunk of every stream in series;
* **scaled** — ``--workers`` processes × ``--concurrency`` chunks, batching on (``--no-batching``: off);
* **capped** (with ``--cap N``) — scaled, with ``ASR_WORKER_MAX_STREAMS=N``: what a deployment sized to its
  measured capacity does with more clients than it can serve — real time for those admitted, 503 for the rest.

Gateway settings are the same in both (admission control on, as deployed; ``--no-admission`` turns it off in
both, as the earlier system had none). Prints the side-by-side table; exits non-zero when the scaled run's
success rate is below ``--target`` or below the original's.
"""

from __future__ import annotations

import argparse
import logging
import time

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
from bench.table import format_comparison, pct

logger = logging.getLogger(__name__)

COOL_DOWN = 5.0  # seconds between the two runs, for the first stack's processes to be gone


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", type=int, default=500)
    p.add_argument("--seconds", type=float, default=10.0, help="audio each session streams, seconds")
    p.add_argument("--ramp", type=float, default=10.0, help="seconds over which the sessions start")
    p.add_argument("--timeout", type=float, default=60.0, help="per-session client timeout, seconds")
    p.add_argument("--workers", type=int, default=2, help="scaled: worker processes")
    p.add_argument("--concurrency", type=int, default=64, help="scaled: chunks per worker at once (max batch)")
    p.add_argument("--gateway-processes", type=int, default=1, help="scaled: gunicorn processes of the gateway")
    p.add_argument("--no-admission", action="store_true", help="admit every session (ASR_MAX_PENDING huge)")
    p.add_argument("--target", type=float, default=0.95, help="success rate the scaled run must reach")
    p.add_argument(
        "--cap", type=int, default=0, help="also run the scaled layout with ASR_WORKER_MAX_STREAMS=CAP (0: don't)"
    )
    p.add_argument("--only", choices=("original", "scaled", "capped"), help="run one of the layouts")


def layouts(opts: Options, args: argparse.Namespace) -> dict[str, dict]:
    scaled = f"scaled ({args.workers}x{args.concurrency}, batching {'on' if opts.batching else 'off'})"
    scaled_layout = {
        "workers": [(f"w{i + 1}", args.concurrency) for i in range(args.workers)],
        "batching": int(opts.batching),
        "gateway_processes": args.gateway_processes,
    }
    runs = {
        "original (1x1, batching off)": {"workers": [("w1", 1)], "batching": 0},
        scaled: scaled_layout,
    }
    if args.cap:
        runs[f"capped ({args.cap} streams/worker)"] = dict(scaled_layout, settings={"worker_max_streams": args.cap})
    return runs


def run(opts: Options, args: argparse.Namespace) -> int:
    if opts.quick:
        args.streams, args.seconds, args.ramp = min(args.streams, 50), min(args.seconds, 5.0), min(args.ramp, 5.0)
    settings = {"max_pending": 10**9} if args.no_admission else {}
    pcm = audio.noise(args.seconds, seed=1)
    reports, cpu = {}, {}
    for name, layout in layouts(opts, args).items():
        if args.only and not name.startswith(args.only):
            continue
        if reports:
            time.sleep(COOL_DOWN)
        key = name.split(" ")[0]
        with running_stack(
            opts,
            f"five-{key}",
            workers=layout["workers"],
            batching=layout["batching"],
            gateway_processes=layout.get("gateway_processes", 1),
            **settings,
            **layout.get("settings", {}),
        ) as stack:
            plan = LoadPlan(
                url=stack.url,
                pcm=pcm,
                streams=args.streams,
                ramp=args.ramp,
                frame_ms=opts.frame_ms,
                timeout=args.timeout,
                label=key,
            )
            account = CpuAccount(stack_pids(stack)).begin()
            result = run_load(plan, progress=opts.progress)
            cpu[name] = account.end()
        reports[name] = save_run(result, opts.out / key, f"five-hundred, {name}")
        print(format_cpu(cpu[name]))
    return verdict(reports, cpu, args, opts)


def verdict(reports: dict[str, dict], cpu: dict[str, dict], args: argparse.Namespace, opts: Options) -> int:
    print(
        f"\n=== {args.streams} streams x {args.seconds:.0f} s audio, ramp {args.ramp:.0f} s, "
        f"timeout {args.timeout:.0f} s ==="
    )
    print(format_comparison(reports))
    for name, c in cpu.items():
        print(f"{name}: {format_cpu(c)}")
    checks = Checks()
    rates = {n.split(" ")[0]: reports[n]["sessions"]["success_rate"] or 0.0 for n in reports}
    scaled_name = next((n for n in reports if n.startswith("scaled")), None)
    if "original" in rates and "scaled" in rates:
        checks.check(
            "scaled serves at least as many sessions as the original design",
            rates["scaled"] >= rates["original"],
            f"{pct(rates['scaled'])} vs {pct(rates['original'])}",
        )
    if scaled_name is not None:
        checks.check(f"scaled success rate >= {pct(args.target)}", rates["scaled"] >= args.target, pct(rates["scaled"]))
    capped_name = next((n for n in reports if n.startswith("capped")), None)
    if capped_name is not None:
        sessions = reports[capped_name]["sessions"]
        checks.check(
            "capped: every client served or refused up front, none left untold",
            sessions.get("untold", 0) == 0 and sessions.get("timed_out", 0) == 0,
            f"untold {sessions.get('untold', 0)}, timed out {sessions.get('timed_out', 0)}",
        )
    print("\n" + checks.render())
    save_figures(
        opts.out,
        {
            "runs": {
                n: {
                    k: r[k]
                    for k in (
                        "plan",
                        "sessions",
                        "rtf",
                        "rtf_censored",
                        "chunk_latency",
                        "first_partial",
                        "final_latency",
                        "breakdown",
                        "queue",
                    )
                }
                for n, r in reports.items()
            },
            "cpu": cpu,
        },
        checks,
    )
    return checks.exit_code()
