"""The engine's stages: VAD and streaming per chunk by mode, sentences as their own lower-priority rounds.

Fakes stand in for the models (their faithfulness is tests/tasks/test_vad.py and test_offline.py); the engine's
threads, ordering and scheduling are real.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from tasks.engine import Engine
from tasks.errors import RecognitionFailed
from tasks.recognizer import FakeRecognizer, StreamOptions
from tasks.wire import ChunkJob, ChunkResult, SentenceJob, SentenceResult
from tests.tasks.test_engine import Published


@dataclass
class FakeVadState:
    fed: int = 0


class FakeVad:
    """Speech 'begins' at the stream's 100th ms and 'ends' at its 700th; records its batches."""

    name = "fake-vad"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def open_stream(self) -> FakeVadState:
        return FakeVadState()

    def process(self, work):
        self.batches.append(len(work))
        out = []
        for item in work:
            before = item.state.fed
            item.state.fed += len(item.audio) * 1000 // 16000
            events = []
            if before <= 100 < item.state.fed:
                events.append((100, -1))
            if before <= 700 < item.state.fed:
                events.append((-1, 700))
            out.append(events)
        return out


@dataclass
class Output:
    text: str
    raw_text: str
    timestamp: list
    stamp_sents: list
    punc_cache: dict


class FakePipeline:
    """Echoes the sentence's length; sleeps ``delay`` per round so rounds can be overlapped with chunks."""

    has_punc = True

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.rounds: list[int] = []

    def process(self, work):
        self.rounds.append(len(work))
        time.sleep(self.delay)
        return [
            Output(f"len{len(w.audio)}", "raw", [[0, 10]], [], {"pre_text": [w.hotwords]})
            if w.hotwords != "boom"
            else RecognitionFailed("boom")
            for w in work
        ]


def options(mode: str) -> dict:
    return StreamOptions(mode=mode).to_wire()


def chunk(stream: str, seq: int, mode: str, *, samples: int = 9600, final: bool = False, at: int = 0) -> ChunkJob:
    return ChunkJob(
        stream,
        seq,
        b"\x00\x01" * samples,
        is_final=final,
        first=seq == 0,
        options=options(mode) if seq == 0 else None,
        channel=f"ch:{stream}",
        at=at,
    )


def sentence(index: int, samples: int = 16000, hotwords: str = "") -> SentenceJob:
    return SentenceJob("sess", index, b"\x00\x01" * samples, start_ms=1000, hotwords=hotwords, channel="ch:sess")


def engine(published, **kw) -> Engine:
    return Engine(
        FakeRecognizer(), published, vad=kw.pop("vad", FakeVad()), sentences=kw.pop("sentences", FakePipeline()), **kw
    ).start()


def chunk_results(published: Published) -> list[ChunkResult]:
    return [r for _, r in published.messages if isinstance(r, ChunkResult)]


def sentence_results(published: Published) -> list[SentenceResult]:
    return [r for _, r in published.messages if isinstance(r, SentenceResult)]


def test_each_mode_runs_its_stages_and_vad_events_carry_the_utterance_time():
    published = Published()
    vad = FakeVad()
    e = engine(published, vad=vad)
    try:
        for mode in ("online", "2pass", "offline"):
            e.submit(chunk(mode + "/0", 0, mode))
            e.submit(chunk(mode + "/0", 1, mode, final=True))
        published.wait(6)
    finally:
        e.stop()
    by = {(r.stream, r.seq): r for r in chunk_results(published)}
    assert by[("online/0", 0)].vad == [] and by[("online/0", 0)].text, "online: streaming only"
    assert by[("2pass/0", 0)].vad == [[100, -1]] and by[("2pass/0", 1)].vad == [[-1, 700]]
    assert by[("2pass/0", 0)].text == by[("online/0", 0)].text, "2pass partials are the streaming path's"
    assert by[("offline/0", 0)].text == "" and by[("offline/0", 1)].vad == [[-1, 700]], "offline: VAD only"
    assert max(vad.batches) == 2, "one VAD call per round over the chunks that need it"


def test_a_replay_that_starts_mid_utterance_keeps_the_vad_on_the_utterance_clock():
    published = Published()
    e = engine(published)
    try:
        e.submit(chunk("r/1", 0, "offline", at=16000 * 5))  # the replay's first chunk is 5 s into the utterance
        published.wait(1)
    finally:
        e.stop()
    assert chunk_results(published)[0].vad == [[5100, -1]]


def test_sentences_are_answered_with_their_times_and_state_and_a_failure_fails_only_its_own():
    published = Published()
    pipeline = FakePipeline()
    e = engine(published, sentences=pipeline)
    try:
        for i, words in enumerate(["a", "boom", "c"]):
            e.submit_sentence(sentence(i, hotwords=words))
        published.wait(3)
    finally:
        e.stop()
    results = {r.index: r for r in sentence_results(published)}
    assert results[0].text == "len16000" and results[0].punc == {"pre_text": ["a"]}
    assert (results[0].start_ms, results[0].end_ms) == (1000, 2000)
    assert results[1].error and results[1].code == "recognition_failed"
    assert results[2].text == "len16000"


def test_live_chunks_go_before_waiting_sentences():
    published = Published()
    pipeline = FakePipeline(delay=0.05)
    e = engine(published, sentences=pipeline, sentence_max_batch=1, sentence_max_defer=10.0)
    order: list[str] = []
    lock = threading.Lock()

    def record(messages):
        published(messages)
        with lock:
            order.extend("S" if isinstance(r, SentenceResult) else "C" for _, r in messages)

    e.publish = record
    try:
        for i in range(4):
            e.submit_sentence(sentence(i))
        time.sleep(0.01)  # the first sentence round is running
        for s in range(3):
            e.submit(chunk(f"live{s}/0", 0, "online"))
        published.wait(7)
    finally:
        e.stop()
    first_chunk = order.index("C")
    assert first_chunk <= 1, f"chunks waited behind more than the round in progress: {order}"
    assert order[first_chunk : first_chunk + 3] == ["C", "C", "C"]


def test_a_sentence_that_waited_too_long_goes_even_while_chunks_keep_coming():
    published = Published()
    e = engine(published, sentence_max_defer=0.2)
    stop = threading.Event()

    def feed():
        seq = 0
        while not stop.is_set():
            e.submit(chunk("busy/0", seq, "online"))
            seq += 1
            time.sleep(0.002)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        time.sleep(0.05)
        e.submit_sentence(sentence(0))
        deadline = time.time() + 3
        while not sentence_results(published) and time.time() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        feeder.join()
        e.stop()
    assert sentence_results(published), "a sentence starved behind a stream of chunks"


def test_a_worker_without_vad_fails_2pass_chunks_with_model_missing():
    published = Published()
    e = Engine(FakeRecognizer(), published).start()
    try:
        assert e.modes == ["online"]
        e.submit(chunk("m/0", 0, "2pass"))
        (result,) = published.wait(1)
    finally:
        e.stop()
    assert result.code == "model_missing" and "VAD" in (result.error or "")


def background(index: int, samples: int = 16000) -> SentenceJob:
    return SentenceJob(f"file:{index}", index, b"\x00\x01" * samples, start_ms=500, background=True)


def test_background_work_runs_only_when_nothing_live_waits_and_never_publishes():
    published = Published()
    pipeline = FakePipeline(delay=0.05)
    e = engine(published, sentences=pipeline, sentence_max_batch=8, background_max_batch=2)
    ran: list[str] = []
    lock = threading.Lock()

    def record(messages):
        published(messages)
        with lock:
            ran.extend("S" if isinstance(r, SentenceResult) else "C" for _, r in messages)

    def call(tag: str):
        with lock:
            ran.append(tag)
        return tag.lower()

    e.publish = record
    try:
        e.submit_sentence(sentence(0))  # a live round starts: everything below arrives while it runs
        time.sleep(0.01)
        files = [e.submit_sentence(background(i)) for i in range(5)]
        calls = [e.submit_background(lambda tag=tag: call(tag)) for tag in ("X", "Y")]
        e.submit_sentence(sentence(1))
        for s in range(2):
            e.submit(chunk(f"live{s}/0", 0, "online"))
        assert all(p.settled(5) for p in files + calls)
    finally:
        e.stop()
    assert ran[:4] == ["S", "C", "C", "S"], f"live chunks, then the live sentence, before any background work: {ran}"
    assert sorted(ran[4:]) == ["X", "Y"] and ran.count("S") == 2, "background sentences are never published"
    assert [c.result for c in calls] == ["x", "y"]
    results = [p.result for p in files]
    assert all(isinstance(r, SentenceResult) and r.text == "len16000" for r in results)
    assert [(r.session, r.index, r.start_ms, r.end_ms) for r in results] == [
        (f"file:{i}", i, 500, 1500) for i in range(5)
    ]
    # the live sentence's round fills up with 2 background ones; later rounds hold at most 2 (background_max_batch)
    assert sum(pipeline.rounds) == 7 and max(pipeline.rounds) <= 3 and pipeline.rounds[-2:] != [3, 3], pipeline.rounds


def test_a_background_call_that_raises_returns_its_error_and_a_stopped_engine_releases_background_work():
    published = Published()
    e = engine(published)
    try:
        boom = e.submit_background(lambda: 1 / 0)
        assert boom.settled(5) and isinstance(boom.result, ZeroDivisionError)
        assert e.alive, "the caller's error is its result, not the engine's death"
    finally:
        e.stop()
    late = [e.submit_background(lambda: 1), e.submit_sentence(background(0))]
    assert all(p.settled(1) and p.result is None for p in late)


def test_background_sentences_are_not_punctuated():
    from tasks.offline import SentenceWork

    seen: list[SentenceWork] = []

    class Recording(FakePipeline):
        def process(self, work):
            seen.extend(work)
            return super().process(work)

    e = engine(Published(), sentences=Recording())
    try:
        pendings = [e.submit_sentence(background(0)), e.submit_sentence(sentence(1))]
        assert all(p.settled(5) for p in pendings)
    finally:
        e.stop()
    assert sorted(w.punctuate for w in seen) == [False, True]


def test_beside_open_live_streams_a_background_round_holds_little_file_audio():
    published = Published()
    pipeline = FakePipeline()
    e = engine(published, sentences=pipeline, background_max_batch=8, background_live_audio=2.5)
    try:
        first = e.submit(chunk("live/0", 0, "online"))  # a live stream is open from here on
        assert first.settled(5)
        files = [e.submit_sentence(background(i, samples=16000)) for i in range(4)]  # 1 s each
        assert all(p.settled(5) for p in files)
        assert max(pipeline.rounds) <= 2, f"at most 2.5 s of file audio a round beside a live stream: {pipeline.rounds}"
        e.close_stream("live/0")
        more = [e.submit_sentence(background(i, samples=16000)) for i in range(4)]
        assert all(p.settled(5) for p in more)
    finally:
        e.stop()
    assert sum(pipeline.rounds) == 8
