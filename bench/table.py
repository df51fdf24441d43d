"""Plain-text tables of load-test reports (bench.report dicts): one run, or several side by side."""

from __future__ import annotations

DIST_ROWS = (
    ("RTF", "rtf"),
    ("RTF incl. timed out (lower bound)", "rtf_censored"),
    ("chunk latency, s", "chunk_latency"),
    ("first partial, s", "first_partial"),
    ("final latency, s", "final_latency"),
)
BREAKDOWN_ROWS = (
    ("wait (broker + worker queue)", "wait"),
    ("compute (forward pass)", "compute"),
    ("relay (publish + pub/sub)", "relay"),
    ("client side (gateway buffering, network)", "client_side"),
    ("total (gateway submit -> relay)", "total"),
)


def num(value, digits: int = 2) -> str:
    """A number for a table cell; '-' for None."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _row(label: str, cells, width: int = 44) -> str:
    return f"{label:<{width}}" + "".join(f"{c:>10}" for c in cells)


def format_report(report: dict) -> str:
    """The whole report of one run as a text block (what the CLI prints)."""
    plan, s, run = report["plan"], report["sessions"], report["run"]
    kind = "slots (soak)" if plan["soak_seconds"] or plan["soak_sessions"] else "streams"
    lines = [
        (
            f"Load test: {plan['streams']} {kind} x {plan['audio_seconds']:.1f} s audio, ramp {plan['ramp']:.0f} s, "
            f"frames {plan['frame_ms']} ms, pace {plan['pace']}, timeout {plan['timeout']:.0f} s -> {plan['url']}"
        ),
        (
            f"Sessions: attempted {s['attempted']}, connected {s['connected']}, completed {s['completed']} "
            f"({pct(s['success_rate'])}), refused {s['refused']}, timed out {s['timed_out']}, failed {s['failed']}"
        ),
        (
            f"  served in real time (final <= 2 s after end of speech) {s['realtime']}, got queue_status "
            f"{s['got_queue_status']}, timed out/failed without being told {s['untold']}, "
            f"out of order {s['out_of_order']}"
        ),
    ]
    if s["refused_codes"] or s["errors"]:
        reasons = [f"{k} x{v}" for k, v in {**s["refused_codes"], **s["errors"]}.items()]
        lines.append("  reasons: " + ", ".join(reasons))
    lines += ["", _row("", ("n", "mean", "p50", "p95", "p99", "max"))]
    for label, key in DIST_ROWS:
        d = report[key]
        lines.append(_row(label, (num(d["n"]),) + tuple(num(d[k]) for k in ("mean", "p50", "p95", "p99", "max"))))
    lines += ["", _row("where chunk latency goes, s", ("n", "p50", "p95", "mean"))]
    for label, key in BREAKDOWN_ROWS:
        d = report["breakdown"][key]
        lines.append(_row("  " + label, (num(d["n"]), num(d["p50"], 3), num(d["p95"], 3), num(d["mean"], 3))))
    b = report["breakdown"]["batch"]
    lines.append(
        _row(
            "  batch size (chunks per forward pass)",
            (num(b["n"]), num(b["p50"], 1), num(b["p95"], 1), num(b["mean"], 1)),
        )
    )
    lines += ["", _queue_line(report["queue"])]
    for w in report["workers"]:
        lines.append(
            f"Worker {w['id']}: {w.get('batches', '-')} batches, {w.get('chunks', '-')} chunks, "
            f"mean batch {w.get('mean_batch', '-')}, failures {w.get('failures', '-')}"
        )
    for name, m in report["memory"]["change"].items():
        lines.append(
            f"Memory {name}: {num(m['start_mb'], 1)} -> {num(m['end_mb'], 1)} MiB RSS ({num(m['change_pct'], 1)} %)"
        )
    lines.append(
        f"Client: {run['duration_s']:.1f} s wall, {run['client_cpu_s']:.1f} s CPU "
        f"({num(run['client_cpu_pct'], 0)} % of one core)"
    )
    return "\n".join(lines)


def _queue_line(q: dict) -> str:
    return (
        f"Queue: /api/queue pending max {num(q['api_pending_max'])}, mean {num(q['api_pending_mean'], 1)}; "
        f"queue_status max {num(q['queue_status_max'])}; streams max {num(q['streams_max'])}; gateway sessions "
        f"max {num(q['gateway_sessions_max'])}; polls {q['polls']} ({q['polls_failed']} failed)"
    )


COMPARE_ROWS = (
    ("success rate", lambda r: pct(r["sessions"]["success_rate"])),
    ("completed", lambda r: num(r["sessions"]["completed"])),
    ("served in real time", lambda r: num(r["sessions"]["realtime"])),
    ("refused (503)", lambda r: num(r["sessions"]["refused"])),
    ("timed out", lambda r: num(r["sessions"]["timed_out"])),
    ("failed", lambda r: num(r["sessions"]["failed"])),
    ("RTF mean", lambda r: num(r["rtf"]["mean"])),
    ("RTF p95", lambda r: num(r["rtf"]["p95"])),
    ("RTF mean incl. timed out", lambda r: num(r["rtf_censored"]["mean"])),
    ("partial latency p50, s", lambda r: num(r["chunk_latency"]["p50"])),
    ("partial latency p95, s", lambda r: num(r["chunk_latency"]["p95"])),
    ("partial latency p99, s", lambda r: num(r["chunk_latency"]["p99"])),
    ("first partial p50, s", lambda r: num(r["first_partial"]["p50"])),
    ("final latency p95, s", lambda r: num(r["final_latency"]["p95"])),
    ("wait p50 / p95, s", lambda r: _pair(r["breakdown"]["wait"])),
    ("compute p50 / p95, s", lambda r: _pair(r["breakdown"]["compute"])),
    ("relay p50 / p95, s", lambda r: _pair(r["breakdown"]["relay"])),
    ("client side p50 / p95, s", lambda r: _pair(r["breakdown"]["client_side"])),
    ("mean batch size", lambda r: num(r["breakdown"]["batch"]["mean"], 1)),
    ("queue depth max", lambda r: num(r["queue"]["api_pending_max"])),
    ("client CPU, % of a core", lambda r: num(r["run"]["client_cpu_pct"], 0)),
)


def _pair(d: dict) -> str:
    return f"{num(d['p50'])} / {num(d['p95'])}"


def format_comparison(reports: dict[str, dict]) -> str:
    """Side-by-side table: one column per named report."""
    names = list(reports)
    width = max(14, *(len(n) + 2 for n in names))
    lines = [f"{'':<28}" + "".join(f"{n:>{width}}" for n in names)]
    for label, cell in COMPARE_ROWS:
        lines.append(f"{label:<28}" + "".join(f"{cell(reports[n]):>{width}}" for n in names))
    return "\n".join(lines)
