"""Burst: N clients at once against a stack that has just started; an admitted session is never lost.

One worker (``--workers``) accepts ``--cap`` streams (``ASR_WORKER_MAX_STREAMS``). The gateway is started last and
its ``/healthz`` is polled every few milliseconds; the moment it first answers 200, ``--clients`` real-time paced
sessions open at once (no ramp, no warm-up session), each streaming ``--seconds`` of audio. Every client must be
either admitted (handshake accepted) or refused with 503, and every admitted session must reach its final
result: **lost** counts admitted sessions that did not (an error message such as ``backend_unavailable``, a close
without a final, the client's timeout).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from bench import audio
from bench.loadtest import run_load
from bench.machine import CpuAccount, format_cpu
from bench.report import figures_of
from bench.runner import LoadPlan
from bench.scenarios.base import (
    BenchStack,
    Checks,
    Options,
    ensure_model,
    save_figures,
    save_run,
    stack_pids,
)
from bench.stats import COMPLETED, REFUSED, SessionFigures, summarize
from bench.table import num
from tests.stack import ROOT, free_port, wait_until

logger = logging.getLogger(__name__)

HEALTH_POLL = 0.005  # seconds between /healthz polls while the gateway starts
GATEWAY_START_TIMEOUT = 30.0  # seconds for the gateway to answer /healthz with 200


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=250, help="sessions opened at once")
    p.add_argument("--cap", type=int, default=50, help="ASR_WORKER_MAX_STREAMS: streams one worker accepts")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--concurrency", type=int, default=64, help="chunks per worker at once (max batch)")
    p.add_argument("--gateway-processes", type=int, default=1, help="ASR_GATEWAY_PROCESSES: gunicorn processes")
    p.add_argument("--seconds", type=float, default=10.0, help="audio each session streams, seconds")
    p.add_argument("--timeout", type=float, default=60.0, help="per-session client timeout, seconds")


def run(opts: Options, args: argparse.Namespace) -> int:
    if opts.quick:
        args.clients, args.cap, args.seconds = min(args.clients, 60), min(args.cap, 20), min(args.seconds, 4.0)
    capacity = args.cap * args.workers
    pcm = audio.noise(args.seconds, seed=4)  # before the stack starts: nothing may delay the burst
    with fresh_stack(opts, args) as (stack, healthy_at):
        plan = LoadPlan(
            url=stack.url,
            pcm=pcm,
            streams=args.clients,
            ramp=0.0,
            frame_ms=opts.frame_ms,
            timeout=args.timeout,
            label="burst",
        )
        account = CpuAccount(stack_pids(stack)).begin()
        result = run_load(plan, progress=opts.progress)
        cpu = account.end()
    out = opts.out / "burst"
    save_run(
        result,
        out,
        f"burst: {args.clients} clients at once, {args.workers} worker(s) x "
        f"{args.cap} streams, {args.gateway_processes} gateway process(es)",
    )
    print(format_cpu(cpu))
    first_start = min((r.started for r in result.records), default=healthy_at)
    figures = burst_figures(figures_of(result), capacity, first_start - healthy_at)
    return verdict(figures, args, out)


@contextmanager
def fresh_stack(opts: Options, args: argparse.Namespace) -> Iterator[tuple[BenchStack, float]]:
    """Workers first, then the gateway; yields the stack and the monotonic time /healthz first answered 200."""
    settings = {
        "batching": int(opts.batching),
        "worker_max_streams": args.cap,
        "gateway_processes": args.gateway_processes,
    }
    stack = BenchStack(
        f"burst-{os.getpid()}", opts.redis_url, str(ensure_model(opts.model)), opts.out / "logs", settings=settings
    )
    stack.loglevel = opts.worker_loglevel
    try:
        for i in range(args.workers):
            stack.start_worker(f"w{i + 1}", concurrency=args.concurrency, wait=False)
        for worker_id, proc in stack.worker_procs().items():
            stack.wait_worker(worker_id, proc)
        healthy_at = start_gateway_fast(stack)
        logger.info("stack %s: /healthz answered 200; settings %s", stack.name, settings)
        yield stack, healthy_at
    finally:
        stack.stop()


def start_gateway_fast(stack: BenchStack) -> float:
    """Start the gateway and poll /healthz every HEALTH_POLL s; returns when it first answered 200.

    :meth:`tests.stack.Stack.start_gateway` polls every 100 ms: too coarse for "the moment it is healthy".
    """
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "config" / "gunicorn.py"), "wsgi:app"]
    proc = stack._spawn("gateway", argv, stack.env(bind=f"127.0.0.1:{port}"))
    http = f"http://127.0.0.1:{port}"

    def healthy() -> float | None:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"gateway exited:\n{proc.tail()}")
        status, _ = stack.get(http + "/healthz")
        return time.monotonic() if status == 200 else None

    at = wait_until(healthy, GATEWAY_START_TIMEOUT, interval=HEALTH_POLL, what="gateway /healthz 200")
    stack.http, stack.url = http, f"ws://127.0.0.1:{port}/ws"
    return at


def burst_figures(figures: list[SessionFigures], capacity: int, start_delay: float) -> dict:
    """Counts of the burst (no I/O): admitted, refused (by status and code), lost (with reasons), completed."""
    admitted = [f for f in figures if f.connected is not None]
    refused = [f for f in figures if f.outcome == REFUSED]
    refused_503 = [f for f in refused if f.refused_status == 503]
    lost = [f for f in admitted if f.outcome != COMPLETED]
    completed = [f for f in admitted if f.outcome == COMPLETED]
    unanswered = [f for f in figures if f.connected is None and f.outcome != REFUSED]
    chunks = [c.latency for f in completed for c in f.chunks]
    return {
        "clients": len(figures),
        "capacity": capacity,
        "start_delay_s": start_delay,
        "admitted": len(admitted),
        "peak_open": peak_open(admitted),
        "refused_503": len(refused_503),
        "refused_codes": dict(Counter(f"{f.refused_status} {f.refused_code}" for f in refused)),
        "refused_other": len(refused) - len(refused_503),
        "unanswered": len(unanswered),
        "unanswered_errors": dict(Counter(_reason(f) for f in unanswered)),
        "lost": len(lost),
        "lost_errors": dict(Counter(_reason(f) for f in lost)),
        "completed": len(completed),
        "chunk_latency": summarize(chunks),
        "final_latency": summarize(f.final_latency for f in completed),
    }


def peak_open(admitted: list[SessionFigures]) -> int:
    """Most admitted sessions open at the same time (a sweep over connect/finish times)."""
    events = sorted(
        [(f.connected, 1) for f in admitted] + [(f.finished or float("inf"), -1) for f in admitted],
        key=lambda e: (e[0], e[1]),
    )
    peak = running = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def _reason(f: SessionFigures) -> str:
    reason = f.error or f.outcome
    return reason if len(reason) <= 60 else reason[:57] + "..."


def verdict(fig: dict, args: argparse.Namespace, out) -> int:
    chunk, final = fig["chunk_latency"], fig["final_latency"]
    rows = [
        ("clients started", fig["clients"], f"first {1000 * fig['start_delay_s']:.0f} ms after /healthz 200"),
        (
            "admitted (handshake accepted)",
            fig["admitted"],
            f"capacity {fig['capacity']}, peak open at once {fig['peak_open']}",
        ),
        ("refused with 503", fig["refused_503"], _codes(fig["refused_codes"])),
        ("refused otherwise", fig["refused_other"], ""),
        ("no handshake answer", fig["unanswered"], _codes(fig["unanswered_errors"])),
        ("lost (admitted, no final)", fig["lost"], _codes(fig["lost_errors"])),
        ("completed", fig["completed"], ""),
        ("chunk latency p50 / p95, s", f"{num(chunk['p50'])} / {num(chunk['p95'])}", f"{chunk['n']} partials"),
        ("final latency p50 / p95 / max, s", f"{num(final['p50'])} / {num(final['p95'])} / {num(final['max'])}", ""),
    ]
    print(f"\n=== burst: {fig['clients']} clients at once, {args.seconds:.0f} s audio each ===")
    for label, value, detail in rows:
        print(f"  {label:<34}{value!s:>20}  {detail}")
    checks = Checks()
    checks.check("no admitted session was lost", fig["lost"] == 0, _codes(fig["lost_errors"]))
    checks.check(
        "admitted sessions within the capacity",
        fig["admitted"] <= fig["capacity"],
        f"admitted {fig['admitted']}, capacity {fig['capacity']}",
    )
    checks.check(
        "every client admitted or refused with 503",
        fig["admitted"] + fig["refused_503"] == fig["clients"],
        f"{fig['admitted']} + {fig['refused_503']} of {fig['clients']}",
    )
    print("\n" + checks.render())
    save_figures(out, fig, checks)
    return checks.exit_code()


def _codes(counts: dict) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
