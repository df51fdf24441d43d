"""Load tester CLI: N concurrent FunASR-protocol streams against a gateway, then a report, JSON and a plot.

Examples::

    python -m bench.loadtest --url ws://127.0.0.1:8000/ws --streams 50 --ramp 10 --seconds 10
    python -m bench.loadtest --url ws://127.0.0.1:8000/ws --streams 20 --soak 300 --seconds 3   # soak
    python -m bench.loadtest --url ws://127.0.0.1:8000/ws --audio speech.wav --frame-ms 60

Writes ``report.json`` (every figure, time series and /api/queue samples), ``sessions.json`` (one line of figures
per session) and ``load.png`` to ``--out``, and prints the report table. See bench/README.md for what each
number means. Load goes only where ``--url`` points; run it on the service's machine for memory figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import sys
import time
from pathlib import Path

from bench import audio
from bench.plot import plot_run
from bench.report import build_report, figures_of
from bench.runner import LoadPlan, LoadResult, LoadRunner
from bench.table import format_report

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
DEFAULT_FRAME_MS = 100  # 10 writes/s per stream: a tenth of the client CPU of 10 ms frames, same chunking
DEFAULT_SECONDS = 10.0


def raise_open_files_limit() -> int:
    """Raise this process's open-file limit to the hard limit (one socket per session); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def run_load(plan: LoadPlan, *, progress: bool = True) -> LoadResult:
    """Run one load test to the end on a fresh event loop."""
    raise_open_files_limit()
    return asyncio.run(LoadRunner(plan, progress=progress).run())


def save(result: LoadResult, out: Path, title: str = "") -> dict:
    """Build the report and write report.json, sessions.json and load.png under ``out``; returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    figures = figures_of(result)
    report = build_report(result, figures)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    with (out / "sessions.json").open("w") as handle:
        for f in figures:
            row = {
                k: getattr(f, k)
                for k in (
                    "index",
                    "outcome",
                    "refused_status",
                    "refused_code",
                    "error",
                    "error_message",
                    "told",
                    "queue_statuses",
                    "rtf",
                    "first_partial",
                    "final_latency",
                    "ordered",
                )
            }
            row["partials"] = len(f.chunks)
            handle.write(json.dumps(row) + "\n")
    try:
        plot_run(result, figures, report, out / "load.png", title)
    except (ValueError, RuntimeError) as exc:  # a plot must never cost the figures of a long run
        logger.warning("could not draw the plot: %s", exc)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="gateway WebSocket URL, e.g. ws://127.0.0.1:8000/ws")
    p.add_argument("--streams", type=int, default=10, help="concurrent sessions (soak: slots)")
    p.add_argument("--ramp", type=float, default=0.0, help="seconds over which sessions start")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--audio", type=Path, help="16 kHz 16-bit WAV every session streams")
    source.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="generated noise, seconds")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated audio")
    p.add_argument("--frame-ms", type=int, default=DEFAULT_FRAME_MS, help="audio per WebSocket frame, ms")
    p.add_argument("--pace", type=float, default=1.0, help="1.0 = real time, 0 = as fast as possible")
    p.add_argument("--timeout", type=float, default=60.0, help="per-session timeout, seconds")
    p.add_argument("--no-timing", action="store_true", help="do not ask for the per-chunk latency breakdown")
    p.add_argument("--config", type=json.loads, default={}, help="extra first-message fields as JSON")
    p.add_argument("--soak", type=float, default=0.0, metavar="SECONDS", help="soak: open/close sessions this long")
    p.add_argument("--soak-sessions", type=int, default=0, help="soak: stop after this many sessions")
    p.add_argument(
        "--warmup-sessions", type=int, help="soak: sessions before the start memory sample (default 2 x streams)"
    )
    p.add_argument("--memory-interval", type=float, default=2.0, help="soak: seconds between RSS samples")
    p.add_argument("--gateway-pid", type=int, help="gateway pid for memory figures (default: from /api/queue)")
    p.add_argument("--out", type=Path, help=f"output folder (default {DEFAULT_OUT}/loadtest-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")
    return p.parse_args(argv)


def plan_from_args(args: argparse.Namespace) -> LoadPlan:
    pcm = audio.load_wav(args.audio) if args.audio else audio.noise(args.seconds, seed=args.seed)
    soak = args.soak > 0 or args.soak_sessions > 0
    return LoadPlan(
        url=args.url,
        pcm=pcm,
        streams=args.streams,
        ramp=args.ramp,
        frame_ms=args.frame_ms,
        pace=args.pace,
        timeout=args.timeout,
        timing=not args.no_timing,
        soak_seconds=args.soak,
        soak_sessions=args.soak_sessions,
        warmup_sessions=args.warmup_sessions if args.warmup_sessions is not None else 2 * args.streams,
        memory_interval=args.memory_interval if soak else 0.0,
        gateway_pid=args.gateway_pid,
        config=args.config,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        plan = plan_from_args(args)
    except audio.AudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or DEFAULT_OUT / time.strftime("loadtest-%Y%m%d-%H%M%S")
    result = run_load(plan, progress=not args.no_progress)
    report = save(result, out)
    print(format_report(report))
    print(f"\nreport: {out / 'report.json'}  plot: {out / 'load.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
