"""Turns a :class:`~bench.runner.LoadResult` into the report: counts, distributions, breakdown and time series.

The report is a plain dict (written as JSON by the CLI; bench.table prints it). Session figures are defined in
bench.stats; this module aggregates them. Times in the series are seconds since the start of the run.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict

from bench.audio import duration
from bench.memory import change
from bench.runner import LoadResult
from bench.stats import (
    COMPLETED,
    FAILED,
    OUTCOMES,
    REFUSED,
    TIMED_OUT,
    SessionFigures,
    analyse,
    summarize,
)

#: A completed session counts as served in real time when its final came within this long of the end of speech.
REALTIME_FINAL_S = 2.0
BREAKDOWN = ("wait", "compute", "relay", "client_side", "total")


def figures_of(result: LoadResult) -> list[SessionFigures]:
    seconds = duration(result.plan.pcm)
    return [analyse(rec, seconds, i) for i, rec in enumerate(result.records)]


def build_report(result: LoadResult, figures: list[SessionFigures] | None = None) -> dict:
    """The whole report of one run as a JSON-ready dict."""
    figures = figures if figures is not None else figures_of(result)
    chunks = [c for f in figures for c in f.chunks]
    wall = result.t_end - result.t0
    return {
        "plan": _plan(result),
        "run": {
            "duration_s": round(wall, 2),
            "client_cpu_s": round(result.client_cpu_s, 2),
            "client_cpu_pct": round(100 * result.client_cpu_s / wall, 1) if wall > 0 else None,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "sessions": session_counts(figures),
        "rtf": summarize(f.rtf for f in figures),
        "rtf_censored": summarize(f.rtf_censored for f in figures),
        "chunk_latency": summarize(c.latency for c in chunks),
        "first_partial": summarize(f.first_partial for f in figures),
        "final_latency": summarize(f.final_latency for f in figures),
        "breakdown": breakdown(chunks),
        "queue": queue_figures(result, figures),
        "workers": _workers(result),
        "memory": {
            "start": result.memory_start.to_json(result.t0) if result.memory_start else None,
            "end": result.memory_end.to_json(result.t0) if result.memory_end else None,
            "change": change(result.memory_start, result.memory_end),
        },
        "series": series(result, figures),
        "polls": [s.to_json(result.t0) for s in result.polls],
        "memory_samples": [m.to_json(result.t0) for m in result.memory],
        "events": [{"t": round(t - result.t0, 3), "what": what} for t, what in result.events],
    }


def _plan(result: LoadResult) -> dict:
    plan = {k: v for k, v in asdict(result.plan).items() if k != "pcm"}
    plan["audio_seconds"] = round(duration(result.plan.pcm), 3)
    return plan


def session_counts(figures: list[SessionFigures]) -> dict:
    """Outcome counts, success rate and the reasons behind refusals and failures."""
    outcomes = Counter(f.outcome for f in figures)
    attempted = len(figures)
    counts = {"attempted": attempted, "connected": sum(f.connected is not None for f in figures)}
    counts.update({o: outcomes.get(o, 0) for o in OUTCOMES})
    counts["success_rate"] = outcomes.get(COMPLETED, 0) / attempted if attempted else None
    counts["realtime"] = sum(
        f.outcome == COMPLETED and f.final_latency is not None and f.final_latency <= REALTIME_FINAL_S for f in figures
    )
    counts["got_queue_status"] = sum(f.queue_statuses > 0 for f in figures)
    counts["untold"] = sum(f.outcome in (TIMED_OUT, FAILED) and not f.told for f in figures)
    counts["out_of_order"] = sum(not f.ordered for f in figures)
    counts["refused_codes"] = dict(
        Counter(f"{f.refused_status} {f.refused_code}" for f in figures if f.outcome == REFUSED)
    )
    counts["errors"] = dict(Counter(f.error or "?" for f in figures if f.outcome in (TIMED_OUT, FAILED)))
    return counts


def breakdown(chunks) -> dict:
    """p50/p95/mean of each part of chunk latency, and the batch sizes seen, over partials with timing."""
    out = {}
    for part in BREAKDOWN:
        stats = summarize(getattr(c, part) for c in chunks)
        out[part] = {k: stats[k] for k in ("n", "mean", "p50", "p95")}
    out["batch"] = summarize(c.batch for c in chunks)
    return out


def queue_figures(result: LoadResult, figures: list[SessionFigures]) -> dict:
    """Peaks and means of the queue depth seen by /api/queue and by the clients' queue_status messages."""
    ok = [s for s in result.polls if s.ok]
    pending = [s.pending for s in ok if s.pending is not None]
    statuses = [p for rec in result.records for _, p in rec.queue_statuses]
    return {
        "polls": len(result.polls),
        "polls_failed": len(result.polls) - len(ok),
        "api_pending_max": max(pending, default=None),
        "api_pending_mean": round(sum(pending) / len(pending), 1) if pending else None,
        "queue_status_max": max(statuses, default=None),
        "streams_max": max((s.streams or 0 for s in ok), default=None),
        "gateway_sessions_max": max((s.gateway_sessions or 0 for s in ok), default=None),
    }


def _workers(result: LoadResult) -> list[dict]:
    latest = next((s for s in reversed(result.polls) if s.ok and s.workers), None)
    return [{"id": w["id"], **w["stats"]} for w in latest.workers] if latest else []


def series(result: LoadResult, figures: list[SessionFigures], step: float | None = None) -> dict:
    """Per-``step`` buckets (default: 1 s, coarser for long runs): active sessions, partial latency
    p50/p95/max of partials received in the bucket, highest queue_status seen, sessions finished."""
    wall = max(result.t_end - result.t0, 1e-9)
    step = step or max(1.0, round(wall / 600.0))
    n = int(wall // step) + 1
    buckets: list[list[float]] = [[] for _ in range(n)]
    for c in (c for f in figures for c in f.chunks):
        buckets[min(n - 1, max(0, int((c.received - result.t0) // step)))].append(c.latency)
    status_max: list[int | None] = [None] * n
    for rec in result.records:
        for t, pending in rec.queue_statuses:
            i = min(n - 1, max(0, int((t - result.t0) // step)))
            status_max[i] = max(pending, status_max[i] or 0)
    times = [round(i * step, 3) for i in range(n)]
    active = _active_per_bucket(result, figures, step, n)
    stats = [summarize(b) for b in buckets]
    return {
        "step_s": step,
        "t": times,
        "active": active,
        "latency_p50": [s["p50"] for s in stats],
        "latency_p95": [s["p95"] for s in stats],
        "latency_max": [s["max"] for s in stats],
        "queue_status_max": status_max,
    }


def _active_per_bucket(result: LoadResult, figures: list[SessionFigures], step: float, n: int) -> list[int]:
    """Sessions connected and not yet finished at the start of each bucket (a sweep over open/close times)."""
    delta = [0] * (n + 1)
    for f in figures:
        if f.connected is None:
            continue
        opened = int(-(-(f.connected - result.t0) // step))  # first bucket start at or after the connection
        closed = int(-(-((f.finished or result.t_end) - result.t0) // step))
        if opened < closed:
            delta[min(opened, n)] += 1
            delta[min(closed, n)] -= 1
    active, running = [], 0
    for i in range(n):
        running += delta[i]
        active.append(running)
    return active
