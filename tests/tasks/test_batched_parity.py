"""The batched recognizer returns, chunk for chunk, the texts FunASR's own per-stream path returns.

Runs on a tiny random-weight model of the real paraformer-zh-streaming architecture, with 2 threads (the
configuration where MKL's per-stream GEMM kernels differ most from batched ones). Three layers of evidence:

* text parity of whole schedules — streams joining at different rounds, mixed options, several utterances per
  stream, final chunks of every size class, loud / quiet / silent audio, irregular chunk lengths;
* bitwise equality of each batched component with FunASR's per-stream module (features, encoder output, CIF
  embeddings and caches, decoder log-probabilities), which texts alone could hide;
* the failure contract: an exception anywhere in a batch leaves every state untouched and usable.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from tasks.batched import BatchedParaformerRecognizer
from tasks.batched.decoder import BatchedDecoder, DecoderChunk
from tasks.batched.encoder import BatchedEncoder, EncoderChunk
from tasks.batched.frontend import BatchedFrontend, FrontendChunk
from tasks.batched.predictor import BatchedCif, CifChunk
from tasks.batched.rowexact import RowPlanner, RowRouter
from tasks.errors import RecognitionFailed
from tasks.recognizer import ChunkWork, FunASRStreamingRecognizer, StreamOptions

THREADS = 2
OPTION_SETS = [
    StreamOptions(chunk_size=(5, 10, 5), encoder_chunk_look_back=4, decoder_chunk_look_back=1),
    StreamOptions(chunk_size=(8, 8, 4), encoder_chunk_look_back=4, decoder_chunk_look_back=1),
    StreamOptions(chunk_size=(5, 10, 5), encoder_chunk_look_back=1, decoder_chunk_look_back=0),
    StreamOptions(chunk_size=(8, 8, 4), encoder_chunk_look_back=-1, decoder_chunk_look_back=2),
    StreamOptions(chunk_size=(5, 10, 5), encoder_chunk_look_back=0, decoder_chunk_look_back=-1),
]
SIZE_CLASSES = ["full", "partial", "tail", "empty"]  # final chunk: chunk_samples, >= 960, < 960 (tail path), 0
Chunk = tuple[np.ndarray, bool]  # audio, is_final


@pytest.fixture(scope="session")
def reference(tiny_model) -> FunASRStreamingRecognizer:
    return FunASRStreamingRecognizer.load(str(tiny_model), ncpu=THREADS)


@pytest.fixture(scope="session")
def batched(tiny_model) -> Iterator[BatchedParaformerRecognizer]:
    recognizer = BatchedParaformerRecognizer.load(str(tiny_model), ncpu=THREADS)
    yield recognizer
    recognizer.close()


# --- schedules ---------------------------------------------------------------------------------------------------


def audio(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    scale = {"loud": 0.3, "quiet": 1e-4, "silent": 0.0}[kind]
    return np.clip(rng.standard_normal(n) * scale, -1.0, 0.99997).astype(np.float32)


def utterance(rng: np.random.Generator, opts: StreamOptions, chunks: int, final: int, kind: str) -> list[Chunk]:
    """``chunks`` full chunks, then a final chunk of ``final`` samples."""
    body = [(audio(rng, opts.chunk_samples, kind), False) for _ in range(chunks)]
    return body + [(audio(rng, final, kind), True)]


def final_size(rng: np.random.Generator, opts: StreamOptions, size_class: str) -> int:
    full = opts.chunk_samples
    return {"full": full, "partial": int(rng.integers(960, full)), "tail": int(rng.integers(1, 960)), "empty": 0}[
        size_class
    ]


def run_reference(
    rec: FunASRStreamingRecognizer, options: list[StreamOptions], schedules: list[list[Chunk | None]]
) -> list[list[str | None]]:
    texts = []
    for opts, schedule in zip(options, schedules):
        state = rec.open_stream(opts)
        texts.append([None if c is None else rec.process([ChunkWork(state, *c)])[0] for c in schedule])
    return texts


def run_batched(
    rec: BatchedParaformerRecognizer, options: list[StreamOptions], schedules: list[list[Chunk | None]]
) -> list[list[str | None]]:
    """Round r submits chunk r of every stream that has one (None = the stream is idle that round)."""
    states = [rec.open_stream(o) for o in options]
    texts: list[list[str | None]] = [[] for _ in schedules]
    for r in range(max(len(s) for s in schedules)):
        due = [i for i, s in enumerate(schedules) if r < len(s)]
        work = {i: ChunkWork(states[i], *schedules[i][r]) for i in due if schedules[i][r] is not None}
        out = dict(zip(work, rec.process(list(work.values()))))
        for i in due:
            texts[i].append(out.get(i))
    return texts


def assert_parity(reference, batched, options, schedules) -> None:
    expected = run_reference(reference, options, schedules)
    got = run_batched(batched, options, schedules)
    assert got == expected
    assert any(t for stream in expected for t in stream), "schedule produced no text at all: test has no teeth"


# --- text parity -------------------------------------------------------------------------------------------------


def test_staggered_streams_with_mixed_options_match_reference(reference, batched) -> None:
    rng = np.random.default_rng(0)
    options, schedules = [], []
    for s in range(12):
        opts = dataclasses.replace(OPTION_SETS[s % len(OPTION_SETS)], wav_name=f"s{s}")
        schedule: list[Chunk | None] = [None] * int(rng.integers(0, 5))  # joins at a different round
        for u in range(3):  # state reused after each final
            size_class = SIZE_CLASSES[(s + u) % 4]
            schedule += utterance(rng, opts, int(rng.integers(0, 5)), final_size(rng, opts, size_class), "loud")
        options.append(opts)
        schedules.append(schedule)
    assert_parity(reference, batched, options, schedules)


@pytest.mark.parametrize("size_class", SIZE_CLASSES)
def test_final_chunks_of_each_size_class_amid_running_streams(reference, batched, size_class) -> None:
    rng = np.random.default_rng(10 + SIZE_CLASSES.index(size_class))
    options = [OPTION_SETS[i % 2] for i in range(6)]
    schedules: list[list[Chunk | None]] = []
    for i, opts in enumerate(options):
        ends_now = i % 2 == 0  # half the streams end in round 3, the rest keep running past it
        chunks = 3 if ends_now else 5
        schedules.append(
            utterance(rng, opts, chunks, final_size(rng, opts, size_class if ends_now else "full"), "loud")
        )
    assert_parity(reference, batched, options, schedules)


def test_quiet_and_silent_audio(reference, batched) -> None:
    rng = np.random.default_rng(1)
    options = [OPTION_SETS[i % len(OPTION_SETS)] for i in range(6)]
    kinds = ["quiet", "silent", "loud", "silent", "quiet", "loud"]
    schedules = [
        utterance(rng, o, 3, final_size(rng, o, "partial"), k) + utterance(rng, o, 2, 0, "loud")
        for o, k in zip(options, kinds)
    ]
    assert_parity(reference, batched, options, schedules)


def test_irregular_chunk_lengths_are_cut_like_generate(reference, batched) -> None:
    """Chunks shorter or longer than chunk_size carry samples over, or run several model steps, as FunASR does."""
    rng = np.random.default_rng(2)
    options = [OPTION_SETS[i % 2] for i in range(4)]
    schedules = []
    for i, opts in enumerate(options):
        lengths = [opts.chunk_samples // 2, opts.chunk_samples * 2 + 123, 700, opts.chunk_samples + 5000]
        rng.shuffle(lengths)
        body: list[Chunk | None] = [(audio(rng, n, "loud"), False) for n in lengths]
        schedules.append(body + [(audio(rng, opts.chunk_samples + 3000 * i, "loud"), True)])
    assert_parity(reference, batched, options, schedules)


# --- bitwise component parity ------------------------------------------------------------------------------------


@pytest.fixture
def funasr_model(reference):
    torch.set_num_threads(THREADS)
    with torch.inference_mode():
        yield reference.automodel.model


def funasr_cache(reference, opts: StreamOptions) -> dict:
    kwargs = {k: v for k, v in reference.automodel.kwargs.items() if k != "cache"}
    kwargs.update(
        chunk_size=list(opts.chunk_size),
        encoder_chunk_look_back=opts.encoder_chunk_look_back,
        decoder_chunk_look_back=opts.decoder_chunk_look_back,
    )
    return reference.automodel.model.init_cache({}, **kwargs)


def rounds(streams: int, count: int) -> Iterator[tuple[int, list[int]]]:
    """Round numbers with the streams active in each: stream s joins at round s % 3."""
    for r in range(count):
        yield r, [s for s in range(streams) if r >= s % 3]


def test_frontend_features_are_bitwise_equal(reference, funasr_model) -> None:
    from funasr.utils.load_utils import extract_fbank

    frontend = reference.automodel.kwargs["frontend"]
    ours = BatchedFrontend(frontend)
    rng = np.random.default_rng(3)
    caches_ref: list[dict] = [{} for _ in range(5)]
    caches = [ours.fresh() for _ in range(5)]
    for r, active in rounds(5, 5):
        chunks = [
            FrontendChunk(caches[s], audio(rng, 9600 if r < 4 else 960 + 1000 * s, "loud"), r == 4) for s in active
        ]
        packed, lengths, new = ours(chunks)
        for s, chunk, feats in zip(active, chunks, packed.split(lengths)):
            expected, _ = extract_fbank(
                [torch.from_numpy(chunk.audio)], frontend=frontend, cache=caches_ref[s], is_final=chunk.is_final
            )
            assert torch.equal(feats, expected[0])
        for s, cache in zip(active, new):
            caches[s] = cache


def test_encoder_output_is_bitwise_equal(reference, funasr_model) -> None:
    ours = BatchedEncoder(funasr_model.encoder, RowPlanner())
    gen = torch.Generator().manual_seed(4)
    options = [OPTION_SETS[s % len(OPTION_SETS)] for s in range(6)]
    caches_ref = [funasr_cache(reference, o) for o in options]
    caches = [ours.fresh(o.chunk_size, torch.device("cpu")) for o in options]
    for r, active in rounds(6, 7):
        final = r == 6
        feats = {
            s: None if final and s % 2 else torch.randn(options[s].chunk_size[1] - (3 * final), 560, generator=gen)
            for s in active
        }
        out = ours(
            [
                EncoderChunk(caches[s], feats[s], options[s].chunk_size, options[s].encoder_chunk_look_back)
                for s in active
            ]
        )
        for k, s in enumerate(active):
            enc = caches_ref[s]["encoder"]
            enc["tail_chunk"] = feats[s] is None
            speech = enc["feats"] if feats[s] is None else feats[s].clone()[None]
            expected = funasr_model.encoder.forward_chunk(speech, torch.tensor([speech.shape[1]]), cache=enc)[0]
            assert torch.equal(out.rows[out.spans[k]], expected[0]), f"stream {s}, round {r}"
            caches[s] = out.caches[k]


def test_cif_tokens_and_caches_are_bitwise_equal(reference, funasr_model) -> None:
    ours = BatchedCif(funasr_model.predictor)
    gen = torch.Generator().manual_seed(5)
    options = [OPTION_SETS[s % 2] for s in range(6)]
    caches_ref = [funasr_cache(reference, o) for o in options]
    caches = [ours.fresh(64, torch.device("cpu")) for _ in options]
    fired = 0
    for r, active in rounds(6, 6):
        hidden = {s: torch.randn(20 - 3 * (s % 2) * (r == 5), 64, generator=gen) * 3 for s in active}
        chunks = [CifChunk(caches[s], hidden[s], options[s].chunk_size, r == 5) for s in active]
        embeds, new = ours(chunks)
        for k, s in enumerate(active):
            enc = caches_ref[s]["encoder"]
            expected, count, _, _ = funasr_model.predictor.forward_chunk(hidden[s][None], enc, is_final=r == 5)
            assert embeds[k].shape[0] == int(count[0])
            if embeds[k].shape[0]:
                assert torch.equal(embeds[k], expected[0])
            assert torch.equal(new[k].alpha, enc["cif_alphas"].reshape(()))
            assert torch.equal(new[k].hidden, enc["cif_hidden"].reshape(-1))
            fired += embeds[k].shape[0]
            caches[s] = new[k]
    assert fired > 0


def test_decoder_scores_are_bitwise_equal(reference, funasr_model) -> None:
    """Token counts 1-13 per stream cover every MKL kernel class (GEMV, small-M, large, mixed)."""
    ours = BatchedDecoder(funasr_model.decoder, RowPlanner())
    gen = torch.Generator().manual_seed(6)
    options = [OPTION_SETS[s % len(OPTION_SETS)] for s in range(8)]
    caches_ref = [funasr_cache(reference, o) for o in options]
    caches = [ours.fresh() for _ in options]
    for r, active in rounds(8, 5):
        inputs = {
            s: (torch.randn(1 + (3 * s + r) % 13, 64, generator=gen), torch.randn(20, 64, generator=gen))
            for s in active
        }
        scores, new = ours(
            [
                DecoderChunk(caches[s], *inputs[s], options[s].chunk_size, options[s].decoder_chunk_look_back)
                for s in active
            ]
        )
        for k, s in enumerate(active):
            tokens, memory = inputs[s]
            expected, _ = funasr_model.cal_decoder_with_predictor_chunk(
                memory[None], None, tokens[None], None, cache=caches_ref[s]
            )
            assert torch.equal(scores[k], expected[0]), f"stream {s}, round {r}"
            caches[s] = new[k]


@pytest.fixture
def threads(request) -> Iterator[int]:
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(THREADS)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_row_router_reproduces_per_stream_linear_calls(threads: int) -> None:
    planner = RowPlanner()
    gen = torch.Generator().manual_seed(7)
    rnd = random.Random(7)
    for layer in (torch.nn.Linear(64, 256), torch.nn.Linear(128, 64, bias=False), torch.nn.Linear(512, 512)):
        for _ in range(4):
            lengths = [rnd.randint(1, 24) for _ in range(rnd.randint(1, 12))]
            rows = [torch.randn(n, layer.in_features, generator=gen) for n in lengths]
            with torch.inference_mode():
                got = RowRouter(lengths, planner)(layer, torch.cat(rows))
                expected = torch.cat([layer(x[None])[0] for x in rows])
            assert torch.equal(got, expected), lengths


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_row_router_gives_a_lone_stream_one_call_like_funasr(threads: int) -> None:
    """At B = 1 there is no weight read to share: routing must not split a stream's rows into pair/GEMV calls."""
    layer = torch.nn.Linear(512, 512)
    calls: list[tuple[int, ...]] = []
    layer.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape)))
    gen = torch.Generator().manual_seed(3)
    for m in range(1, 14):
        x = torch.randn(m, 512, generator=gen)
        calls.clear()
        with torch.inference_mode():
            got = RowRouter([m], RowPlanner())(layer, x)
        assert calls == [(1, m, 512)], (m, calls)
        assert torch.equal(got, layer(x[None])[0])


# --- failure contract --------------------------------------------------------------------------------------------


class Boom(RuntimeError):
    pass


def fail_on_call(monkeypatch, module: torch.nn.Module, call: int) -> None:
    """Make ``module``'s ``call``-th forward (1-based, counted from now) raise."""
    calls = {"n": 0}
    original = module.forward

    def forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise Boom(f"injected failure on call {call}")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "forward", forward)


@pytest.mark.parametrize("target,call", [("decoder.output_layer", 1), ("encoder.after_norm", 2)])
def test_failure_mid_batch_leaves_every_state_untouched(reference, batched, monkeypatch, target, call) -> None:
    """Call 2 of the encoder's final norm is the second step batch (the tail step of a final full chunk)."""
    rng = np.random.default_rng(8)
    options = [OPTION_SETS[i % 2] for i in range(4)]
    schedules = [utterance(rng, o, 3, o.chunk_samples, "loud") for o in options]  # last chunk: full, final
    states = [batched.open_stream(o) for o in options]
    texts = [[batched.process([ChunkWork(st, *sched[r])])[0] for r in range(3)] for st, sched in zip(states, schedules)]
    before = [st.cache for st in states]
    module = batched.model.encoder.encoder if target.startswith("encoder") else batched.model.decoder.decoder
    fail_on_call(monkeypatch, getattr(module, target.split(".")[1]), call)
    with pytest.raises(Boom):
        batched.process([ChunkWork(st, *sched[3]) for st, sched in zip(states, schedules)])
    assert all(st.cache is cache for st, cache in zip(states, before))  # no state replaced …
    monkeypatch.undo()  # … nor mutated: the retried chunk must give FunASR's text
    retry = batched.process([ChunkWork(st, *sched[3]) for st, sched in zip(states, schedules)])
    expected = run_reference(reference, options, schedules)
    assert [t + [r] for t, r in zip(texts, retry)] == expected


def test_isolatable_failures_are_returned_in_place(reference, batched) -> None:
    rng = np.random.default_rng(9)
    opts = OPTION_SETS[0]
    good = [batched.open_stream(opts) for _ in range(2)]
    foreign = batched.open_stream(opts)
    foreign.cache = {"encoder": "someone else's"}
    chunk = audio(rng, opts.chunk_samples, "loud")
    out = batched.process(
        [
            ChunkWork(good[0], chunk, False),
            ChunkWork(foreign, chunk, False),
            ChunkWork(good[1], np.stack([chunk, chunk]), False),
        ]
    )
    assert isinstance(out[1], RecognitionFailed) and isinstance(out[2], RecognitionFailed)
    assert out[0] == run_reference(reference, [opts], [[(chunk, False)]])[0][0]
    assert foreign.cache == {"encoder": "someone else's"}


def test_two_items_for_one_stream_are_refused(batched) -> None:
    state = batched.open_stream(OPTION_SETS[0])
    chunk = np.zeros(9600, dtype=np.float32)
    with pytest.raises(ValueError):
        batched.process([ChunkWork(state, chunk, False), ChunkWork(state, chunk, False)])
