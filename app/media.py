"""Uploaded recordings on disk turned into 16 kHz mono 16-bit PCM, written incrementally to a binary file.

:func:`decode_file` decodes a media file with PyAV (FFmpeg); :func:`decode_raw_pcm` converts headerless s16le. Both
write little-endian int16 at 16 kHz to ``out`` as it is produced and return a :class:`DecodedAudio`; after a
:class:`MediaError` the output is partial and the caller discards it. Importing this module loads PyAV, numpy and
soxr (~0.1 s), which the gateway otherwise does without. Calls share no state: safe from any thread.

Untrusted input. Some FFmpeg demuxers open files or URLs named inside the input (``hls``, ``concat``, ``image2``…),
a local-file read / SSRF hole. Layers: (1) ``format_whitelist`` makes avformat refuse a probed format outside
:data:`ALLOWED_DEMUXERS` before it reads the header, so nothing a playlist names is opened, and the demuxer's name is
checked again, exactly, after opening; (2) FFmpeg reads an open Python file, ``io_open`` refuses every further open
(the way ``hls`` and mov data references open), and ``protocol_whitelist=file`` binds the rest; (3) ``codec_whitelist``
admits audio decoders only, so a video stream never reaches a video decoder.

Memory bound: one demuxed packet (bounded by the file, hence the upload limit), its frames as float32, soxr's
filter state (a few ms) and one frame's int16 output; never the whole file or the whole decoded audio. Raw PCM: one
64 KiB block.

Errors (:class:`MediaError` status / code):

- 415 ``unsupported_media``: not audio in an accepted container, undecodable before any audio came out, more than
  32 channels, or a source rate outside 8–384 kHz;  415 ``no_audio``: no audio stream (e.g. a video-only MP4);
- 413 ``too_long``: more than ``max_seconds``; decoding stops there, before writing past the bound;
- 422 ``empty_audio``: a 0-byte file, or none of it decodes to samples (a WAV header without data);
- 422 ``corrupt_media``: after some audio, the demuxer failed or more than :data:`MAX_BAD_PACKETS` packets did not
  decode. Fewer are skipped, as the ffmpeg CLI does (a gap of ~20–60 ms each): a glitch still leaves a recording
  worth transcribing. A demuxer that loses sync may instead end the stream quietly: the audio before the damage;
- 422 ``bad_rate`` / ``bad_channels`` / ``bad_pcm``: raw PCM parameters, or a length that is not whole frames.

OSError from reading ``path`` or writing ``out`` propagates: the server's problem, not the file's.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass
from typing import IO

import av
import numpy as np
import soxr
from av.audio.stream import AudioStream
from av.codec.codec import UnknownCodecError
from av.container import InputContainer

from tasks.errors import ServiceError
from tasks.options import SAMPLE_RATE

log = logging.getLogger(__name__)

__all__ = ["ALLOWED_DEMUXERS", "SAMPLE_RATE", "DecodedAudio", "MediaError", "decode_file", "decode_raw_pcm"]

# Demuxer names exactly as FFmpeg reports them (``container.format.name``).
ALLOWED_DEMUXERS = frozenset(
    {"wav", "w64", "aiff", "caf", "flac", "ogg", "mp3", "aac", "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"}
)
ACCEPTED_FORMATS = "WAV, FLAC, Ogg (Opus, Vorbis), MP3, AAC, MP4/M4A, WebM/Matroska, AIFF, CAF"
MAX_CHANNELS = 32
MIN_SOURCE_RATE = 8000  # Hz
MAX_SOURCE_RATE = 384000  # Hz
MAX_BAD_PACKETS = 16  # undecodable packets skipped before a stream counts as corrupt
RAW_MIN_RATE = 8000  # Hz
RAW_MAX_RATE = 48000  # Hz
RAW_MAX_CHANNELS = 8
RAW_BLOCK_BYTES = 64 * 1024

# avformat matches any comma-separated name of a demuxer against this list; "mov" admits "mov,mp4,m4a,...".
_FORMAT_WHITELIST = ",".join(sorted(ALLOWED_DEMUXERS))
_NOT_ACCEPTED = f"The file is not audio in an accepted format ({ACCEPTED_FORMATS})."
_INT_FULL_SCALE = {"s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}


class MediaError(ServiceError):
    """A file that cannot be transcribed. ``status``: the HTTP status to answer with (413, 415 or 422); ``code``: a
    short snake_case error code; ``message``: a sentence for the client."""

    code = "unsupported_media"

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message, code=code)
        self.status = status


@dataclass(frozen=True)
class DecodedAudio:
    """What was written: ``samples`` 16 kHz mono samples (``seconds`` = samples / 16000), and the source's demuxer
    name as FFmpeg reports it (e.g. ``"wav"``, ``"mov,mp4,m4a,3gp,3g2,mj2"``), codec (e.g. ``"opus"``), rate and
    channel count."""

    samples: int
    seconds: float
    container: str
    codec: str
    source_rate: int
    source_channels: int


def decode_file(path: str | os.PathLike[str], out: IO[bytes], *, max_seconds: float) -> DecodedAudio:
    """Decode the first audio stream of the media file at ``path`` into 16 kHz mono s16le PCM written to ``out``.

    Frames are decoded, downmixed (channel average), resampled (soxr HQ, streaming) and written one at a time; at
    most ``max_seconds`` of output is written before 413 ``too_long``. Raises :class:`MediaError` as the module
    docstring lists; no PyAV exception escapes.
    """
    pcm = _Pcm16k(max_seconds)
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            raise MediaError("The file is empty.", status=422, code="empty_audio")
        try:
            with _open_container(file) as container:
                stream = _audio_stream(container)
                _decode_stream(container, stream, pcm, out)
                codec = stream.codec_context
                return pcm.result(container.format.name, codec.codec.canonical_name, codec.sample_rate, codec.channels)
        except (av.FFmpegError, _NestedOpenRefused) as exc:  # what the precise translations below do not cover
            raise _unsupported(f"The file cannot be decoded as audio ({_reason(exc)}).") from exc


def decode_raw_pcm(
    path: str | os.PathLike[str], out: IO[bytes], *, rate: int, channels: int = 1, max_seconds: float
) -> DecodedAudio:
    """Convert headerless s16le PCM interleaved at ``rate`` Hz (8000–48000) with ``channels`` (1–8) into 16 kHz mono
    s16le written to ``out``, reading 64 KiB at a time; at most ``max_seconds`` of output, as :func:`decode_file`."""
    if not RAW_MIN_RATE <= rate <= RAW_MAX_RATE:
        raise MediaError(f"Raw PCM rate must be {RAW_MIN_RATE}–{RAW_MAX_RATE} Hz.", status=422, code="bad_rate")
    if not 1 <= channels <= RAW_MAX_CHANNELS:
        raise MediaError(f"Raw PCM must have 1–{RAW_MAX_CHANNELS} channels.", status=422, code="bad_channels")
    pcm = _Pcm16k(max_seconds)
    frame_bytes = 2 * channels
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size % frame_bytes:
            raise MediaError(f"Raw PCM length is not whole {channels}-channel frames.", status=422, code="bad_pcm")
        while block := file.read(RAW_BLOCK_BYTES - RAW_BLOCK_BYTES % frame_bytes):
            samples = np.frombuffer(block, dtype="<i2").reshape(-1, channels)
            out.write(pcm.feed(samples.mean(axis=1, dtype=np.float32) / 32768.0, rate))
    out.write(pcm.finish())
    return pcm.result("raw", "pcm_s16le", rate, channels)


class _Pcm16k:
    """Mono float32 blocks at any source rate in, 16 kHz ``<i2`` bytes out, at most ``max_seconds`` in all.

    Holds only soxr's filter state (a few ms of audio). 16 kHz input passes through unresampled; a change of source
    rate mid-stream flushes the current resampler and starts another. Free of I/O: callers write what it returns.
    """

    def __init__(self, max_seconds: float) -> None:
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, not {max_seconds!r}")
        self.max_samples = math.floor(max_seconds * SAMPLE_RATE)
        self.samples = 0
        self._rate = 0
        self._stream: soxr.ResampleStream | None = None

    def feed(self, mono: np.ndarray, rate: int) -> bytes:
        """Convert one block; raises 413 ``too_long``, writing nothing of it, if it would pass the bound."""
        flushed = b""
        if rate != self._rate:
            flushed = self.finish()
            self._rate = rate
            if rate != SAMPLE_RATE:
                self._stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        if self._stream is not None:
            mono = self._stream.resample_chunk(mono, last=False)
        return flushed + self._emit(mono)

    def finish(self) -> bytes:
        """End of input: what the resampler still holds."""
        stream, self._stream, self._rate = self._stream, None, 0
        if stream is None:
            return b""
        return self._emit(stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))

    def result(self, container: str, codec: str, rate: int, channels: int) -> DecodedAudio:
        """The summary of a finished conversion; 422 ``empty_audio`` if nothing came out."""
        if self.samples == 0:
            raise MediaError("The file contains no audio samples.", status=422, code="empty_audio")
        return DecodedAudio(self.samples, self.samples / SAMPLE_RATE, container, codec, rate, channels)

    def _emit(self, mono: np.ndarray) -> bytes:
        if self.samples + len(mono) > self.max_samples:
            limit = self.max_samples / SAMPLE_RATE
            raise MediaError(f"The audio is longer than the {limit:g} s allowed.", status=413, code="too_long")
        self.samples += len(mono)
        return np.clip(np.rint(mono * 32768.0), -32768, 32767).astype("<i2").tobytes()


class _NestedOpenRefused(Exception):
    """A demuxer tried to open a second file or URL (raised from PyAV's ``io_open`` callback)."""


def _refuse_nested_open(url: str, flags: int, options: dict[str, str]) -> None:
    raise _NestedOpenRefused(f"refused to open {url!r} named inside the file")


@functools.cache
def _audio_decoders() -> str:
    """FFmpeg's audio decoder names as a ``codec_whitelist`` (computed once, ~2 KB)."""
    names = []
    for name in sorted(av.codecs_available):
        try:
            codec = av.Codec(name, "r")
        except UnknownCodecError:  # an encoder-only name
            continue
        if codec.type == "audio":
            names.append(name)
    return ",".join(names)


def _open_container(file: IO[bytes]) -> InputContainer:
    """Open ``file`` with the demuxer, protocol and decoder whitelists; 415 ``unsupported_media`` otherwise."""
    try:
        container = av.open(
            file,
            mode="r",
            container_options={"format_whitelist": _FORMAT_WHITELIST, "protocol_whitelist": "file"},
            options={"codec_whitelist": _audio_decoders()},
            io_open=_refuse_nested_open,
        )
    except (av.FFmpegError, _NestedOpenRefused) as exc:
        log.info("refused an upload: %s", _reason(exc))
        raise _unsupported(_NOT_ACCEPTED) from exc
    if container.format.name not in ALLOWED_DEMUXERS:  # the whitelist admits a demuxer by any of its names
        container.close()
        raise _unsupported(_NOT_ACCEPTED)
    return container


def _audio_stream(container: InputContainer) -> AudioStream:
    """The first audio stream, its declared rate and channels within bounds; 415 ``no_audio`` if there is none."""
    if not container.streams.audio:
        raise MediaError("The file has no audio stream.", status=415, code="no_audio")
    stream = container.streams.audio[0]
    declared = stream.codec_context
    if declared.sample_rate and declared.channels:  # 0 where only decoding will tell
        _check_layout(declared.sample_rate, declared.channels)
    return stream


def _decode_stream(container: InputContainer, stream: AudioStream, pcm: _Pcm16k, out: IO[bytes]) -> None:
    """Demux ``stream``'s packets and write each decoded frame's 16 kHz PCM; skips up to MAX_BAD_PACKETS."""
    bad = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets, None)
        except av.FFmpegError as exc:
            raise _damaged(exc, pcm.samples) from exc
        if packet is None:
            break
        try:
            frames = packet.decode()
        except av.FFmpegError as exc:
            bad += 1
            log.debug("skipping an undecodable packet (%d so far): %s", bad, exc)
            if bad > MAX_BAD_PACKETS:
                raise _damaged(exc, pcm.samples) from exc
            continue
        for frame in frames:
            _check_layout(frame.sample_rate, frame.layout.nb_channels)
            out.write(pcm.feed(_frame_mono(frame), frame.sample_rate))
    out.write(pcm.finish())


def _frame_mono(frame: av.AudioFrame) -> np.ndarray:
    """One frame as float32 in [-1, 1], averaged over its channels (any FFmpeg sample format, planar or packed)."""
    data = frame.to_ndarray()
    if not frame.format.is_planar:
        data = data.reshape(-1, frame.layout.nb_channels).T
    kind = frame.format.name.removesuffix("p")  # "fltp" -> "flt", "s16p" -> "s16"
    samples = data.astype(np.float32)
    if kind == "u8":
        samples = (samples - 128.0) / 128.0
    elif kind in _INT_FULL_SCALE:
        samples /= _INT_FULL_SCALE[kind]
    return samples.mean(axis=0, dtype=np.float32)


def _check_layout(rate: int, channels: int) -> None:
    """415 ``unsupported_media`` for a rate outside 8–384 kHz or more than 32 channels."""
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise _unsupported(f"A sample rate of {rate} Hz is not supported (8–384 kHz).")
    if not 1 <= channels <= MAX_CHANNELS:
        raise _unsupported(f"{channels} audio channels are not supported (at most {MAX_CHANNELS}).")


def _reason(exc: BaseException) -> str:
    """FFmpeg's reason without the file name PyAV appends (the temporary path is no business of the client)."""
    return str(getattr(exc, "strerror", None) or exc).rstrip(".").lower()


def _unsupported(message: str) -> MediaError:
    return MediaError(message, status=415, code="unsupported_media")


def _damaged(exc: BaseException, samples: int) -> MediaError:
    """415 if the stream failed before any audio came out, else 422 ``corrupt_media``."""
    if samples == 0:
        return _unsupported(f"The audio cannot be decoded ({_reason(exc)}).")
    seconds = samples / SAMPLE_RATE
    return MediaError(f"The audio is damaged after {seconds:.1f} s ({_reason(exc)}).", status=422, code="corrupt_media")
