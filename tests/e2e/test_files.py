"""File transcription end to end: uploads over HTTP, jobs in Redis, segments fanned out to real workers.

Faithfulness: a file's sentences (boundaries, texts, token times) equal what a 2pass session streaming the same
audio receives, and what FunASR's own VAD, offline model and punctuation give on that audio
(:func:`tests.e2e.test_twopass.reference_sentences`).
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import wave

import pytest
import redis

from app.formats import full_text
from tests.e2e.test_twopass import funasr_client, reference_sentences, run, sentences_of
from tests.speech import speech_pcm, wav_bytes
from tests.stack import wait_until

pytestmark = pytest.mark.slow

LONG_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Streaming speech recognition serves many users at once.",
    "Every sentence ends with a pause.",
    "Files are split into sentences by the voice activity detector.",
    "Each sentence is recognized on whichever worker is free.",
    "The results come back in order with their times.",
)


@pytest.fixture(scope="module")
def models(twopass_models) -> dict[str, str]:
    return twopass_models


@pytest.fixture(scope="module")
def files(make_module_stack, models):
    stack = make_module_stack(
        "files", vad_model=models["vad"], offline_model=models["offline"], punc_model=models["punc"]
    )
    stack.start_worker("w1")
    stack.start_gateway()
    return stack


def request(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body bytes) of one HTTP request; error statuses are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def upload(http: str, data: bytes, query: str = "", content_type: str = "audio/wav"):
    return request("POST", f"{http}/api/transcribe{query}", data, {"Content-Type": content_type})


def sentences(result: dict) -> list[tuple[int, int, str]]:
    return [(s["start"], s["end"], s["text"]) for s in result["sentences"]]


def wait_state(http: str, job: str, states: set[str], timeout: float = 120) -> dict:
    seen: list[dict] = []

    def reached():
        status, _, body = request("GET", f"{http}/api/transcribe/{job}")
        assert status == 200, body
        seen.append(json.loads(body))
        return seen[-1]["state"] in states

    wait_until(reached, timeout, interval=0.05, what=f"job {job} in {states}")
    return seen[-1]


def test_a_file_gives_the_2pass_sentences_and_funasrs_own_results(files, models):
    pcm = speech_pcm()
    expected = [e for e in reference_sentences(models, pcm) if e["text"]]
    live = sentences_of(run(funasr_client(files.http, "2pass", pcm)), "2pass-offline")

    status, _, body = upload(files.http, wav_bytes(pcm))

    assert status == 200, body
    result = json.loads(body)
    assert sentences(result) == [(e["start"], e["end"], e["text"]) for e in expected]
    assert sentences(result) == [(m["start_time"], m["end_time"], m["text"]) for m in live]
    for got, message in zip(result["sentences"], live):
        assert got["timestamp"] == json.loads(message["timestamp"])
        assert got["stamp_sents"] == message["stamp_sents"]
    assert result["duration"] == pytest.approx(len(pcm) / 32000, abs=0.001)
    assert result["text"] == full_text({"sentences": expected})


def test_hotwords_reach_the_offline_model_for_files_too(files, models):
    from urllib.parse import quote

    pcm = speech_pcm()
    hotwords = json.dumps({"一丁七": 20, "万三上": 30}, ensure_ascii=False)  # characters of the tiny vocabulary
    biased = [(e["start"], e["end"], e["text"]) for e in reference_sentences(models, pcm, hotwords) if e["text"]]

    status, _, body = upload(files.http, wav_bytes(pcm), f"?hotwords={quote(hotwords)}")

    assert status == 200, body
    result = json.loads(body)
    assert sentences(result) == biased and result["hotwords"] == hotwords


def test_formats_and_a_resampled_stereo_upload(files, models):
    import numpy as np
    import soxr
    import srt
    import webvtt

    pcm = speech_pcm()
    mono = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    up = soxr.resample(mono, 16000, 44100)
    stereo = np.clip(np.stack([up, up], axis=1), -1, 0.99997)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes((stereo * 32768).astype("<i2").tobytes())

    status, headers, body = upload(files.http, out.getvalue(), "?format=srt")
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/x-subrip")
    cues = list(srt.parse(body.decode()))
    assert len(cues) >= 3 and all(c.end > c.start for c in cues)
    status, headers, body = upload(files.http, wav_bytes(pcm), "?format=vtt")
    assert status == 200 and headers["Content-Type"].startswith("text/vtt")
    captions = webvtt.from_string(body.decode())
    expected = [e for e in reference_sentences(models, pcm) if e["text"]]
    assert len(captions) >= len(expected)
    status, headers, body = upload(files.http, wav_bytes(pcm), "?format=text")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert body.decode().strip() == full_text({"sentences": expected})


def test_an_async_job_reports_progress_then_its_result(files, models):
    pcm = speech_pcm(LONG_SENTENCES)
    status, headers, body = upload(files.http, wav_bytes(pcm), "?async=1&format=json")
    assert status == 202, body
    job = json.loads(body)["id"]
    assert headers["Location"] == f"/api/transcribe/{job}"

    seen: list[dict] = []

    def done():
        _, _, raw = request("GET", f"{files.http}/api/transcribe/{job}")
        seen.append(json.loads(raw))
        return seen[-1]["state"] == "done"

    wait_until(done, 120, interval=0.02, what="the job to finish")
    progress = [s["progress"] for s in seen]
    done_counts = [p["segments_done"] for p in progress]
    assert done_counts == sorted(done_counts), "progress never goes back"
    assert seen[-1]["progress"]["segments_done"] == seen[-1]["progress"]["segments_total"] >= len(LONG_SENTENCES)
    assert seen[-1]["progress"]["audio_seconds_done"] == seen[-1]["duration"]
    result = seen[-1]["result"]
    expected = [e for e in reference_sentences(models, pcm) if e["text"]]
    assert sentences(result) == [(e["start"], e["end"], e["text"]) for e in expected]
    status, _, body = request("GET", f"{files.http}/api/transcribe/{job}?format=text")
    assert status == 200 and body.decode().strip() == result["text"]


def test_cancel_frees_the_job_and_its_queued_segments(files):
    pcm = speech_pcm(LONG_SENTENCES * 3)
    status, _, body = upload(files.http, wav_bytes(pcm), "?async=1")
    assert status == 202, body
    job = json.loads(body)["id"]
    wait_state(files.http, job, {"transcribing", "splitting"})

    status, _, body = request("DELETE", f"{files.http}/api/transcribe/{job}")

    assert status == 200 and json.loads(body)["state"] == "cancelled"
    client = redis.Redis.from_url(files.redis_url)
    prefix = files.prefix
    assert not client.exists(f"{prefix}file:{job}:audio", f"{prefix}file:{job}:results")
    wait_until(lambda: not any(job.encode() in i for i in client.lrange(f"{prefix}files:todo", 0, -1)), 30,
               what="its queued segments to be dropped")  # fmt: skip
    state = json.loads(request("GET", f"{files.http}/api/transcribe/{job}")[2])
    assert state["state"] == "cancelled" and "result" not in state
    assert request("DELETE", f"{files.http}/api/transcribe/{job}")[0] == 409
    assert request("GET", f"{files.http}/api/transcribe/{job}?format=srt")[0] == 409


def test_bad_uploads_get_clear_errors(files):
    def error(status_and_body):
        status, _, body = status_and_body
        return status, json.loads(body)["error"]["code"]

    assert error(upload(files.http, b"")) == (422, "empty_file")
    assert error(upload(files.http, b"\x00garbage" * 100)) == (415, "unsupported_media")
    assert error(upload(files.http, wav_bytes(b""))) == (422, "empty_audio")
    assert error(upload(files.http, wav_bytes(speech_pcm()), "?format=docx")) == (400, "bad_parameter")
    assert error(upload(files.http, b"--x\r\n\r\n--x--\r\n", "", "multipart/form-data; boundary=x")) == (
        400,
        "missing_file",
    )
    assert error(request("GET", f"{files.http}/api/transcribe/nope")) == (404, "not_found")
    assert error(upload(files.http, b"\x01\x00" * 1601, "", "audio/L16;rate=1000")) == (422, "bad_rate")


def process(stack, name: str):
    return next(p for p in reversed(stack.procs) if p.name == name)


def test_limits_answer_413(files):
    original = files.http, files.url
    files.start_gateway("small", file_max_bytes=100_000, file_max_seconds=2.0)
    http = files.http
    try:
        status, _, body = upload(http, wav_bytes(b"\x00\x01" * 60_000))
        assert status == 413 and json.loads(body)["error"]["code"] == "too_large"
        status, _, body = upload(http, wav_bytes(b"\x00\x01" * 40_000))  # 2.5 s
        assert status == 413 and json.loads(body)["error"]["code"] == "too_long"
    finally:
        process(files, "small").kill()
        files.http, files.url = original


def test_uploads_in_flight_are_bounded_per_gateway_and_a_dropped_one_frees_its_slot(files):
    import socket
    from urllib.parse import urlparse

    original = files.http, files.url
    files.start_gateway("one-upload", file_max_uploads=1)
    address = urlparse(files.http)
    try:
        slow = socket.create_connection((address.hostname, address.port), timeout=10)
        head = "POST /api/transcribe HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\nContent-Length: 1000000\r\n\r\n"
        slow.sendall(head.encode() + b"\x00" * 1000)  # an upload that stalls mid-body holds the only slot

        def refused():
            status, headers, body = upload(files.http, wav_bytes(speech_pcm()))
            return status == 503 and json.loads(body)["error"]["code"] == "too_many_uploads" and headers["Retry-After"]

        wait_until(refused, 10, what="the second upload to be refused")
        slow.close()  # the client goes away: its slot is freed
        wait_until(lambda: upload(files.http, wav_bytes(speech_pcm()))[0] == 200, 20, what="a slot to free up")
    finally:
        process(files, "one-upload").kill()
        files.http, files.url = original


def test_the_openai_client_round_trips_every_response_format(files, models, tmp_path):
    openai = pytest.importorskip("openai")
    pcm = speech_pcm()
    path = tmp_path / "speech.wav"
    path.write_bytes(wav_bytes(pcm))
    expected = [e for e in reference_sentences(models, pcm) if e["text"]]
    text = full_text({"sentences": expected})
    client = openai.OpenAI(base_url=files.http + "/v1", api_key="unused", max_retries=0)

    with path.open("rb") as f:
        plain = client.audio.transcriptions.create(model="funasr", file=f)
    assert plain.text == text
    with path.open("rb") as f:
        verbose = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", timestamp_granularities=["word", "segment"]
        )
    assert verbose.text == text and verbose.duration == pytest.approx(len(pcm) / 32000, abs=0.01)
    assert [round(s.start * 1000) for s in verbose.segments] == [e["start"] for e in expected][: len(verbose.segments)]
    assert verbose.words and all(w.end >= w.start for w in verbose.words)
    for fmt in ("text", "srt", "vtt"):
        with path.open("rb") as f:
            body = client.audio.transcriptions.create(model="funasr", file=f, response_format=fmt)
        assert isinstance(body, str) and body.strip(), fmt
    with path.open("rb") as f, pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="funasr", file=f, response_format="docx")


def test_a_job_survives_its_gateway_and_a_worker_killed_mid_job(files, models):
    w2 = files.start_worker("w2")
    pcm = speech_pcm(LONG_SENTENCES * 2)
    status, _, body = upload(files.http, wav_bytes(pcm), "?async=1")
    assert status == 202, body
    job = json.loads(body)["id"]
    process(files, "gateway").kill()  # the gateway that took the upload goes away
    wait_state_direct = redis.Redis.from_url(files.redis_url)

    def transcribing():
        return wait_state_direct.hget(f"{files.prefix}file:{job}", "state") in (b"transcribing", b"punctuating")

    wait_until(transcribing, 60, interval=0.02, what="the job to be split")
    w2.kill(signal.SIGKILL)  # whatever it held goes back to the queue once its heartbeat expires
    files.start_gateway("gateway2")

    final = wait_state(files.http, job, {"done", "failed"}, timeout=180)

    assert final["state"] == "done", final
    expected = [e for e in reference_sentences(models, pcm) if e["text"]]
    assert sentences(final["result"]) == [(e["start"], e["end"], e["text"]) for e in expected]


def test_a_live_session_stays_exact_while_a_long_file_runs(files, models):
    pcm = speech_pcm(LONG_SENTENCES * 3)
    status, _, body = upload(files.http, wav_bytes(pcm), "?async=1")
    assert status == 202, body
    job = json.loads(body)["id"]
    live_pcm = speech_pcm()
    expected = [e["text"] for e in reference_sentences(models, live_pcm) if e["text"]]

    messages = run(funasr_client(files.http, "2pass", live_pcm, realtime=1.0))

    assert [m["text"] for m in sentences_of(messages, "2pass-offline")] == expected
    queue = json.loads(request("GET", f"{files.http}/api/queue")[2])
    assert "files" in queue and {"jobs", "audio_seconds", "segments_queued"} <= set(queue["files"])
    assert wait_state(files.http, job, {"done"}, timeout=180)["state"] == "done"


def test_the_command_line_client_writes_the_chosen_format(files, tmp_path):
    path = tmp_path / "speech.wav"
    path.write_bytes(wav_bytes(speech_pcm()))
    out = tmp_path / "speech.srt"
    run_cli = [sys.executable, "-m", "app.client", str(path), "--url", files.http, "--format", "srt"]
    done = subprocess.run([*run_cli, "-o", str(out), "--no-progress"], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    direct = upload(files.http, path.read_bytes(), "?format=srt")[2].decode()
    assert out.read_text(encoding="utf-8") == direct
