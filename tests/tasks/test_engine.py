"""The engine's ordering, batching and failure isolation, with the fake recognizer and real threads."""

from __future__ import annotations

import threading

import pytest

from tasks.engine import Engine
from tasks.recognizer import FakeRecognizer, FaultInjectingRecognizer, StreamOptions
from tasks.wire import ChunkJob, ChunkResult

OPTIONS = StreamOptions().to_wire()


class Published:
    """Collects what the engine publishes, like Redis would, and lets tests wait for it."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, ChunkResult]] = []
        self.batches: list[int] = []
        self._cond = threading.Condition()

    def __call__(self, messages) -> None:
        with self._cond:
            self.messages.extend(messages)
            self.batches.append(len(messages))
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 5.0) -> list[ChunkResult]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.messages) >= count, timeout), self.messages
            return [r for _, r in self.messages]

    def of(self, stream: str) -> list[ChunkResult]:
        return [r for _, r in self.messages if r.stream == stream]


def job(stream: str, seq: int, samples: int = 160, first: bool | None = None, final: bool = False) -> ChunkJob:
    first = seq == 0 if first is None else first
    return ChunkJob(stream=stream, seq=seq, audio=b"\x00\x00" * samples, is_final=final, first=first,
                    options={**OPTIONS, "wav_name": stream} if first else None, channel=f"ch:{stream}")


@pytest.fixture
def published():
    return Published()


@pytest.fixture
def make_engine(published):
    engines = []

    def make(recognizer=None, **kwargs) -> Engine:
        engine = Engine(recognizer or FakeRecognizer(), published, worker_id="w", **kwargs).start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


def test_ready_chunks_of_many_streams_share_one_forward_pass(make_engine, published):
    fake = FakeRecognizer(delay=0.05)
    engine = make_engine(fake, max_batch=64, max_wait=0.02)
    engine.submit(job("warmup", 0))  # occupies the batcher while the others arrive
    for i in range(10):
        engine.submit(job(f"s{i}", 0, samples=100 + i))
    published.wait(11)
    assert max(fake.calls) >= 10, fake.calls
    for i in range(10):
        [result] = published.of(f"s{i}")
        assert result.text == f"s{i}#0:{100 + i}" and result.timing["batch"] >= 10


def test_batches_never_exceed_max_batch(make_engine, published):
    fake = FakeRecognizer(delay=0.02)
    engine = make_engine(fake, max_batch=4, max_wait=0.05)
    for i in range(10):
        engine.submit(job(f"s{i}", 0))
    published.wait(10)
    assert max(fake.calls) <= 4


def test_a_streams_chunks_are_recognized_in_order_even_if_submitted_out_of_order(make_engine, published):
    engine = make_engine()
    pending = [engine.submit(job("a", seq, final=seq == 3)) for seq in (2, 3, 1, 0)]
    published.wait(4)
    assert [r.seq for r in published.of("a")] == [0, 1, 2, 3]
    assert [r.text for r in published.of("a")] == ["a#0:160", "a#1:160", "a#2:160", "a#3:160!"]
    assert all(p.wait(1).stream == "a" for p in pending)


def test_a_new_utterance_starts_from_fresh_state(make_engine, published):
    engine = make_engine()
    for j in (job("a", 0), job("a", 1, final=True), job("a", 2, first=True), job("a", 3)):
        engine.submit(j)
    assert [r.text for r in published.wait(4)] == ["a#0:160", "a#1:160!", "a#0:160", "a#1:160"]


def test_a_missing_predecessor_fails_the_stream_after_the_gap_timeout(make_engine, published):
    engine = make_engine(gap_timeout=0.2)
    engine.submit(job("a", 0))
    late = engine.submit(job("a", 2))  # chunk 1 never comes
    results = published.wait(2)
    assert results[1].seq == 2 and results[1].code == "stream_state_lost"
    assert late.wait(1).code == "stream_state_lost"
    assert engine.open_streams == 0


def test_a_chunk_for_a_stream_this_worker_never_started_is_reported_lost(make_engine, published):
    engine = make_engine(gap_timeout=0.2)
    engine.submit(job("restarted", 7, first=False))
    [result] = published.wait(1)
    assert result.code == "stream_state_lost" and "no model state" in result.error


def test_a_failing_chunk_fails_only_its_stream_and_the_batch_is_retried_without_it(make_engine, published):
    fake = FakeRecognizer(delay=0.05)
    engine = make_engine(FaultInjectingRecognizer(fake), max_batch=64, max_wait=0.05)
    engine.submit(job("warmup", 0))
    engine.submit(job("__raise__0", 0))
    for i in range(3):
        engine.submit(job(f"ok{i}", 0))
    published.wait(5)
    [bad] = published.of("__raise__0")
    assert bad.code == "recognition_failed" and "injected fault" in bad.error
    assert [published.of(f"ok{i}")[0].text for i in range(3)] == [f"ok{i}#0:160" for i in range(3)]
    engine.submit(job("__raise__0", 1))  # the failed stream's state was dropped: later chunks are lost
    engine.submit(job("ok0", 1))
    published.wait(6)
    assert published.of("ok0")[-1].text == "ok0#1:160"


def test_duplicates_are_dropped_and_closing_a_stream_drops_its_waiting_chunks(make_engine, published):
    engine = make_engine()
    engine.submit(job("a", 0)).wait(2)
    assert engine.submit(job("a", 0)).wait(1) is None
    waiting = engine.submit(job("a", 5))
    engine.close_stream("a")
    assert waiting.wait(1) is None
    assert len(published.of("a")) == 1 and engine.open_streams == 0


def test_idle_streams_are_freed(make_engine, published):
    engine = make_engine(stream_idle_timeout=0.1)
    engine.submit(job("a", 0)).wait(2)
    assert engine.open_streams == 1
    threading.Event().wait(0.8)  # the batcher sweeps about every 0.5 s when idle
    assert engine.open_streams == 0


def test_stopping_releases_every_waiting_chunk_at_once(make_engine, published):
    engine = make_engine(FakeRecognizer(delay=0.2))
    engine.submit(job("a", 0))
    waiting = [engine.submit(job("b", seq)) for seq in (1, 2)]  # b/0 never comes: they wait for it
    late = []
    engine.stop()
    late.append(engine.submit(job("c", 0)))
    assert all(p.wait(0.1) is None for p in waiting + late)
    assert engine.open_streams == 0
