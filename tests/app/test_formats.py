"""The renderers of a finished transcription (app.formats), read back by the srt, webvtt and openai libraries."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import srt
import webvtt
from openai.types.audio import TranscriptionVerbose

from app.formats import (
    CONTENT_TYPES,
    FORMATS,
    MAX_CUE_CHARS,
    MAX_CUE_SECONDS,
    MAX_LINE_CHARS,
    MAX_LINES,
    PUNCTUATION,
    full_text,
    language_name,
    render,
)


def make_sentence(clauses: list[tuple[list[str], str]], start: int = 0, step: int = 200, index: int = 0) -> dict:
    """A sentence as a job holds it: ``clauses`` are (units, mark); each unit lasts ``step`` ms after 100 ms."""
    t = start + 100
    text, raw, timestamp, stamp_sents = "", [], [], []
    for units, punc in clauses:
        ts = [[t + i * step, t + (i + 1) * step] for i in range(len(units))]
        t += len(units) * step
        shown = "".join(
            ("" if i == 0 or not (u.isascii() and units[i - 1].isascii()) else " ") + u for i, u in enumerate(units)
        )
        if text and text[-1].isascii() and shown[0].isascii():
            text += " "
        text += shown + punc
        raw += units
        timestamp += ts
        stamp_sents.append(
            {"text_seg": " ".join(units), "punc": punc, "start": ts[0][0], "end": ts[-1][1], "ts_list": ts}
        )
    return {
        "index": index,
        "start": start,
        "end": t + 100,
        "text": text,
        "raw_text": " ".join(raw),
        "timestamp": timestamp,
        "stamp_sents": stamp_sents,
    }


def make_result(*sentences: dict, language: str | None = None) -> dict:
    end = max((s["end"] for s in sentences), default=0)
    return {
        "duration": end / 1000 + 0.5,
        "language": language,
        "hotwords": "",
        "text": "".join(s["text"] for s in sentences),
        "sentences": list(sentences),
    }


MIXED = make_sentence([(list("正是因为"), "，"), (["hello", "world"], "。")], start=1230)
SECOND = make_sentence([(list("今天天气很好"), "。")], start=5000, index=1)


def cjk(n: int, offset: int = 0) -> list[str]:
    return [chr(0x4E00 + offset + i) for i in range(n)]


def parse_srt(body: str) -> list[srt.Subtitle]:
    return list(srt.parse(body))


def ms(delta: timedelta) -> int:
    return delta // timedelta(milliseconds=1)


def check_cues(subs: list[srt.Subtitle]) -> None:
    for sub in subs:
        lines = sub.content.split("\n")
        assert sub.end > sub.start
        assert ms(sub.end - sub.start) <= MAX_CUE_SECONDS * 1000
        assert len(lines) <= MAX_LINES and all(len(line) <= MAX_LINE_CHARS for line in lines)
        assert len("".join(lines)) <= MAX_CUE_CHARS
    assert all(a.end <= b.start for a, b in zip(subs, subs[1:]))


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_has_its_content_type(fmt):
    body, content_type = render(make_result(MIXED), fmt)
    assert content_type == CONTENT_TYPES[fmt]
    assert isinstance(body, dict) == (fmt in ("json", "verbose_json"))


def test_unknown_format_and_granularity_are_refused():
    with pytest.raises(ValueError, match="unknown format"):
        render(make_result(MIXED), "docx")
    with pytest.raises(ValueError, match="granularities"):
        render(make_result(MIXED), "verbose_json", granularities=["char"])


def test_json_is_our_result_or_openais_text_object():
    result = make_result(MIXED, SECOND)
    ours, _ = render(result, "json")
    assert ours == dict(result, text="正是因为，hello world。今天天气很好。")
    assert render(result, "json", openai=True)[0] == {"text": "正是因为，hello world。今天天气很好。"}


@pytest.mark.parametrize(
    ("texts", "joined"),
    [
        (["你好。", "世界。"], "你好。世界。"),
        (["Hello world.", "How are you"], "Hello world. How are you"),
        (["正是因为hello", "world"], "正是因为hello world"),
        (["hello,", "123"], "hello, 123"),
        (["ok", "你好"], "ok你好"),
        (["你好", "hello"], "你好hello"),
        (["hello", "，你好"], "hello你好"),  # a leading mark closes no clause: dropped
        (["", "hello"], "hello"),
    ],
)
def test_full_text_spaces_only_between_ascii(texts, joined):
    result = make_result(*({"index": i, "start": 0, "end": 1, "text": t} for i, t in enumerate(texts)))
    assert full_text(result) == joined
    assert render(result, "text")[0] == joined + "\n"


def test_unk_is_dropped_from_every_rendering():
    sentence = dict(
        MIXED,
        text="<unk>正是因为<unk>，hello<unk>world。<unk>",
        raw_text="正 是 因 为 hello <unk> world",
        stamp_sents=[dict(c, text_seg=c["text_seg"] + " <unk>") for c in MIXED["stamp_sents"]],
    )
    result = make_result(sentence)
    for fmt in FORMATS:
        if fmt == "json":
            continue
        body, _ = render(result, fmt, granularities=["word", "segment"])
        assert "<unk>" not in (json.dumps(body, ensure_ascii=False) if isinstance(body, dict) else body), fmt
    assert "<unk>" not in json.dumps(render(result, "json", openai=True)[0], ensure_ascii=False)
    assert full_text(result) == "正是因为，hello world。"
    words = render(result, "verbose_json", granularities=["word"])[0]["words"]
    assert [w["word"] for w in words] == ["正", "是", "因", "为", "hello", "world"]


def test_our_json_keeps_funasrs_sentences_and_adds_the_clean_full_text():
    sentence = dict(MIXED, text="正是因为<unk>，hello<unk>world。")
    result = make_result(sentence)
    body, content_type = render(result, "json")
    assert content_type.startswith("application/json")
    assert body["sentences"] == result["sentences"]  # as FunASR (and a 2pass session) gave them
    assert body["text"] == "正是因为，hello world。"


def test_an_empty_result_renders_valid_empty_documents():
    result = make_result()
    assert render(result, "text")[0] == ""
    assert render(result, "json")[0]["text"] == "" and render(result, "json", openai=True)[0] == {"text": ""}
    assert parse_srt(render(result, "srt")[0]) == []
    assert webvtt.from_string(render(result, "vtt")[0]).captions == []
    body = render(result, "verbose_json", granularities=["word", "segment"])[0]
    model = TranscriptionVerbose.model_validate(body)
    assert model.segments == [] and model.words == [] and model.text == ""
    silent = make_result({"index": 0, "start": 0, "end": 900, "text": "<unk>。", "timestamp": [], "stamp_sents": []})
    assert parse_srt(render(silent, "srt")[0]) == [] and render(silent, "verbose_json")[0]["segments"] == []


def test_srt_golden():
    body, _ = render(make_result(MIXED, SECOND), "srt")
    assert body == (
        "1\n00:00:01,230 --> 00:00:02,630\n正是因为，hello world。\n\n"
        "2\n00:00:05,000 --> 00:00:06,400\n今天天气很好。\n\n"
    )


def test_srt_and_vtt_parse_back_to_one_cue_per_sentence():
    result = make_result(MIXED, SECOND)
    subs = parse_srt(render(result, "srt")[0])
    captions = webvtt.from_string(render(result, "vtt")[0]).captions
    expected = [(MIXED["start"], MIXED["end"], "正是因为，hello world。"), (5000, SECOND["end"], "今天天气很好。")]
    assert [(ms(s.start), ms(s.end), s.content) for s in subs] == expected
    assert [(c.start, c.end, c.text) for c in captions] == [
        ("00:00:01.230", "00:00:02.630", "正是因为，hello world。"),
        ("00:00:05.000", "00:00:06.400", "今天天气很好。"),
    ]


def test_vtt_escapes_markup_characters():
    sentence = make_sentence([(["R", "&", "D"], ""), (["<", "b", ">"], "")])
    caption = webvtt.from_string(render(make_result(sentence), "vtt")[0]).captions[0]
    assert caption.raw_text == "R &amp; D &lt; b &gt;"


def test_a_40_second_sentence_splits_at_clauses_into_cues_within_limits():
    lengths = [5, 5, 20, 3, 8, 60, 4, 12, 30, 10, 7, 16, 20]  # units of 200 ms: 40 s in all; 60 is a 12 s clause
    offsets = [sum(lengths[:i]) for i in range(len(lengths))]
    sentence = make_sentence(
        [(cjk(n, o), "，" if i < len(lengths) - 1 else "。") for i, (n, o) in enumerate(zip(lengths, offsets))],
        start=10_000,
    )
    assert sentence["end"] - sentence["start"] == 40_200
    subs = parse_srt(render(make_result(sentence), "srt")[0])
    check_cues(subs)
    assert len(subs) >= 40 // MAX_CUE_SECONDS + 1
    assert "".join(s.content.replace("\n", "") for s in subs) == sentence["text"]
    assert ms(subs[0].start) == sentence["start"] and ms(subs[-1].end) == sentence["end"]
    long_clause = set(cjk(60, offsets[5]))
    assert sum(bool(long_clause & set(s.content)) for s in subs) >= 2  # the 12 s clause is cut between characters
    assert all(s.content[-1] in PUNCTUATION for s in subs if s.content[-1] not in long_clause)  # else at clause ends
    token_times = {t for ts in sentence["timestamp"] for t in ts}
    assert all(ms(s.start) in token_times for s in subs[1:]) and all(ms(s.end) in token_times for s in subs[:-1])


def test_a_long_clause_without_marks_is_cut_between_english_words():
    words = [f"word{i}" for i in range(40)]  # 20 s, one clause
    sentence = make_sentence([(words, ".")], step=500)
    subs = parse_srt(render(make_result(sentence), "srt")[0])
    check_cues(subs)
    assert len(subs) >= 3
    assert " ".join(s.content.replace("\n", " ") for s in subs) == sentence["text"]
    starts = {ts[0] for ts in sentence["timestamp"]}
    assert all(ms(s.start) in starts for s in subs[1:])


def test_a_long_sentence_without_timestamps_is_split_by_characters():
    sentence = dict(make_sentence([(cjk(150), "。")]), timestamp=[], stamp_sents=[])  # 30 s
    subs = parse_srt(render(make_result(sentence), "srt")[0])
    check_cues(subs)
    assert "".join(s.content.replace("\n", "") for s in subs) == sentence["text"]
    assert ms(subs[0].start) == 0 and ms(subs[-1].end) == sentence["end"]


def test_two_line_cues_are_balanced_at_word_boundaries():
    text = "the quick brown fox jumps over the lazy dog and keeps running far away"
    english = {"index": 0, "start": 0, "end": 5000, "text": text}
    chinese = {"index": 1, "start": 6000, "end": 12000, "text": "".join(cjk(60))}
    subs = parse_srt(render(make_result(english, chinese), "srt")[0])
    check_cues(subs)
    lines = subs[0].content.split("\n")
    assert len(subs) == 2 and len(lines) == 2 and " ".join(lines) == text
    assert max(map(len, lines)) <= 36  # balanced, not a full first line
    assert [len(line) for line in subs[1].content.split("\n")] == [30, 30]


def test_cues_never_overlap_and_always_end_after_they_start():
    first = make_sentence([(list("你好"), "。")], start=0)  # 100 ms .. 600 ms
    overlapping = make_sentence([(list("世界"), "。")], start=400, index=1)
    instant = {"index": 2, "start": 2000, "end": 2000, "text": "嗯"}
    subs = parse_srt(render(make_result(first, overlapping, instant), "srt")[0])
    assert [(ms(s.start), ms(s.end)) for s in subs] == [(0, 400), (400, 1000), (2000, 2001)]
    captions = webvtt.from_string(render(make_result(first, overlapping, instant), "vtt")[0]).captions
    assert [(c.start, c.end) for c in captions] == [
        ("00:00:00.000", "00:00:00.400"),
        ("00:00:00.400", "00:00:01.000"),
        ("00:00:02.000", "00:00:02.001"),
    ]


@pytest.mark.parametrize(
    ("granularities", "segments", "words"),
    [([], True, False), (["segment"], True, False), (["word"], False, True), (["word", "segment"], True, True)],
)
def test_verbose_json_is_openais_model_with_the_granularities_asked(granularities, segments, words):
    body, _ = render(make_result(MIXED, SECOND), "verbose_json", openai=True, granularities=granularities)
    model = TranscriptionVerbose.model_validate(body)
    assert body["task"] == "transcribe" and model.language == "chinese" and model.duration == pytest.approx(6.9)
    assert model.text == "正是因为，hello world。今天天气很好。"
    assert (model.segments is not None) == segments and (model.words is not None) == words
    if segments:
        assert [(s.id, s.seek, s.start, s.end, s.text, s.tokens) for s in model.segments or []] == [
            (0, 123, 1.23, 2.63, "正是因为，hello world。", []),
            (1, 500, 5.0, 6.4, "今天天气很好。", []),
        ]
        assert all(s.avg_logprob > -1 and s.compression_ratio < 2.4 for s in model.segments or [])


def test_words_are_cjk_characters_and_ascii_words_with_their_token_times():
    expected = [("正", 1.33, 1.53), ("是", 1.53, 1.73), ("因", 1.73, 1.93), ("为", 1.93, 2.13)]
    expected += [("hello", 2.13, 2.33), ("world", 2.33, 2.53)]
    body = render(make_result(MIXED), "verbose_json", granularities=["word"])[0]
    assert [(w["word"], w["start"], w["end"]) for w in body["words"]] == expected
    from_timestamp = make_result(dict(MIXED, stamp_sents=[]))  # models with timestamps but no clauses
    assert render(from_timestamp, "verbose_json", granularities=["word"])[0]["words"] == body["words"]


def test_units_and_clauses_match_tasks_offline_stamp_sentences():
    from tasks.offline import PUNCTUATION as OFFLINE_PUNCTUATION
    from tasks.offline import stamp_sentences

    assert PUNCTUATION == OFFLINE_PUNCTUATION
    text = "今天<unk>去了IBM's office，“test”：3 apples。还有"
    timestamp = [[100 * i, 100 * i + 80] for i in range(20)]
    stamp_sents = stamp_sentences(text, timestamp)
    sentence = {"index": 0, "start": 0, "end": 2000, "text": text, "timestamp": timestamp, "stamp_sents": stamp_sents}
    words = render(make_result(sentence), "verbose_json", granularities=["word"])[0]["words"]
    tokens = [(word, ts) for c in stamp_sents for word, ts in zip(c["text_seg"].split(), c["ts_list"])]
    assert [(w["word"], [round(w["start"] * 1000), round(w["end"] * 1000)]) for w in words] == tokens


@pytest.mark.parametrize(
    ("language", "text", "name"),
    [
        (None, "正是因为hello", "chinese"),
        ("zh", "", "chinese"),
        ("zh-CN", "", "chinese"),
        ("en", "你好", "english"),
        ("yue", "", "cantonese"),
        ("English", "", "english"),
        ("de", "", "de"),
        ("auto", "hello world", "english"),
        (None, "こんにちは", "japanese"),
        (None, "안녕하세요", "korean"),
        (None, "", "chinese"),
    ],
)
def test_language_is_openais_lowercase_name(language, text, name):
    assert language_name(language, text) == name
