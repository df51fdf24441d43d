"""The burst scenario's counts on synthetic session figures: no stack, no network."""

from __future__ import annotations

from bench.scenarios.burst import burst_figures, peak_open
from bench.stats import COMPLETED, FAILED, REFUSED, TIMED_OUT, ChunkSample, SessionFigures


def figure(index: int, outcome: str, *, connected: float | None = 1.0, finished: float = 10.0, **kw) -> SessionFigures:
    return SessionFigures(
        index=index, outcome=outcome, audio_seconds=4.0, started=0.0, connected=connected, finished=finished, **kw
    )


def test_counts_admitted_refused_lost_and_unanswered():
    figures = [
        figure(0, COMPLETED, final_latency=0.1, chunks=[ChunkSample(0, 0, 1.0, 1.2)]),
        figure(1, FAILED, error="backend_unavailable"),
        figure(2, TIMED_OUT, error="timeout"),
        figure(3, REFUSED, connected=None, refused_status=503, refused_code="at_capacity"),
        figure(4, REFUSED, connected=None, refused_status=401, refused_code="unauthorized"),
        figure(5, FAILED, connected=None, error="ConnectionResetError: reset"),
    ]
    fig = burst_figures(figures, capacity=3, start_delay=0.004)
    assert (fig["clients"], fig["admitted"], fig["completed"], fig["lost"]) == (6, 3, 1, 2)
    assert fig["lost_errors"] == {"backend_unavailable": 1, "timeout": 1}
    assert (fig["refused_503"], fig["refused_other"]) == (1, 1)
    assert fig["refused_codes"] == {"503 at_capacity": 1, "401 unauthorized": 1}
    assert fig["unanswered"] == 1
    assert fig["chunk_latency"]["n"] == 1 and abs(fig["chunk_latency"]["p50"] - 0.2) < 1e-9
    assert fig["final_latency"]["max"] == 0.1


def test_peak_open_counts_overlapping_sessions_only():
    figures = [
        figure(0, COMPLETED, connected=0.0, finished=2.0),
        figure(1, COMPLETED, connected=1.0, finished=3.0),
        figure(2, COMPLETED, connected=2.0, finished=4.0),
        figure(3, COMPLETED, connected=5.0, finished=6.0),
    ]
    assert peak_open(figures) == 2  # a session that ends at t frees its slot before one that starts at t
    assert peak_open([]) == 0
