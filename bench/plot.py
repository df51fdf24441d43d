"""A PNG of one load run: chunk latency, queue depth and sessions over time (matplotlib, Agg backend)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot's import
import matplotlib.pyplot as plt

from bench.runner import LoadResult
from bench.stats import SessionFigures

logger = logging.getLogger(__name__)

MAX_POINTS = 20000  # scatter points drawn; more are sampled down (the percentiles use them all)
NAN = float("nan")
SYMLOG_ABOVE = 5.0  # seconds: a latency axis reaching past this is drawn linear to 1 s, logarithmic above


def plot_run(result: LoadResult, figures: list[SessionFigures], report: dict, path: Path, title: str = "") -> Path:
    """Write the plot to ``path``; returns it."""
    memory = bool(report["memory_samples"])
    fig, axes = plt.subplots(4 if memory else 3, 1, sharex=True, figsize=(11, 11 if memory else 9))
    _latency(axes[0], result, figures, report["series"])
    _queue(axes[1], report)
    _sessions(axes[2], report)
    if memory:
        _memory(axes[3], report["memory_samples"])
    for ax in axes:
        for event in report["events"]:
            ax.axvline(event["t"], color="red", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
    for event in report["events"]:
        axes[0].annotate(
            event["what"],
            (event["t"], 1),
            xycoords=("data", "axes fraction"),
            fontsize=8,
            color="red",
            rotation=90,
            va="top",
            ha="right",
        )
    axes[-1].set_xlabel("seconds since start")
    fig.suptitle(title or f"{report['plan']['streams']} streams, {report['plan']['url']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _latency(ax, result: LoadResult, figures: list[SessionFigures], series: dict) -> None:
    points = [(c.received - result.t0, c.latency) for f in figures for c in f.chunks]
    if len(points) > MAX_POINTS:
        points = random.Random(0).sample(points, MAX_POINTS)
    if points:
        xs, ys = zip(*points)
        ax.scatter(xs, ys, s=2, alpha=0.25, color="tab:blue", label="partial (end of chunk audio -> partial)")
    mid = _centers(series)
    ax.plot(mid, series["latency_p50"], color="black", linewidth=1, label=f"p50 per {series['step_s']:g} s")
    ax.plot(mid, series["latency_p95"], color="tab:orange", linewidth=1, label=f"p95 per {series['step_s']:g} s")
    ax.set_ylabel("chunk latency, s")
    if points and max(y for _, y in points) > SYMLOG_ABOVE:
        ax.set_yscale("symlog", linthresh=1.0)  # sub-second detail and minute-long backlogs on one axis
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)


def _gapped(polls: list[dict], value) -> tuple[list[float], list[float]]:
    """Poll times and values, NaN where a poll failed, so lines break at gaps instead of bridging them."""
    return [p["t"] for p in polls], [NAN if not p["ok"] or value(p) is None else value(p) for p in polls]


def _worker_pending(wid: str):
    return lambda p: next((w["pending"] for w in p["workers"] if w["id"] == wid), None)


def _queue(ax, report: dict) -> None:
    polls = report["polls"]
    ax.plot(*_gapped(polls, lambda p: p["pending"]), color="tab:red", label="/api/queue pending")
    worker_ids = sorted({w["id"] for p in polls for w in p["workers"]})
    for wid in worker_ids if len(worker_ids) > 1 else ():
        ax.plot(*_gapped(polls, _worker_pending(wid)), linewidth=0.8, linestyle=":", label=f"{wid} pending")
    series = report["series"]
    status = [(t, v) for t, v in zip(_centers(series), series["queue_status_max"]) if v is not None]
    if status:
        ax.plot(*zip(*status), color="tab:purple", linewidth=0.8, label="queue_status max (clients)")
    failed = [p["t"] for p in report["polls"] if not p["ok"]]
    if failed:
        ax.scatter(failed, [0] * len(failed), marker="x", color="black", label="/api/queue failed")
    ax.set_ylabel("chunk tasks waiting")
    ax.legend(loc="upper left", fontsize=8)


def _centers(series: dict) -> list[float]:
    """Bucket midpoints: a bucket's figure covers [t, t + step)."""
    return [t + series["step_s"] / 2 for t in series["t"]]


def _sessions(ax, report: dict) -> None:
    series = report["series"]
    ax.plot(series["t"], series["active"], color="tab:green", label="active sessions (client)")
    ax.plot(
        *_gapped(report["polls"], lambda p: p["gateway_sessions"]),
        color="tab:gray",
        linewidth=0.8,
        label="gateway sessions (/api/queue)",
    )
    ax.set_ylabel("sessions")
    ax.legend(loc="upper left", fontsize=8)


def _memory(ax, samples: list[dict]) -> None:
    names = sorted({k for s in samples for k in s["rss_mb"]})
    for name in names:
        pts = [(s["t"], s["rss_mb"][name]) for s in samples if s["rss_mb"].get(name) is not None]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=name)
    ax.set_ylabel("RSS, MiB")
    ax.legend(loc="upper left", fontsize=8)
