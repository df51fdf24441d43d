"""The 2pass second pass (tasks.offline) against FunASR's own AutoModel calls on tiny generated SeACo / punc folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tasks import modelgen
from tasks.errors import EngineError, RecognitionFailed
from tasks.offline import (
    PUNCTUATION,
    SentenceOutput,
    SentencePipeline,
    SentenceWork,
    funasr_hotword,
    hotword_words,
    stamp_sentences,
)
from tests.audio import noise, tones


def f32(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768


def load(path):
    from funasr import AutoModel

    return AutoModel(model=str(path), disable_update=True, device="cpu", ncpu=1, disable_pbar=True, disable_log=True)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline")
    offline = modelgen.generate(root / "offline", "tiny", seed=0, kind="offline")
    # Hub SeACo folders ship a seg_dict that splits hotwords into tokens; without one every hotword is <unk>.
    chars = json.loads((offline / "tokens.json").read_text(encoding="utf-8"))[3:-1]
    (offline / "seg_dict").write_text("".join(f"{c} {c}\n" for c in chars), encoding="utf-8")
    return {"offline": offline, "punc": modelgen.generate(root / "punc", "tiny", seed=0, kind="punc")}


@pytest.fixture(scope="module")
def pipeline(folders):
    p = SentencePipeline(str(folders["offline"]), str(folders["punc"]))
    yield p
    p.close()


@pytest.fixture(scope="module")
def asr(folders):
    """FunASR's own offline model, loaded separately from the pipeline's: the reference."""
    return load(folders["offline"])


@pytest.fixture(scope="module")
def punc(folders):
    return load(folders["punc"])


AUDIO = {
    "noise-0.5s": f32(noise(0.5, seed=1)),
    "noise-2.3s": f32(noise(2.3, seed=2)),
    "tones-3s": f32(tones(3.0, seed=3)),
    "loud-noise-1.7s": f32(noise(1.7, seed=4, amplitude=0.3)),
}
HOTWORDS = '{"一丁": 20, "七万": 30}'  # FunASR's clients' JSON form
WORDS = ["一丁", "七万"]


def reference(asr, punc, audio, words=(), cache=None):
    """FunASR's Python server's flow for one sentence: ``generate`` with the hotwords, then punctuation."""
    kwargs = {"hotword": " ".join(words)} if words else {}
    results = asr.generate(input=audio, **kwargs)
    if not results or not results[0]["text"]:
        return "", "", []
    raw = results[0]["text"]
    text = punc.generate(input=raw, cache=cache if cache is not None else {})[0]["text"] if punc else raw
    return text, raw, results[0].get("timestamp", [])


def triple(out) -> tuple:
    assert isinstance(out, SentenceOutput), out
    return out.text, out.raw_text, out.timestamp


@pytest.mark.parametrize("name", sorted(AUDIO))
def test_each_sentence_equals_funasr_called_directly(pipeline, asr, punc, name):
    [out] = pipeline.process([SentenceWork(AUDIO[name])])
    assert out.raw_text  # the random-weight model emits tokens for all of these
    assert triple(out) == reference(asr, punc, AUDIO[name])
    assert out.text != out.raw_text  # punctuation ran (and removed the raw text's spaces)


def test_a_batch_of_sessions_equals_each_sentence_alone_and_funasr(pipeline, asr, punc):
    [first] = pipeline.process([SentenceWork(AUDIO["noise-2.3s"])])
    assert first.punc_cache["pre_text"]  # a session mid-way: its cache is not empty
    items = [
        SentenceWork(AUDIO["noise-0.5s"], HOTWORDS, {}),
        SentenceWork(AUDIO["tones-3s"], "一丁 七万", first.punc_cache),
        SentenceWork(AUDIO["loud-noise-1.7s"], "", first.punc_cache),
        SentenceWork(AUDIO["noise-2.3s"], "七万,一丁", {}),
        SentenceWork(AUDIO["noise-0.5s"], "", {}),
    ]
    packed_before = pipeline.packed_items
    together = pipeline.process(items)
    assert pipeline.packed_items - packed_before == len(items)  # every encoder output came from the packed pass
    alone = [pipeline.process([item])[0] for item in items]
    assert pipeline.packed_items - packed_before == len(items)  # a batch of one runs FunASR's own encode
    assert together == alone
    for item, out in zip(items, together):
        cache = json.loads(json.dumps(item.punc_cache))
        assert triple(out) == reference(asr, punc, item.audio, hotword_words(item.hotwords), cache)
        assert out.punc_cache == cache
    assert items[1].punc_cache == first.punc_cache  # inputs are never modified


def test_returned_cache_carries_the_session_like_funasr_servers_one_cache_dict(pipeline, asr, punc):
    sentences = [AUDIO["noise-2.3s"], AUDIO["tones-3s"], AUDIO["loud-noise-1.7s"]]
    cache: dict = {}  # FunASR's server keeps one dict per connection across its sentences
    expected = [reference(asr, punc, audio, cache=cache) for audio in sentences]
    state: dict = {}
    for audio, want in zip(sentences, expected):
        [out] = pipeline.process([SentenceWork(audio, punc_cache=state)])
        assert triple(out) == want
        state = out.punc_cache
    assert state == cache and cache["pre_text"]
    # Without the carried cache the later sentences punctuate differently: the cache matters.
    fresh = [pipeline.process([SentenceWork(audio)])[0].text for audio in sentences[1:]]
    assert fresh != [text for text, _, _ in expected[1:]]


def test_hotwords_reach_the_model_and_match_funasrs_hotword_argument(pipeline, asr, punc):
    changed = 0
    for audio in AUDIO.values():
        forms = [HOTWORDS, " 一丁  七万 ", "一丁，七万"]
        plain, biased, spaced, commas = pipeline.process(
            [SentenceWork(audio)] + [SentenceWork(audio, h) for h in forms]
        )
        assert triple(biased) == reference(asr, punc, audio, WORDS)
        assert triple(spaced) == triple(commas) == triple(biased)
        changed += triple(biased) != triple(plain)
    assert changed  # the hotwords changed the recognition of some sentence
    ids = asr.kwargs["tokenizer"].tokens2ids
    assert pipeline.asr.model.hotword_list == [ids(list("一丁")), ids(list("七万")), [asr.model.sos]]


def test_path_and_url_hotwords_are_words_never_opened_or_fetched(pipeline, asr, punc, tmp_path, monkeypatch):
    from funasr.models.seaco_paraformer import model as seaco

    hot_file = tmp_path / "hot.txt"
    hot_file.write_text("一丁\n", encoding="utf-8")

    def refuse(*args, **kwargs):
        raise AssertionError(f"FunASR tried to open or fetch {args[:1]}")

    monkeypatch.setattr(seaco.codecs, "open", refuse)
    monkeypatch.setattr(seaco.requests, "get", refuse)
    audio = AUDIO["noise-2.3s"]
    unknown = reference(asr, punc, audio, ["zzz"])  # a word of no token: one <unk> hotword
    unk, sos = asr.kwargs["tokenizer"].unk_id, asr.model.sos
    for hotwords in ["/etc/passwd", "http://example.com/x", "https://example.com/hot.txt", str(hot_file), "x.txt"]:
        [out] = pipeline.process([SentenceWork(audio, hotwords)])
        assert triple(out) == unknown, hotwords
        assert pipeline.asr.model.hotword_list == [[unk], [sos]], hotwords
    assert funasr_hotword(hotword_words(str(hot_file))) == f" {hot_file} "


def test_timestamps_lie_in_the_segment_in_order_and_stamp_sents_cover_them(pipeline):
    outs = pipeline.process([SentenceWork(audio, HOTWORDS) for audio in AUDIO.values()])
    for audio, out in zip(AUDIO.values(), outs):
        duration_ms = 1000 * len(audio) / 16000
        text = out.text.replace("<unk>", "")  # a punctuation class the random-weight model predicts: no mark
        units = [u for u in text if u not in PUNCTUATION and not u.isspace()]
        assert out.timestamp and len(out.timestamp) == len(units) == len(out.raw_text.split())
        assert all(isinstance(v, int) for pair in out.timestamp for v in pair)
        assert out.timestamp[0][0] >= 0 and out.timestamp[-1][1] <= duration_ms + 60  # + one LFR frame of padding
        assert all(s < e for s, e in out.timestamp)
        assert all(prev[1] <= cur[0] for prev, cur in zip(out.timestamp, out.timestamp[1:]))
        assert [ts for sent in out.stamp_sents for ts in sent["ts_list"]] == out.timestamp
        assert "".join(s["text_seg"].replace(" ", "") + s["punc"] for s in out.stamp_sents) == text
        assert all(s["start"] == s["ts_list"][0][0] and s["end"] == s["ts_list"][-1][1] for s in out.stamp_sents)


def test_stamp_sentences_follow_the_cpp_servers_format():
    text = "正是因为，hello world。<unk>尾"
    ts = [[0, 10], [10, 20], [20, 30], [30, 40], [40, 50], [50, 60], [60, 70]]
    assert stamp_sentences(text, ts) == [
        {"text_seg": "正 是 因 为", "punc": "，", "start": 0, "end": 40, "ts_list": ts[:4]},
        {"text_seg": "hello world", "punc": "。", "start": 40, "end": 60, "ts_list": ts[4:6]},
        {"text_seg": "尾", "punc": "", "start": 60, "end": 70, "ts_list": ts[6:]},
    ]
    assert stamp_sentences("", []) == [] and stamp_sentences("，好", [[5, 9]])[0]["punc"] == ""


def test_without_a_punctuation_model_the_text_is_the_raw_text(folders, asr):
    only_asr = SentencePipeline(str(folders["offline"]))
    cache = {"pre_text": ["一"]}
    [out] = only_asr.process([SentenceWork(AUDIO["tones-3s"], HOTWORDS, cache)])
    assert out.text == out.raw_text and triple(out) == reference(asr, None, AUDIO["tones-3s"], WORDS)
    assert out.punc_cache == cache
    assert [s["punc"] for s in out.stamp_sents] == [""]


def test_punc_cache_survives_a_json_round_trip(pipeline):
    [first] = pipeline.process([SentenceWork(AUDIO["noise-2.3s"])])
    wire = json.loads(json.dumps(first.punc_cache))
    direct, via_json = pipeline.process(
        [SentenceWork(AUDIO["tones-3s"], punc_cache=first.punc_cache), SentenceWork(AUDIO["tones-3s"], punc_cache=wire)]
    )
    assert direct == via_json
    assert json.loads(json.dumps(direct.punc_cache)) == direct.punc_cache


def test_no_token_gives_empty_text_and_lists_and_a_closed_pipeline_raises(folders):
    silent = SentencePipeline(str(folders["offline"]), str(folders["punc"]))
    with torch.no_grad():  # CIF weights ~0 on every frame: FunASR's own "no token" path (it returns no result)
        silent.asr.model.predictor.cif_output.bias.fill_(-30.0)
    assert silent.asr.generate(input=AUDIO["noise-0.5s"]) == []
    cache = {"pre_text": ["一", "丁"]}
    [out] = silent.process([SentenceWork(AUDIO["noise-0.5s"], HOTWORDS, cache)])
    assert out == SentenceOutput("", "", [], [], cache)
    silent.close()
    with pytest.raises(EngineError):
        silent.process([SentenceWork(AUDIO["noise-0.5s"])])


def test_a_bad_item_fails_alone(pipeline, asr, punc):
    good = SentenceWork(AUDIO["noise-0.5s"])
    bad = [SentenceWork(np.zeros((2, 1600), np.float32)), SentenceWork((AUDIO["noise-0.5s"] * 32768).astype(np.int16))]
    out = pipeline.process([bad[0], good, bad[1], SentenceWork(AUDIO["noise-0.5s"], punc_cache={"x": {1, 2}})])
    assert isinstance(out[0], RecognitionFailed) and isinstance(out[2], RecognitionFailed)
    assert isinstance(out[3], RecognitionFailed)  # a cache that is not JSON
    assert triple(out[1]) == reference(asr, punc, good.audio)


def test_a_failing_packed_pass_falls_back_to_each_items_own_encode(pipeline, asr, punc, monkeypatch):
    items = [SentenceWork(AUDIO["tones-3s"]), SentenceWork(AUDIO["noise-2.3s"], HOTWORDS)]

    def broken(feats):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(pipeline, "packed", broken)
    before = pipeline.packed_items
    out = pipeline.process(items)
    assert pipeline.packed_items == before
    assert [triple(o) for o in out] == [
        reference(asr, punc, items[0].audio),
        reference(asr, punc, items[1].audio, WORDS),
    ]


@pytest.mark.parametrize(
    ("hotwords", "words"),
    [
        ('{"阿里巴巴": 20, "通义 实验室": 30}', ["阿里巴巴", "通义", "实验室"]),
        ("阿里巴巴 通义实验室", ["阿里巴巴", "通义实验室"]),
        (" a,b，c\td ", ["a", "b", "c", "d"]),
        ("{not json", ["{not", "json"]),
        ('["a", "b"]', ['["a"', '"b"]']),
        ("", []),
        ("  ", []),
    ],
)
def test_hotword_words(hotwords, words):
    assert hotword_words(hotwords) == words
    assert funasr_hotword(words) == (f" {' '.join(words)} " if words else None)


def test_the_contextual_paraformer_funasrs_server_defaults_to_loads_too(tmp_path):
    """FunASR's Python server defaults to the contextual Paraformer; it stays loadable (hotwords, no timestamps)."""
    folder = modelgen.generate(tmp_path / "contextual", "tiny", seed=0, kind="contextual")
    contextual = SentencePipeline(str(folder))
    audio = np.frombuffer(noise(3.0, seed=3), dtype="<i2").astype(np.float32) / 32768
    hotwords = json.dumps({"一丁七": 20})
    try:
        plain, biased = contextual.process([SentenceWork(audio), SentenceWork(audio, hotwords=hotwords)])
        assert contextual.packed_items == 2  # its encoder is packed like SeACo's
    finally:
        contextual.close()
    reference = load(folder)
    assert plain.text == reference.generate(input=audio)[0]["text"] and plain.text
    assert biased.text == reference.generate(input=audio, hotword="一丁七")[0]["text"]
    assert plain.timestamp == [] and plain.stamp_sents == []
