"""The contract between gateway and workers: task names, payloads, result messages, queue and key names.

The gateway imports only this module (and ``tasks.errors``) from ``tasks``: it submits tasks by name and never
imports torch or FunASR.

Streams and sessions. A client session (one WebSocket) is served by one *stream* at a time: ``<session>/<gen>``.
When its worker dies the gateway replays the session's unfinished audio to another worker under a new
generation, so late results of the old generation can be told apart and dropped.

Chunk payloads travel in Celery task messages serialized with **msgpack**: audio is raw bytes (16-bit LE PCM)
with no base64 step of our own, and msgpack is safe to decode, unlike pickle. (kombu's Redis transport still
base64-encodes the whole message body once.)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from tasks.errors import ProtocolError

TASK_CHUNK = "asr.chunk"
TASK_CLOSE_STREAM = "asr.close_stream"
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


@dataclass
class ChunkJob:
    """One chunk of one stream, as submitted to a worker.

    ``seq`` numbers the stream's chunks from 0 without gaps, across utterances. ``first`` marks the first chunk of
    an utterance (the worker starts fresh model state; ``options`` is set then), ``is_final`` the last (the
    model flushes its tail). ``audio`` is 16-bit LE mono PCM at 16 kHz.
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
        }

    @classmethod
    def from_wire(cls, data: Any) -> ChunkJob:
        """Validate a task payload; anything malformed raises ProtocolError (the task then reports it)."""
        try:
            job = cls(
                stream=str(data["stream"]),
                seq=int(data["seq"]),
                audio=data["audio"],
                is_final=bool(data["final"]),
                first=bool(data["first"]),
                options=data.get("options"),
                channel=str(data["channel"]),
                replay=bool(data.get("replay", False)),
                submitted_at=float(data.get("t", time.time())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed chunk payload: {exc!r}", code="bad_task") from exc
        if not isinstance(job.audio, (bytes, bytearray)) or len(job.audio) % 2:
            raise ProtocolError("chunk audio must be whole 16-bit samples", code="bad_task")
        if job.first and not isinstance(job.options, dict):
            raise ProtocolError("first chunk of an utterance carries no options", code="bad_task")
        return job


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

    def encode(self) -> str:
        data: dict[str, Any] = {"stream": self.stream, "seq": self.seq, "text": self.text, "final": self.is_final}
        if self.error is not None:
            data["error"], data["code"] = self.error, self.code
        data["worker"] = self.worker
        if self.timing:
            data["timing"] = self.timing
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | bytes) -> ChunkResult:
        data = json.loads(raw)
        return cls(
            stream=data["stream"],
            seq=int(data["seq"]),
            text=data.get("text", ""),
            is_final=bool(data.get("final", False)),
            error=data.get("error"),
            code=data.get("code"),
            worker=data.get("worker", ""),
            timing=data.get("timing") or {},
        )
