"""Restart Redis under load: how do open sessions end, and how soon do new sessions work?

The stack runs on a private ``redis-server`` (free port, no persistence) that this scenario starts — never the
shared one. Once every session streams and ``--restart-at`` seconds have passed, Redis is killed (SIGKILL: queued
chunk tasks, heartbeats and pub/sub subscriptions are lost), kept down ``--down`` seconds and started again on the
same port. Then a short probe session is tried every half second until one completes. Checks: no open session
waited out its timeout without being told, and a new session completed within ``--recover-within`` seconds of
Redis being back.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

from bench import audio
from bench.client import StreamClient
from bench.machine import CpuAccount, format_cpu
from bench.report import figures_of
from bench.runner import LoadPlan, LoadResult, LoadRunner
from bench.scenarios.base import (
    Checks,
    Options,
    running_stack,
    save_figures,
    save_run,
    stack_pids,
)
from bench.stats import COMPLETED, classify
from bench.table import num
from tests.stack import PrivateRedis

READY_TIMEOUT = 60.0  # seconds for every session to get a first partial before Redis goes down
PROBE_SECONDS = 1.2  # audio of a probe session: two chunks
PROBE_TIMEOUT = 15.0  # seconds a probe session may take
PROBE_INTERVAL = 0.5  # seconds between probe attempts


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", type=int, default=20)
    p.add_argument("--seconds", type=float, default=20.0, help="audio each session streams, seconds")
    p.add_argument("--down", type=float, default=3.0, help="seconds Redis stays down")
    p.add_argument(
        "--restart-at", type=float, help="seconds into the run to kill Redis (default: a third of the audio)"
    )
    p.add_argument("--recover-within", type=float, default=60.0, help="seconds for a new session to work")
    p.add_argument("--timeout", type=float, default=60.0, help="per-session client timeout, seconds")
    p.add_argument("--concurrency", type=int, default=16, help="chunks per worker at once")


def run(opts: Options, args: argparse.Namespace) -> int:
    if opts.quick:
        args.streams, args.seconds = min(args.streams, 10), min(args.seconds, 12.0)
    server = PrivateRedis(opts.out / "logs")
    server.start()
    try:
        workers = [("w1", args.concurrency), ("w2", args.concurrency)]
        with running_stack(opts, "redis", workers=workers, redis_url=server.url) as stack:
            plan = LoadPlan(
                url=stack.url,
                pcm=audio.noise(args.seconds, seed=4),
                streams=args.streams,
                ramp=1.0,
                frame_ms=opts.frame_ms,
                timeout=args.timeout,
                label="redis",
            )
            account = CpuAccount(stack_pids(stack)).begin()
            result, restart = asyncio.run(_load_and_restart(plan, server, args, opts.progress))
            cpu = account.end()
    finally:
        server.stop()
    report = save_run(result, opts.out / "redis-restart", f"redis-restart: down {args.down:.0f} s")
    print(format_cpu(cpu))
    return verdict(result, report, restart, args, opts.out / "redis-restart")


async def _load_and_restart(
    plan: LoadPlan, server: PrivateRedis, args: argparse.Namespace, progress: bool
) -> tuple[LoadResult, dict]:
    runner = LoadRunner(plan, progress=progress)
    task = asyncio.create_task(runner.run())
    start = time.monotonic()
    deadline = start + READY_TIMEOUT
    restart_at = args.restart_at if args.restart_at is not None else args.seconds / 3
    while time.monotonic() - start < restart_at or not (
        len(runner.clients) == plan.streams and all(c.record.texts for c in runner.clients)
    ):
        if time.monotonic() > deadline or task.done():
            break
        await asyncio.sleep(0.1)
    open_slots = [i for i, c in enumerate(runner.clients) if c.record.finished is None]
    runner.mark("redis killed")
    killed = time.monotonic()
    back = await asyncio.to_thread(server.restart, args.down)
    runner.mark("redis back")
    probes = await _probe(plan.url, back + args.recover_within)
    result = await task
    return result, {"killed": killed, "back": back, "open_slots": open_slots, "probes": probes}


async def _probe(url: str, deadline: float) -> list[dict]:
    """Short sessions, one after another, until one completes or ``deadline`` passes."""
    pcm = audio.noise(PROBE_SECONDS, seed=5)
    probes = []
    while time.monotonic() < deadline:
        record = await StreamClient(
            url, config={"wav_name": f"probe-{len(probes)}"}, frame_ms=100, timeout=PROBE_TIMEOUT
        ).run(pcm)
        outcome = classify(record)
        probes.append(
            {
                "started": record.started,
                "finished": record.finished,
                "outcome": outcome,
                "why": (record.refused_body or {}).get("code")
                or record.error
                or (record.errors[0].get("code") if record.errors else None),
            }
        )
        if outcome == COMPLETED:
            break
        await asyncio.sleep(PROBE_INTERVAL)
    return probes


def verdict(result: LoadResult, report: dict, restart: dict, args: argparse.Namespace, out) -> int:
    figures = figures_of(result)
    open_figures = [figures[i] for i in restart["open_slots"]]
    ended = Counter(f"{f.outcome}" + (f" ({f.error})" if f.error else "") for f in open_figures)
    untold = [f for f in open_figures if f.outcome not in (COMPLETED,) and not f.told]
    probes = restart["probes"]
    ok = next((p for p in probes if p["outcome"] == COMPLETED), None)
    new_ok_s = None if ok is None else ok["finished"] - restart["back"]
    first_try = probes[0]["why"] if probes else None
    down_s = restart["back"] - restart["killed"]
    print(
        f"\nRedis down {down_s:.1f} s (killed at +{restart['killed'] - result.t0:.1f} s). Sessions open then: "
        f"{len(open_figures)}; they ended: " + ", ".join(f"{k} x{v}" for k, v in ended.items())
    )
    print(
        f"new sessions: {len(probes)} probe(s); first refused/failed with {first_try!r}; first completed "
        f"{num(new_ok_s)} s after Redis was back (probe took "
        f"{num(None if ok is None else ok['finished'] - ok['started'])} s)"
    )
    checks = Checks()
    checks.check("no open session waited out its timeout without being told", not untold, f"{len(untold)} untold")
    checks.check(
        f"a new session completed within {args.recover_within:.0f} s of Redis being back",
        new_ok_s is not None,
        f"{num(new_ok_s)} s",
    )
    print("\n" + checks.render())
    save_figures(
        out,
        {
            "redis_down_s": down_s,
            "open_at_restart": len(open_figures),
            "open_ended": dict(ended),
            "new_session_ok_after_s": new_ok_s,
            "probes": probes,
        },
        checks,
    )
    return checks.exit_code()
