"""File transcription jobs in Redis: what the gateway writes, what workers take and what both read back.

A job is created by a gateway (``app.files``) and done by workers (``tasks.filework``); everything about it lives
in Redis under ``<prefix>file:<id>…``, so a job survives the gateway that took the upload and any one worker:

=============================  =====================================================================================
``file:<id>`` (hash)           state, progress counters, options, error; the job's record
``file:<id>:audio`` (string)   the decoded audio, 16 kHz mono s16le; deleted when the job ends
``file:<id>:segments`` (list)  the VAD's sentences, ``[start_ms, end_ms]`` each, once split
``file:<id>:results`` (hash)   segment index → its offline result (raw text, token times), as they come
``file:<id>:result`` (string)  the finished transcription (JSON), once done
``files:jobs`` (sorted set)    jobs not finished yet, by creation time: admission counts them
``files:work`` (list)          job-level work: ``split <id>`` (VAD), ``final <id>`` (punctuation, assembly)
``files:todo`` (list)          segment work: ``seg <id> <index>``
``files:doing:<kind>:<worker>``  what one worker has taken from ``work``/``todo``, until it is done
``files:workers`` (set)        the workers that take items (whose ``doing`` lists recovery looks at)
=============================  =====================================================================================

Reliable queues. A worker moves an item from ``work``/``todo`` to its own ``doing`` list (``BLMOVE``) and deletes
it there once its outcome is written; a worker that dies leaves its items there, and any live worker moves them
back (:meth:`FileJobStore.requeue_orphans`): the job is delayed, never lost. Every step is idempotent (a segment's
result is written once, ``HSETNX``), so an item done twice costs time, not correctness.

States: ``queued`` → ``splitting`` → ``transcribing`` → ``punctuating`` → ``done``, or ``failed`` / ``cancelled``
from any of them. Sentences are queued as the split finds them, so workers recognize the first ones while the VAD
goes on. The last result (or the split's end, when every result came first) moves the job to ``punctuating`` and
queues its ``final`` item in the same Lua call, so no crash between the two can strand it. Cancelling deletes the
audio and results at once; its queued items are dropped when a worker takes them (an O(1) check), and results
arriving later are refused.

Bounds: every key of a job expires ``ttl`` seconds after its last write; audio is at most the gateway's
``ASR_FILE_MAX_SECONDS`` (32 KB per second) per job, and at most ``ASR_FILE_MAX_JOBS`` jobs are unfinished.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import redis

STATES = ("queued", "splitting", "transcribing", "punctuating", "done", "failed", "cancelled")
FINISHED = frozenset({"done", "failed", "cancelled"})
BLOCK_BYTES = 1 << 20  # audio goes to Redis in APPENDs of this size

_PUT_RESULT = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'transcribing' and state ~= 'splitting' then return -1 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return -2 end
redis.call('EXPIRE', KEYS[2], ARGV[5])
local done = redis.call('HINCRBY', KEYS[1], 'segments_done', 1)
redis.call('HINCRBY', KEYS[1], 'audio_done_ms', ARGV[3])
redis.call('HSET', KEYS[1], 'updated', ARGV[6])
if state == 'transcribing' and done == tonumber(redis.call('HGET', KEYS[1], 'segments_total')) then
  redis.call('HSET', KEYS[1], 'state', 'punctuating')
  redis.call('LPUSH', KEYS[3], ARGV[4])
end
return done
"""

_END_SPLIT = """
if redis.call('HGET', KEYS[1], 'state') ~= 'splitting' then return 0 end
redis.call('HSET', KEYS[1], 'segments_total', ARGV[1], 'speech_ms', ARGV[2], 'updated', ARGV[4])
local done = tonumber(redis.call('HGET', KEYS[1], 'segments_done') or '0')
if done >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'state', 'punctuating')
  redis.call('LPUSH', KEYS[2], ARGV[3])
else
  redis.call('HSET', KEYS[1], 'state', 'transcribing')
end
return 1
"""

_SET_STATE = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 0 end
for i = 3, #ARGV do
  if state == ARGV[i] then
    redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated', ARGV[2])
    return 1
  end
end
return 0
"""


@dataclass(frozen=True)
class Item:
    """One unit of work: ``split``/``final`` of a job, or ``seg`` (one segment) with its index."""

    kind: str
    job: str
    index: int = -1
    raw: str = ""

    @classmethod
    def parse(cls, raw: str | bytes) -> Item | None:
        text = raw.decode() if isinstance(raw, bytes) else raw
        parts = text.split(" ")
        if len(parts) == 2 and parts[0] in ("split", "final"):
            return cls(parts[0], parts[1], raw=text)
        if len(parts) == 3 and parts[0] == "seg" and parts[2].isdigit():
            return cls("seg", parts[1], int(parts[2]), raw=text)
        return None


class FileJobStore:
    """Reads and writes file jobs (see the module docstring). Thread-safe (a redis-py client is)."""

    def __init__(self, client: redis.Redis, prefix: str = "asr:", ttl: float = 86400.0) -> None:
        self.client: Any = client  # redis-py's command types do not admit its own reply types
        self.prefix = prefix
        self.ttl = int(ttl)
        self._put_result: Any = client.register_script(_PUT_RESULT)
        self._set_state: Any = client.register_script(_SET_STATE)
        self._end_split: Any = client.register_script(_END_SPLIT)

    # --- keys -----------------------------------------------------------------------------------------------------
    def key(self, job: str, part: str = "") -> str:
        return f"{self.prefix}file:{job}" + (f":{part}" if part else "")

    @property
    def jobs_key(self) -> str:
        return f"{self.prefix}files:jobs"

    def queue_key(self, kind: str) -> str:
        """``work`` (split, final) or ``todo`` (segments)."""
        return f"{self.prefix}files:{kind}"

    @property
    def workers_key(self) -> str:
        return f"{self.prefix}files:workers"

    def doing_key(self, kind: str, worker: str) -> str:
        return f"{self.prefix}files:doing:{kind}:{worker}"

    # --- gateway side ---------------------------------------------------------------------------------------------
    def create(self, job: str, pcm: BinaryIO, samples: int, meta: dict[str, Any]) -> None:
        """A new job: its audio (read from ``pcm`` in blocks), its record, then its ``split`` item."""
        audio = self.key(job, "audio")
        self.client.delete(audio)
        while block := pcm.read(BLOCK_BYTES):
            self.client.append(audio, block)
        now = time.time()
        record = {
            **{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in meta.items()},
            "state": "queued",
            "created": now,
            "updated": now,
            "samples": samples,
            "segments_done": 0,
            "audio_done_ms": 0,
        }
        pipe = self.client.pipeline()
        pipe.expire(audio, self.ttl)
        pipe.hset(self.key(job), mapping=record)
        pipe.expire(self.key(job), self.ttl)
        pipe.zadd(self.jobs_key, {job: now})
        pipe.lpush(self.queue_key("work"), f"split {job}")
        pipe.execute()

    def record(self, job: str) -> dict[str, str] | None:
        raw = self.client.hgetall(self.key(job))
        if not raw:
            return None
        return {text_of(k): text_of(v) for k, v in raw.items()}

    def state(self, job: str) -> str | None:
        raw = self.client.hget(self.key(job), "state")
        return None if raw is None else text_of(raw)

    def result(self, job: str) -> dict | None:
        raw = self.client.get(self.key(job, "result"))
        return json.loads(raw) if raw else None

    def cancel(self, job: str) -> bool:
        """Cancel an unfinished job and free its audio and partial results; False if it is finished or unknown."""
        if not self.set_state(job, "cancelled", ("queued", "splitting", "transcribing", "punctuating")):
            return False
        self._end(job)
        return True

    def active(self) -> list[str]:
        """Unfinished jobs, oldest first; entries whose record expired are dropped on the way."""
        jobs = [text_of(j) for j in self.client.zrange(self.jobs_key, 0, -1)]
        if not jobs:
            return []
        pipe = self.client.pipeline(transaction=False)
        for job in jobs:
            pipe.hget(self.key(job), "state")
        states = pipe.execute()
        gone = [j for j, s in zip(jobs, states) if s is None or text_of(s) in FINISHED]
        if gone:
            self.client.zrem(self.jobs_key, *gone)
        return [j for j, s in zip(jobs, states) if s is not None and text_of(s) not in FINISHED]

    def backlog(self) -> dict[str, float]:
        """Unfinished jobs and the audio seconds they still have to transcribe (for admission and /api/queue):
        one round trip for the job list and one for their counters, every monitor sample."""
        jobs = [text_of(j) for j in self.client.zrange(self.jobs_key, 0, -1)]
        if not jobs:
            return {"jobs": 0, "audio_seconds": 0.0}
        pipe = self.client.pipeline(transaction=False)
        for job in jobs:
            pipe.hmget(self.key(job), "state", "samples", "audio_done_ms")
        running, seconds, gone = 0, 0.0, []
        for job, (state, samples, done_ms) in zip(jobs, pipe.execute()):
            if state is None or text_of(state) in FINISHED:
                gone.append(job)
                continue
            running += 1
            seconds += max(int(samples or 0) / 16000 - int(done_ms or 0) / 1000, 0.0)
        if gone:
            self.client.zrem(self.jobs_key, *gone)
        return {"jobs": running, "audio_seconds": round(seconds, 3)}

    # --- worker side ----------------------------------------------------------------------------------------------
    def claim(self, kind: str, worker: str, timeout: float) -> Item | None:
        """Take the next ``work``/``todo`` item into this worker's ``doing`` list (blocking up to ``timeout``)."""
        raw = self.client.blmove(self.queue_key(kind), self.doing_key(kind, worker), timeout, "RIGHT", "LEFT")
        if raw is None:
            return None
        item = Item.parse(raw)
        if item is None:  # not ours: drop it rather than loop on it
            self.client.lrem(self.doing_key(kind, worker), 1, raw)
        return item

    def done(self, kind: str, worker: str, item: Item) -> None:
        self.client.lrem(self.doing_key(kind, worker), 1, item.raw)

    def give_back(self, kind: str, worker: str, item: Item) -> None:
        """Put an item this worker took but cannot finish (it is stopping) back at the head of the queue."""
        pipe = self.client.pipeline()
        pipe.lrem(self.doing_key(kind, worker), 1, item.raw)
        pipe.rpush(self.queue_key(kind), item.raw)
        pipe.execute()

    def register(self, worker: str) -> None:
        """Note that ``worker`` takes items, so :meth:`requeue_orphans` looks at its lists (no key scans)."""
        self.client.sadd(self.workers_key, worker)

    def requeue_orphans(self, alive: Callable[[str], bool]) -> int:
        """Move the items of registered workers that are not alive back to the head of their queues, and forget
        those workers; how many items moved."""
        moved = 0
        for worker in sorted(text_of(w) for w in self.client.smembers(self.workers_key)):
            if alive(worker):
                continue
            for kind in ("work", "todo"):
                while self.client.lmove(self.doing_key(kind, worker), self.queue_key(kind), "RIGHT", "RIGHT"):
                    moved += 1
            self.client.srem(self.workers_key, worker)
        return moved

    def set_state(self, job: str, state: str, only_from: tuple[str, ...]) -> bool:
        """Move the job to ``state`` if it is in one of ``only_from``; whether it moved."""
        return bool(self._set_state(keys=[self.key(job)], args=[state, time.time(), *only_from]))

    def read_audio(self, job: str, start: int, end: int) -> bytes:
        """Samples [start, end) of the job's audio as s16le bytes (fewer at the audio's end; none once freed)."""
        if end <= start:
            return b""
        return self.client.getrange(self.key(job, "audio"), 2 * start, 2 * end - 1)

    def add_segments(self, job: str, first: int, segments: list[tuple[int, int]]) -> bool:
        """Record sentences ``first…`` found so far and queue one item each, while the job is being split, so
        workers start on them before the split ends. ``first == 0`` starts the list afresh (a split run again
        after its worker died finds the same sentences: the VAD is deterministic, and results already recorded
        stay). False if the job left ``splitting`` (cancelled)."""
        if self.state(job) != "splitting":
            return False
        key = self.key(job, "segments")
        pipe = self.client.pipeline()
        if first == 0:
            pipe.delete(key)
        if segments:
            pipe.rpush(key, *[json.dumps(list(s)) for s in segments])
            pipe.lpush(self.queue_key("todo"), *[f"seg {job} {first + i}" for i in range(len(segments))])
        pipe.expire(key, self.ttl)
        pipe.execute()
        return True

    def end_split(self, job: str, total: int, speech_ms: int) -> bool:
        """The split is complete with ``total`` sentences: the job is ``transcribing``, or ``punctuating`` with its
        ``final`` item queued if every result is in already (or there is no speech). False if it was cancelled."""
        args = [total, speech_ms, f"final {job}", time.time()]
        return bool(self._end_split(keys=[self.key(job), self.queue_key("work")], args=args))

    def segment(self, job: str, index: int) -> tuple[int, int] | None:
        raw = self.client.lindex(self.key(job, "segments"), index)
        if raw is None:
            return None
        start, end = json.loads(raw)
        return int(start), int(end)

    def put_result(self, job: str, index: int, result: dict, audio_ms: int) -> int:
        """Record a segment's result once; the number of segments done, or -1 (job not transcribing), -2 (twice)."""
        args = [index, json.dumps(result, ensure_ascii=False), audio_ms, f"final {job}", self.ttl, time.time()]
        keys = [self.key(job), self.key(job, "results"), self.queue_key("work")]
        return int(self._put_result(keys=keys, args=args))

    def results(self, job: str) -> Iterator[tuple[int, dict]]:
        """The segments' results in index order."""
        raw = {int(text_of(k)): v for k, v in self.client.hgetall(self.key(job, "results")).items()}
        for index in sorted(raw):
            yield index, json.loads(raw[index])

    def update(self, job: str, **fields: Any) -> None:
        self.client.hset(self.key(job), mapping={**fields, "updated": time.time()})

    def finish(self, job: str, result: dict) -> bool:
        """Store the transcription and end the job (``done``); False if it was cancelled meanwhile."""
        self.client.set(self.key(job, "result"), json.dumps(result, ensure_ascii=False), ex=self.ttl)
        if not self.set_state(job, "done", ("punctuating",)):
            self.client.delete(self.key(job, "result"))
            return False
        self._end(job)
        return True

    def fail(self, job: str, code: str, message: str) -> None:
        """End an unfinished job as ``failed`` with a reason for the client."""
        if self.set_state(job, "failed", ("queued", "splitting", "transcribing", "punctuating")):
            self.update(job, error_code=code, error_message=message)
            self._end(job)

    def _end(self, job: str) -> None:
        pipe = self.client.pipeline()
        pipe.delete(self.key(job, "audio"), self.key(job, "results"), self.key(job, "segments"))
        pipe.zrem(self.jobs_key, job)
        pipe.expire(self.key(job), self.ttl)
        pipe.execute()


def text_of(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
