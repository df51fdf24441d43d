import pytest

from app.chunker import Chunker
from tasks.errors import ProtocolError


def test_frames_of_any_even_size_are_cut_into_exact_chunks_in_order():
    chunker = Chunker(chunk_bytes=8, max_frame_bytes=100)
    stream = bytes(range(40))
    out = []
    for size in (2, 6, 10, 4, 18):
        frame, stream = stream[:size], stream[size:]
        out += chunker.feed(frame)
    assert out == [bytes(range(i, i + 8)) for i in range(0, 40, 8)]
    assert chunker.flush() == b"" and chunker.bytes_accepted == 40


def test_flush_returns_the_partial_remainder_once():
    chunker = Chunker(chunk_bytes=8, max_frame_bytes=100)
    assert chunker.feed(b"\x01" * 12) == [b"\x01" * 8]
    assert chunker.flush() == b"\x01" * 4
    assert chunker.flush() == b""


def test_odd_frames_and_oversized_frames_are_fatal_protocol_errors():
    chunker = Chunker(chunk_bytes=8, max_frame_bytes=10)
    with pytest.raises(ProtocolError) as odd:
        chunker.feed(b"\x00" * 3)
    with pytest.raises(ProtocolError) as big:
        chunker.feed(b"\x00" * 12)
    assert (odd.value.code, odd.value.close_code) == ("odd_frame", 1007)
    assert (big.value.code, big.value.close_code) == ("frame_too_large", 1009)
    assert chunker.bytes_accepted == 0, "refused frames are not accepted audio"
