"""app.media against real files: recordings encoded here with PyAV (and espeak-ng), decoded back and compared with
the source signal resampled to 16 kHz by soxr; malformed, hostile and oversized inputs refused with the right error."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import soxr

from app.media import SAMPLE_RATE, DecodedAudio, MediaError, _Pcm16k, decode_file, decode_raw_pcm

MP4 = "mov,mp4,m4a,3gp,3g2,mj2"
VIDEO_CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"


class Output(io.BytesIO):
    """The ``out`` file: keeps what was written and the size of each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []

    def write(self, data) -> int:
        self.writes.append(len(data))
        return super().write(data)

    def samples(self) -> np.ndarray:
        return np.frombuffer(self.getvalue(), dtype="<i2").astype(np.float64) / 32768


def source(rate: int, channels: int, seconds: float) -> np.ndarray:
    """(channels, n) float32 below 4 kHz: a chirp on the left, a chord on the right, so a channel alone is not the
    mix; a chirp also gives the correlation a single peak."""
    t = np.arange(int(rate * seconds)) / rate
    chirp = 0.35 * np.sin(2 * np.pi * (300 * t + 400 * t**2)) * (0.6 + 0.4 * np.sin(2 * np.pi * 1.3 * t))
    chord = sum(0.12 * np.sin(2 * np.pi * f * t + f) for f in (523.0, 1187.0, 2741.0)) * (0.5 + 0.5 * np.cos(3.1 * t))
    pair = [chirp, chord] if channels == 2 else [(chirp + chord) / 2]
    return np.asarray(pair, dtype=np.float32)


def reference(signal: np.ndarray, rate: int) -> np.ndarray:
    """The channel average resampled to 16 kHz by soxr in one go: what the decoder should reproduce."""
    mono = signal.mean(axis=0, dtype=np.float32)
    return mono if rate == SAMPLE_RATE else soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")


def encode(path: Path, fmt: str, codec: str | None, signal: np.ndarray, rate: int, *, video: bool = False) -> Path:
    """Write ``signal`` (and, with ``video``, a few 64x64 frames before it) with PyAV's muxer ``fmt``."""
    layout = "stereo" if len(signal) == 2 else "mono"
    with av.open(str(path), "w", format=fmt) as container:
        picture = container.add_stream(VIDEO_CODEC, rate=10) if video else None
        sound = container.add_stream(codec, rate=rate, layout=layout) if codec else None
        if picture is not None:
            picture.width, picture.height, picture.pix_fmt = 64, 64, "yuv420p"
            for i in range(10):
                image = np.full((64, 64, 3), 20 * i, np.uint8)
                container.mux(picture.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(picture.encode(None))
        if sound is not None:
            _encode_audio(container, sound, signal, rate, layout)
    return path


def _encode_audio(container, stream, signal: np.ndarray, rate: int, layout: str) -> None:
    to_codec = av.AudioResampler(format=stream.codec_context.format.name, layout=layout, rate=rate)
    step = stream.codec_context.frame_size or 1024
    for start in range(0, signal.shape[1], step):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(signal[:, start : start + step]), format="fltp", layout=layout
        )
        frame.sample_rate, frame.pts = rate, start
        for converted in to_codec.resample(frame):
            container.mux(stream.encode(converted))
    container.mux(stream.encode(None))


def write_wav(path: Path, pcm: bytes, *, rate: int, channels: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path


def best_correlation(decoded: np.ndarray, expected: np.ndarray, max_lag: int = 960) -> float:
    """The highest normalised correlation over lags of up to ``max_lag`` samples (60 ms): codecs may delay."""
    best = -1.0
    for lag in range(-max_lag, max_lag + 1):
        a, b = decoded[max(lag, 0) :], expected[max(-lag, 0) :]
        n = min(len(a), len(b))
        a, b = a[:n], b[:n]
        best = max(best, float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b))))
    return best


def refused(path: Path, max_seconds: float = 30) -> tuple[MediaError, Output]:
    out = Output()
    with pytest.raises(MediaError) as caught:
        decode_file(path, out, max_seconds=max_seconds)
    return caught.value, out


# (name, muxer, encoder, rate, channels, decoded container, decoded codec, lossless)
FORMATS = [
    ("a.wav", "wav", "pcm_s16le", 44100, 2, "wav", "pcm_s16le", True),
    ("a.flac", "flac", "flac", 44100, 2, "flac", "flac", True),
    ("a.aiff", "aiff", "pcm_s16be", 22050, 2, "aiff", "pcm_s16be", True),
    ("a.caf", "caf", "pcm_s16le", 32000, 1, "caf", "pcm_s16le", True),
    ("a.w64", "w64", "pcm_s16le", 8000, 1, "w64", "pcm_s16le", True),
    ("a.opus", "ogg", "libopus", 48000, 2, "ogg", "opus", False),
    ("a.mp3", "mp3", "libmp3lame", 44100, 2, "mp3", "mp3", False),
    ("a.m4a", "ipod", "aac", 44100, 2, MP4, "aac", False),
    ("a.aac", "adts", "aac", 44100, 1, "aac", "aac", False),
    ("a.webm", "webm", "libopus", 48000, 1, "matroska,webm", "opus", False),
]


@pytest.mark.parametrize(("name", "muxer", "encoder", "rate", "channels", "container", "codec", "lossless"), FORMATS)
def test_each_format_decodes_to_16k_mono_matching_the_source(
    tmp_path, name, muxer, encoder, rate, channels, container, codec, lossless
):
    signal = source(rate, channels, 2.0)
    out = Output()
    got = decode_file(encode(tmp_path / name, muxer, encoder, signal, rate), out, max_seconds=10)
    assert got == DecodedAudio(got.samples, got.samples / SAMPLE_RATE, container, codec, rate, channels)
    assert abs(got.seconds - 2.0) <= 0.05, "within a codec's priming and padding"
    assert len(out.getvalue()) == 2 * got.samples
    assert len(out.writes) > 10 and max(out.writes) <= 2 * SAMPLE_RATE // 2, "written frame by frame"
    expected = reference(signal, rate)
    if lossless:  # the same arithmetic as soxr in one go, up to the source's own 16-bit rounding
        assert got.samples == len(expected)
        assert np.abs(out.samples() - expected).max() <= 3 / 32768
    assert best_correlation(out.samples(), expected) > 0.95


def test_stereo_is_averaged_not_one_channel(tmp_path):
    signal = source(44100, 2, 2.0)
    out = Output()
    decode_file(encode(tmp_path / "a.wav", "wav", "pcm_s16le", signal, 44100), out, max_seconds=10)
    left = soxr.resample(signal[0], 44100, SAMPLE_RATE, quality="HQ")
    assert best_correlation(out.samples(), reference(signal, 44100), max_lag=0) > 0.999
    assert best_correlation(out.samples(), left, max_lag=0) < 0.9


def test_16k_mono_wav_passes_through_bit_exact(tmp_path):
    pcm = np.random.default_rng(3).integers(-20000, 20000, 24000, dtype=np.int16).astype("<i2").tobytes()
    out = Output()
    got = decode_file(write_wav(tmp_path / "a.wav", pcm, rate=16000, channels=1), out, max_seconds=10)
    assert out.getvalue() == pcm and got.samples == 24000 and got.seconds == 1.5


def test_mp4_with_video_decodes_its_audio_and_video_only_is_no_audio(tmp_path):
    signal = source(44100, 2, 2.0)
    out = Output()
    got = decode_file(encode(tmp_path / "av.mp4", "mp4", "aac", signal, 44100, video=True), out, max_seconds=10)
    assert (got.container, got.codec, got.source_channels) == (MP4, "aac", 2)
    assert abs(got.seconds - 2.0) <= 0.05
    assert best_correlation(out.samples(), reference(signal, 44100)) > 0.95
    err, out = refused(encode(tmp_path / "v.mp4", "mp4", None, signal, 44100, video=True))
    assert (err.status, err.code, out.getvalue()) == (415, "no_audio", b"")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_speech_at_22k(tmp_path):
    path = tmp_path / "hello.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "hello world"], check=True, capture_output=True)
    with wave.open(str(path)) as w:
        rate, speech = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    out = Output()
    got = decode_file(path, out, max_seconds=10)
    assert (got.container, got.codec, got.source_rate, got.source_channels) == ("wav", "pcm_s16le", rate, 1)
    expected = soxr.resample(speech.astype(np.float32) / 32768, rate, SAMPLE_RATE, quality="HQ")
    assert got.samples == len(expected) and np.abs(out.samples() - expected).max() <= 1 / 32768


def _header_only_wav(path: Path) -> Path:
    return write_wav(path, b"", rate=16000, channels=1)


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda p: p.write_bytes(b""), 422, "empty_audio"),
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(50_000)), 415, "unsupported_media"),
        (lambda p: p.write_text("This is a transcript, not a recording.\n" * 200), 415, "unsupported_media"),
        (_header_only_wav, 422, "empty_audio"),
        (lambda p: write_wav(p, bytes(33 * 2 * 1600), rate=16000, channels=33), 415, "unsupported_media"),
        (lambda p: write_wav(p, bytes(2 * 4000), rate=4000, channels=1), 415, "unsupported_media"),
        (lambda p: write_wav(p, bytes(2 * 400_000), rate=400_000, channels=1), 415, "unsupported_media"),
    ],
    ids=["zero_bytes", "random_bytes", "text", "wav_header_only", "33_channels", "4_khz", "400_khz"],
)
def test_files_that_are_not_usable_audio(tmp_path, make, status, code):
    path = tmp_path / "upload.wav"
    make(path)
    err, out = refused(path)
    assert (err.status, err.code, out.getvalue()) == (status, code, b"")
    assert str(tmp_path) not in err.message, "the temporary path is not the client's business"


def test_too_long_stops_at_the_bound(tmp_path):
    signal = source(44100, 2, 3.0)
    err, out = refused(encode(tmp_path / "a.wav", "wav", "pcm_s16le", signal, 44100), max_seconds=1.0)
    assert (err.status, err.code) == (413, "too_long")
    written = len(out.getvalue()) // 2
    assert written <= SAMPLE_RATE, "nothing past the bound"
    assert SAMPLE_RATE - written < max(out.writes) // 2 + 64, "stopped within one frame of it"


def _damaged_m4a(tmp_path: Path, lo: float, hi: float) -> Path:
    """A 4 s M4A whose audio data (between the mdat header and moov) is random from fraction lo to hi."""
    path = encode(tmp_path / "a.m4a", "ipod", "aac", source(44100, 2, 4.0), 44100)
    data = bytearray(path.read_bytes())
    start, end = data.index(b"mdat") + 4, data.index(b"moov") - 4
    a, b = start + int((end - start) * lo), start + int((end - start) * hi)
    data[a:b] = np.random.default_rng(0).bytes(b - a)
    path.write_bytes(bytes(data))
    return path


def test_a_short_glitch_is_skipped(tmp_path):
    got = decode_file(_damaged_m4a(tmp_path, 0.5, 0.52), Output(), max_seconds=10)
    assert 3.5 < got.seconds < 4.1


def test_damage_after_some_audio_is_corrupt_media_and_before_any_is_unsupported(tmp_path):
    err, out = refused(_damaged_m4a(tmp_path, 0.5, 0.8))
    assert (err.status, err.code) == (422, "corrupt_media") and len(out.getvalue()) > 2 * SAMPLE_RATE
    err, out = refused(_damaged_m4a(tmp_path, 0.0, 0.3))
    assert (err.status, err.code, out.getvalue()) == (415, "unsupported_media", b"")


def test_decoding_stops_at_the_bound_before_reaching_later_damage(tmp_path):
    err, _ = refused(_damaged_m4a(tmp_path, 0.5, 0.8), max_seconds=1.0)
    assert (err.status, err.code) == (413, "too_long"), "the damage at 2 s was never decoded"


def _age_atime(path: Path) -> int:
    """Set atime well before mtime, so that under relatime (or strictatime) the next read moves it."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_mtime_ns - 3 * 86400 * 10**9, st.st_mtime_ns))
    return os.stat(path).st_atime_ns


def _assert_refused_unread(upload: Path, referenced: Path, demuxer: str) -> None:
    before = _age_atime(referenced)
    err, out = refused(upload)
    assert (err.status, err.code, out.getvalue()) == (415, "unsupported_media", b"")
    unread = os.stat(referenced).st_atime_ns == before
    with av.open(str(upload)) as container:  # the hole is real: FFmpeg left to itself follows the reference
        assert container.format.name == demuxer
        assert sum(frame.samples for frame in container.decode(audio=0)) > 0
    if os.stat(referenced).st_atime_ns == before:
        pytest.skip("this filesystem does not record reads (noatime): refused, but unread is not observable")
    assert unread, f"decode_file read {referenced.name}"


def test_hls_playlist_naming_a_local_file_is_refused_unread(tmp_path):
    segment = encode(tmp_path / "segment.ts", "mpegts", "aac", source(16000, 1, 2.0), 16000)
    playlist = tmp_path / "upload.m3u8"  # FFmpeg detects HLS only with this extension; the gateway may keep it
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.0,\n{segment.name}\n#EXT-X-ENDLIST\n")
    _assert_refused_unread(playlist, segment, "hls")


def test_ffconcat_naming_local_files_is_refused_unread(tmp_path):
    target = write_wav(tmp_path / "other.wav", bytes(32000), rate=16000, channels=1)
    listing = tmp_path / "upload.txt"
    listing.write_text(f"ffconcat version 1.0\nfile '{target.name}'\n")
    _assert_refused_unread(listing, target, "concat")
    listing.write_text("ffconcat version 1.0\nfile '/etc/passwd'\n")
    err, out = refused(listing)
    assert (err.status, err.code, out.getvalue()) == (415, "unsupported_media", b"")


def _raw(tmp_path: Path, signal: np.ndarray) -> Path:
    path = tmp_path / "a.pcm"
    path.write_bytes(np.clip(np.rint(signal.T * 32768), -32768, 32767).astype("<i2").tobytes())
    return path


def test_raw_pcm_16k_mono_passes_through(tmp_path):
    path = _raw(tmp_path, source(16000, 1, 1.0))
    out = Output()
    got = decode_raw_pcm(path, out, rate=16000, max_seconds=10)
    assert out.getvalue() == path.read_bytes()
    assert got == DecodedAudio(16000, 1.0, "raw", "pcm_s16le", 16000, 1)


@pytest.mark.parametrize(("rate", "channels"), [(8000, 2), (48000, 3), (22050, 1)])
def test_raw_pcm_is_downmixed_and_resampled_across_blocks(tmp_path, rate, channels):
    signal = np.concatenate([source(rate, 2, 3.0), source(rate, 1, 3.0)])[:channels]
    path = _raw(tmp_path, signal)
    assert path.stat().st_size > 64 * 1024, "more than one block"
    out = Output()
    got = decode_raw_pcm(path, out, rate=rate, channels=channels, max_seconds=10)
    quantised = np.frombuffer(path.read_bytes(), dtype="<i2").reshape(-1, channels).T.astype(np.float32) / 32768
    expected = reference(quantised, rate)
    assert (got.samples, got.source_rate, got.source_channels) == (len(expected), rate, channels)
    assert np.abs(out.samples() - expected).max() <= 1 / 32768, "blocks join seamlessly"


@pytest.mark.parametrize(
    ("size", "rate", "channels", "code"),
    [
        (3200, 7999, 1, "bad_rate"),
        (3200, 96000, 1, "bad_rate"),
        (3200, 16000, 0, "bad_channels"),
        (3200, 16000, 9, "bad_channels"),
        (3201, 16000, 1, "bad_pcm"),
        (3202, 16000, 2, "bad_pcm"),
        (0, 16000, 1, "empty_audio"),
    ],
)
def test_raw_pcm_parameters_and_length_are_checked(tmp_path, size, rate, channels, code):
    path = tmp_path / "a.pcm"
    path.write_bytes(bytes(size))
    out = Output()
    with pytest.raises(MediaError) as caught:
        decode_raw_pcm(path, out, rate=rate, channels=channels, max_seconds=10)
    assert (caught.value.status, caught.value.code, out.getvalue()) == (422, code, b"")


def test_raw_pcm_too_long_stops_at_the_bound(tmp_path):
    out = Output()
    with pytest.raises(MediaError) as caught:
        decode_raw_pcm(_raw(tmp_path, source(8000, 1, 15.0)), out, rate=8000, max_seconds=10.0)
    assert (caught.value.status, caught.value.code) == (413, "too_long")
    written = len(out.getvalue()) // 2
    assert len(out.writes) == 2 and written <= 10 * SAMPLE_RATE, "two 64 KiB blocks (4.1 s each), not the third"


def test_conversion_clips_to_16_bits_and_restarts_on_a_rate_change():
    pcm = _Pcm16k(max_seconds=10)
    clipped = pcm.feed(np.array([1.5, 1.0, 0.5, -1.0, -2.0], dtype=np.float32), 16000)
    assert np.frombuffer(clipped, dtype="<i2").tolist() == [32767, 32767, 16384, -32768, -32768]
    tone = source(8000, 1, 1.0)[0]
    converted = pcm.feed(tone, 8000) + pcm.feed(np.zeros(16000, dtype=np.float32), 16000) + pcm.finish()
    assert abs(len(converted) // 2 - 32000) <= 2 and pcm.samples == 5 + len(converted) // 2
    with pytest.raises(ValueError):
        _Pcm16k(max_seconds=0)
