"""The engine's ordering, batching and failure isolation, with the fake recognizer and real threads."""

from __future__ import annotations

import threading
import time

import pytest

from tasks.engine import KILL_ENGINE_PREFIX, Engine
from tasks.errors import ProtocolError
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


def job(
    stream: str,
    seq: int,
    samples: int = 160,
    first: bool | None = None,
    final: bool = False,
    options: dict | bool = True,
) -> ChunkJob:
    """A chunk job; a first one carries options named after the stream unless ``options`` is False (or a dict)."""
    first = seq == 0 if first is None else first
    if options is True:
        options = {**OPTIONS, "wav_name": stream}
    return ChunkJob(
        stream=stream,
        seq=seq,
        audio=b"\x00\x00" * samples,
        is_final=final,
        first=first,
        options=options if first and options else None,
        channel=f"ch:{stream}",
    )


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


# --- options once per stream (finding 4) ------------------------------------------------------------------------
def test_a_streams_options_are_kept_for_its_later_utterances(make_engine, published):
    engine = make_engine()
    for j in (
        job("a", 0, final=True),
        job("a", 1, first=True, options=False, final=True),
        job("a", 2, first=True, options=False),
    ):
        engine.submit(j)
    assert [r.text for r in published.wait(3)] == ["a#0:160!", "a#0:160!", "a#0:160"]


def test_options_sent_again_on_a_later_utterance_replace_the_kept_ones(make_engine, published):
    engine = make_engine()
    engine.submit(job("a", 0, final=True))
    engine.submit(job("a", 1, first=True, options={**OPTIONS, "wav_name": "renamed"}))
    engine.submit(job("a", 2, first=True, options=False))
    assert [r.text for r in published.wait(3)] == ["a#0:160!", "renamed#0:160", "renamed#0:160"]


def test_a_later_utterance_submitted_before_the_streams_first_job_waits_for_it(make_engine, published):
    engine = make_engine()
    later = engine.submit(job("a", 1, first=True, options=False, final=True))  # the threads pool reordered them
    engine.submit(job("a", 0, final=True))
    assert later.wait(2).text == "a#0:160!"
    assert [r.seq for r in published.of("a")] == [0, 1] and all(r.error is None for r in published.of("a"))


def test_a_later_utterance_of_a_stream_this_worker_holds_no_options_for_is_reported_lost(make_engine, published):
    engine = make_engine(gap_timeout=0.2)
    lost = engine.submit(job("forgotten", 5, first=True, options=False))  # restarted, or idled out
    [result] = published.wait(1)
    assert result.code == "stream_state_lost" and result.seq == 5
    assert lost.wait(1).code == "stream_state_lost" and engine.open_streams == 0


def test_invalid_options_are_refused_in_the_submitting_thread(make_engine, published):
    engine = make_engine()
    with pytest.raises(ProtocolError):
        engine.submit(job("a", 0, options={**OPTIONS, "encoder_chunk_look_back": -1}))
    with pytest.raises(ProtocolError):
        engine.submit(job("b", 0, options={"chunk_size": [5, 10, 5]}))  # lacks keys: used to kill the batcher
    assert engine.submit(job("c", 0)).wait(2).text == "c#0:160" and engine.alive


# --- the batcher survives what it can, and says when it cannot (finding 6) ----------------------------------------
class Misbehaving(FakeRecognizer):
    """A fake that breaks the recognizer contract for streams named ``short``, ``none`` or ``noopen``."""

    def open_stream(self, options):
        if options.wav_name == "noopen":
            raise KeyError("no such model state")
        return super().open_stream(options)

    def process(self, work):
        out = super().process(work)
        names = [item.state.options.wav_name for item in work]
        if "short" in names:
            return out[:-1]  # one result missing: nobody can tell whose
        return [None if name == "none" else text for name, text in zip(names, out)]


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("short", "engine_error"),
        ("none", "recognition_failed"),
        ("noopen", "recognition_failed"),
    ],
)
def test_a_recognizer_breaking_its_contract_fails_the_chunks_it_broke_and_the_batcher_goes_on(
    make_engine, published, name, code
):
    engine = make_engine(Misbehaving(), max_wait=0.05, gap_timeout=0.2)
    bad = engine.submit(job(name, 0))
    assert bad.wait(2).code == code
    assert engine.alive and engine.stats.failures == 1
    assert engine.submit(job("fine", 0)).wait(2).text == "fine#0:160"
    # the failed stream was dropped: its later chunks are lost (and the gateway replays it)
    assert engine.submit(job(name, 1)).wait(2).code == "stream_state_lost"
    assert engine.alive and engine.open_streams == 1


def test_a_bug_in_the_engine_fails_that_batch_only(make_engine, published, monkeypatch):
    engine = make_engine()
    real = engine._result

    def buggy(j, *args):
        if j.stream == "bug":
            raise AttributeError("'NoneType' object has no attribute 'cache'")
        return real(j, *args)

    monkeypatch.setattr(engine, "_result", buggy)
    failed = engine.submit(job("bug", 0)).wait(2)
    assert failed.code == "engine_error" and "AttributeError" in failed.error
    assert engine.submit(job("ok", 0)).wait(2).text == "ok#0:160"
    assert engine.alive and engine.stats.failures == 1


class Fatal(BaseException):
    """Escapes every ``except Exception``: what kills a thread that guards only against ordinary errors."""


class Dying(FakeRecognizer):
    def process(self, work):
        if any(item.state.options.wav_name == "die" for item in work):
            raise Fatal("out of everything")
        return super().process(work)


def test_a_dead_batcher_thread_says_so_releases_every_waiting_task_and_tells_its_owner(make_engine, published):
    deaths = []
    engine = make_engine(Dying(), on_death=deaths.append)
    assert engine.alive and engine.health() == "ok"
    waiting = engine.submit(job("later", 3, first=False))  # waits for a predecessor that never comes
    in_flight = engine.submit(job("die", 0))
    assert in_flight.wait(2) is None and waiting.wait(2) is None
    wait_for(lambda: engine.health() == "dead")
    assert not engine.alive and deaths == ["Fatal: out of everything"] and engine.death == deaths[0]
    assert engine.submit(job("after", 0)).wait(0.1) is None, "a dead engine takes nothing more"


@pytest.mark.parametrize("injection", [True, False])
def test_fault_injection_can_kill_the_batcher_on_purpose(make_engine, published, injection):
    deaths = []
    engine = make_engine(on_death=deaths.append, fault_injection=injection)
    outcome = engine.submit(job(KILL_ENGINE_PREFIX + "x", 0)).wait(2)
    if injection:
        assert outcome is None and deaths and "InjectedEngineDeath" in deaths[0]
        wait_for(lambda: engine.health() == "dead")
    else:
        assert outcome.text.startswith(KILL_ENGINE_PREFIX) and engine.alive and not deaths


def test_a_batcher_stuck_in_one_batch_is_reported_stalled_until_it_comes_back(make_engine, published):
    release = threading.Event()

    class Stuck(FakeRecognizer):
        def process(self, work):
            release.wait(10)
            return super().process(work)

    engine = make_engine(Stuck(), stall_timeout=0.3)
    pending = engine.submit(job("a", 0))
    wait_for(lambda: engine.health() == "stalled")
    assert not engine.alive
    release.set()
    assert pending.wait(2).text == "a#0:160"
    wait_for(lambda: engine.health() == "ok")


def test_an_idle_engine_is_not_stalled(make_engine):
    engine = make_engine(stall_timeout=0.5)
    seen = set()
    deadline = time.monotonic() + 1.5  # idle for longer than stall_timeout: the batcher still wakes every 0.5 s
    while time.monotonic() < deadline:
        seen.add(engine.health())
        time.sleep(0.05)
    assert seen == {"ok"}


def test_stopped_and_unstarted_engines_are_not_alive(published):
    engine = Engine(FakeRecognizer(), published)
    assert engine.health() == "stopped"
    engine.start().stop()
    assert engine.health() == "stopped" and not engine.alive


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)
