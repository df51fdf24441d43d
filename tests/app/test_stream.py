from app.protocol import SessionConfig
from app.stream import StreamSession
from tasks.wire import ChunkResult

CHUNK = 9600 * 2


def session(replay_max_bytes: int = 10 * CHUNK) -> StreamSession:
    return StreamSession(
        "s1", SessionConfig(wav_name="w"), channel="ch", max_frame_bytes=1 << 20, replay_max_bytes=replay_max_bytes
    )


def result(s: StreamSession, seq: int, text: str = "", final: bool = False, **kw) -> ChunkResult:
    return ChunkResult(s.stream, seq, text, is_final=final, **kw)


def test_jobs_are_numbered_and_only_the_streams_first_job_carries_options():
    s = session()
    jobs = s.feed(b"\x00" * (2 * CHUNK + 10)) + s.end_utterance() + s.feed(b"\x00" * CHUNK) + s.end_utterance()
    assert [j.seq for j in jobs] == [0, 1, 2, 3, 4]
    assert [j.first for j in jobs] == [True, False, False, True, False]
    assert [j.is_final for j in jobs] == [False, False, True, False, True]
    assert [len(j.audio) for j in jobs] == [CHUNK, CHUNK, 10, CHUNK, 0]
    assert jobs[0].options["chunk_size"] == [5, 10, 5]
    assert [j.options for j in jobs[1:]] == [None] * 4, "options travel once per stream, not per utterance"
    assert {j.stream for j in jobs} == {"s1/0"} and {j.channel for j in jobs} == {"ch"}


def test_ending_an_utterance_without_audio_issues_nothing():
    s = session()
    assert s.end_utterance() == []


def test_results_are_delivered_in_order_whatever_order_they_arrive_in():
    s = session()
    s.feed(b"\x00" * 3 * CHUNK)
    s.end_utterance()
    assert s.accept(result(s, 2, "c")).messages == []
    assert s.accept(result(s, 1, "b")).messages == []
    delivered = s.accept(result(s, 0, "a")).messages
    assert [m["text"] for m in delivered] == ["a", "b", "c"]
    final = s.accept(result(s, 3, "", final=True)).messages
    assert final == [{"mode": "online", "text": "", "wav_name": "w", "is_final": True, "chunk": 3, "is_end": True}]
    assert s.outstanding == 0


def test_empty_partials_are_not_sent_and_duplicates_are_dropped():
    s = session()
    s.feed(b"\x00" * 2 * CHUNK)
    assert s.accept(result(s, 0, "")).messages == []
    assert s.accept(result(s, 0, "again")).messages == []
    assert [m["text"] for m in s.accept(result(s, 1, "x")).messages] == ["x"]


def test_replay_resends_the_unfinished_utterance_under_a_new_generation():
    s = session()
    s.feed(b"\x01" * CHUNK)
    s.end_utterance()
    s.accept(result(s, 0, "a"))
    s.accept(result(s, 1, "", final=True))  # utterance 1 fully delivered: not replayed
    s.feed(b"\x02" * 3 * CHUNK)
    s.accept(result(s, 2, "b"))
    old_stream = s.stream

    jobs = s.replay()

    assert s.stream == "s1/1" != old_stream
    assert [j.seq for j in jobs] == [2, 3, 4] and [j.first for j in jobs] == [True, False, False]
    assert all(j.replay and j.stream == "s1/1" for j in jobs) and jobs[0].options is not None
    assert s.accept(ChunkResult(old_stream, 3, "stale")).messages == [], "old generation is ignored"
    assert s.accept(result(s, 2, "b")).messages == [], "the client already has chunk 2"
    assert [m["text"] for m in s.accept(result(s, 3, "c")).messages] == ["c"]


def test_a_stream_state_loss_asks_for_a_replay_and_other_errors_end_the_session():
    s = session()
    s.feed(b"\x00" * CHUNK)
    assert s.accept(result(s, 0, error="gone", code="stream_state_lost")).replay
    fatal = s.accept(result(s, 0, error="boom", code="recognition_failed")).fatal
    assert fatal.code == "recognition_failed" and "boom" in fatal.message


def test_unanswered_audio_is_never_let_go_whatever_the_replay_cap():
    s = session(replay_max_bytes=2 * CHUNK)
    s.feed(b"\x00" * 4 * CHUNK)  # faster than real time: four chunks in flight, twice the cap
    assert s.outstanding_bytes == 4 * CHUNK and s.replay_exact
    jobs = s.replay()
    assert [j.seq for j in jobs] == [0, 1, 2, 3] and jobs[0].first and jobs[0].options is not None
    for seq in range(4):
        s.accept(result(s, seq, f"t{seq}"))
    assert s.outstanding == 0, "every chunk was answered after the replay: nothing hangs"


def test_answered_audio_beyond_the_cap_is_let_go_and_replay_starts_at_the_oldest_kept_chunk():
    s = session(replay_max_bytes=2 * CHUNK)
    s.feed(b"\x00" * 4 * CHUNK)
    for seq in range(3):
        s.accept(result(s, seq, "x"))
    assert not s.replay_exact and s.buffered_bytes == 3 * CHUNK  # two answered (the cap) + one unanswered
    jobs = s.replay()
    assert [j.seq for j in jobs] == [1, 2, 3] and jobs[0].first and jobs[0].options is not None


def test_the_process_budget_bounds_history_and_is_refunded():
    from app.limits import ReplayBudget

    budget = ReplayBudget(3 * CHUNK)
    a = StreamSession(
        "a", SessionConfig(), channel="c", max_frame_bytes=1 << 20, replay_max_bytes=10 * CHUNK, budget=budget
    )
    b = StreamSession(
        "b", SessionConfig(), channel="c", max_frame_bytes=1 << 20, replay_max_bytes=10 * CHUNK, budget=budget
    )
    a.feed(b"\x00" * 3 * CHUNK)
    for seq in range(3):
        a.accept(ChunkResult(a.stream, seq, "x"))
    assert budget.used == 3 * CHUNK
    b.feed(b"\x00" * 2 * CHUNK)
    for seq in range(2):
        b.accept(ChunkResult(b.stream, seq, "y"))
    assert budget.used == 3 * CHUNK and not b.replay_exact, "no room left: b keeps no history"
    assert b.outstanding == 0 and b.buffered_bytes == 0
    a.close()
    assert budget.used == 0


def test_timing_breakdown_is_added_when_the_client_asks():
    now = [10.0]
    s = StreamSession(
        "s2",
        SessionConfig(timing=True),
        channel="c",
        max_frame_bytes=1 << 20,
        replay_max_bytes=CHUNK * 4,
        clock=lambda: now[0],
    )
    s.feed(b"\x00" * CHUNK)
    now[0] = 10.5
    delivery = s.accept(ChunkResult("s2/0", 0, "t", timing={"queued": 0.1, "compute": 0.2, "batch": 3}))
    assert delivery.messages[0]["timing"] == {"wait": 0.1, "compute": 0.2, "batch": 3, "total": 0.5}
    assert delivery.latencies == [0.5]
