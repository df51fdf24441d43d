"""The engine's model stages: what one batcher round does with the models, free of ordering and scheduling.

* :class:`ChunkStages` — a round of chunks: open each stream's model state on its first chunk (per its mode: the
  streaming recognizer's, the VAD's, or both), then the VAD over the chunks that need it (2pass, offline), then
  the streaming recognizer over those that need it (online, 2pass): one batched call per stage.
* :class:`SentenceStage` — a round of sentences (tasks.wire.SentenceJob): the offline model then punctuation.

Each stage isolates third-party failures the same way: if a batched call raises, its items are retried one by one,
so only the culprit fails (with a :class:`~tasks.errors.ServiceError` in its place). Per-stage sizes and times go
to the :class:`EngineObserver`. The engine (tasks.engine) owns the ordering table, the batching policy and the
publishing; these classes run on its batcher thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from config.logs import stream_fields
from tasks.errors import EngineError, ModelMissing, RecognitionFailed, ServiceError, StreamStateLost
from tasks.ordering import Stream, Waiting
from tasks.recognizer import ChunkWork, StreamingRecognizer, StreamState

if TYPE_CHECKING:  # the models load lazily in tasks.runtime; the stages only call them
    from tasks.offline import SentencePipeline
    from tasks.vad import StreamingVad
    from tasks.wire import SentenceJob

logger = logging.getLogger(__name__)

#: What a chunk's stages give: its text (or failure), in batch order; "" for an offline-mode chunk.
Outcome = str | ServiceError


class EngineObserver:
    """Instrumentation hooks, called from the batcher thread; this default does nothing (tasks.metrics exports
    them to Prometheus). They must be quick and must not raise."""

    def batch(self, size: int, waits: Sequence[float], forward: float, compute: float) -> None:
        """A batch ran: its chunks, each one's wait (submission to batch start, s; the gateway's wall clock
        against this host's), the recognizer call and the whole batch (s)."""

    def stage_ran(self, name: str, size: int, forward: float) -> None:
        """One model stage ran on ``size`` items in ``forward`` seconds: ``vad``, ``streaming`` or ``sentence``."""

    def failed(self, code: str, count: int = 1) -> None:
        """``count`` chunks failed with error ``code`` (tasks.errors)."""


class ChunkStages:
    """Model state per stream and the VAD and streaming stages of a round of chunks."""

    def __init__(
        self,
        recognizer: StreamingRecognizer,
        vad: StreamingVad | None,
        has_offline: bool,
        observer: EngineObserver,
        clock: Callable[[], float],
    ) -> None:
        self.recognizer = recognizer
        self.vad = vad
        self.has_offline = has_offline
        self.observer = observer
        self.clock = clock

    def run(self, batch: list[tuple[Stream, Waiting]]) -> tuple[list[Outcome], list[list[list[int]]], float]:
        """Each chunk's outcome and VAD events (ms in the utterance), and the streaming recognizer's time."""
        outcomes: list[Outcome | None] = [self.prepare(s, w) for s, w in batch]
        audio = [pcm_to_float(w.job.audio) for _, w in batch]
        events = self._vad(batch, outcomes, audio)
        todo = [i for i, outcome in enumerate(outcomes) if outcome is None and batch[i][0].state is not None]
        work = []
        for i in todo:
            stream, waiting = batch[i]
            state: StreamState = stream.state  # type: ignore[assignment]  # checked above
            work.append(ChunkWork(state, audio[i], waiting.job.is_final))
        t0 = self.clock()
        texts = self._recognize(work) if work else []
        forward = self.clock() - t0
        if len(texts) != len(work):
            raise EngineError(f"the recognizer returned {len(texts)} results for {len(work)} chunks")
        if work:
            self.observer.stage_ran("streaming", len(work), forward)
        for i, text in zip(todo, texts):
            outcomes[i] = (
                text
                if isinstance(text, (str, ServiceError))
                else RecognitionFailed(f"the recognizer returned a {type(text).__name__}, not text")
            )
        return [("" if o is None else o) for o in outcomes], events, forward  # None: offline mode, VAD only

    def prepare(self, stream: Stream, waiting: Waiting) -> ServiceError | None:
        """Ready a chunk's stream for it: a first chunk gets fresh model state under the stream's options (its
        own, or those kept from the stream's first job). An error returned fails the chunk."""
        if not waiting.job.first:
            return None if stream.opened else StreamStateLost("the stream has no model state here")
        if waiting.options is not None:
            stream.options = waiting.options
        options = stream.options
        if options is None:
            return StreamStateLost("this worker holds no options for the stream: replay it with options")
        if options.needs_vad and (self.vad is None or not self.has_offline):
            return ModelMissing(
                f"mode {options.mode!r} needs the VAD and offline models; this worker has not loaded them"
            )
        stream.opened = False
        try:
            stream.state = self.recognizer.open_stream(options) if options.needs_streaming else None
            stream.vad_state = self.vad.open_stream() if options.needs_vad and self.vad is not None else None
        except Exception as exc:  # noqa: BLE001 - the models are third-party code, as in _recognize
            logger.exception("could not open stream %s", stream.id, extra=stream_fields(stream.id))
            return RecognitionFailed(f"failed to open the stream: {type(exc).__name__}: {exc}")
        stream.vad_base_ms = waiting.job.at // 16
        stream.opened = True
        return None

    def _vad(
        self, batch: list[tuple[Stream, Waiting]], outcomes: list[Outcome | None], audio: list[np.ndarray]
    ) -> list[list[list[int]]]:
        """Run the VAD over the round's chunks that need it; a failure fails that chunk (outcomes[i])."""
        from tasks.vad import VadWork  # noqa: PLC0415 - numpy-side module, loaded with the models

        events: list[list[list[int]]] = [[] for _ in batch]
        todo = [i for i, o in enumerate(outcomes) if o is None and batch[i][0].vad_state is not None]
        vad = self.vad
        if not todo or vad is None:
            return events
        work = [VadWork(batch[i][0].vad_state, audio[i], batch[i][1].job.is_final) for i in todo]  # type: ignore[arg-type]
        t0 = self.clock()
        try:
            found: list[Any] = vad.process(work)
        except Exception as exc:  # noqa: BLE001 - third-party code: retry one by one to find the culprit
            logger.warning("VAD round of %d raised %r; retrying one by one", len(work), exc)
            found = [_one(vad.process, item, "VAD") for item in work]
        self.observer.stage_ran("vad", len(work), self.clock() - t0)
        for i, out in zip(todo, found):
            if isinstance(out, ServiceError):
                outcomes[i] = out
                continue
            base = batch[i][0].vad_base_ms
            events[i] = [[b + base if b >= 0 else -1, e + base if e >= 0 else -1] for b, e in out]
        return events

    def _recognize(self, work: list[ChunkWork]) -> list[str | RecognitionFailed]:
        """Run the batch; if the recognizer raises, retry the items alone so only the culprit fails."""
        try:
            return self.recognizer.process(work)
        except Exception as exc:  # noqa: BLE001 - the recognizer is third-party code; isolate its failures
            if len(work) == 1:
                logger.exception("recognizer raised on stream %r", work[0].state.options.wav_name)
                return [RecognitionFailed(f"recognizer failed: {type(exc).__name__}: {exc}")]
            logger.warning("batch of %d raised %r; retrying its chunks one by one", len(work), exc)
            return [self._recognize([item])[0] for item in work]


class SentenceStage:
    """The offline pass over a round of sentences: the offline model, then punctuation (tasks.offline)."""

    def __init__(self, pipeline: SentencePipeline | None, observer: EngineObserver, clock: Callable[[], float]) -> None:
        self.pipeline = pipeline
        self.observer = observer
        self.clock = clock

    def run(self, jobs: list[SentenceJob]) -> tuple[list[Any], float]:
        """Each sentence's :class:`~tasks.offline.SentenceOutput` or ServiceError, in order, and the time taken."""
        from tasks.offline import SentenceWork  # noqa: PLC0415 - numpy-side module, loaded with the models

        t0 = self.clock()
        pipeline = self.pipeline
        if pipeline is None:
            outputs: list[Any] = [ModelMissing("this worker has no offline model (ASR_OFFLINE_MODEL)")] * len(jobs)
        else:
            work = [
                SentenceWork(pcm_to_float(job.audio), job.hotwords, dict(job.punc), punctuate=not job.background)
                for job in jobs
            ]
            try:
                outputs = list(pipeline.process(work))
            except Exception as exc:  # noqa: BLE001 - third-party code: retry one by one to find the culprit
                logger.warning("sentence round of %d raised %r; retrying one by one", len(work), exc)
                outputs = [_one(pipeline.process, w, "offline pipeline") for w in work]
        forward = self.clock() - t0
        if len(outputs) != len(jobs):
            raise EngineError(f"the offline pipeline returned {len(outputs)} results for {len(jobs)} sentences")
        self.observer.stage_ran("sentence", len(jobs), forward)
        return outputs, forward


def _one(process: Callable[[list], Sequence[Any]], item: Any, what: str) -> Any:
    """One item through a stage alone; its exception becomes its RecognitionFailed."""
    try:
        return process([item])[0]
    except Exception as exc:  # noqa: BLE001 - third-party code
        logger.exception("%s raised on one item", what)
        return RecognitionFailed(f"{what} failed: {type(exc).__name__}: {exc}")


def pcm_to_float(pcm: bytes) -> np.ndarray:
    """16-bit LE PCM → float32 in [-1, 1), the scale FunASR's own byte loader uses."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
