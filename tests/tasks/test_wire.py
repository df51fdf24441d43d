import msgpack
import pytest

from tasks import wire
from tasks.errors import ProtocolError
from tasks.wire import ChunkJob, ChunkResult


def test_a_chunk_job_survives_the_msgpack_round_trip_with_raw_audio_bytes():
    job = ChunkJob("s/0", 3, b"\x01\x02" * 5, is_final=True, first=True, options={"chunk_size": [5, 10, 5]},
                   channel="c")
    packed = msgpack.packb(job.to_wire(), use_bin_type=True)
    assert len(packed) < len(job.audio) + 120, "audio is carried as bytes, not base64 or a list"
    back = ChunkJob.from_wire(msgpack.unpackb(packed, raw=False))
    assert back == job


@pytest.mark.parametrize("payload", [
    {"stream": "s/0"},
    {"stream": "s/0", "seq": "x", "audio": b"", "final": False, "first": False, "channel": "c"},
    {"stream": "s/0", "seq": 0, "audio": b"\x00", "final": False, "first": False, "channel": "c"},
    {"stream": "s/0", "seq": 0, "audio": b"", "final": False, "first": True, "channel": "c"},
    "not a dict",
])
def test_malformed_payloads_are_refused(payload):
    with pytest.raises(ProtocolError):
        ChunkJob.from_wire(payload)


def test_results_encode_compactly_and_decode_back():
    result = ChunkResult("s/1", 4, "你好", error=None, worker="w", timing={"queued": 0.1})
    assert ChunkResult.decode(result.encode()) == result
    failed = ChunkResult("s/1", 5, error="boom", code="recognition_failed")
    assert ChunkResult.decode(failed.encode()).code == "recognition_failed"


def test_queue_keys_cover_every_priority_list_kombu_uses():
    assert wire.queue_keys("gpu") == ["gpu", "gpu\x06\x163", "gpu\x06\x166", "gpu\x06\x169"]
    assert wire.split_stream_id(wire.stream_id("a/b", 2)) == ("a/b", 2)
