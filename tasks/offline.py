"""The 2pass second pass: offline Paraformer (SeACo: hotwords, timestamps), then realtime CT-Transformer punctuation.

At each VAD sentence end the gateway sends that sentence's audio to a worker. :class:`SentencePipeline` runs what
FunASR's Python server runs for it — ``asr.generate(input=audio, hotword=…)``, then, when the text is not empty,
``punc.generate(input=text, cache=<the session's punctuation cache>)`` — and adds FunASR's C++ server's
``stamp_sents``. Task payloads are stateless, so the session's punctuation cache travels with each sentence
(:attr:`SentenceWork.punc_cache`) and the new one comes back with its result.

Faithfulness: every item's output equals FunASR called on that item alone, bit for bit. FunASR's batched
``generate(input=[…], batch_size=N)`` does not keep that (zero padding moves the CIF alphas of shorter items and
MKL rounds differently for other row counts: texts and timestamps of some items change; see
``bench/offline_throughput.py``), and the realtime punctuation model takes one text per call (its ``inference``
asserts ``len(data_in) == 1``). So :meth:`SentencePipeline.process` batches where it can stay exact: the encoder,
most of a sentence's compute, runs once over all items packed (:mod:`tasks.batched.offline_encoder`, each item's
output bit-identical to its own ``encode``); then each item runs through FunASR's own ``generate`` — features,
hotword list, predictor, decoders, timestamps — with the model's ``encode`` answering from the packed result for
exactly that item's features (any other input goes to the real ``encode``). Punctuation runs per item.

Hotwords from clients never reach FunASR's file and URL branches: see :func:`hotword_words` and
:func:`funasr_hotword`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tasks.batched.offline_encoder import PackedOfflineEncoder, packable
from tasks.batched.rowexact import RowPlanner
from tasks.errors import EngineError, RecognitionFailed
from tasks.recognizer import load_automodel
from tasks.segments import (
    PUNCTUATION,
)  # each closes one ``stamp_sents`` entry, like FunASR's C++ TimestampIsPunctuation

logger = logging.getLogger(__name__)


#: Word units of a punctuated text: an ASCII word or number is one unit, any other non-space character is one.
#: ``<unk>`` is a punctuation class of the ct-punc models that FunASR writes into the text; it marks nothing.
_UNIT = re.compile(r"<unk>|[A-Za-z0-9'@]+|\S")
_UNK = "<unk>"


@dataclass
class SentenceWork:
    """One VAD sentence of one session.

    ``audio``: float32 in [-1, 1) (int16 / 32768), 16 kHz mono, one VAD segment (0.1-60 s). ``hotwords``: as the
    client sent it (see :func:`hotword_words`). ``punc_cache``: the session's JSON-able punctuation state, ``{}`` at
    its start; it is read, never modified. ``punctuate=False`` skips punctuation (``text`` is the raw text and the
    cache comes back unchanged): file jobs punctuate their sentences in order afterwards (:meth:`punctuate`).
    """

    audio: np.ndarray
    hotwords: str = ""
    punc_cache: dict = field(default_factory=dict)
    punctuate: bool = True


@dataclass
class SentenceOutput:
    """The result of one sentence. Times are integer ms from the segment's first sample.

    ``timestamp`` is FunASR's per-token ``[start_ms, end_ms]`` (the last end may pass the segment's end by less
    than one 60 ms LFR frame: FunASR pads the features to whole frames). ``stamp_sents`` is FunASR's C++ server's
    format, see :func:`stamp_sentences`. ``punc_cache`` is the session's next punctuation state (lists, strings).
    """

    text: str
    raw_text: str
    timestamp: list[list[int]]
    stamp_sents: list[dict]
    punc_cache: dict


def hotword_words(hotwords: str) -> list[str]:
    """The words of a client's hotwords string, in order.

    FunASR's clients send a JSON object word -> weight (``'{"阿里巴巴": 20}'``): its keys are the words (weights
    only matter to FST hotword servers). Anything else is words separated by whitespace or commas. FunASR splits
    its hotword string on whitespace, so a key with a space in it becomes several words, as it would there.
    """
    text = hotwords.strip()
    keys: list[str] | None = None
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            keys = [str(key) for key in parsed]
    pieces = keys if keys is not None else re.split(r"[,，]", text)
    return [word for piece in pieces for word in piece.split()]


def funasr_hotword(words: Sequence[str]) -> str | None:
    """The ``hotword`` argument that makes SeACo-Paraformer bias towards exactly ``words``; None for no words.

    ``SeacoParaformer.generate_hotwords_list`` reads its argument as a file when it exists and ends with ``.txt``,
    downloads it when it starts with ``http``, ignores it when it ends with ``.txt`` otherwise, and only else
    splits it on whitespace. The words wrapped in one space on each side start with neither, end with no ``.txt``:
    FunASR can only take the last branch, which strips the spaces and yields ``words`` unchanged. (An empty
    string would not mean "no hotwords" to FunASR — it gives a one-entry list that changes the decoding.)
    """
    if not words:
        return None
    return " " + " ".join(words) + " "


def stamp_sentences(text: str, timestamp: Sequence[Sequence[int]]) -> list[dict]:
    """Sentence timestamps in FunASR's C++ server's format, from the punctuated text and per-token timestamps.

    Each entry is ``{"text_seg": "正 是 因 为", "punc": "，", "start": ms, "end": ms, "ts_list": [[s, e], …]}``:
    the text is cut after every punctuation mark; each other unit (a CJK character, or an ASCII word) takes the
    next token timestamp. A tail without a mark ends with ``"punc": ""``. This follows the C++ runtime's
    ``TimestampSentence`` (``runtime/onnxruntime/src/util.cpp``), except that it emits no entry for a mark with no
    token before it (the C++ code would emit one with an empty ``ts_list`` and a start of 0) and that it skips
    the ``<unk>`` the punctuation model can write (its class 0, which ends no sentence). FunASR's Python
    ``timestamp_sentence`` needs per-token punctuation ids, which the realtime model does not return for the
    new text alone. Units beyond the timestamps are left out, as in the C++ code.
    """
    sentences: list[dict] = []
    words: list[str] = []
    stamps: list[list[int]] = []

    def close(punc: str) -> None:
        if stamps:
            sentences.append(
                {
                    "text_seg": " ".join(words),
                    "punc": punc,
                    "start": stamps[0][0],
                    "end": stamps[-1][1],
                    "ts_list": [list(s) for s in stamps],
                }
            )
        words.clear()
        stamps.clear()

    used = 0
    for unit in _UNIT.findall(text):
        if unit == _UNK:
            continue
        if unit in PUNCTUATION:
            close(unit)
        elif used < len(timestamp):
            words.append(unit)
            stamps.append([int(timestamp[used][0]), int(timestamp[used][1])])
            used += 1
    close("")
    return sentences


class SentencePipeline:
    """Offline ASR then punctuation for VAD sentences of many sessions. Not thread-safe: one caller at a time.

    Loads both models once, at construction (:class:`~tasks.errors.ModelLoadError` if either fails). The models
    are FunASR folders or hub names, loaded the way :func:`tasks.recognizer.load_automodel` loads them. Without a
    punctuation model, ``text`` is the raw text and ``punc_cache`` comes back as it went in. ``pack=False`` turns
    the packed encoder off (each item through its own ``encode``; for benchmarks and tests); it is also off for
    encoders :func:`~tasks.batched.offline_encoder.packable` does not know and for dithered frontends.
    """

    name = "funasr-offline"

    def __init__(
        self,
        asr_model: str,
        punc_model: str | None = None,
        *,
        device: str = "cpu",
        ncpu: int = 1,
        revision: str = "",
        punc_revision: str = "",
        punc_device: str | None = None,
        pack: bool = True,
    ) -> None:
        self.asr: Any = load_automodel(asr_model, device=device, ncpu=ncpu, revision=revision)
        self.punc: Any = None
        punc_device = punc_device or device
        if punc_model:
            self.punc = load_automodel(punc_model, device=punc_device, ncpu=ncpu, revision=punc_revision)
        self.description = f"{asr_model} on {device} + {punc_model or 'no punctuation'} on {punc_device}"
        self.ncpu = ncpu
        self.packed: PackedOfflineEncoder | None = None
        frontend = self.asr.kwargs.get("frontend")
        deterministic = getattr(frontend, "dither", 0.0) == 0.0  # dithered features differ on every call
        if pack and deterministic and packable(getattr(self.asr.model, "encoder", None)):
            planner = RowPlanner() if torch.device(device).type == "cpu" else None  # exact on CPU (see rowexact)
            self.packed = PackedOfflineEncoder(self.asr.model.encoder, planner)
        #: Items whose encoder output came from a packed batch (monotonic; for tests, metrics and benchmarks).
        self.packed_items = 0

    @property
    def has_punc(self) -> bool:
        return self.punc is not None

    def process(self, work: Sequence[SentenceWork]) -> list[SentenceOutput | RecognitionFailed]:
        """One output per item, in order; an item that fails gives a :class:`RecognitionFailed` in its place.

        Never raises for an item's sake and never modifies the items, so a failed item's session keeps its
        punctuation cache. The encoder runs once over all items, the rest per item (see the module docstring).
        Raises :class:`EngineError`, having done nothing, once the pipeline is closed.
        """
        if self.asr is None:
            raise EngineError("the offline pipeline is closed")
        encoded = self._encode_together(work)
        out: list[SentenceOutput | RecognitionFailed] = []
        for item, precomputed in zip(work, encoded):
            try:
                out.append(self._recognize(item, precomputed))
            except Exception as exc:  # noqa: BLE001 - isolate one sentence's failure from the others
                logger.exception("offline pass failed on a %d-sample sentence", len(item.audio))
                failure = RecognitionFailed(f"offline recognition failed: {type(exc).__name__}: {exc}")
                failure.__cause__ = exc
                out.append(failure)
        return out

    def recognize_one(self, item: SentenceWork) -> SentenceOutput:
        """One sentence on its own: FunASR's offline model, then its punctuation model on the session's cache copy."""
        return self._recognize(item, None)

    def _recognize(self, item: SentenceWork, precomputed: _Encoded | None) -> SentenceOutput:
        audio = _checked(item.audio)
        cache = json.loads(json.dumps(item.punc_cache))  # a private copy, and proof it is JSON-able
        kwargs: dict[str, Any] = {}
        hotword = funasr_hotword(hotword_words(item.hotwords))
        if hotword is not None:
            kwargs["hotword"] = hotword
        if precomputed is None:
            results = self.asr.generate(input=audio, **kwargs)
        else:
            with self._encode_from(precomputed):
                results = self.asr.generate(input=audio, **kwargs)
        if not results or not results[0].get("text"):  # SeACo returns no result when CIF fires no token
            return SentenceOutput("", "", [], [], cache)
        raw = results[0]["text"]
        timestamp = [[int(s), int(e)] for s, e in results[0].get("timestamp", [])]
        text = raw
        if self.punc is not None and item.punctuate:  # FunASR's server punctuates non-empty texts only
            text, cache = self.punctuate(raw, cache)
        return SentenceOutput(text, raw, timestamp, stamp_sentences(text, timestamp), cache)

    def punctuate(self, raw: str, cache: dict) -> tuple[str, dict]:
        """A sentence's raw text punctuated on a copy of the session's ``cache``: (text, the next cache). Without a
        punctuation model, or for an empty text (FunASR's servers punctuate non-empty texts only), unchanged."""
        cache = json.loads(json.dumps(cache))
        if self.punc is None or not raw:
            return raw, cache
        text = self.punc.generate(input=raw, cache=cache)[0]["text"]
        return text, json.loads(json.dumps(cache))

    def _encode_together(self, work: Sequence[SentenceWork]) -> list[_Encoded | None]:
        """Per item its features and packed encoder output, or None where FunASR's own ``encode`` will run.

        Packs two or more items; an item whose features cannot be computed is left to :meth:`_recognize` to report,
        and if the packed pass itself fails every item falls back to its own ``encode``.
        """
        encoded: list[_Encoded | None] = [None] * len(work)
        if self.packed is None or len(work) < 2:
            return encoded
        feats: dict[int, torch.Tensor] = {}
        for i, item in enumerate(work):
            try:
                feats[i] = self._features(_checked(item.audio))
            except Exception:  # noqa: BLE001 - _recognize reports this item's error
                continue
        if len(feats) < 2:
            return encoded
        try:
            if torch.get_num_threads() != self.ncpu:  # the thread count FunASR's generate runs its encode with
                torch.set_num_threads(self.ncpu)
            with torch.no_grad():
                outputs = self.packed([f[0] for f in feats.values()])
        except Exception:  # noqa: BLE001 - the items still run, each through its own encode
            logger.exception("packed offline encoder failed on %d sentences; encoding them one at a time", len(feats))
            return encoded
        for (i, f), output in zip(feats.items(), outputs):
            encoded[i] = _Encoded(f, output)
        return encoded

    def _features(self, audio: np.ndarray) -> torch.Tensor:
        """(1, T, D) features of one sentence, computed as the offline model's ``inference`` computes them."""
        from funasr.utils.load_utils import extract_fbank, load_audio_text_image_video

        kwargs = self.asr.kwargs
        frontend = kwargs["frontend"]
        samples = load_audio_text_image_video([audio], fs=frontend.fs, audio_fs=kwargs.get("fs", 16000))
        speech, _ = extract_fbank(samples, data_type=kwargs.get("data_type", "sound"), frontend=frontend)
        return speech.to(device=kwargs["device"])

    @contextmanager
    def _encode_from(self, precomputed: _Encoded) -> Iterator[None]:
        """While inside, the model's ``encode`` returns ``precomputed``'s output for exactly its features.

        Any other input (FunASR computed different features, or calls ``encode`` for something else) goes to the
        real ``encode``: the override can make a sentence slower, never different.
        """
        model = self.asr.model
        real = model.encode

        def encode(speech: torch.Tensor, speech_lengths: torch.Tensor, **kwargs: Any) -> Any:
            if speech.shape == precomputed.feats.shape and torch.equal(speech, precomputed.feats):
                self.packed_items += 1
                lengths = torch.tensor([precomputed.output.shape[0]], device=speech.device)  # int64, as FunASR's
                return precomputed.output[None], lengths
            return real(speech, speech_lengths, **kwargs)

        model.encode = encode  # an instance attribute shadows the method; nothing else uses the model meanwhile
        try:
            yield
        finally:
            del model.encode

    def close(self) -> None:
        """Drop the models. The pipeline is unusable afterwards."""
        self.asr = None
        self.punc = None
        self.packed = None


@dataclass(frozen=True)
class _Encoded:
    """One item's features (1, T, D), as its ``generate`` will compute them, and its encoder output (T', d)."""

    feats: torch.Tensor
    output: torch.Tensor


def _checked(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.dtype != np.float32 or audio.ndim != 1:
        raise ValueError(f"audio must be 1-D float32, got {audio.dtype} with shape {audio.shape}")
    return audio
