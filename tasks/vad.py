"""The worker-side streaming VAD: FunASR's fsmn-vad over many streams' chunks, batched, bit-identical to FunASR.

The 2pass mode needs sentence boundaries: the worker runs FunASR's fsmn-vad per session on the chunks the streaming
recognizer gets. The engine owns one :class:`StreamingVad` per worker process, calls it from one thread, and keeps
one :class:`VadState` per open stream. Implementations (both built by :func:`load_vad`):

* :class:`FunASRVad` — the reference: one ``AutoModel.generate(input=chunk, cache=…, is_final=…, chunk_size=…)`` per
  stream-chunk, which is what FunASR's own server does (per 60 ms frame there).
* :class:`BatchedVad` — the same events, bit-identical on CPU: it runs FunASR's steps of
  ``FsmnVADStreaming.inference`` per stream (frontend ``WavFrontendOnline`` with the stream's own cache, decibels,
  the dynamic silence schedule, ``DetectCommonFrames`` / ``DetectLastFrames``, ``DropCachedFrames``), except that
  FunASR's FSMN encoder runs once for all streams whose chunk has the same frame count: their features are stacked
  and their per-layer FSMN caches concatenated along the batch. Every op of the FSMN treats batch rows
  independently, except the Linear layers, whose MKL kernel (and so rounding) depends on the row count;
  :class:`~tasks.batched.rowexact.RowPlanner` measures, per layer and frame count, whether a stream's rows get the
  same kernel alone as inside the big GEMM, and a frame count where they would not (short final chunks) runs
  through FunASR's own encoder per stream. On CUDA every group is batched and parity is not guaranteed.

Events are FunASR's streaming ``value``: ``(beg_ms, -1)`` speech began, ``(-1, end_ms)`` it ended, ``(beg, end)``
both within one chunk; milliseconds from the stream's first sample. By default FunASR 1.4.16 ends a segment after
its dynamic silence schedule (2 s of silence for the first 10 s of speech, shorter later); ``max_end_silence_ms``
fixes it instead (FunASR's ``max_end_silence_time``, 800 ms in the published config).

An empty final chunk gives no events and no flush, as in FunASR (``generate`` returns early on empty input, so a
segment still open stays without its end); the state is reset all the same. Send the stream's last samples with
``is_final`` to have an open segment closed.

Memory per stream is bounded. FunASR (1.4.16) trims the audio, decibels and scores it keeps (``stats.data_buf_all``,
``stats.decibel``, ``stats.scores``) with ``DropCachedFrames`` after every chunk, up to the first frame not yet
assigned to silence or to a segment, and the frontend keeps 640 samples in its ``waveform_buffer``; in silence that
is the start-point latency (0.4 s of audio, 41 frames); in speech, frames are assigned as they come, so the most
held is the trailing silence a segment end waits for (the end-silence threshold, <= 2 s, plus the latency). Measured
over 12 minutes of continuous speech, of silence and of noise: at most 24,720 samples (1.5 s) and 153 score frames
per stream, flat. The one thing FunASR lets grow is ``stats.output_data_buf``, one entry per segment for the
stream's whole life (until ``is_final``); after every chunk this module drops the entries whose events were already
returned (all but the last, which FunASR's ``ResetDetection`` still reads), so between chunks it holds one or two.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tasks.batched.rowexact import RowPlanner
from tasks.errors import ModelLoadError, RecognitionFailed
from tasks.recognizer import load_automodel

logger = logging.getLogger(__name__)

#: The service's chunk: 600 ms at 16 kHz, what the streaming recognizer gets.
CHUNK_MS = 600
#: FunASR switches ``inference`` to offline (whole-segment) output at this chunk size; streaming needs less.
OFFLINE_CHUNK_MS = 15000

Events = list[tuple[int, int]]


@dataclass
class VadState:
    """One stream's VAD state; only the VAD implementation touches ``cache`` (FunASR's streaming cache dict)."""

    cache: Any = field(default_factory=dict)
    samples: int = 0  # samples fed since the stream (re)started


@dataclass
class VadWork:
    """One stream-chunk: ``audio`` float32 in [-1, 1), 16 kHz mono, any length; ``is_final`` ends the stream."""

    state: VadState
    audio: np.ndarray
    is_final: bool


class StreamingVad(ABC):
    """Finds speech segments in chunks of many streams. Not thread-safe: the engine calls it from one thread.

    :meth:`process` returns, for each item in order, the chunk's events or a :class:`RecognitionFailed` for an item
    that failed (that stream's state is then unusable). If it raises instead, it has left every state unchanged.
    After a final chunk the state is ready for a new stream, counting from 0 ms again.
    """

    #: Short name for logs and benchmark tables.
    name = "abstract"
    #: Human description of the model behind it.
    description = ""

    def open_stream(self) -> VadState:
        return VadState()

    @abstractmethod
    def process(self, work: Sequence[VadWork]) -> list[Events | RecognitionFailed]:
        """Events of one chunk for each item; see the class docstring for the failure contract."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model. The VAD is unusable afterwards."""


class _FunASRBackedVad(StreamingVad):
    """What both FunASR implementations share: the loaded ``AutoModel`` and the ``generate`` options."""

    def __init__(
        self,
        automodel: Any,
        *,
        chunk_ms: int = CHUNK_MS,
        max_end_silence_ms: int | None = None,
        description: str = "",
    ) -> None:
        if not 0 < chunk_ms < OFFLINE_CHUNK_MS:
            raise ValueError(f"chunk_ms must be in (0, {OFFLINE_CHUNK_MS}) for streaming output, not {chunk_ms}")
        self.automodel: Any = automodel
        self.chunk_ms = chunk_ms
        #: Extra keyword arguments of FunASR's ``generate`` / ``inference`` (besides input, cache, is_final).
        self.options: dict[str, Any] = {}
        if max_end_silence_ms is not None:
            self.options["max_end_silence_time"] = max_end_silence_ms
        self.description = description

    def close(self) -> None:
        self.automodel = None

    def _check_open(self) -> None:
        if self.automodel is None:
            raise RuntimeError(f"{self.name} VAD is closed")


class FunASRVad(_FunASRBackedVad):
    """FunASR's own path: ``AutoModel.generate`` per stream-chunk. The reference :class:`BatchedVad` must match."""

    name = "funasr-vad"

    def process(self, work: Sequence[VadWork]) -> list[Events | RecognitionFailed]:
        self._check_open()
        out: list[Events | RecognitionFailed] = []
        for item in work:
            try:
                out.append(self._process_one(item))
            except Exception as exc:  # noqa: BLE001 - isolate one stream's failure from the batch
                logger.exception("VAD failed on a stream")
                out.append(RecognitionFailed(f"VAD failed: {type(exc).__name__}: {exc}"))
        return out

    def _process_one(self, item: VadWork) -> Events:
        cache = _checked_cache(item.state)
        audio = _as_audio(item.audio)
        result = self.automodel.generate(
            input=audio, cache=cache, is_final=item.is_final, chunk_size=self.chunk_ms, **self.options
        )
        events = [(int(beg), int(end)) for beg, end in result[0]["value"]] if result else []
        _after_chunk(item.state, len(audio), item.is_final)
        return events


@dataclass
class _Job:
    """One item's progress through :meth:`BatchedVad.process`: FunASR's ``inference`` locals for that stream."""

    index: int
    item: VadWork
    cache: dict
    audio: torch.Tensor  # prev_samples + this chunk
    steps: int  # FunASR's n: sub-chunks of chunk_ms to run
    kept: int  # FunASR's m: samples carried to the next chunk
    events: Events = field(default_factory=list)
    feats: torch.Tensor | None = None  # this step's features, (1, T, 400)
    waveform: torch.Tensor | None = None


class BatchedVad(_FunASRBackedVad):
    """FunASR's streaming fsmn-vad with the FSMN encoder batched across streams (see module docstring)."""

    name = "batched-vad"

    def __init__(self, automodel: Any, **kwargs: Any) -> None:
        super().__init__(automodel, **kwargs)
        self.model = automodel.model
        self.frontend = automodel.kwargs["frontend"]
        self.device = automodel.kwargs.get("device", "cpu")
        # What FunASR's inference sees as kwargs: the AutoModel's config plus the generate options.
        self.kwargs: dict[str, Any] = {**automodel.kwargs, **self.options, "chunk_size": self.chunk_ms}
        self.planner = RowPlanner() if str(self.device) == "cpu" else None
        self._batchable: dict[tuple[int, int, int], bool] = {}

    def process(self, work: Sequence[VadWork]) -> list[Events | RecognitionFailed]:
        self._check_open()
        out: list[Events | RecognitionFailed | None] = [None] * len(work)
        jobs: list[_Job] = []
        for index, item in enumerate(work):
            try:
                job = self._start(index, item)
            except Exception as exc:  # noqa: BLE001 - isolate one stream's failure from the batch
                out[index] = _failed(exc)
                continue
            if job is None:  # empty chunk: FunASR returns no events and changes nothing
                _after_chunk(item.state, 0, item.is_final)
                out[index] = []
            else:
                jobs.append(job)
        with torch.no_grad():
            step = 0
            while active := [job for job in jobs if step < job.steps and out[job.index] is None]:
                for job, error in self._step(active, step):
                    out[job.index] = _failed(error)
                step += 1
        for job in jobs:
            if out[job.index] is None:
                try:
                    self._finish(job)
                    out[job.index] = job.events
                except Exception as exc:  # noqa: BLE001
                    out[job.index] = _failed(exc)
        return [result if result is not None else RecognitionFailed("VAD produced nothing") for result in out]

    def _start(self, index: int, item: VadWork) -> _Job | None:
        """FunASR's ``inference`` up to its sub-chunk loop; None for an empty chunk (FunASR's early return)."""
        cache = _checked_cache(item.state)
        audio = torch.from_numpy(_as_audio(item.audio))
        if audio.numel() == 0:
            return None
        if len(cache) == 0:
            self.model.init_cache(cache, **self.kwargs)
        sample = torch.cat((cache["prev_samples"], audio))
        stride = int(self.chunk_ms * self.frontend.fs / 1000)
        final = int(item.is_final)
        steps = int(len(sample) // stride + final)
        kept = int(len(sample) % stride * (1 - final))
        return _Job(index, item, cache, sample, steps, kept)

    def _step(self, jobs: list[_Job], step: int) -> list[tuple[_Job, Exception]]:
        """One sub-chunk of every job: frontend per stream, encoder per frame-count group, decisions per stream."""
        failed: list[tuple[_Job, Exception]] = []
        ready: list[_Job] = []
        for job in jobs:
            try:
                if self._features(job, step):
                    ready.append(job)
            except Exception as exc:  # noqa: BLE001
                failed.append((job, exc))
        groups: dict[int, list[_Job]] = {}
        for job in ready:
            assert job.feats is not None
            groups.setdefault(job.feats.shape[1], []).append(job)
        scored: list[tuple[_Job, torch.Tensor]] = []
        for frames, group in groups.items():
            scored += self._encode(frames, group, failed)
        for job, scores in scored:
            try:
                self._decide(job, scores, job.item.is_final and step == job.steps - 1)
            except Exception as exc:  # noqa: BLE001
                failed.append((job, exc))
        return failed

    def _features(self, job: _Job, step: int) -> bool:
        """FunASR's loop body up to the encoder: dynamic silence threshold, then fbank. False: no frames."""
        cache, is_final = job.cache, job.item.is_final and step == job.steps - 1
        stride = int(self.chunk_ms * self.frontend.fs / 1000)
        chunk = job.audio[step * stride : (step + 1) * stride]
        self._apply_dynamic_silence(cache)
        speech, _ = _extract_fbank(chunk, self.frontend, cache["frontend"], is_final, self.kwargs)
        speech = speech.to(device=self.device)
        waveform = cache["frontend"].get("aligned_waveforms")
        if waveform is None or waveform.numel() == 0:
            waveform = cache["frontend"].get("waveforms")
        if speech.numel() > 0 and (waveform is None or waveform.numel() == 0):
            raise RuntimeError("Streaming VAD frontend must provide aligned_waveforms or waveforms")
        job.feats, job.waveform = speech, waveform
        return speech.numel() > 0  # FunASR's forward returns no segments for empty features

    def _apply_dynamic_silence(self, cache: dict) -> None:
        """FunASR 1.4.16's dynamic end-silence schedule, applied before each sub-chunk (``inference``'s loop)."""
        from funasr.models.fsmn_vad_streaming.model import DEFAULT_SILENCE_SCHEDULE

        kwargs = self.kwargs
        if not kwargs.get("dynamic_silence", kwargs.get("max_end_silence_time") is None) or "stats" not in cache:
            return
        accumulated = cache.get("_dynamic_accumulated_ms", 0)
        in_speech = cache.get("_dynamic_in_speech", False)
        if cache["stats"].vad_state_machine.value == 2 or in_speech:
            accumulated += self.chunk_ms
            in_speech = True
        for limit_ms, silence_ms in kwargs.get("silence_schedule", DEFAULT_SILENCE_SCHEDULE):
            if accumulated <= limit_ms:
                cache["stats"].max_end_sil_frame_cnt_thresh = max(
                    silence_ms - self.model.vad_opts.speech_to_sil_time_thres, 0
                )
                cache["stats"].speech_noise_thres = 0.5
                break
        cache["_dynamic_accumulated_ms"] = accumulated
        cache["_dynamic_in_speech"] = in_speech

    def _encode(
        self, frames: int, group: list[_Job], failed: list[tuple[_Job, Exception]]
    ) -> list[tuple[_Job, torch.Tensor]]:
        """Scores of each job's features: one batched FSMN call where it is row-exact, else FunASR's per stream."""
        if len(group) > 1 and self._can_batch(frames, len(group)):
            try:
                feats = [job.feats for job in group]
                scores = _encode_batched(self.model.encoder, feats, [job.cache["encoder"] for job in group])
                return list(zip(group, scores))
            except Exception:  # a stream's odd cache breaks the stack; find it by running them one by one
                logger.exception("batched VAD encoder failed; running %d streams one by one", len(group))
        out = []
        for job in group:
            try:
                out.append((job, self.model.encoder(job.feats, cache=job.cache["encoder"])))
            except Exception as exc:  # noqa: BLE001
                failed.append((job, exc))
        return out

    def _can_batch(self, frames: int, streams: int) -> bool:
        """Whether every encoder Linear gives a stream's ``frames`` rows the same bits inside ``streams`` × them."""
        if self.planner is None:
            return True
        key = (frames, streams, torch.get_num_threads())
        if key not in self._batchable:
            ok = True
            for layer in self.model.encoder.modules():
                if isinstance(layer, torch.nn.Linear):
                    plan = self.planner.plan(layer, frames)
                    rows = frames * streams
                    ok = ok and plan is not None and plan.all_large
                    ok = ok and type(layer) is torch.nn.Linear and self.planner.large_call_rows(layer, rows) == rows
            self._batchable[key] = ok
        return self._batchable[key]

    def _decide(self, job: _Job, scores: torch.Tensor, is_final: bool) -> None:
        """FunASR's ``forward`` after the encoder: decibels, scores, frame decisions, trimming, new events."""
        model, cache, stats = self.model, job.cache, job.cache["stats"]
        assert job.feats is not None
        stats.waveform = job.waveform
        model.ComputeDecibel(frame_count=job.feats.shape[1], cache=cache)
        # ComputeScores without its encoder call:
        if scores.shape[1] != job.feats.shape[1]:
            raise RuntimeError("The shape between feats and scores does not match")
        model.vad_opts.nn_eval_block_size = scores.shape[1]
        stats.frm_cnt += scores.shape[1]
        stats.scores = scores if stats.scores is None else torch.cat((stats.scores, scores), dim=1)
        if is_final:
            model.DetectLastFrames(cache=cache)
        else:
            model.DetectCommonFrames(cache=cache)
        model.DropCachedFrames(stats.data_buf_start_frame, cache=cache)
        segments = _new_segments(stats)
        job.events += segments
        dynamic = self.kwargs.get("dynamic_silence", self.kwargs.get("max_end_silence_time") is None)
        if segments and dynamic:
            cache["_dynamic_accumulated_ms"] = 0
            cache["_dynamic_in_speech"] = False

    def _finish(self, job: _Job) -> None:
        """FunASR's ``inference`` after its loop: carry the remainder, reset after a final chunk."""
        cache = job.cache
        cache["prev_samples"] = job.audio[-job.kept :] if job.kept > 0 else torch.empty(0)
        if job.item.is_final:
            self.model.init_cache(cache)
        _after_chunk(job.item.state, len(job.item.audio), job.item.is_final)


def _extract_fbank(chunk: torch.Tensor, frontend: Any, cache: dict, is_final: bool, kwargs: dict) -> tuple:
    from funasr.utils.load_utils import extract_fbank

    extra = {"return_waveform": True} if getattr(frontend, "supports_aligned_waveforms", False) else {}
    data_type = kwargs.get("data_type", "sound")
    return extract_fbank([chunk], data_type=data_type, frontend=frontend, cache=cache, is_final=is_final, **extra)


def _encode_batched(encoder: Any, feats: list, caches: list[dict]) -> list[torch.Tensor]:
    """FunASR's FSMN forward on stacked features with the streams' per-layer caches concatenated along the batch.

    Caches are written back only when the whole forward succeeded, so a failure leaves every stream's cache as it
    was. A stream's missing layer cache is FunASR's initial one: zeros.
    """
    batch: dict[str, torch.Tensor] = {}
    for block in encoder.fsmn:
        name = f"cache_layer_{block.stack_layer}"
        shape = (1, block.fsmn_block.dim, (block.lorder - 1) * block.lstride, 1)
        batch[name] = torch.cat([c[name] if name in c else torch.zeros(shape) for c in caches])
    scores = encoder(torch.cat(feats), cache=batch)
    for i, cache in enumerate(caches):
        for name, tensor in batch.items():
            cache[name] = tensor[i : i + 1].clone()
    return [scores[i : i + 1] for i in range(len(caches))]


def _new_segments(stats: Any) -> Events:
    """The streaming branch of FunASR's ``FsmnVADStreaming.forward``: events of segments not yet reported."""
    segments: Events = []
    for i in range(stats.output_data_buf_offset, len(stats.output_data_buf)):
        seg = stats.output_data_buf[i]
        if not seg.contain_seg_start_point:
            continue
        if not stats.next_seg and not seg.contain_seg_end_point:
            continue
        start_ms = seg.start_ms if stats.next_seg else -1
        if seg.contain_seg_end_point:
            end_ms = seg.end_ms
            stats.next_seg = True
            stats.output_data_buf_offset += 1
        else:
            end_ms = -1
            stats.next_seg = False
        segments.append((int(start_ms), int(end_ms)))
    return segments


def _checked_cache(state: VadState) -> dict:
    if not isinstance(state, VadState) or not isinstance(state.cache, dict):
        raise TypeError(f"not a VAD stream state: {type(state).__name__} with cache {type(state.cache).__name__}")
    return state.cache


def _as_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"VAD audio must be mono (1-D), got shape {audio.shape}")
    return audio


def _after_chunk(state: VadState, samples: int, is_final: bool) -> None:
    """Bookkeeping after FunASR processed a chunk: sample count, reset after a final, the segment-list bound."""
    if is_final:
        state.samples = 0
        if samples == 0:  # FunASR returned early without resetting: start the next stream afresh
            state.cache.clear()
    else:
        state.samples += samples
    stats = state.cache.get("stats")
    if stats is not None:
        drop = min(stats.output_data_buf_offset, len(stats.output_data_buf) - 1)
        if drop > 0:  # segments already reported; ResetDetection reads only the last one
            del stats.output_data_buf[:drop]
            stats.output_data_buf_offset -= drop


def _failed(exc: Exception) -> RecognitionFailed:
    logger.error("VAD failed on a stream: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return RecognitionFailed(f"VAD failed: {type(exc).__name__}: {exc}")


def load_vad(
    model: str,
    *,
    device: str = "cpu",
    batched: bool = True,
    revision: str = "",
    ncpu: int = 1,
    chunk_ms: int = CHUNK_MS,
    max_end_silence_ms: int | None = None,
) -> StreamingVad:
    """Load fsmn-vad (a local FunASR model folder or a hub name) through ``funasr.AutoModel``.

    ``batched`` picks :class:`BatchedVad`, else :class:`FunASRVad`. ``chunk_ms`` is FunASR's ``chunk_size`` (the
    audio is cut into sub-chunks of it; it also paces the dynamic silence schedule); ``max_end_silence_ms`` fixes
    the end silence instead of FunASR's dynamic schedule. Raises :class:`~tasks.errors.ModelLoadError`.
    """
    automodel = load_automodel(model, device=device, ncpu=ncpu, revision=revision)
    kind = type(getattr(automodel, "model", None)).__name__
    if kind != "FsmnVADStreaming":
        raise ModelLoadError(f"{model!r} is a {kind} model, not FunASR's streaming fsmn-vad (FsmnVADStreaming)")
    cls = BatchedVad if batched else FunASRVad
    return cls(
        automodel,
        chunk_ms=chunk_ms,
        max_end_silence_ms=max_end_silence_ms,
        description=f"fsmn-vad {model} on {device}",
    )
