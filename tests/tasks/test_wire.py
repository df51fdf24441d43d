import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks import wire
from tasks.errors import ProtocolError
from tasks.options import CHUNK_MID_RANGE, LOOK_BACK_RANGE, MAX_HOTWORDS_BYTES, StreamOptions
from tasks.wire import ChunkJob, ChunkResult

OPTIONS = StreamOptions(wav_name="mic").to_wire()


def payload(**changes) -> dict:
    """A valid first-chunk payload as the gateway sends it, with ``changes`` applied (None values remove keys)."""
    data = ChunkJob(
        "0123abcd/2",
        0,
        b"\x01\x02" * 960,
        first=True,
        options=dict(OPTIONS),
        channel="asr:result:0123abcd",
        submitted_at=1.5,
    ).to_wire()
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None or k == "options"}


def refused(data) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        ChunkJob.from_wire(data)
    return info.value


def test_a_chunk_job_survives_the_msgpack_round_trip_with_raw_audio_bytes():
    job = ChunkJob("s/0", 3, b"\x01\x02" * 5, is_final=True, first=True, options=StreamOptions().to_wire(), channel="c")
    packed = msgpack.packb(job.to_wire(), use_bin_type=True)
    assert len(packed) < len(job.audio) + 250, "audio is carried as bytes, not base64 or a list"
    back = ChunkJob.from_wire(msgpack.unpackb(packed, raw=False))
    assert back == job
    assert back.stream_options() == StreamOptions()


def test_a_valid_payload_is_accepted_and_its_options_parsed_and_normalized():
    job = ChunkJob.from_wire(payload(options={**OPTIONS, "chunk_size": "0,8,4"}))
    assert job.stream_options() == StreamOptions(chunk_size=(0, 8, 4), wav_name="mic")
    assert job.options == StreamOptions(chunk_size=(0, 8, 4), wav_name="mic").to_wire()
    later = ChunkJob.from_wire(payload(seq=7, first=True, options=None, t=None, replay=True))
    assert later.stream_options() is None and later.replay and later.submitted_at > 1.5


@pytest.mark.parametrize(
    "changes",
    [
        {"options": {**OPTIONS, "encoder_chunk_look_back": -1}},  # finding 5: the cache would never be trimmed
        {"options": {**OPTIONS, "encoder_chunk_look_back": LOOK_BACK_RANGE[1] + 1}},
        {"options": {**OPTIONS, "decoder_chunk_look_back": LOOK_BACK_RANGE[0] - 1}},
        {"options": {**OPTIONS, "decoder_chunk_look_back": True}},
        {"options": {**OPTIONS, "chunk_size": [5, CHUNK_MID_RANGE[0] - 1, 5]}},
        {"options": {**OPTIONS, "chunk_size": [5, CHUNK_MID_RANGE[1] + 1, 5]}},
        {"options": {**OPTIONS, "chunk_size": [5, 10]}},
        {"options": {**OPTIONS, "hotwords": "x" * (MAX_HOTWORDS_BYTES + 1)}},
        {"options": {"chunk_size": [5, 10, 5]}},  # finding 6: lacking keys used to kill the batcher thread
        {"options": {**OPTIONS, "itn": "yes"}},
        {"options": {**OPTIONS, "wav_name": 3}},
        {"options": [5, 10, 5]},
        {"options": dict(OPTIONS), "first": False},  # options travel only on a first chunk
    ],
    ids=lambda c: repr(c)[:60],
)
def test_bad_options_are_refused_at_the_boundary(changes):
    error = refused(payload(**changes))
    assert error.code == "bad_task" and "malformed chunk task" in error.message


@pytest.mark.parametrize(
    "changes",
    [
        {"stream": None},
        {"seq": None},
        {"audio": None},
        {"final": None},
        {"first": None},
        {"channel": None},
        {"stream": 5},
        {"stream": "no-generation"},
        {"stream": "s/-1"},
        {"stream": "s/01"},
        {"stream": "/0"},
        {"stream": "with space/0"},
        {"stream": "s" * 300 + "/0"},
        {"seq": True},
        {"seq": -1},
        {"seq": 1.0},
        {"seq": "3"},
        {"seq": 2**60},
        {"audio": b"\x00"},
        {"audio": b"\x00\x00" * (wire.MAX_CHUNK_BYTES // 2 + 1)},
        {"audio": "AAAA"},
        {"audio": [0, 0]},
        {"final": 1},
        {"first": "true"},
        {"replay": 0},
        {"channel": 7},
        {"channel": ""},
        {"channel": "c" * 600},
        {"t": "now"},
        {"t": float("nan")},
        {"t": True},
    ],
    ids=lambda c: repr(c)[:60],
)
def test_malformed_fields_are_refused(changes):
    assert refused(payload(**changes)).code == "bad_task"


@pytest.mark.parametrize("data", ["not a dict", None, [1, 2], 3])
def test_payloads_that_are_not_mappings_are_refused_and_name_nobody(data):
    assert refused(data).code == "bad_task"
    assert ChunkJob.reply_address(data) is None


def test_the_largest_chunk_and_an_empty_final_chunk_are_accepted():
    assert len(ChunkJob.from_wire(payload(audio=b"\x00" * wire.MAX_CHUNK_BYTES)).audio) == 96_000
    assert ChunkJob.from_wire(payload(seq=3, audio=b"", final=True, first=False, options=None)).audio == b""


def test_a_refused_payload_names_whom_to_tell_when_it_can():
    bad = payload(options={"chunk_size": [5, 10, 5]})
    assert ChunkJob.reply_address(bad) == ("0123abcd/2", 0, "asr:result:0123abcd")
    assert ChunkJob.reply_address(payload(seq=True)) is None
    assert ChunkJob.reply_address(payload(channel=None)) is None


def test_payload_summaries_are_short_whatever_the_payload():
    summary = wire.payload_summary(payload(audio=b"\x00" * 10_000_000, stream="s" * 100_000))
    assert len(summary) <= 300 and "<10000000 bytes>" in summary
    assert len(wire.payload_summary([[[[["deep"]]]]] * 1000)) <= 300


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(payload())), value=_values)
def test_any_field_value_is_either_accepted_whole_or_refused_with_a_protocol_error(key, value):
    """No payload gets through from_wire in a shape the engine could choke on."""
    try:
        job = ChunkJob.from_wire(payload(**{key: value}))
    except ProtocolError as exc:
        assert exc.code == "bad_task"
        return
    assert isinstance(job.stream, str) and isinstance(job.seq, int) and not isinstance(job.seq, bool)
    assert isinstance(job.audio, bytes) and len(job.audio) % 2 == 0 and len(job.audio) <= wire.MAX_CHUNK_BYTES
    assert isinstance(job.is_final, bool) and isinstance(job.first, bool) and isinstance(job.channel, str)
    assert job.options is None or isinstance(job.stream_options(), StreamOptions)


def test_results_encode_compactly_and_decode_back():
    result = ChunkResult("s/1", 4, "你好", error=None, worker="w", timing={"queued": 0.1})
    assert ChunkResult.decode(result.encode()) == result
    failed = ChunkResult("s/1", 5, error="boom", code="recognition_failed")
    assert ChunkResult.decode(failed.encode()).code == "recognition_failed"


def test_queue_keys_cover_every_priority_list_kombu_uses():
    assert wire.queue_keys("gpu") == ["gpu", "gpu\x06\x163", "gpu\x06\x166", "gpu\x06\x169"]
    assert wire.split_stream_id(wire.stream_id("a/b", 2)) == ("a/b", 2)
