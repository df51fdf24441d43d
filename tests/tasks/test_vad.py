"""The streaming VAD: FunASR's fsmn-vad per stream (the reference) and batched across streams, event for event."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.errors import ModelLoadError, RecognitionFailed
from tasks.vad import BatchedVad, FunASRVad, StreamingVad, VadState, VadWork, load_vad
from tests.audio import noise
from tests.speech import real_vad_dir, speech_pcm

pytest.importorskip("funasr")

CHUNK = 9600  # 600 ms
Chunks = list[tuple[np.ndarray, bool]]


def pcm_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768


def chunked(audio: np.ndarray, lead_chunks: int = 0) -> Chunks:
    """``audio`` in 600 ms chunks (the last short and final), after ``lead_chunks`` chunks of silence."""
    pieces = [np.zeros(CHUNK, np.float32)] * lead_chunks + [audio[i : i + CHUNK] for i in range(0, len(audio), CHUNK)]
    return [(piece, i == len(pieces) - 1) for i, piece in enumerate(pieces)]


def run_streams(vad: StreamingVad, streams: list[Chunks], together: bool = True) -> list[list]:
    """Per stream, the result of each of its chunks: all streams in one ``process`` per round, or one by one."""
    states = [vad.open_stream() for _ in streams]
    results: list[list] = [[] for _ in streams]
    for r in range(max(map(len, streams))):
        live = [k for k, stream in enumerate(streams) if r < len(stream)]
        work = [VadWork(states[k], *streams[k][r]) for k in live]
        out = vad.process(work) if together else [vad.process([item])[0] for item in work]
        for k, result in zip(live, out):
            results[k].append(result)
    return results


def run_generate(automodel, stream: Chunks, **options) -> list:
    """The same stream through ``AutoModel.generate`` directly, as FunASR's server calls it."""
    cache: dict = {}
    return [
        [tuple(v) for v in automodel.generate(input=a, cache=cache, is_final=f, chunk_size=600, **options)[0]["value"]]
        for a, f in stream
    ]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return pcm_to_float(speech_pcm())


def load_pair(max_end_silence_ms: int | None) -> tuple[FunASRVad, BatchedVad]:
    folder = str(real_vad_dir())
    ref = load_vad(folder, batched=False, max_end_silence_ms=max_end_silence_ms)
    batched = load_vad(folder, max_end_silence_ms=max_end_silence_ms)
    assert isinstance(ref, FunASRVad) and isinstance(batched, BatchedVad)
    return ref, batched


@pytest.fixture(scope="module")
def real_vads() -> tuple[FunASRVad, BatchedVad]:
    """The real fsmn-vad with the published fixed end silence (800 ms), reference and batched."""
    return load_pair(800)


@pytest.fixture(scope="module", params=[800, None], ids=["end-silence-800ms", "dynamic-silence"])
def each_real_vads(request, real_vads) -> tuple[FunASRVad, BatchedVad]:
    """Both end-silence modes: fixed 800 ms, and FunASR 1.4.16's default dynamic schedule."""
    return real_vads if request.param == 800 else load_pair(request.param)


@pytest.fixture(scope="module")
def real_streams(speech) -> list[Chunks]:
    """Speech starting at different chunk indices, speech restarting after its final chunk, noise, and silence."""
    silence = [(np.zeros(CHUNK, np.float32), False)] * 12 + [(np.zeros(100, np.float32), True)]
    return [
        chunked(speech),
        chunked(speech, lead_chunks=1),
        chunked(speech, lead_chunks=4),
        chunked(speech) + chunked(speech[:70000], lead_chunks=2),
        chunked(pcm_to_float(noise(9.0, seed=3, amplitude=0.05))),
        silence,
    ]


def flat(results: list) -> list:
    return [event for chunk in results for event in chunk]


def test_funasr_vad_finds_the_three_sentences(real_vads, speech):
    vad, _ = real_vads
    events = flat(run_streams(vad, [chunked(speech)])[0])
    assert [beg == -1 for beg, _ in events] == [False, True] * 3  # begin, end, begin, end, begin, end
    bounds = [beg for beg, _ in events[0::2]], [end for _, end in events[1::2]]
    segments = list(zip(*bounds))
    assert len(segments) == 3
    duration_ms = len(speech) * 1000 // 16000
    assert all(0 <= beg < end <= duration_ms for beg, end in segments)
    assert all(prev_end < beg for (_, prev_end), (beg, _) in zip(segments, segments[1:]))
    assert segments[0][0] >= 200  # 0.5 s of leading silence, less FunASR's 200 ms look-back


def test_batched_gives_funasrs_events_chunk_for_chunk(each_real_vads, real_streams):
    ref, batched = each_real_vads
    expected = run_streams(ref, real_streams, together=False)
    assert run_streams(batched, real_streams) == expected
    for k in (2, 3):  # an offset stream and a restarted one, straight through AutoModel.generate
        assert run_generate(ref.automodel, real_streams[k], **ref.options) == expected[k]
    assert flat(expected[0]) and flat(expected[3]) and not flat(expected[5])
    assert flat(expected[1]) != flat(expected[0])  # the offset shows in the timestamps


def test_batched_events_do_not_depend_on_the_companions(real_vads, real_streams):
    _, batched = real_vads
    alone = run_streams(batched, real_streams[:1])[0]
    assert run_streams(batched, real_streams[::-1])[-1] == alone
    assert run_streams(batched, real_streams[:1] * 3)[1] == alone


def test_a_restarted_stream_counts_from_zero_again(real_vads, speech):
    _, batched = real_vads
    state = batched.open_stream()
    first = [batched.process([VadWork(state, a, f)])[0] for a, f in chunked(speech)]
    assert state.samples == 0
    second = [batched.process([VadWork(state, a, f)])[0] for a, f in chunked(speech)]
    assert second == first
    batched.process([VadWork(state, speech[:CHUNK], False)])
    assert state.samples == CHUNK


def test_an_empty_final_chunk_resets_the_stream_without_events(real_vads, speech):
    ref, batched = real_vads
    for vad in (ref, batched):
        state = vad.open_stream()
        for a, _ in chunked(speech[: 3 * CHUNK]):
            vad.process([VadWork(state, a, False)])
        assert vad.process([VadWork(state, np.zeros(0, np.float32), True)]) == [[]]
        assert state.samples == 0
        assert flat(run_streams(vad, [chunked(speech)])[0]) == flat(
            [vad.process([VadWork(state, a, f)])[0] for a, f in chunked(speech)]
        )


@pytest.fixture(scope="module")
def tiny_vads(tmp_path_factory) -> tuple[FunASRVad, BatchedVad]:
    from tasks import modelgen

    folder = str(modelgen.generate(tmp_path_factory.mktemp("vad") / "vad", "tiny", seed=0, kind="vad"))
    ref, batched = load_vad(folder, batched=False), load_vad(folder)
    assert isinstance(ref, FunASRVad) and isinstance(batched, BatchedVad)
    return ref, batched


def test_the_tiny_random_vad_gives_the_same_events_batched(tiny_vads):
    ref, batched = tiny_vads
    streams = [
        chunked(pcm_to_float(noise(seconds, seed=seed, amplitude=amp)), lead_chunks=seed % 3)
        for seed, (seconds, amp) in enumerate([(8.0, 0.1), (6.3, 0.3), (9.1, 0.02), (4.0, 0.1), (7.7, 0.2)])
    ]
    expected = run_streams(ref, streams, together=False)
    assert run_streams(batched, streams) == expected
    assert run_generate(ref.automodel, streams[1]) == expected[1]


def test_a_failing_item_does_not_break_its_companions(real_vads, speech):
    ref, batched = real_vads
    stream = chunked(speech)
    for vad in (ref, batched):
        good = vad.open_stream()
        garbage = VadState(cache="garbage")
        broken_encoder = vad.open_stream()  # in step with `good`, so the batched path groups them together
        expected = [vad.process([VadWork(vad.open_stream(), *stream[0])])[0]]
        got = []
        for r, (audio, final) in enumerate(stream):
            out = vad.process(
                [
                    VadWork(garbage, audio, final),
                    VadWork(good, audio, final),
                    VadWork(broken_encoder, audio, final),
                    VadWork(vad.open_stream(), np.zeros((2, 10), np.float32), False),
                ]
            )
            assert isinstance(out[0], RecognitionFailed) and isinstance(out[3], RecognitionFailed), vad.name
            assert isinstance(out[2], RecognitionFailed) == (r >= 1), vad.name  # unusable from then on
            if r == 0:  # a shape torch.cat cannot stack: the batched encoder falls back to one by one
                broken_encoder.cache["encoder"]["cache_layer_1"] = torch.zeros(1, 3, 5, 1)
            got.append(out[1])
        assert got[:1] == expected
        assert flat(got) == flat(run_streams(vad, [stream])[0])


def test_memory_stays_bounded_over_a_long_stream(real_vads, speech):
    _, batched = real_vads
    long_speech = np.tile(speech, 5)  # ~61 s: several segments, each of them longer than the buffers
    sources = [long_speech, np.zeros_like(long_speech)]
    states = [batched.open_stream() for _ in sources]
    segments = 0
    for i in range(0, len(long_speech), CHUNK):
        out = batched.process([VadWork(state, audio[i : i + CHUNK], False) for state, audio in zip(states, sources)])
        segments += sum(beg != -1 for beg, _ in out[0])  # type: ignore[union-attr]
        for state in states:
            stats = state.cache["stats"]
            assert stats.data_buf_all.numel() <= 3 * 16000  # the end-silence wait (<= 2 s) plus the latency
            assert stats.scores.shape[1] == len(stats.decibel) <= 300
            assert len(stats.output_data_buf) <= 2
    assert segments >= 5
    assert states[0].samples == len(long_speech)


def test_loading_something_else_fails_as_a_model_load_error(tmp_path, tiny_model: Path):
    with pytest.raises(ModelLoadError, match="not FunASR's streaming fsmn-vad"):
        load_vad(str(tiny_model))
    (tmp_path / "config.yaml").write_text("model: NoSuchModel\n")
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_vad(str(tmp_path), batched=False)
