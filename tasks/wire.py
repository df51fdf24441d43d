"""The contract between gateway and workers: task names, payloads, result messages, queue and key names.

The gateway imports only this module (and ``tasks.errors``, ``tasks.options``) from ``tasks``: it submits tasks
by name and never imports torch or FunASR.

Streams and sessions. A client session (one WebSocket) is served by one *stream* at a time: ``<session>/<gen>``.
When its worker dies the gateway replays the session's unfinished audio to another worker under a new
generation, so late results of the old generation can be told apart and dropped.

Chunk payloads travel in Celery task messages serialized with **msgpack**: audio is raw bytes (16-bit LE PCM)
with no base64 step of our own, and msgpack is safe to decode, unlike pickle. (kombu's Redis transport still
base64-encodes the whole message body once.)
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from tasks.errors import ProtocolError
from tasks.options import (
    BYTES_PER_SAMPLE,
    CHUNK_MID_RANGE,
    SAMPLES_PER_CHUNK_UNIT,
    StreamOptions,
    check_hotwords,
)

TASK_CHUNK = "asr.chunk"
TASK_CLOSE_STREAM = "asr.close_stream"
TASK_SENTENCE = "asr.sentence"
SERIALIZER = "msgpack"

# kombu's Redis transport keeps each priority level of a queue in its own list: '<queue>\x06\x16<priority>'.
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


def worker_queue(base_queue: str, worker_id: str) -> str:
    """The queue a worker owns: every chunk of a stream assigned to that worker goes there, in order."""
    return f"{base_queue}.{worker_id}"


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that hold a Celery queue's waiting messages, one per priority step."""
    return [queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS]


def stream_id(session_id: str, generation: int) -> str:
    return f"{session_id}/{generation}"


def split_stream_id(stream: str) -> tuple[str, int]:
    session, _, gen = stream.rpartition("/")
    return session, int(gen)


@dataclass(frozen=True)
class Keys:
    """Redis key and channel names under one prefix (``ASR_KEY_PREFIX``)."""

    prefix: str = "asr:"

    def result_channel(self, session_id: str) -> str:
        return f"{self.prefix}result:{session_id}"

    @property
    def workers(self) -> str:
        """Set of worker ids that have ever announced themselves (pruned by the gateway monitor)."""
        return f"{self.prefix}workers"

    def worker(self, worker_id: str) -> str:
        """JSON heartbeat of one worker, with a TTL: the key's existence is the worker's liveness."""
        return f"{self.prefix}worker:{worker_id}"

    def leases(self, worker_id: str) -> str:
        """Sorted set of the sessions that hold a slot on a worker (see app.leases)."""
        return f"{self.prefix}leases:{worker_id}"


#: Bounds of a chunk task's fields, checked by :meth:`ChunkJob.from_wire`. The largest chunk is one of the largest
#: chunk_size[1]: 50 × 60 ms of 16-bit audio = 96,000 bytes (a final chunk is the shorter remainder).
MAX_CHUNK_BYTES = CHUNK_MID_RANGE[1] * SAMPLES_PER_CHUNK_UNIT * BYTES_PER_SAMPLE
MAX_STREAM_CHARS = 256  # '<session>/<gen>'; the gateway's session ids are 32 hex digits
MAX_CHANNEL_CHARS = 512
MAX_SEQ = 2**53 - 1  # stays exact in the JSON results clients decode
_STREAM_RE = re.compile(r"[!-~]+/(?:0|[1-9][0-9]{0,17})")  # printable ASCII session, '/', a canonical generation


def _bad_task(message: str) -> ProtocolError:
    return ProtocolError(f"malformed chunk task: {message}", code="bad_task")


def _check_stream(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_STREAM_CHARS or not _STREAM_RE.fullmatch(value):
        raise _bad_task(f"stream must be '<session>/<generation>' of at most {MAX_STREAM_CHARS} characters")
    return value


def _check_seq(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
        raise _bad_task(f"seq must be an integer in [0, {MAX_SEQ}]")
    return value


def _check_channel(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CHANNEL_CHARS:
        raise _bad_task(f"channel must be a non-empty string of at most {MAX_CHANNEL_CHARS} characters")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad_task(f"{name} must be a boolean, got {type(value).__name__}")
    return value


def _check_audio(value: Any) -> bytes:
    if not isinstance(value, (bytes, bytearray)):
        raise _bad_task(f"audio must be bytes, got {type(value).__name__}")
    if len(value) % BYTES_PER_SAMPLE:
        raise _bad_task("audio must be whole 16-bit samples (an even number of bytes)")
    if len(value) > MAX_CHUNK_BYTES:
        raise _bad_task(f"audio is {len(value)} bytes; a chunk is at most {MAX_CHUNK_BYTES}")
    return bytes(value)


def _check_time(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad_task("t must be a finite number (seconds)")
    return float(value)


@dataclass
class ChunkJob:
    """One chunk of one stream, as submitted to a worker.

    ``seq`` numbers the stream's chunks from 0 without gaps, across utterances. ``first`` marks the first chunk of
    an utterance (the worker starts fresh model state), ``is_final`` the last (the model flushes its tail).
    ``audio`` is 16-bit LE mono PCM at 16 kHz.

    ``options`` (:meth:`tasks.options.StreamOptions.to_wire`) travel once per stream: on the stream's first job
    (the first chunk a generation sends, after a replay too) and on no other. The worker keeps them for every
    later utterance of the stream; a ``first`` chunk of a stream it holds no options for fails with
    StreamStateLost, and the gateway replays the stream, options included.
    """

    stream: str
    seq: int
    audio: bytes
    is_final: bool = False
    first: bool = False
    options: dict | None = None
    channel: str = ""
    replay: bool = False
    submitted_at: float = field(default_factory=time.time)
    at: int = 0  # samples of the utterance before this chunk: the VAD's time base after a replay
    _parsed: StreamOptions | None = field(default=None, init=False, repr=False, compare=False)

    def stream_options(self) -> StreamOptions | None:
        """``options`` validated (:meth:`StreamOptions.from_wire`, which raises ProtocolError), or None."""
        if self.options is None:
            return None
        if self._parsed is None:
            self._parsed = StreamOptions.from_wire(self.options)
        return self._parsed

    def to_wire(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "seq": self.seq,
            "audio": self.audio,
            "final": self.is_final,
            "first": self.first,
            "options": self.options,
            "channel": self.channel,
            "replay": self.replay,
            "t": self.submitted_at,
            "at": self.at,
        }

    @classmethod
    def from_wire(cls, data: Any) -> ChunkJob:
        """Validate a task payload completely: every field's type and bounds, and the options through
        :meth:`StreamOptions.from_wire`. Anything malformed raises ProtocolError with code ``bad_task``, so a bad
        payload fails its own task and never reaches the engine. ``options`` come back normalized."""
        if not isinstance(data, dict):
            raise _bad_task(f"the payload must be a mapping, got {type(data).__name__}")
        missing = [k for k in ("stream", "seq", "audio", "final", "first", "channel") if k not in data]
        if missing:
            raise _bad_task(f"the payload lacks {', '.join(missing)}")
        first = _check_bool("first", data["first"])
        raw_options = data.get("options")
        parsed = None
        if raw_options is not None:
            if not first:
                raise _bad_task("options travel only on a stream's first chunk, which starts an utterance")
            try:
                parsed = StreamOptions.from_wire(raw_options)
            except ProtocolError as exc:
                raise _bad_task(f"bad stream options: {exc.message}") from exc
        job = cls(
            stream=_check_stream(data["stream"]),
            seq=_check_seq(data["seq"]),
            audio=_check_audio(data["audio"]),
            is_final=_check_bool("final", data["final"]),
            first=first,
            options=parsed.to_wire() if parsed else None,
            channel=_check_channel(data["channel"]),
            replay=_check_bool("replay", data.get("replay", False)),
            submitted_at=_check_time(data["t"]) if "t" in data else time.time(),
            at=_check_seq(data.get("at", 0)),
        )
        job._parsed = parsed
        return job

    @staticmethod
    def reply_address(data: Any) -> tuple[str, int, str] | None:
        """``(stream, seq, channel)`` of a payload :meth:`from_wire` refused, when those three are valid: whom
        to tell about it. None when the payload does not say."""
        if not isinstance(data, dict):
            return None
        try:
            return _check_stream(data.get("stream")), _check_seq(data.get("seq")), _check_channel(data.get("channel"))
        except ProtocolError:
            return None


def payload_summary(data: Any, limit: int = 300) -> str:
    """A log-safe description of a task payload: bytes by their length, strings cut short, the whole at most
    ``limit`` characters. Builds nothing larger than the cut pieces, whatever the payload's size."""

    def short(value: Any, depth: int) -> str:
        if isinstance(value, (bytes, bytearray)):
            return f"<{len(value)} bytes>"
        if isinstance(value, str):
            return repr(value[:60]) + ("..." if len(value) > 60 else "")
        if depth > 2 and isinstance(value, (dict, list, tuple)):
            return f"<{type(value).__name__} of {len(value)}>"
        if isinstance(value, dict):
            items = [f"{short(k, depth + 1)}: {short(v, depth + 1)}" for k, v in list(value.items())[:16]]
            return "{" + ", ".join(items) + (", ..." if len(value) > 16 else "") + "}"
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(short(v, depth + 1) for v in value[:8]) + (", ..." if len(value) > 8 else "") + "]"
        if isinstance(value, (int, float, bool)) or value is None:
            return repr(value)[:40]
        return f"<{type(value).__name__}>"

    text = short(data, 0)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class ChunkResult:
    """What a worker publishes on the session's result channel for each chunk, in chunk order.

    ``error`` is set (with ``code``) when the chunk could not be recognized; ``timing`` carries seconds spent
    waiting (``queued``: submission → batch start) and computing (``compute``: the batch's forward pass).
    """

    stream: str
    seq: int
    text: str = ""
    is_final: bool = False
    error: str | None = None
    code: str | None = None
    worker: str = ""
    timing: dict[str, float] = field(default_factory=dict)
    vad: list[list[int]] = field(default_factory=list)  # the VAD's events in this chunk (2pass, offline): see below

    # ``vad`` holds FunASR's streaming VAD events, ms from the utterance's first sample: [beg, -1] speech began,
    # [-1, end] it ended, [beg, end] both, in order.

    def encode(self) -> str:
        data: dict[str, Any] = {"stream": self.stream, "seq": self.seq, "text": self.text, "final": self.is_final}
        if self.error is not None:
            data["error"], data["code"] = self.error, self.code
        data["worker"] = self.worker
        if self.timing:
            data["timing"] = self.timing
        if self.vad:
            data["vad"] = self.vad
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | bytes) -> ChunkResult:
        return cls.from_data(json.loads(raw))

    @classmethod
    def from_data(cls, data: dict) -> ChunkResult:
        return cls(
            stream=data["stream"],
            seq=int(data["seq"]),
            text=data.get("text", ""),
            is_final=bool(data.get("final", False)),
            error=data.get("error"),
            code=data.get("code"),
            worker=data.get("worker", ""),
            timing=data.get("timing") or {},
            vad=[[int(a), int(b)] for a, b in data.get("vad") or []],
        )


#: Bounds of a sentence task (:class:`SentenceJob`). A sentence is one VAD segment: fsmn-vad cuts speech at
#: ``max_single_segment_time`` (60 s), and the gateway cuts at :data:`MAX_SENTENCE_SECONDS` whatever the VAD says.
MAX_SENTENCE_SECONDS = 60
MAX_SENTENCE_BYTES = MAX_SENTENCE_SECONDS * 16000 * BYTES_PER_SAMPLE
#: The punctuation model's per-session state travels with each sentence: FunASR's realtime CT-Transformer keeps
#: the words after the last sentence end (``pre_text``). The gateway keeps the last this many; the worker refuses
#: more.
MAX_PUNC_WORDS = 256
MAX_PUNC_BYTES = 16 * 1024


def carry_punc(punc: Any) -> dict:
    """The punctuation state a session carries into its next sentence, from the state a sentence's result left:
    its last :data:`MAX_PUNC_WORDS` words (FunASR's realtime model keeps the words after the last full stop)."""
    words = punc.get("pre_text", []) if isinstance(punc, dict) else []
    return {"pre_text": list(words[-MAX_PUNC_WORDS:])} if words or punc else {}


def _check_punc(value: Any) -> dict:
    """The punctuation state: ``{}`` or ``{"pre_text": [str, ...]}`` within the bounds above."""
    if not isinstance(value, dict) or set(value) - {"pre_text"}:
        raise _bad_task("punc must be {} or {'pre_text': [...]}")
    words = value.get("pre_text", [])
    if not isinstance(words, list) or len(words) > MAX_PUNC_WORDS or not all(isinstance(w, str) for w in words):
        raise _bad_task(f"punc pre_text must be a list of at most {MAX_PUNC_WORDS} strings")
    if sum(len(w) for w in words) * 4 > MAX_PUNC_BYTES:
        raise _bad_task(f"punc pre_text is over {MAX_PUNC_BYTES} bytes")
    return {"pre_text": list(words)} if "pre_text" in value else {}


@dataclass
class SentenceJob:
    """One sentence for the offline pass (2pass and offline modes): a VAD segment's audio, cut by the gateway.

    Stateless: everything the offline model and the punctuation model need travels here — the audio, the
    session's hotwords and the session's punctuation state — so any worker can take it, and a lost one is simply
    sent again. ``index`` numbers the session's sentences from 0; ``start_ms`` is where the segment starts in its
    utterance (results carry absolute times). ``session`` is the session id (results go to its channel).
    """

    session: str
    index: int
    audio: bytes
    start_ms: int = 0
    hotwords: str = ""
    punc: dict = field(default_factory=dict)
    channel: str = ""
    submitted_at: float = field(default_factory=time.time)
    #: A file job's segment (tasks.filework), never on the wire: it runs only when the worker is otherwise idle,
    #: is not punctuated (the job punctuates its sentences in order at the end), and its result goes back to the
    #: submitter instead of a channel.
    background: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "index": self.index,
            "audio": self.audio,
            "start": self.start_ms,
            "hotwords": self.hotwords,
            "punc": self.punc,
            "channel": self.channel,
            "t": self.submitted_at,
        }

    @classmethod
    def from_wire(cls, data: Any) -> SentenceJob:
        """Validate a sentence payload completely (ProtocolError ``bad_task`` otherwise)."""
        if not isinstance(data, dict):
            raise _bad_task(f"the payload must be a mapping, got {type(data).__name__}")
        missing = [k for k in ("session", "index", "audio", "channel") if k not in data]
        if missing:
            raise _bad_task(f"the payload lacks {', '.join(missing)}")
        session = data["session"]
        if not isinstance(session, str) or not 0 < len(session) <= MAX_STREAM_CHARS:
            raise _bad_task(f"session must be a string of at most {MAX_STREAM_CHARS} characters")
        audio = data["audio"]
        if not isinstance(audio, (bytes, bytearray)) or len(audio) % BYTES_PER_SAMPLE:
            raise _bad_task("audio must be bytes of whole 16-bit samples")
        if len(audio) > MAX_SENTENCE_BYTES:
            raise _bad_task(f"a sentence is at most {MAX_SENTENCE_SECONDS} s ({MAX_SENTENCE_BYTES} bytes)")
        try:
            hotwords = check_hotwords(data.get("hotwords", ""))
        except ProtocolError as exc:
            raise _bad_task(exc.message) from exc
        return cls(
            session=session,
            index=_check_seq(data["index"]),
            audio=bytes(audio),
            start_ms=_check_seq(data.get("start", 0)),
            hotwords=hotwords,
            punc=_check_punc(data.get("punc", {})),
            channel=_check_channel(data["channel"]),
            submitted_at=_check_time(data["t"]) if "t" in data else time.time(),
        )

    @staticmethod
    def reply_address(data: Any) -> tuple[str, int, str] | None:
        if not isinstance(data, dict):
            return None
        session, channel = data.get("session"), data.get("channel")
        try:
            if not isinstance(session, str) or not session:
                return None
            return session, _check_seq(data.get("index")), _check_channel(channel)
        except ProtocolError:
            return None


@dataclass
class SentenceResult:
    """The offline pass's answer for one sentence, published on its session's channel.

    ``text`` is punctuated; ``timestamp`` has one [start, end] per token and ``stamp_sents`` FunASR's per-clause
    entries, all in ms from the utterance's first sample; ``punc`` is the session's new punctuation state.
    """

    session: str
    index: int
    text: str = ""
    raw_text: str = ""
    timestamp: list[list[int]] = field(default_factory=list)
    stamp_sents: list[dict] = field(default_factory=list)
    punc: dict = field(default_factory=dict)
    start_ms: int = 0
    end_ms: int = 0
    error: str | None = None
    code: str | None = None
    worker: str = ""
    timing: dict[str, float] = field(default_factory=dict)

    def encode(self) -> str:
        data: dict[str, Any] = {
            "kind": "sentence",
            "session": self.session,
            "index": self.index,
            "text": self.text,
            "raw": self.raw_text,
            "timestamp": self.timestamp,
            "stamp_sents": self.stamp_sents,
            "punc": self.punc,
            "start": self.start_ms,
            "end": self.end_ms,
            "worker": self.worker,
        }
        if self.error is not None:
            data["error"], data["code"] = self.error, self.code
        if self.timing:
            data["timing"] = self.timing
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_data(cls, data: dict) -> SentenceResult:
        return cls(
            session=data["session"],
            index=int(data["index"]),
            text=data.get("text", ""),
            raw_text=data.get("raw", ""),
            timestamp=data.get("timestamp") or [],
            stamp_sents=data.get("stamp_sents") or [],
            punc=data.get("punc") or {},
            start_ms=int(data.get("start", 0)),
            end_ms=int(data.get("end", 0)),
            error=data.get("error"),
            code=data.get("code"),
            worker=data.get("worker", ""),
            timing=data.get("timing") or {},
        )


def decode_result(raw: str | bytes) -> ChunkResult | SentenceResult:
    """A message from a session's result channel: a chunk's result or a sentence's."""
    data = json.loads(raw)
    if isinstance(data, dict) and data.get("kind") == "sentence":
        return SentenceResult.from_data(data)
    return ChunkResult.from_data(data)
