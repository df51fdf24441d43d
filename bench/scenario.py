"""Scenarios that start their own service stack, load it, and print figures: ``python -m bench.scenario NAME``.

=============== ==================================================================================================
five-hundred    the 500-stream experiment: original design (1 worker, 1 chunk at a time) vs scaled, side by side
burst           N clients at once the moment a fresh stack is healthy: each admitted or refused (503), none lost
overload        capacity for K streams, thousands of clients: each is served, shown the queue, or refused (503)
kill-worker     kill -9 one of two workers mid-run: sessions completed, recovery time, transcripts in order
redis-restart   restart the (private) Redis under load: how sessions end, how soon new sessions work
soak            1000 sessions opened and closed: gateway and worker RSS after warm-up and at the end
flood           abusive clients (tiny frames, huge texts, never reading, silent) vs healthy sessions' lag
=============== ==================================================================================================

Each exits 0 when its checks pass, 1 when one fails, 2 when the stack could not be set up. ``--quick`` shrinks
every scenario to a minute or two for development. Outputs (report.json, sessions.json, load.png per run, and the
service's logs) go to ``--out`` (default bench/out/scenario-NAME-TIME).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from bench.loadtest import DEFAULT_OUT, raise_open_files_limit
from bench.scenarios import burst, five_hundred, flood, kill_worker, overload, redis_restart, soak
from bench.scenarios.base import DEFAULT_MODEL, DEFAULT_REDIS, EXIT_SETUP, Options

SCENARIOS = {
    "five-hundred": five_hundred,
    "overload": overload,
    "kill-worker": kill_worker,
    "redis-restart": redis_restart,
    "soak": soak,
    "burst": burst,
    "flood": flood,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.scenario",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    sub = p.add_subparsers(dest="scenario", required=True)
    for name, module in SCENARIOS.items():
        sp = sub.add_parser(name, help=(module.__doc__ or "").split("\n")[0])
        _common(sp)
        module.add_arguments(sp)
    return p.parse_args(argv)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a small, short version for development")
    p.add_argument(
        "--no-batching",
        action="store_true",
        help="workers use FunASR's per-stream generate (ASR_BATCHING=0) where batching would be on",
    )
    p.add_argument("--frame-ms", type=int, default=100, help="audio per WebSocket frame, ms")
    p.add_argument("--redis-url", default=DEFAULT_REDIS, help="Redis for the stacks (a db of its own)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="FunASR model folder for the workers")
    p.add_argument("--worker-loglevel", default="WARNING", help="celery worker log level (INFO: 2 lines per chunk)")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_open_files_limit()  # the service's processes inherit it
    out = args.out or DEFAULT_OUT / time.strftime(f"scenario-{args.scenario}-%Y%m%d-%H%M%S")
    opts = Options(
        out=out,
        redis_url=args.redis_url,
        model=args.model,
        quick=args.quick,
        batching=not args.no_batching,
        progress=not args.no_progress,
        frame_ms=args.frame_ms,
        worker_loglevel=args.worker_loglevel,
    )
    try:
        code = SCENARIOS[args.scenario].run(opts, args)
    except (RuntimeError, TimeoutError) as exc:  # a stack that would not start, a scenario step that never came
        logging.getLogger(__name__).error(
            "scenario %s could not run: %s (logs in %s)", args.scenario, exc, out / "logs"
        )
        return EXIT_SETUP
    print(f"\noutputs: {out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
