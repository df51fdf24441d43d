"""The load tester's statistics and report on synthetic session records: no stack, no network."""

from __future__ import annotations

import json

import pytest

from bench.client import SessionRecord
from bench.memory import MemorySample, change
from bench.poller import QueueSample, http_base, url_token
from bench.report import build_report, series
from bench.runner import LoadPlan, LoadResult
from bench.stats import (
    COMPLETED,
    FAILED,
    REFUSED,
    TIMED_OUT,
    analyse,
    chunk_samples,
    classify,
    is_ordered,
    percentile,
    summarize,
)
from bench.table import format_comparison, format_report

T0 = 1000.0  # monotonic start of the synthetic run


def partial(chunk: int, text: str = "x", timing: dict | None = None) -> dict:
    message = {"mode": "online", "text": text, "wav_name": "s", "is_final": False, "chunk": chunk}
    if timing is not None:
        message["timing"] = timing
    return message


def final(chunk: int) -> dict:
    return {"mode": "online", "text": "", "wav_name": "s", "is_final": True, "is_end": True, "chunk": chunk}


def completed_record(start: float = T0, chunk_latency: float = 0.2, chunks: int = 3) -> SessionRecord:
    """A session that streamed ``chunks`` × 0.6 s plus a tail, each partial ``chunk_latency`` after its chunk."""
    rec = SessionRecord(started=start, connected=start + 0.01, first_audio=start + 0.02)
    rec.chunk_ends = [start + 0.02 + 0.6 * (i + 1) for i in range(chunks)]
    for i, end in enumerate(rec.chunk_ends):
        rec.messages.append((end + chunk_latency, partial(i)))
    rec.messages.append((start + 0.5, {"type": "queue_status", "pending": 4}))
    rec.messages.sort(key=lambda m: m[0])
    rec.speech_end = rec.chunk_ends[-1] + 0.1
    rec.messages.append((rec.speech_end + 0.3, final(chunks)))
    rec.finished = rec.speech_end + 0.31
    return rec


def refused_record() -> SessionRecord:
    return SessionRecord(
        started=T0, refused_status=503, refused_body={"type": "error", "code": "overloaded"}, finished=T0 + 0.01
    )


def timed_out_record(told: bool) -> SessionRecord:
    rec = SessionRecord(started=T0, connected=T0 + 0.01, first_audio=T0 + 0.02, error="timeout", finished=T0 + 60)
    rec.chunk_ends = [T0 + 0.62]
    if told:
        rec.messages.append((T0 + 1.0, {"type": "queue_status", "pending": 900}))
    return rec


def result_of(records: list[SessionRecord], seconds: float = 1.9) -> LoadResult:
    plan = LoadPlan(url="ws://127.0.0.1:1/ws", pcm=b"\0\0" * int(16000 * seconds), streams=len(records))
    polls = [
        QueueSample(
            T0 + 0.5,
            True,
            pending=3,
            streams=2,
            gateway_sessions=2,
            gateway_pid=1,
            workers=({"id": "w1", "pid": 2, "pending": 3, "streams": 2, "stats": {"batches": 5}},),
        ),
        QueueSample(T0 + 1.0, False),
    ]
    return LoadResult(plan, T0, T0 + 4.0, records, polls)


# --- percentiles and summaries -----------------------------------------------------------------------------------
def test_percentile_interpolates_between_ranks_like_numpy():
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 95) == pytest.approx(3.85)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_summarize_ignores_none_and_reports_empty_as_none():
    stats = summarize([3.0, None, 1.0, 2.0])
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(2.0) and stats["p50"] == 2.0
    assert stats["min"] == 1.0 and stats["max"] == 3.0
    assert summarize([None])["p95"] is None and summarize([])["n"] == 0


# --- per-session figures -----------------------------------------------------------------------------------------
def test_outcomes_are_classified():
    assert classify(completed_record()) == COMPLETED
    assert classify(refused_record()) == REFUSED
    assert classify(timed_out_record(told=True)) == TIMED_OUT
    closed = SessionRecord(started=T0, connected=T0, close_code=1011, finished=T0 + 1)
    closed.messages.append((T0 + 0.5, {"type": "error", "code": "result_timeout", "is_end": True}))
    assert classify(closed) == FAILED


def test_final_with_an_error_message_is_not_a_success():
    rec = completed_record()
    rec.messages.insert(0, (T0 + 0.3, {"type": "error", "code": "backend_unavailable"}))
    assert classify(rec) == FAILED


def test_rtf_is_first_audio_to_final_over_audio_duration():
    rec = completed_record()  # final at first_audio + 1.8 + 0.1 + 0.3
    fig = analyse(rec, audio_seconds=1.9)
    assert fig.rtf == pytest.approx((1.8 + 0.1 + 0.3) / 1.9)
    assert fig.final_latency == pytest.approx(0.3)
    assert fig.first_partial == pytest.approx(0.6 + 0.2)


def test_timed_out_session_has_no_rtf_but_a_censored_lower_bound():
    fig = analyse(timed_out_record(told=False), audio_seconds=2.0)
    assert fig.rtf is None
    assert fig.rtf_censored == pytest.approx((60 - 0.02) / 2.0)
    assert not fig.told


def test_partials_match_their_chunk_end_by_chunk_number_not_arrival_order():
    rec = SessionRecord(started=T0, first_audio=T0)
    rec.chunk_ends = [T0 + 0.6, T0 + 1.2, T0 + 1.8]
    # chunk 1's text was empty (no partial); chunk 2's partial arrives; then a duplicate of chunk 2 and the final
    rec.messages = [(T0 + 0.7, partial(0)), (T0 + 2.5, partial(2)), (T0 + 2.6, partial(2)), (T0 + 2.7, final(3))]
    samples = chunk_samples(rec)
    assert [(s.chunk, round(s.latency, 3)) for s in samples] == [(0, 0.1), (2, 0.7)]


def test_partials_with_unknown_chunks_are_ignored():
    rec = SessionRecord(started=T0)
    rec.chunk_ends = [T0 + 0.6]
    rec.messages = [(T0 + 1, partial(5)), (T0 + 1, {"mode": "online", "text": "no chunk field"})]
    assert chunk_samples(rec) == []


def test_breakdown_splits_latency_into_wait_compute_relay_and_client_side():
    rec = SessionRecord(started=T0, first_audio=T0)
    rec.chunk_ends = [T0 + 0.6]
    rec.messages = [(T0 + 1.1, partial(0, timing={"wait": 0.2, "compute": 0.1, "batch": 8, "total": 0.35}))]
    (sample,) = chunk_samples(rec)
    assert sample.latency == pytest.approx(0.5)
    assert sample.relay == pytest.approx(0.05)
    assert sample.client_side == pytest.approx(0.15)
    assert sample.batch == 8


def test_order_check_catches_duplicates_and_reordering():
    assert is_ordered(completed_record())
    swapped = SessionRecord(messages=[(T0 + 1, partial(1)), (T0 + 2, partial(0)), (T0 + 3, final(2))])
    repeated = SessionRecord(messages=[(T0 + 1, partial(0)), (T0 + 2, partial(0)), (T0 + 3, final(1))])
    assert not is_ordered(swapped) and not is_ordered(repeated)


# --- the report --------------------------------------------------------------------------------------------------
def test_report_counts_success_and_who_was_told():
    records = [
        completed_record(),
        completed_record(chunk_latency=0.4),
        refused_record(),
        timed_out_record(told=True),
        timed_out_record(told=False),
    ]
    report = build_report(result_of(records))
    s = report["sessions"]
    assert (s["attempted"], s["connected"], s["completed"], s["refused"], s["timed_out"]) == (5, 4, 2, 1, 2)
    assert s["success_rate"] == pytest.approx(0.4)
    assert s["untold"] == 1 and s["got_queue_status"] == 3 and s["realtime"] == 2
    assert s["refused_codes"] == {"503 overloaded": 1}
    assert report["chunk_latency"]["n"] == 6
    assert report["chunk_latency"]["p50"] == pytest.approx(0.3)
    assert report["queue"]["api_pending_max"] == 3 and report["queue"]["polls_failed"] == 1
    assert report["queue"]["queue_status_max"] == 900
    assert report["workers"] == [{"id": "w1", "batches": 5}]
    json.dumps(report)  # the CLI writes it as JSON


def test_series_buckets_latency_and_active_sessions_by_time():
    result = result_of([completed_record(), completed_record(start=T0 + 2.0)])
    from bench.report import figures_of

    s = series(result, figures_of(result), step=1.0)
    assert s["t"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert s["active"] == [0, 1, 1, 1, 1]  # the first connects at +0.01, the second at +2.01; both open at 3
    assert s["latency_p50"][0] == pytest.approx(0.2)  # partial of chunk 0 arrives at +0.82
    assert s["queue_status_max"][0] == 4


def test_memory_change_in_percent():
    start = MemorySample(0.0, {"gateway": 100 * 1024 * 1024, "worker:w1": None})
    end = MemorySample(9.0, {"gateway": 110 * 1024 * 1024, "worker:w1": 5})
    out = change(start, end)
    assert out["gateway"] == {"start_mb": 100.0, "end_mb": 110.0, "change_pct": 10.0}
    assert out["worker:w1"]["change_pct"] is None


def test_tables_render_every_row():
    report = build_report(result_of([completed_record(), refused_record()]))
    text = format_report(report)
    assert "completed 1 (50.0 %)" in text and "wait (broker + worker queue)" in text
    table = format_comparison({"original": report, "scaled": report})
    assert table.count("50.0 %") == 2 and "partial latency p99" in table


def test_http_url_is_derived_from_the_ws_url():
    assert http_base("ws://127.0.0.1:8000/ws") == "http://127.0.0.1:8000"
    assert http_base("wss://example:443/ws?token=t") == "https://example:443"
    assert url_token("ws://h/ws?token=abc") == "abc" and url_token("ws://h/ws") is None
