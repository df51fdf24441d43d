"""Renderers of a finished file transcription: our JSON, plain text, SRT, WebVTT and OpenAI's verbose JSON.

The input is a finished job's result: ``{"duration": s, "language": str | None, "hotwords": str,
"sentences": [{"index", "start", "end", "text", "raw_text", "timestamp", "stamp_sents"}, …]}``, times in integer
ms from the file's start. Pure functions, no I/O. The literal ``<unk>`` (a class of the ct-punc models that FunASR
writes into the text) is dropped from every rendering except our JSON's sentences, which stay as FunASR gave them.

Units. A sentence's text is cut the way :func:`tasks.offline.stamp_sentences` cut it into ``stamp_sents``: an
ASCII word or number is one unit, any other character except whitespace and :data:`PUNCTUATION` is one (so a CJK
character is one); each punctuation mark belongs to the unit before it and closes a clause. Units take the token
times in order: the clauses' ``ts_list`` one after the other, else ``timestamp``; units beyond the times get the
last end; a sentence without any times spreads its span over its units by characters (an estimate). Clauses are
the ``stamp_sents`` (by their ``ts_list`` lengths) and, as there, every punctuation mark ends one.

Subtitles (SRT, VTT). One cue per sentence, from its ``start`` to its ``end``, unless it is longer than
:data:`MAX_CUE_SECONDS`, has more than :data:`MAX_CUE_CHARS` characters or needs more than :data:`MAX_LINES`
lines: then consecutive clauses are packed greedily into cues that fit, and a clause that does not fit alone is
cut the same way between its units. A split cue runs from its first unit's start to its last unit's end (the
first and last stretched towards the sentence's bounds as far as the limits allow); a single unit is never cut.
Lines hold at most :data:`MAX_LINE_CHARS` characters, every character counting one (CJK included); a cue that
needs two lines is broken at the unit boundary that balances them best. Cue times are ms; cues never overlap
(a cue ends where the next begins) and each ends after it starts; an empty text makes no cue.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import srt
import webvtt

from tasks.segments import PUNCTUATION  # the clause marks stamp_sents were cut at: units and times align

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")
CONTENT_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}

MAX_CUE_SECONDS = 7  #: longest cue, s (a single unit longer than this stays one cue)
MAX_CUE_CHARS = 84  #: most characters in a cue, line breaks not counted
MAX_LINE_CHARS = 42  #: most characters on a subtitle line; each character counts one, CJK included
MAX_LINES = 2  #: most lines in a cue

#: The language name of verbose_json when the client named none and the text shows no script: the models' own.
DEFAULT_LANGUAGE = "chinese"
#: OpenAI reports Whisper's English language names; the codes of the languages FunASR's models transcribe.
LANGUAGE_NAMES = {"zh": "chinese", "en": "english", "yue": "cantonese", "ja": "japanese", "ko": "korean"}
#: verbose_json segment fields Paraformer has no counterpart for, set to values that pass Whisper's failure checks
#: (avg_logprob above -1, compression_ratio under 2.4, no_speech_prob low): one decoding, no fallback, speech the
#: VAD found. ``tokens`` is always [] (Paraformer's token ids are not Whisper's).
SEGMENT_DEFAULTS = {"temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 1.0, "no_speech_prob": 0.0}

UNK = "<unk>"
_TOKEN = re.compile(r"<unk>|[A-Za-z0-9'@]+|\s+|\S")
_ASCII_WORD = re.compile(r"[A-Za-z0-9'@]+")
_SCRIPTS = (  # script → language, checked in this order (kanji alone reads as Chinese)
    (re.compile(r"[\u3040-\u30ff]"), "japanese"),
    (re.compile(r"[\u1100-\u11ff\uac00-\ud7af]"), "korean"),
    (re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]"), "chinese"),
    (re.compile(r"[A-Za-z]"), "english"),
)


@dataclass
class _Unit:
    word: str  # a CJK character or an ASCII word
    text: str  # the word and the punctuation marks after it
    space: bool  # a space separates it from the unit before
    start: int = 0
    end: int = 0
    clause_end: bool = False


@dataclass(frozen=True)
class Cue:
    """One subtitle cue: ms from the file's start, and its lines (plain text, not escaped)."""

    start: int
    end: int
    lines: list[str]


def render(
    result: dict, fmt: str, *, openai: bool = False, granularities: Sequence[str] = ()
) -> tuple[str | dict, str]:
    """The body of ``result`` in ``fmt`` (one of :data:`FORMATS`) and its content type.

    ``json``: our API's result (:func:`with_text`), or OpenAI's ``{"text": …}`` when
    ``openai``. ``text``: the full text and a newline ("" when empty). ``srt`` / ``vtt``: subtitles (module
    docstring). ``verbose_json``: OpenAI's verbose transcription, see :func:`verbose_json`. ``granularities``
    only matters there. Raises ValueError for an unknown format or granularity.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    content_type = CONTENT_TYPES[fmt]
    if fmt == "json":
        return ({"text": full_text(result)} if openai else with_text(result)), content_type
    if fmt == "text":
        text = full_text(result)
        return (text + "\n" if text else ""), content_type
    if fmt == "verbose_json":
        return verbose_json(result, granularities), content_type
    cues = subtitle_cues(result)
    return (_srt(cues) if fmt == "srt" else _vtt(cues)), content_type


def full_text(result: dict) -> str:
    """All sentence texts joined, ``<unk>`` dropped.

    A space goes between two sentences only when the first ends with an ASCII letter, digit or punctuation mark
    and the next starts with an ASCII letter or digit; CJK text joins without spaces.
    """
    return _join_texts(clean_text(s.get("text") or "") for s in result.get("sentences") or [])


def with_text(result: dict) -> dict:
    """Our API's JSON: the sentences as FunASR gave them (``<unk>`` included: the texts equal FunASR's and a
    2pass session's), and ``text``, the clean full text (:func:`full_text`)."""
    return {**result, "text": full_text(result)}


def clean_text(text: str) -> str:
    """``text`` without ``<unk>``, as its units and their spacing render it."""
    return _join(_parse(text))


def verbose_json(result: dict, granularities: Sequence[str] = ()) -> dict:
    """OpenAI's verbose transcription object (``TranscriptionVerbose`` of the ``openai`` package).

    ``language`` is a lowercase English name as OpenAI reports it (:func:`language_name`). Granularities follow
    OpenAI: ``segments`` come with ``[]`` (the default) or when "segment" is asked for, ``words`` only when
    "word" is, so ``["word"]`` alone gives words and no segments. One segment per non-empty sentence: ``id`` its
    position, ``seek`` its start in 10 ms frames (each sentence is decoded from its own start), seconds with ms
    precision, ``tokens`` [] and :data:`SEGMENT_DEFAULTS`. Words are the units (module docstring) without their
    punctuation: each CJK character one word, each ASCII word one, their times the units' times.
    """
    unknown = set(granularities) - set(GRANULARITIES)
    if unknown:
        raise ValueError(f"unknown timestamp granularities {sorted(unknown)}: {', '.join(GRANULARITIES)}")
    text = full_text(result)
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": language_name(result.get("language"), text),
        "duration": float(result.get("duration") or 0.0),
        "text": text,
    }
    sentences = [(s, units) for s in result.get("sentences") or [] if (units := _timed_units(s))]
    if not granularities or "segment" in granularities:
        body["segments"] = [
            {
                "id": i,
                "seek": int(s["start"]) // 10,
                "start": _seconds(s["start"]),
                "end": _seconds(s["end"]),
                "text": _join(units),
                "tokens": [],
                **SEGMENT_DEFAULTS,
            }
            for i, (s, units) in enumerate(sentences)
        ]
    if "word" in granularities:
        body["words"] = [
            {"word": u.word, "start": _seconds(u.start), "end": _seconds(u.end)}
            for _, units in sentences
            for u in units
        ]
    return body


def language_name(language: str | None, text: str = "") -> str:
    """OpenAI's name of a language: ``zh`` / ``zh-CN`` → ``chinese``; a code not in :data:`LANGUAGE_NAMES` or a
    name stays as given, lowercased. No language (or ``auto``): guessed from the script of ``text`` — kana
    Japanese, hangul Korean, CJK Chinese, Latin English — else :data:`DEFAULT_LANGUAGE`."""
    if language and language.strip().lower() != "auto":
        name = language.strip().lower()
        return LANGUAGE_NAMES.get(re.split(r"[-_]", name)[0], name)
    for script, name in _SCRIPTS:
        if script.search(text):
            return name
    return DEFAULT_LANGUAGE


def subtitle_cues(result: dict) -> list[Cue]:
    """The cues of all sentences, in order, without overlaps (see the module docstring)."""
    cues = [cue for sentence in result.get("sentences") or [] for cue in _sentence_cues(sentence)]
    out: list[Cue] = []
    for i, cue in enumerate(cues):
        start, end = cue.start, cue.end
        if i + 1 < len(cues) and start < cues[i + 1].start < end:
            end = cues[i + 1].start  # the last token may run past the next sentence's start
        if out:
            start = max(start, out[-1].end)
        out.append(replace(cue, start=start, end=max(end, start + 1)))
    return out


def _sentence_cues(sentence: dict) -> list[Cue]:
    units = _timed_units(sentence)
    if not units:
        return []
    start, end = int(sentence["start"]), int(sentence["end"])
    if _fits(units, start, end):
        return [Cue(start, end, _wrap(units))]
    pieces = _pack(units)
    limit = MAX_CUE_SECONDS * 1000
    cues = []
    for i, piece in enumerate(pieces):
        first, last = piece[0].start, piece[-1].end
        if i == 0:
            first = min(first, max(start, last - limit))
        if i == len(pieces) - 1:
            last = max(last, min(end, first + limit))
        cues.append(Cue(first, last, _wrap(piece)))
    return cues


def _pack(units: list[_Unit]) -> list[list[_Unit]]:
    """Clauses packed greedily into pieces that fit; a clause too long alone is cut between units."""
    clauses: list[list[_Unit]] = [[]]
    for unit in units:
        clauses[-1].append(unit)
        if unit.clause_end:
            clauses.append([])
    pieces: list[list[_Unit]] = []
    current: list[_Unit] = []
    for clause in filter(None, clauses):
        if _fits(current + clause):
            current += clause
            continue
        if current:
            pieces.append(current)
        current = []
        for unit in clause:
            if current and not _fits(current + [unit]):
                pieces.append(current)
                current = []
            current.append(unit)
    if current:
        pieces.append(current)
    return pieces


def _fits(units: list[_Unit], start: int | None = None, end: int | None = None) -> bool:
    start = units[0].start if start is None else start
    end = units[-1].end if end is None else end
    if end - start > MAX_CUE_SECONDS * 1000 or _length(units) > MAX_CUE_CHARS:
        return False
    return len(_wrap(units)) <= MAX_LINES


def _wrap(units: list[_Unit]) -> list[str]:
    """Lines of at most MAX_LINE_CHARS: one if it fits, else the most balanced two, else greedy ones."""
    if _length(units) <= MAX_LINE_CHARS:
        return [_join(units)]
    splits = [
        (max(_length(units[:b]), _length(units[b:])), b)
        for b in range(1, len(units))
        if _length(units[:b]) <= MAX_LINE_CHARS and _length(units[b:]) <= MAX_LINE_CHARS
    ]
    if splits:
        b = min(splits)[1]
        return [_join(units[:b]), _join(units[b:])]
    lines: list[list[_Unit]] = [[]]
    for unit in units:
        if lines[-1] and _length(lines[-1] + [unit]) > MAX_LINE_CHARS:
            lines.append([])
        lines[-1].append(unit)
    return [_join(line) for line in lines]


def _parse(text: str) -> list[_Unit]:
    """The units of a sentence's text, untimed (see the module docstring); leading marks are dropped."""
    units: list[_Unit] = []
    gap = unk = False
    for token in _TOKEN.findall(text):
        if token == UNK:
            unk = True
        elif token.isspace():
            gap = True
        elif token in PUNCTUATION:
            if units:
                units[-1].text += token
                units[-1].clause_end = True
            gap = unk = False
        else:
            # an <unk> between two ASCII words stood where a space was (ct-punc puts it after a word)
            joined = unk and bool(units) and _ASCII_WORD.fullmatch(units[-1].word) and _ASCII_WORD.fullmatch(token)
            units.append(_Unit(token, token, bool(units) and (gap or bool(joined))))
            gap = unk = False
    return units


def _timed_units(sentence: dict) -> list[_Unit]:
    units = _parse(sentence.get("text") or "")
    if not units:
        return units
    start, end = int(sentence["start"]), int(sentence["end"])
    clauses = sentence.get("stamp_sents") or []
    stamps = [ts for clause in clauses for ts in clause.get("ts_list") or []] or sentence.get("timestamp") or []
    if stamps:
        for i, unit in enumerate(units):
            s, e = stamps[i] if i < len(stamps) else (stamps[-1][1], stamps[-1][1])
            unit.start, unit.end = _clamp(int(s), start, end), _clamp(int(e), start, end)
    else:
        total, done = sum(len(u.word) for u in units), 0
        for unit in units:
            unit.start = start + (end - start) * done // total
            done += len(unit.word)
            unit.end = start + (end - start) * done // total
    count = 0
    for clause in clauses:
        count += len(clause.get("ts_list") or [])
        if 0 < count <= len(units):
            units[count - 1].clause_end = True
    return units


def _clamp(value: int, low: int, high: int) -> int:
    return min(max(value, low), max(low, high))


def _join(units: Sequence[_Unit]) -> str:
    return "".join((" " if unit.space and i else "") + unit.text for i, unit in enumerate(units))


def _length(units: Sequence[_Unit]) -> int:
    return sum(len(unit.text) for unit in units) + sum(unit.space for unit in units[1:])


def _join_texts(texts: Any) -> str:
    out = ""
    for text in texts:
        if not text:
            continue
        if out and _ascii_end(out[-1]) and text[0].isascii() and text[0].isalnum():
            out += " "
        out += text
    return out


def _ascii_end(char: str) -> bool:
    return char.isascii() and char.isprintable() and not char.isspace()


def _seconds(ms: int | float) -> float:
    return round(float(ms) / 1000, 3)


def _srt(cues: list[Cue]) -> str:
    return srt.compose(
        [
            srt.Subtitle(i, timedelta(milliseconds=c.start), timedelta(milliseconds=c.end), "\n".join(c.lines))
            for i, c in enumerate(cues, 1)
        ]
    )


def _vtt(cues: list[Cue]) -> str:
    captions = [
        webvtt.Caption(_vtt_time(c.start), _vtt_time(c.end), [_vtt_escape(line) for line in c.lines]) for c in cues
    ]
    return webvtt.WebVTT(captions=captions).content


def _vtt_time(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _vtt_escape(line: str) -> str:
    """Cue text is markup in WebVTT: a literal &, < or > must be a character reference."""
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
