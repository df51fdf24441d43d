"""Flood: how late do healthy sessions get while abusive clients flood the same gateway?

One worker, one gateway process. ``--healthy`` sessions stream ``--seconds`` of audio in real time; ``--flood-start``
seconds in, ``--flooders`` abusive clients of each ``--kind`` (bench.flooders: tiny-frames, big-text, never-read,
silent; a comma-separated list runs several at once) flood the gateway for ``--flood-seconds``, from a child
process. Reported: each healthy result's lag (received − its chunk's audio sent, by ``chunk`` number) for chunks
sent before, during and after the flood window; whether each healthy session completed; how each flooder ended
(close code, error code, seconds until closed, what it got out); the gateway's RSS before, at peak and after.
Checks: every healthy session completed, and their p95 lag during the flood stayed at most ``--max-lag`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import psutil

from bench import audio, flooders
from bench.flooders import FlooderRecord
from bench.machine import CpuAccount, format_cpu
from bench.memory import MB, rss
from bench.runner import LoadPlan, LoadResult, LoadRunner
from bench.scenarios.base import (
    Checks,
    Options,
    running_stack,
    save_figures,
    save_run,
    stack_pids,
)
from bench.stats import COMPLETED, chunk_samples, classify, summarize
from bench.table import num

RSS_INTERVAL = 0.5  # seconds between gateway RSS samples during the flood
WINDOWS = ("before", "during", "after")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--healthy", type=int, default=3, help="real-time paced sessions whose lag is measured")
    p.add_argument("--seconds", type=float, default=20.0, help="audio each healthy session streams, seconds")
    p.add_argument("--flood-start", type=float, default=3.0, help="seconds after the healthy sessions start")
    p.add_argument("--flood-seconds", type=float, default=10.0, help="how long each flooder floods, seconds")
    p.add_argument("--flooders", type=int, default=1, help="abusive clients of each kind")
    p.add_argument(
        "--kind",
        type=kinds_of,
        default="tiny-frames",
        help=f"flooder kind(s), comma-separated: {', '.join(flooders.KINDS)}",
    )
    p.add_argument(
        "--never-read-pace",
        type=float,
        default=4.0,
        help="never-read: audio at this many times real time (0: as fast as the socket takes it)",
    )
    p.add_argument("--max-lag", type=float, default=1.0, help="bound on the healthy p95 lag during the flood, s")
    p.add_argument("--concurrency", type=int, default=16, help="chunks per worker at once")
    p.add_argument("--timeout", type=float, default=90.0, help="per-session client timeout of the healthy, s")


def run(opts: Options, args: argparse.Namespace) -> int:
    if opts.quick:
        args.healthy, args.seconds = min(args.healthy, 2), min(args.seconds, 10.0)
        args.flood_seconds = min(args.flood_seconds, 5.0)
    kinds = args.kind
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    warm = pool.submit(flooders.ready)  # its interpreter starts while the stack does
    try:
        with running_stack(opts, "flood", workers=[("w1", args.concurrency)], gateway_processes=1) as stack:
            warm.result(timeout=60)
            plan = LoadPlan(
                url=stack.url,
                pcm=audio.noise(args.seconds, seed=5),
                streams=args.healthy,
                frame_ms=opts.frame_ms,
                timeout=args.timeout,
                label="healthy",
            )
            gateway = gateway_processes(stack_pids(stack)["gateway"])
            account = CpuAccount(stack_pids(stack)).begin()
            result, flood = asyncio.run(_healthy_and_flood(plan, pool, kinds, args, gateway, opts.progress))
            cpu = account.end()
    finally:
        pool.shutdown(cancel_futures=True)
    out = opts.out / "flood"
    save_run(result, out, f"flood: {args.healthy} healthy sessions, {args.flooders} x {'+'.join(kinds)}")
    print(format_cpu(cpu))
    return verdict(result, flood, args, out)


def kinds_of(text: str) -> list[str]:
    """``--kind``: a comma-separated list of bench.flooders kinds."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(flooders.KINDS))
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown flooder kind(s) {unknown or text!r}; choose from {', '.join(flooders.KINDS)}"
        )
    return kinds


def gateway_processes(master: int) -> list[int]:
    """The gunicorn worker processes under the master ``master`` (the ones serving sessions)."""
    try:
        return [child.pid for child in psutil.Process(master).children()] or [master]
    except psutil.NoSuchProcess:
        return [master]


def gateway_rss(pids: list[int]) -> int | None:
    values = [rss(pid) for pid in pids]
    return None if None in values else sum(values)  # type: ignore[arg-type]


async def _healthy_and_flood(
    plan: LoadPlan,
    pool: ProcessPoolExecutor,
    kinds: list[str],
    args: argparse.Namespace,
    gateway: list[int],
    progress: bool,
) -> tuple[LoadResult, dict]:
    runner = LoadRunner(plan, progress=progress)
    healthy = asyncio.create_task(runner.run())
    await asyncio.sleep(args.flood_start)
    memory = {"before": gateway_rss(gateway), "peak": None}
    runner.mark(f"flood: {args.flooders} x {'+'.join(kinds)}")
    start = time.monotonic()
    sampler = asyncio.create_task(_sample_peak(gateway, memory))
    done = await asyncio.get_running_loop().run_in_executor(
        pool, flooders.run_flooders, plan.url, kinds, args.flooders, args.flood_seconds, args.never_read_pace
    )
    flood_over = time.monotonic()
    memory["after_flood"] = gateway_rss(gateway)
    runner.mark("flooders gone")
    result = await healthy
    sampler.cancel()
    await asyncio.gather(sampler, return_exceptions=True)
    memory["end"] = gateway_rss(gateway)
    return result, {
        "start": start,
        "end": start + args.flood_seconds,
        "flooders_gone": flood_over,
        "flooders": [FlooderRecord.from_json(r) for r in done["records"]],
        "rss": memory,
        "flooder_cpu_s": done["cpu_s"],
    }


async def _sample_peak(pids: list[int], memory: dict) -> None:
    while True:
        value = gateway_rss(pids)
        if value is not None:
            memory["peak"] = max(value, memory["peak"] or 0)
        await asyncio.sleep(RSS_INTERVAL)


def lag_windows(records, start: float, end: float) -> dict:
    """Healthy results' lag (s) for chunks whose audio was sent before ``start``, in [start, end), after (no I/O).

    Also counts, per window, the chunks sent and the results received, so a starved window shows as results
    missing rather than as a low lag.
    """
    lags: dict[str, list[float]] = {w: [] for w in WINDOWS}
    sent = dict.fromkeys(WINDOWS, 0)
    for i, rec in enumerate(records):
        for t in rec.chunk_ends:
            sent[_window(t, start, end)] += 1
        for sample in chunk_samples(rec, i):
            lags[_window(sample.sent, start, end)].append(sample.latency)
    return {w: dict(summarize(lags[w]), chunks_sent=sent[w]) for w in WINDOWS}


def _window(t: float, start: float, end: float) -> str:
    return "before" if t < start else "during" if t < end else "after"


def healthy_sessions(records, start: float, end: float) -> list[dict]:
    """Per healthy session: outcome, error, results, and its lag p95/max during the flood."""
    rows = []
    for i, rec in enumerate(records):
        during = [s.latency for s in chunk_samples(rec, i) if start <= s.sent < end]
        errors = [e.get("code") for e in rec.errors]
        rows.append(
            {
                "session": i,
                "outcome": classify(rec),
                "error": rec.error or (errors[0] if errors else None),
                "close_code": rec.close_code,
                "results": len(rec.results),
                "chunks": len(rec.chunk_ends),
                "lag_during": summarize(during),
            }
        )
    return rows


def verdict(result: LoadResult, flood: dict, args: argparse.Namespace, out) -> int:
    start, end = flood["start"], flood["end"]
    windows = lag_windows(result.records, start, end)
    sessions = healthy_sessions(result.records, start, end)
    flooder_rows = [r.to_json() for r in flood["flooders"]]
    print(
        f"\n=== flood: {args.healthy} healthy x {args.seconds:.0f} s; flood +{start - result.t0:.1f} s for "
        f"{args.flood_seconds:.0f} s (flooders gone after {flood['flooders_gone'] - start:.1f} s) ==="
    )
    print(format_windows(windows))
    print(format_sessions(sessions))
    print(format_flooders(flood["flooders"]))
    print(f"flooders' own CPU: {flood['flooder_cpu_s']:.1f} s (their child process)")
    mem = flood["rss"]
    print(
        "gateway RSS, MiB: "
        + ", ".join(
            f"{k.replace('_', ' ')} {num(_mb(mem.get(k)), 1)}" for k in ("before", "peak", "after_flood", "end")
        )
    )
    checks = Checks()
    completed = sum(s["outcome"] == COMPLETED for s in sessions)
    checks.check(
        "every healthy session completed",
        completed == len(sessions),
        "; ".join(f"#{s['session']} {s['outcome']}: {_ending(s)}" for s in sessions if s["outcome"] != COMPLETED),
    )
    p95 = windows["during"]["p95"]
    checks.check(
        f"healthy p95 lag during the flood <= {args.max_lag:.2f} s",
        p95 is not None and p95 <= args.max_lag,
        f"p95 {num(p95)} s over {windows['during']['n']} results of {windows['during']['chunks_sent']} chunks sent",
    )
    print("\n" + checks.render())
    save_figures(
        out,
        {
            "kinds": args.kind,
            "flood_start_s": start - result.t0,
            "flood_seconds": args.flood_seconds,
            "flooders_gone_s": flood["flooders_gone"] - start,
            "lag": windows,
            "healthy": sessions,
            "flooders": flooder_rows,
            "flooder_cpu_s": flood["flooder_cpu_s"],
            "gateway_rss_mb": {k: _mb(v) for k, v in mem.items()},
        },
        checks,
    )
    return checks.exit_code()


def format_windows(windows: dict) -> str:
    lines = [f"{'healthy lag, s':<22}{'chunks':>8}{'results':>9}{'p50':>8}{'p95':>8}{'max':>8}"]
    for w in WINDOWS:
        s = windows[w]
        lines.append(
            f"  {w + (' the flood' if w != 'during' else ' it'):<20}{s['chunks_sent']:>8}{s['n']:>9}"
            f"{num(s['p50']):>8}{num(s['p95']):>8}{num(s['max']):>8}"
        )
    return "\n".join(lines)


def format_sessions(sessions: list[dict]) -> str:
    return "\n".join(
        f"  healthy #{s['session']}: {s['outcome']}"
        + (f" ({_ending(s)})" if s["outcome"] != COMPLETED else "")
        + f", {s['results']} results for {s['chunks']} chunks, lag during the flood p95 "
        f"{num(s['lag_during']['p95'])} max {num(s['lag_during']['max'])} s"
        for s in sessions
    )


def _ending(session: dict) -> str:
    parts = [session["error"], f"close {session['close_code']}" if session["close_code"] else None]
    return ", ".join(p for p in parts if p) or "?"


def format_flooders(records: list[FlooderRecord]) -> str:
    head = (
        f"{'flooder':<16}{'ended by':<24}{'close':>6}  {'error code':<22}{'closed after s':>15}"
        f"{'frames out':>12}{'MB out':>9}{'msgs in':>9}{'KB in':>9}"
    )
    lines = [head]
    for r in records:
        closed = num(r.seconds_to_close) + (" (late)" if r.closed_seen_late else "")
        ended = r.ended_by if r.refused_status is None else f"refused {r.refused_status}"
        lines.append(
            f"{r.name:<16}{ended[:23]:<24}{num(r.close_code):>6}  {', '.join(r.codes)[:21] or '-':<22}"
            f"{closed:>15}{r.frames_out:>12}{r.bytes_out / MB:>9.2f}{r.messages_in:>9}"
            f"{r.bytes_in / 1024:>9.1f}"
        )
    return "\n".join(lines)


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / MB, 1)
