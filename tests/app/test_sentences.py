"""The sentence tracker (app.sentences): cutting sentences by VAD events, their order, state and bounds."""

from __future__ import annotations

import json

from app.sentences import BYTES_PER_MS, KEEP_BEFORE_MS, SentenceTracker
from tasks.wire import MAX_PUNC_WORDS, MAX_SENTENCE_SECONDS, SentenceResult

CHUNK_MS = 600


def pcm(ms: int, start_ms: int = 0) -> bytes:
    """Audio whose every 16-bit sample encodes its own millisecond (mod 32768): cuts are checkable."""
    return b"".join(((start_ms + i) % 32768).to_bytes(2, "little") * (BYTES_PER_MS // 2) for i in range(ms))


def first_ms(audio: bytes) -> int:
    return int.from_bytes(audio[:2], "little")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tracker(mode: str = "2pass", **kw) -> SentenceTracker:
    return SentenceTracker("s1", channel="ch", mode=mode, wav_name="w", hotwords=kw.pop("hotwords", ""), **kw)


def feed_chunks(t: SentenceTracker, count: int, start_chunk: int = 0) -> list[int]:
    """Feed ``count`` chunks; return each one's absolute end offset."""
    ends = []
    for i in range(start_chunk, start_chunk + count):
        t.feed(pcm(CHUNK_MS, i * CHUNK_MS))
        ends.append((i + 1) * CHUNK_MS * BYTES_PER_MS)
    return ends


def answer(t: SentenceTracker, job, text: str = "你好", punc: dict | None = None):
    return t.on_result(
        SentenceResult(
            "s1",
            job.index,
            text=text,
            raw_text=text,
            timestamp=[[0, 100], [100, 200]],
            stamp_sents=[{"text_seg": "你 好", "punc": "", "start": 0, "end": 200, "ts_list": [[0, 100], [100, 200]]}],
            punc=punc if punc is not None else {"pre_text": ["好"]},
        )
    )


def test_a_segment_is_cut_from_its_exact_audio_and_answered_in_funasr_format():
    t = tracker(hotwords='{"阿里巴巴": 20}')
    ends = feed_chunks(t, 4)
    assert t.on_chunk([[700, -1]], ends[0], False).jobs == []
    assert t.on_chunk([], ends[1], False).jobs == []
    update = t.on_chunk([[-1, 1900]], ends[2], False)
    (job,) = update.jobs
    assert (job.index, job.start_ms, job.hotwords, job.punc) == (0, 700, '{"阿里巴巴": 20}', {})
    assert len(job.audio) == 1200 * BYTES_PER_MS and first_ms(job.audio) == 700
    (message,) = answer(t, job).messages
    assert message["mode"] == "2pass-offline" and message["text"] == "你好" and message["is_final"] is False
    assert (message["start_time"], message["end_time"], message["index"]) == (700, 1900, 0)
    assert json.loads(message["timestamp"]) == [[700, 800], [800, 900]]  # a JSON string, absolute ms
    assert message["stamp_sents"][0]["start"] == 700 and message["stamp_sents"][0]["ts_list"][1] == [800, 900]


def test_one_sentence_in_flight_and_the_punctuation_state_goes_with_the_next():
    t = tracker(mode="offline")
    ends = feed_chunks(t, 4)
    first = t.on_chunk([[100, 500], [800, -1]], ends[0], False).jobs
    assert len(first) == 1
    assert t.on_chunk([[-1, 1500]], ends[1], False).jobs == []  # the second waits for the first
    update = answer(t, first[0], punc={"pre_text": ["a", "b"]})
    assert update.messages[0]["mode"] == "offline"
    (second,) = update.jobs
    assert (second.index, second.start_ms, second.punc) == (1, 800, {"pre_text": ["a", "b"]})
    assert first_ms(second.audio) == 800


def test_stale_results_are_ignored_and_failures_are_reported_without_ending_the_session():
    t = tracker()
    ends = feed_chunks(t, 2)
    (job,) = t.on_chunk([[0, 300]], ends[0], False).jobs
    assert t.on_result(SentenceResult("s1", 7, text="x")).messages == []
    assert t.on_result(SentenceResult("other", 0, text="x")).messages == []
    failed = t.on_result(SentenceResult("s1", 0, error="boom", code="recognition_failed"))
    assert failed.messages[0]["type"] == "error" and "boom" in failed.messages[0]["message"]
    assert not t.busy


def test_the_end_of_an_utterance_closes_its_open_segment_and_is_acknowledged_after_its_sentences():
    t = tracker()
    ends = feed_chunks(t, 3)
    t.on_chunk([[300, -1]], ends[0], False)
    t.new_utterance()
    update = t.on_chunk([], ends[1], True)  # the final chunk: the segment is still open
    (job,) = update.jobs
    assert job.start_ms == 300 and len(job.audio) == (1200 - 300) * BYTES_PER_MS
    assert update.messages == []  # the end waits for the sentence
    done = answer(t, job)
    assert [m.get("is_end") for m in done.messages] == [None, True]
    assert done.messages[1] == {"mode": "2pass", "text": "", "wav_name": "w", "is_final": True, "is_end": True}


def test_a_second_utterance_counts_from_its_own_start():
    t = tracker()
    ends = feed_chunks(t, 1)
    t.new_utterance()
    assert t.on_chunk([], ends[0], True).messages[0]["is_end"]  # no speech at all: just the acknowledgement
    ends = feed_chunks(t, 2, start_chunk=1)
    (job,) = t.on_chunk([[100, 400]], ends[0], False).jobs
    assert job.start_ms == 100 and first_ms(job.audio) == CHUNK_MS + 100


def test_a_segment_the_vad_never_ends_is_cut_at_the_sentence_bound():
    t = tracker()
    chunks = (MAX_SENTENCE_SECONDS * 1000) // CHUNK_MS + 3
    ends = feed_chunks(t, chunks)
    jobs = []
    jobs += t.on_chunk([[0, -1]], ends[0], False).jobs
    for end in ends[1:]:
        jobs += t.on_chunk([], end, False).jobs
    assert len(jobs) == 1 and len(jobs[0].audio) == MAX_SENTENCE_SECONDS * 1000 * BYTES_PER_MS
    assert t.held_bytes <= (MAX_SENTENCE_SECONDS * 1000 + 3 * CHUNK_MS) * BYTES_PER_MS + len(jobs[0].audio)


def test_audio_nobody_can_need_is_let_go():
    t = tracker()
    ends = feed_chunks(t, 50)  # 30 s of silence: the VAD reports nothing
    for end in ends:
        t.on_chunk([], end, False)
    assert t.held_bytes <= KEEP_BEFORE_MS * BYTES_PER_MS


def test_the_punctuation_state_is_bounded():
    t = tracker()
    ends = feed_chunks(t, 3)
    (job,) = t.on_chunk([[0, 300], [400, -1]], ends[0], False).jobs
    t.on_chunk([[-1, 700]], ends[1], False)
    (second,) = answer(t, job, punc={"pre_text": [str(i) for i in range(MAX_PUNC_WORDS + 50)]}).jobs
    assert len(second.punc["pre_text"]) == MAX_PUNC_WORDS and second.punc["pre_text"][-1] == str(MAX_PUNC_WORDS + 49)


def test_a_move_sends_the_sentence_in_flight_again():
    clock = Clock()
    t = tracker(clock=clock)
    ends = feed_chunks(t, 1)
    (job,) = t.on_chunk([[0, 300]], ends[0], False).jobs
    clock.now += 30
    assert t.inflight_age() == 30
    (again,) = t.resend()
    assert again.index == job.index and t.inflight_age() == 0
