"""The session core's decisions with plain values: limits, timeouts, back-pressure, worker loss (no I/O)."""

from __future__ import annotations

import json

from app.actions import Close, Move, Release, Send, Submit
from app.limits import Limits, Violation
from app.session import Backend, Session
from tasks.wire import ChunkResult

CHUNK = 9600 * 2  # bytes of one default chunk (600 ms)
CONFIG = json.dumps({"mode": "online", "chunk_size": [5, 10, 5], "wav_name": "t"})
LIMITS = Limits(
    config_timeout=5,
    idle_timeout=30,
    chunk_timeout=60,
    max_outstanding_bytes=3 * CHUNK,
    replay_max_bytes=2 * CHUNK,
    queue_status_interval=1.0,
    queue_status_step=10,
)
UP = Backend(redis_ok=True, workers=frozenset({"w1", "w2"}), pending=0)


def opened(limits: Limits = LIMITS) -> Session:
    s = Session("s", "w1", channel="ch", limits=limits, now=0.0)
    assert s.on_message(CONFIG, 0.0) == []
    return s


def errors(actions) -> list[str]:
    return [a.message.get("code") for a in actions if isinstance(a, Send) and a.message.get("type") == "error"]


def closes(actions) -> list[int]:
    return [a.code for a in actions if isinstance(a, Close)]


def test_a_socket_that_never_configures_is_closed_after_the_config_timeout():
    s = Session("s", "w1", channel="ch", limits=LIMITS, now=0.0)
    assert s.tick(4.9, UP) == []
    actions = s.tick(5.1, UP)
    assert errors(actions) == ["config_timeout"] and closes(actions) == [1008] and s.closed
    assert s.end_reason == "config_timeout"


def test_audio_before_the_configuration_is_refused():
    s = Session("s", "w1", channel="ch", limits=LIMITS, now=0.0)
    actions = s.on_message(b"\x00\x00", 0.1)
    assert errors(actions) == ["audio_before_config"] and closes(actions) == [1008]


def test_text_messages_do_not_keep_a_session_alive_only_audio_does():
    s = opened()
    for t in range(1, 40):
        s.on_message("{}", float(t))
    actions = s.tick(40.0, UP)
    assert closes(actions) == [1000] and s.end_reason == "idle_timeout"
    alive = opened()
    alive.on_message(b"\x00" * 100, 35.0)
    assert closes(alive.tick(40.0, UP)) == []


def test_no_idle_close_while_results_are_outstanding():
    s = opened()
    s.on_message(b"\x00" * CHUNK, 1.0)
    assert closes(s.tick(45.0, UP)) == []


def test_unanswered_audio_past_the_bound_stops_reading_until_results_catch_up():
    s = opened()
    submitted = s.on_message(b"\x00" * 3 * CHUNK, 1.0)
    assert [len(a.jobs) for a in submitted if isinstance(a, Submit)] == [3]
    assert not s.wants_input()
    s.on_result(ChunkResult(s.stream.stream, 0, "a"), 1.5)
    assert s.wants_input()


def test_a_violation_from_the_reader_ends_the_session_with_its_code():
    s = opened()
    actions = s.on_message(Violation("rate_limited", "too many", 1008), 1.0)
    assert errors(actions) == ["rate_limited"] and closes(actions) == [1008] and s.closed
    assert s.on_message(b"\x00\x00", 1.1) == [], "nothing after the close"


def test_a_lost_worker_moves_the_session_and_the_replay_carries_options():
    s = opened()
    s.on_message(b"\x00" * 2 * CHUNK, 1.0)
    actions = s.tick(2.0, Backend(workers=frozenset({"w2"})))
    assert [a for a in actions if isinstance(a, Move)] == [Move("w1")]
    assert s.on_message(b"\x00" * CHUNK, 2.1) == [], "held back for the replay while a move is due"
    moved = s.moved("w2")
    assert isinstance(moved[0], Release) and moved[0].worker == "w1"
    replay = [a for a in moved if isinstance(a, Submit)][0]
    assert replay.worker == "w2" and [j.seq for j in replay.jobs] == [0, 1, 2]
    assert replay.jobs[0].options is not None and replay.jobs[0].first
    assert not [a for a in s.tick(2.5, Backend(workers=frozenset({"w2"}))) if isinstance(a, Move)]


def test_faster_than_real_time_past_the_replay_cap_never_hangs_after_a_replay():
    s = opened(Limits(max_outstanding_bytes=100 * CHUNK, replay_max_bytes=2 * CHUNK, chunk_timeout=60))
    s.on_message(b"\x00" * 10 * CHUNK, 1.0)  # ten chunks in flight: five times the replay cap
    s.on_submit_failed()
    moved = s.moved("w2")
    replayed = [j.seq for a in moved if isinstance(a, Submit) for j in a.jobs]
    assert replayed == list(range(10)), "every unanswered chunk is replayed"
    for seq in range(10):
        s.on_result(ChunkResult(s.stream.stream, seq, "x"), 2.0)
    assert s.stream.outstanding == 0


def test_a_chunk_without_result_ends_the_session_after_the_chunk_timeout():
    now = [0.0]
    s = Session("s", "w1", channel="ch", limits=LIMITS, now=0.0)
    s.on_message(CONFIG, 0.0)
    s.stream.clock = lambda: now[0]
    s.on_message(b"\x00" * CHUNK, 0.0)
    now[0] = 61.0
    actions = s.tick(61.0, UP)
    assert errors(actions) == ["result_timeout"] and closes(actions) == [1011]


def test_queue_status_is_paced_by_interval_and_by_jumps():
    s = opened()

    def pushed(now, pending):
        return [
            a.message["pending"]
            for a in s.tick(now, Backend(workers=UP.workers, pending=pending))
            if isinstance(a, Send) and a.message.get("type") == "queue_status"
        ]

    assert pushed(1.0, 3) == [3]
    assert pushed(1.5, 5) == [], "within the interval, a small change waits"
    assert pushed(1.6, 20) == [20], "a jump is pushed at once"
    assert pushed(2.7, 20) == [20]


def test_bad_options_are_refused_at_configuration():
    for bad in ({"encoder_chunk_look_back": -1}, {"chunk_size": [5, 99, 5]}, {"hotwords": "x " * 5000}):
        s = Session("s", "w1", channel="ch", limits=LIMITS, now=0.0)
        actions = s.on_message(json.dumps({"mode": "online", **bad}), 0.1)
        assert errors(actions) == ["bad_config"], bad
