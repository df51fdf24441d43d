"""The file-job store (tasks.filejobs) on a real Redis: states, idempotent results, recovery, cancel; and the
sentence boundaries every path shares (tasks.segments)."""

from __future__ import annotations

import io
import uuid

import pytest
import redis

from tasks.filejobs import FileJobStore, Item
from tasks.segments import MAX_SENTENCE_MS, Segmenter


@pytest.fixture
def store(redis_url):
    client = redis.Redis.from_url(redis_url)
    prefix = f"asrtest-filejobs-{uuid.uuid4().hex[:6]}:"
    yield FileJobStore(client, prefix, ttl=60)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def new_job(store: FileJobStore, seconds: float = 2.0) -> str:
    job = uuid.uuid4().hex
    samples = int(seconds * 16000)
    store.create(job, io.BytesIO(b"\x01\x00" * samples), samples, {"name": "a.wav", "hotwords": "", "language": ""})
    return job


def test_a_job_goes_split_segments_results_final_and_each_result_counts_once(store):
    job = new_job(store)
    item = store.claim("work", "w1", 1)
    assert item == Item("split", job, raw=f"split {job}")
    assert store.set_state(job, "splitting", ("queued",))
    assert store.read_audio(job, 16000, 16004) == b"\x01\x00" * 4 and store.read_audio(job, 31999, 40000) == b"\x01\x00"
    assert store.add_segments(job, 0, [(0, 500)])
    first = store.claim("todo", "w1", 1)
    assert (first.kind, first.index) == ("seg", 0), "a sentence is queued as soon as the split finds it"
    assert store.put_result(job, 0, {"raw": "a"}, 500) == 1
    assert store.put_result(job, 0, {"raw": "again"}, 500) == -2, "a segment done twice counts once"
    assert store.add_segments(job, 1, [(800, 1900)])
    assert store.end_split(job, 2, 1600)
    store.done("work", "w1", item)
    second = store.claim("todo", "w2", 1)
    assert (second.kind, second.index) == ("seg", 1)
    assert store.segment(job, 1) == (800, 1900)
    assert store.claim("work", "w1", 0.1) is None, "no final item before the last segment"
    assert store.put_result(job, 1, {"raw": "b"}, 1100) == 2
    assert store.record(job)["state"] == "punctuating"
    assert store.claim("work", "w1", 1).kind == "final"
    assert [r["raw"] for _, r in store.results(job)] == ["a", "b"]
    assert store.finish(job, {"sentences": []})
    assert store.record(job)["state"] == "done" and store.result(job) == {"sentences": []}
    assert not store.client.exists(store.key(job, "audio")) and store.active() == []


def test_items_of_a_dead_worker_go_back_and_a_cancelled_job_refuses_late_results(store):
    job = new_job(store)
    store.register("dead")
    store.register("alive")
    store.claim("work", "dead", 1)
    assert store.requeue_orphans(lambda w: w != "dead") == 1
    assert store.client.smembers(store.workers_key) == {b"alive"}, "a dead worker is forgotten once emptied"
    item = store.claim("work", "alive", 1)
    assert item.kind == "split" and store.requeue_orphans(lambda w: w != "dead") == 0
    store.set_state(job, "splitting", ("queued",))
    store.add_segments(job, 0, [(0, 500)])
    store.end_split(job, 1, 500)
    assert store.backlog() == {"jobs": 1, "audio_seconds": 2.0}
    assert store.cancel(job)
    assert store.put_result(job, 0, {"raw": "late"}, 500) == -1
    assert not store.client.exists(store.key(job, "audio")) and store.record(job)["state"] == "cancelled"
    assert not store.cancel(job) and store.backlog() == {"jobs": 0, "audio_seconds": 0.0}


def test_a_job_without_speech_goes_straight_to_its_final_item_and_failures_say_why(store):
    quiet, broken = new_job(store), new_job(store)
    for job in (quiet, broken):
        store.set_state(job, "splitting", ("queued",))
    assert store.add_segments(quiet, 0, []) and store.end_split(quiet, 0, 0)
    assert store.record(quiet)["state"] == "punctuating" and store.claim("work", "w1", 1).kind == "split"
    assert store.claim("work", "w1", 1).kind == "split" and store.claim("work", "w1", 1) == Item(
        "final", quiet, raw=f"final {quiet}"
    )
    store.fail(broken, "recognition_failed", "sentence at 0 ms could not be recognized")
    record = store.record(broken)
    assert (record["state"], record["error_code"]) == ("failed", "recognition_failed")
    assert Item.parse("bogus item") is None and Item.parse(b"seg abc 3") == Item("seg", "abc", 3, raw="seg abc 3")


def test_the_segmenter_cuts_at_vad_ends_the_60_s_cap_and_the_utterances_end():
    seg = Segmenter()
    assert seg.on_chunk([(100, -1)], 600, False) == []
    assert seg.on_chunk([(-1, 900), (1000, 1150)], 1200, False) == [(100, 900), (1000, 1150)]
    assert seg.on_chunk([(2000, -1)], 2400, False) == []
    long_end = 2000 + MAX_SENTENCE_MS + 500
    assert seg.on_chunk([], long_end, False) == [(2000, 2000 + MAX_SENTENCE_MS)]
    assert seg.on_chunk([], long_end + 100, True) == [(2000 + MAX_SENTENCE_MS, long_end + 100)]
    assert seg.open_ms is None and seg.on_chunk([(-1, 50)], 600, True) == [(0, 50)]
