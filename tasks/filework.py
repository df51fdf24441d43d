"""A worker's share of file jobs (:mod:`tasks.filejobs`): VAD over an upload, its segments, its punctuation.

Every worker that serves the offline mode runs two threads beside its Celery pool:

* **jobs** takes ``split`` and ``final`` items. *split* runs the worker's streaming VAD over the file's audio in
  600 ms chunks, exactly as a 2pass session's chunks reach it (the last chunk is the remainder, possibly empty, and
  final), cuts sentences with :class:`tasks.segments.Segmenter` — the rule the gateway applies to live sessions —
  and queues one ``seg`` item per sentence as it finds them (other workers start on them at once). *final*
  punctuates the sentences in order, carrying the punctuation state from one to the next as a live session does
  (:func:`tasks.wire.carry_punc`), and stores the transcription. A file therefore gets the sentences, texts and
  times a 2pass session streaming it would get.
* **segments** takes ``seg`` items — any worker's, which is how a file fans out across all workers — and hands
  each to its engine as a background sentence, keeping at most ``inflight`` in the engine at once.

Live first: VAD slices and punctuation slices run as engine background calls and segments as background
sentences (:mod:`tasks.engine`), which run only when no live chunk is ready and no live sentence waits. A slice is
:data:`VAD_SLICE_CHUNKS` chunks (6 s of audio) or :data:`PUNC_SLICE` sentences, so a live chunk that becomes
ready meanwhile waits at most one slice. File work never occupies a Celery pool thread.

Failure: a worker that dies leaves its taken items in its ``doing`` lists; the jobs thread of every worker moves
the items of dead workers back every :data:`ORPHAN_SWEEP_SECONDS` (liveness = the heartbeat key), and a worker that
starts takes back what an earlier process of the same name left. A segment the model fails on fails its job with
that reason (no sentence is dropped silently).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from tasks.engine import Engine
from tasks.errors import RecognitionFailed
from tasks.filejobs import FileJobStore, Item, text_of
from tasks.offline import stamp_sentences
from tasks.ordering import Pending
from tasks.segments import Segmenter
from tasks.stages import pcm_to_float
from tasks.vad import CHUNK_MS, VadWork
from tasks.wire import SentenceJob, SentenceResult, carry_punc

logger = logging.getLogger(__name__)

CHUNK_SAMPLES = CHUNK_MS * 16
VAD_SLICE_CHUNKS = 10  # VAD chunks per engine call: 6 s of audio, ~70 ms with the full-size fsmn-vad here
PUNC_SLICE = 16  # sentences per punctuation call: ~0.15 s with the full-size realtime CT-Transformer here
ORPHAN_SWEEP_SECONDS = 2.0
CALL_TIMEOUT = 600.0  # an engine call not answered in this long means the engine is gone
RETRY_SECONDS = 1.0  # pause after a Redis error


class JobGone(Exception):
    """The job was cancelled, failed or expired while this worker worked on it: drop the item."""


class FileWork:
    """The two file-job threads of one worker (see the module docstring)."""

    def __init__(
        self,
        store: FileJobStore,
        engine: Engine,
        worker_id: str,
        *,
        alive: Callable[[str], bool],
        inflight: int = 8,
        claim_timeout: float = 1.0,
    ) -> None:
        if engine.vad is None or engine.sentences is None:
            raise ValueError("file jobs need the VAD and the offline model")
        self.store = store
        self.engine = engine
        self.worker_id = worker_id
        self.alive = alive
        self.inflight = max(1, inflight)
        self.claim_timeout = claim_timeout
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._current: Item | None = None  # the jobs thread's item, given back if it is stopped mid-way

    def start(self) -> FileWork:
        self._give_back_own()
        for name, target in (("asr-files-jobs", self._jobs_loop), ("asr-files-segments", self._segments_loop)):
            thread = threading.Thread(target=self._guard, args=(target,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking items; what this worker holds goes back to the queues (the engine releases its work)."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout)

    # --- threads --------------------------------------------------------------------------------------------------
    def _guard(self, loop: Callable[[], None]) -> None:
        while not self._stopping.is_set():
            try:
                loop()
            except redis.RedisError as exc:
                logger.warning("file jobs: Redis error (%s); retrying", exc)
                self._stopping.wait(RETRY_SECONDS)
            except Exception:  # noqa: BLE001 - a thread boundary: log and go on, never die silently
                logger.exception("file jobs: unexpected error; going on")
                self._stopping.wait(RETRY_SECONDS)

    def _jobs_loop(self) -> None:
        next_sweep = 0.0
        while not self._stopping.is_set():
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + ORPHAN_SWEEP_SECONDS
                moved = self.store.requeue_orphans(self.alive)
                if moved:
                    logger.warning("file jobs: %d items of workers that died are queued again", moved)
            item = self.store.claim("work", self.worker_id, self.claim_timeout)
            if item is None:
                continue
            self._current = item
            try:
                (self._split if item.kind == "split" else self._final)(item.job)
            except JobGone:
                pass
            except _EngineStopped:
                self.store.give_back("work", self.worker_id, item)
                return
            except Exception as exc:  # noqa: BLE001 - one job's failure ends that job, with the reason
                logger.exception("file job %s: %s failed", item.job, item.kind)
                self.store.fail(item.job, "file_failed", f"{item.kind} failed: {type(exc).__name__}: {exc}")
            self._current = None
            self.store.done("work", self.worker_id, item)

    def _segments_loop(self) -> None:
        held: dict[Item, tuple[Pending, int, int]] = {}  # item → (engine pending, start_ms, end_ms)
        try:
            while not self._stopping.is_set():
                self._collect(held)
                if len(held) >= self.inflight:
                    next(iter(held.values()))[0].settled(0.05)
                    continue
                item = self.store.claim("todo", self.worker_id, 0.05 if held else self.claim_timeout)
                if item is not None:
                    self._submit(item, held)
        finally:
            for item in held:
                self.store.give_back("todo", self.worker_id, item)

    # --- segments -------------------------------------------------------------------------------------------------
    def _submit(self, item: Item, held: dict[Item, tuple[Pending, int, int]]) -> None:
        state, hotwords = self.store.client.hmget(self.store.key(item.job), "state", "hotwords")
        live = state is not None and text_of(state) in ("splitting", "transcribing")
        bounds = self.store.segment(item.job, item.index) if live else None
        audio = self.store.read_audio(item.job, bounds[0] * 16, bounds[1] * 16) if bounds else b""
        if not audio:  # cancelled, failed or expired: nothing to do
            self.store.done("todo", self.worker_id, item)
            return
        job = SentenceJob(
            session=f"file:{item.job}",
            index=item.index,
            audio=audio,
            start_ms=bounds[0] if bounds else 0,
            hotwords=text_of(hotwords or b""),
            background=True,
        )
        held[item] = (self.engine.submit_sentence(job), job.start_ms, job.start_ms + len(audio) // 32)

    def _collect(self, held: dict[Item, tuple[Pending, int, int]]) -> None:
        for item, (pending, start_ms, end_ms) in list(held.items()):
            if not pending.done:
                continue
            del held[item]
            result = pending.result
            if not isinstance(result, SentenceResult):  # the engine stopped: another worker takes it
                self.store.give_back("todo", self.worker_id, item)
                continue
            if result.error is not None:
                message = f"sentence at {start_ms} ms could not be recognized: {result.error}"
                self.store.fail(item.job, result.code or "recognition_failed", message)
            else:
                data = {"raw": result.raw_text, "timestamp": result.timestamp, "start": start_ms, "end": end_ms}
                self.store.put_result(item.job, item.index, data, end_ms - start_ms)
            self.store.done("todo", self.worker_id, item)

    # --- split ----------------------------------------------------------------------------------------------------
    def _split(self, job: str) -> None:
        record = self.store.record(job)
        if record is None or not self.store.set_state(job, "splitting", ("queued", "splitting")):
            raise JobGone(job)
        samples = int(record["samples"])
        vad: Any = self.engine.vad
        state = vad.open_stream()
        segmenter = Segmenter()
        cuts: list[tuple[int, int]] = []
        if not self.store.add_segments(job, 0, []):
            raise JobGone(job)
        chunks = samples // CHUNK_SAMPLES + 1  # whole chunks, then the remainder (maybe empty) as the final one
        for first in range(0, chunks, VAD_SLICE_CHUNKS):
            lo, hi = first * CHUNK_SAMPLES, min((first + VAD_SLICE_CHUNKS) * CHUNK_SAMPLES, samples)
            pcm = self.store.read_audio(job, lo, hi)
            if len(pcm) != 2 * (hi - lo):
                raise JobGone(job)  # its audio was freed: cancelled
            audio = pcm_to_float(pcm)
            work = []
            for k in range(first, min(first + VAD_SLICE_CHUNKS, chunks)):
                start = k * CHUNK_SAMPLES - lo
                end = min(start + CHUNK_SAMPLES, hi - lo)
                work.append(VadWork(state, audio[start:end], k == chunks - 1))
            events = self._call(functools.partial(_run_vad, vad, work))
            found_before = len(cuts)
            for k, found in zip(range(first, first + len(work)), events):
                if isinstance(found, RecognitionFailed):
                    raise found
                end_ms = min((k + 1) * CHUNK_SAMPLES, samples) // 16
                cuts += segmenter.on_chunk(found, end_ms, k == chunks - 1)
            if not self.store.add_segments(job, found_before, cuts[found_before:]):
                raise JobGone(job)
            self.store.update(job, split_ms=hi // 16)
        if not self.store.end_split(job, len(cuts), sum(end - start for start, end in cuts)):
            raise JobGone(job)
        logger.info("file job %s: %.1f s of audio, %d sentences", job, samples / 16000, len(cuts))

    # --- final ----------------------------------------------------------------------------------------------------
    def _final(self, job: str) -> None:
        record = self.store.record(job)
        if record is None or record.get("state") != "punctuating":
            raise JobGone(job)
        results = list(self.store.results(job))
        pipeline: Any = self.engine.sentences
        cache: dict = {}
        sentences: list[dict] = []

        def punctuate(part: list[tuple[int, dict]], cache: dict) -> tuple[list[str], dict]:
            texts = []
            for _, data in part:
                text, cache = pipeline.punctuate(data["raw"], cache)
                texts.append(text)
                cache = carry_punc(cache)
            return texts, cache

        for first in range(0, len(results), PUNC_SLICE):
            part = results[first : first + PUNC_SLICE]
            texts, cache = self._call(functools.partial(punctuate, part, cache))
            for (index, data), text in zip(part, texts):
                if text:
                    sentences.append(_sentence(index, data, text))
        samples = int(record["samples"])
        result = {
            "duration": round(samples / 16000, 3),
            "language": record.get("language") or None,
            "hotwords": record.get("hotwords", ""),
            "sentences": sentences,
        }
        if not self.store.finish(job, result):
            raise JobGone(job)
        logger.info("file job %s done: %d sentences", job, len(sentences))

    # --- helpers --------------------------------------------------------------------------------------------------
    def _call(self, call: Callable[[], Any]) -> Any:
        """``call()`` in the engine's thread as background work; its exception is raised here."""
        try:
            outcome = self.engine.submit_background(call).wait(CALL_TIMEOUT)
        except TimeoutError as exc:
            raise _EngineStopped() from exc
        if outcome is None:  # released: the engine is stopping or dead
            raise _EngineStopped()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _give_back_own(self) -> None:
        """Items an earlier process with this worker's name left taken go back to the queues; then register."""
        moved = self.store.requeue_orphans(lambda worker: worker != self.worker_id)
        self.store.register(self.worker_id)
        if moved:
            logger.warning("file jobs: %d items an earlier process of %s held are queued again", moved, self.worker_id)


class _EngineStopped(Exception):
    """The engine released the call (stopping or dead): the item goes back for another worker."""


def _run_vad(vad: Any, work: list[VadWork]) -> list:
    """The VAD over consecutive chunks of one stream, one chunk per call (each needs the state the last one left)."""
    return [vad.process([w])[0] for w in work]


def _sentence(index: int, data: dict, text: str) -> dict:
    """One sentence of the transcription, times in ms from the file's start (as a 2pass session's messages)."""
    offset = int(data["start"])
    relative = [[int(s), int(e)] for s, e in data.get("timestamp", [])]
    stamp_sents = [
        dict(
            entry,
            start=entry["start"] + offset,
            end=entry["end"] + offset,
            ts_list=[[s + offset, e + offset] for s, e in entry["ts_list"]],
        )
        for entry in stamp_sentences(text, relative)
    ]
    return {
        "index": index,
        "start": offset,
        "end": int(data["end"]),
        "text": text,
        "raw_text": data["raw"],
        "timestamp": [[s + offset, e + offset] for s, e in relative],
        "stamp_sents": stamp_sents,
    }
