"""Kill -9 one of two workers mid-run: do its sessions finish elsewhere, how fast, and in order?

``--streams`` sessions stream ``--seconds`` of the same audio in real time to two workers. Once every session has
received a partial and ``--kill-at`` seconds have passed, the worker with the most streams is sent SIGKILL (no
deregistration). Reported: sessions completed; when the gateway noticed (the victim left /api/queue); recovery
time (kill → the first result after the kill, for each session that was open; the maximum is the time until
every session was moving again); whether every transcript stayed in chunk order and equals the others (all
sessions stream the same audio).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

from bench import audio
from bench.machine import CpuAccount, format_cpu
from bench.runner import LoadPlan, LoadResult, LoadRunner
from bench.scenarios.base import (
    Checks,
    Options,
    running_stack,
    save_figures,
    save_run,
    stack_pids,
)
from bench.stats import summarize
from bench.table import num
from tests.stack import Proc

READY_TIMEOUT = 60.0  # seconds for every session to get a first partial before the kill
STALL = 1.2  # seconds without a result (two chunks) after the kill that mark a session as hit by it


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", type=int, default=20)
    p.add_argument("--seconds", type=float, default=20.0, help="audio each session streams, seconds")
    p.add_argument("--concurrency", type=int, default=16, help="chunks per worker at once")
    p.add_argument("--timeout", type=float, default=90.0, help="per-session client timeout, seconds")
    p.add_argument("--kill-at", type=float, help="seconds into the run to kill (default: a third of the audio)")


def run(opts: Options, args: argparse.Namespace) -> int:
    if opts.quick:
        args.streams, args.seconds = min(args.streams, 10), min(args.seconds, 12.0)
    workers = [("w1", args.concurrency), ("w2", args.concurrency)]
    with running_stack(opts, "kill", workers=workers) as stack:
        plan = LoadPlan(
            url=stack.url,
            pcm=audio.noise(args.seconds, seed=3),
            streams=args.streams,
            ramp=1.0,
            frame_ms=opts.frame_ms,
            timeout=args.timeout,
            label="kill",
        )
        account = CpuAccount(stack_pids(stack)).begin()
        kill_at = args.kill_at if args.kill_at is not None else args.seconds / 3
        result, kill = asyncio.run(_load_and_kill(plan, stack.worker_procs(), kill_at, opts.progress))
        cpu = account.end()
    out = opts.out / "kill-worker"
    report = save_run(result, out, f"kill-worker: {kill['victim']} killed")
    print(format_cpu(cpu))
    return verdict(result, report, kill, out)


async def _load_and_kill(
    plan: LoadPlan, procs: dict[str, Proc], kill_at: float, progress: bool
) -> tuple[LoadResult, dict]:
    runner = LoadRunner(plan, progress=progress)
    task = asyncio.create_task(runner.run())
    start = time.monotonic()
    deadline = start + READY_TIMEOUT
    while time.monotonic() - start < kill_at or not _all_moving(runner, plan.streams):
        if time.monotonic() > deadline or task.done():
            break
        await asyncio.sleep(0.1)
    sample = await runner.poller.poll_once()
    victim = max(sample.workers, key=lambda w: w["streams"] or 0) if sample.ok and sample.workers else None
    if victim is None or victim["id"] not in procs:
        raise RuntimeError(f"no worker of this stack to kill in /api/queue: {sample}")
    open_slots = [i for i, c in enumerate(runner.clients) if c.record.finished is None]
    killed_at = time.monotonic()
    runner.mark(f"kill -9 {victim['id']}")
    await asyncio.to_thread(procs[victim["id"]].kill)
    result = await task
    return result, {
        "victim": victim["id"],
        "victim_streams": victim["streams"],
        "at": killed_at,
        "open_slots": open_slots,
    }


def _all_moving(runner: LoadRunner, streams: int) -> bool:
    return len(runner.clients) == streams and all(c.record.texts for c in runner.clients)


def recovery(result: LoadResult, kill: dict) -> dict:
    """Detection time, and per open session the time from the kill to its first result after it."""
    at = kill["at"]
    gone = next(
        (s.t for s in result.polls if s.ok and s.t > at and kill["victim"] not in [w["id"] for w in s.workers]), None
    )
    gaps = []
    for slot in kill["open_slots"]:
        record = result.records[slot]
        after = next((t for t, m in record.messages if t > at and "mode" in m), None)
        if after is not None:
            gaps.append(after - at)
    return {
        "detected_s": None if gone is None else gone - at,
        "resumed": summarize(gaps),
        "open_at_kill": len(kill["open_slots"]),
        "stalled": sum(g > STALL for g in gaps),
        "stalled_resumed": summarize(g for g in gaps if g > STALL),
    }


def verdict(result: LoadResult, report: dict, kill: dict, out) -> int:
    s = report["sessions"]
    rec = recovery(result, kill)
    texts = Counter(r.text for r in result.records if r.final is not None)
    common, _ = texts.most_common(1)[0] if texts else ("", 0)
    differing = sum(n for t, n in texts.items() if t != common)
    print(
        f"\nkilled {kill['victim']} ({kill['victim_streams']} streams) at +{kill['at'] - result.t0:.1f} s; "
        f"sessions open then {rec['open_at_kill']}; gateway noticed after {num(rec['detected_s'])} s; "
        f"{rec['stalled']} session(s) stalled (no result for > {STALL} s), their first result came "
        f"p50 {num(rec['stalled_resumed']['p50'])} s, max {num(rec['stalled_resumed']['max'])} s after the kill "
        f"(every open session moving again after {num(rec['resumed']['max'])} s)"
    )
    print(
        f"completed {s['completed']}/{s['attempted']}, failed {s['failed']}, timed out {s['timed_out']}, "
        f"out of order {s['out_of_order']}, transcripts differing from the common one {differing}"
    )
    checks = Checks()
    checks.check("every session completed", s["completed"] == s["attempted"], f"{s['completed']}/{s['attempted']}")
    checks.check("every transcript stayed in chunk order", s["out_of_order"] == 0, f"{s['out_of_order']} out of order")
    checks.check("every transcript equals the others (same audio)", differing == 0, f"{differing} differ")
    checks.check(
        "every open session got results again",
        rec["resumed"]["n"] == rec["open_at_kill"],
        f"{rec['resumed']['n']}/{rec['open_at_kill']}",
    )
    print("\n" + checks.render())
    save_figures(
        out,
        {
            "victim": kill["victim"],
            "victim_streams": kill["victim_streams"],
            "killed_at_s": kill["at"] - result.t0,
            **rec,
            "transcripts_differing": differing,
        },
        checks,
    )
    return checks.exit_code()
