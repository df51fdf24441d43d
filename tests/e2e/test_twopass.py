"""FunASR's 2pass and offline modes end to end: real speech, the real fsmn-vad weights, real processes.

The client below speaks exactly as FunASR's own Python client (``runtime/python/websocket/funasr_wss_client.py``)
does: it connects to the root path offering the ``binary`` subprotocol, sends its configuration (mode, chunk_size,
chunk_interval, audio_fs, wav_name, wav_format, is_speaking, hotwords, itn), then 60 ms frames (all at once in
offline mode), then ``{"is_speaking": false, "is_end": true}``, and waits for a message with ``is_end``.

Faithfulness: the sentence boundaries equal ``AutoModel(fsmn-vad).generate`` on the same 600 ms chunks; each
``2pass-offline`` text equals the offline model plus punctuation (one punctuation cache across the session, as
FunASR's server keeps it) on exactly that segment's audio; the partials equal the streaming path.
"""

from __future__ import annotations

import asyncio
import json
from functools import lru_cache

import numpy as np
import pytest
import websockets

from tests import reference
from tests.speech import real_vad_dir, speech_pcm

CHUNK_SAMPLES = 9600  # chunk_size [5, 10, 5]: 600 ms


@pytest.fixture(scope="module")
def models(twopass_models) -> dict[str, str]:
    return twopass_models


@pytest.fixture(scope="module")
def twopass(make_module_stack, models):
    stack = make_module_stack(
        "twopass", vad_model=models["vad"], offline_model=models["offline"], punc_model=models["punc"]
    )
    stack.start_worker("w1")
    stack.start_gateway()
    return stack


@lru_cache(maxsize=4)
def _automodel(path: str):
    from funasr import AutoModel

    return AutoModel(model=path, disable_update=True, disable_pbar=True, disable_log=True, device="cpu", ncpu=1)


def reference_segments(vad_dir: str, pcm: bytes) -> list[tuple[int, int]]:
    """fsmn-vad's segments, from AutoModel.generate on the 600 ms chunks the worker gets."""
    vad = _automodel(vad_dir)
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    full = len(audio) // CHUNK_SAMPLES
    pieces = [(audio[i * CHUNK_SAMPLES : (i + 1) * CHUNK_SAMPLES], False) for i in range(full)]
    pieces.append((audio[full * CHUNK_SAMPLES :], True))
    cache: dict = {}
    segments, start = [], None
    for piece, final in pieces:
        for beg, end in vad.generate(input=piece, cache=cache, is_final=final, chunk_size=600)[0]["value"]:
            if beg >= 0:
                start = beg
            if end >= 0:
                segments.append((start if start is not None else beg, end))
                start = None
    return segments


def reference_sentences(models: dict[str, str], pcm: bytes, hotwords: str = "") -> list[dict]:
    """The offline model then punctuation on each segment's audio, one punctuation cache for the session."""
    asr, punc = _automodel(models["offline"]), _automodel(models["punc"])
    punc_cache: dict = {}
    out = []
    for start, end in reference_segments(models["vad"], pcm):
        segment = np.frombuffer(pcm[start * 32 : end * 32], dtype="<i2").astype(np.float32) / 32768.0
        kwargs = {"hotword": " ".join(json.loads(hotwords))} if hotwords else {}
        raw = asr.generate(input=segment, **kwargs)[0]
        text = punc.generate(input=raw["text"], cache=punc_cache)[0]["text"] if raw["text"] else ""
        out.append({"start": start, "end": end, "text": text, "timestamp": raw.get("timestamp", [])})
    return out


async def funasr_client(
    http: str,
    mode: str,
    pcm: bytes,
    *,
    hotwords: str = "",
    realtime: float = 0.0,
    into: list | None = None,
    audio_fs: int = 16000,
) -> list[dict]:
    """FunASR's Python client's message flow; returns every message up to the end acknowledgement (collected into
    ``into`` as they come, when given). ``realtime`` paces the frames (1.0: real time; 0: at once)."""
    url = http.replace("http://", "ws://") + "/"
    messages: list[dict] = [] if into is None else into
    async with websockets.connect(url, subprotocols=["binary"], max_size=None) as ws:
        assert ws.subprotocol == "binary"
        config = {
            "mode": mode,
            "chunk_size": [5, 10, 5],
            "chunk_interval": 10,
            "encoder_chunk_look_back": 4,
            "decoder_chunk_look_back": 0,
            "audio_fs": audio_fs,
            "wav_name": "speech",
            "wav_format": "pcm",
            "is_speaking": True,
            "hotwords": hotwords,
            "itn": True,
        }
        await ws.send(json.dumps(config))

        async def receive() -> list[dict]:
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
                messages.append(message)
                if message.get("is_end"):
                    return messages

        receiver = asyncio.create_task(receive())
        stride = audio_fs * 2 * 60 // 1000  # 60 ms
        for i in range(0, len(pcm), stride):
            await ws.send(pcm[i : i + stride])
            await asyncio.sleep(realtime * 0.06 if mode != "offline" else 0.001)
        await ws.send(json.dumps({"is_speaking": False, "is_end": True}))
        return await receiver


def run(coro):
    return asyncio.run(coro)


def sentences_of(messages: list[dict], mode: str) -> list[dict]:
    """The messages of ``mode``, less the end acknowledgement (which carries the session's mode too)."""
    return [m for m in messages if m.get("mode") == mode and not m.get("is_end")]


def test_2pass_gives_partials_and_one_corrected_sentence_per_spoken_sentence(twopass, models, tiny_model):
    pcm = speech_pcm()
    expected = reference_sentences(models, pcm)
    assert len(expected) == 3, f"the real VAD should find the 3 spoken sentences, found {expected}"

    messages = run(funasr_client(twopass.http, "2pass", pcm))

    assert not [m for m in messages if m.get("type") == "error"], messages
    offline = sentences_of(messages, "2pass-offline")
    assert [(m["start_time"], m["end_time"]) for m in offline] == [(e["start"], e["end"]) for e in expected]
    assert [m["text"] for m in offline] == [e["text"] for e in expected if e["text"]]
    for message, want in zip(offline, expected):
        assert json.loads(message["timestamp"]) == [
            [s + want["start"], e + want["start"]] for s, e in want["timestamp"]
        ]
        assert message["is_final"] is False and message["wav_name"] == "speech"
    assert [m["index"] for m in offline] == sorted(m["index"] for m in offline)
    partials = [m["text"] for m in sentences_of(messages, "2pass-online")]
    chunks = reference.chunk_texts(str(tiny_model), pcm, reference_options())
    assert partials == [t for t in chunks if t], "2pass partials are the streaming path's, chunk for chunk"
    end = messages[-1]
    assert end == {"mode": "2pass", "text": "", "wav_name": "speech", "is_final": True, "is_end": True}


def reference_options():
    from tasks.options import StreamOptions

    return StreamOptions(decoder_chunk_look_back=0)


def test_offline_mode_gives_the_same_sentences_and_no_partials(twopass, models):
    pcm = speech_pcm()
    expected = reference_sentences(models, pcm)

    messages = run(funasr_client(twopass.http, "offline", pcm))

    assert not sentences_of(messages, "2pass-online") and not sentences_of(messages, "online")
    offline = sentences_of(messages, "offline")
    assert [m["text"] for m in offline] == [e["text"] for e in expected if e["text"]]
    assert [(m["start_time"], m["end_time"]) for m in offline] == [(e["start"], e["end"]) for e in expected]
    assert messages[-1]["is_end"] is True and messages[-1]["is_final"] is True


def test_hotwords_reach_the_offline_model(twopass, models):
    pcm = speech_pcm()
    hotwords = json.dumps({"一丁七": 20, "万三上": 30}, ensure_ascii=False)  # characters of the tiny vocabulary
    plain = [e["text"] for e in reference_sentences(models, pcm) if e["text"]]
    biased = [e["text"] for e in reference_sentences(models, pcm, hotwords) if e["text"]]
    assert plain != biased, "the test needs hotwords that change the tiny model's output"

    messages = run(funasr_client(twopass.http, "offline", pcm, hotwords=hotwords))

    assert [m["text"] for m in sentences_of(messages, "offline")] == biased


def test_online_mode_is_unchanged_at_the_root_path(twopass, tiny_model):
    pcm = speech_pcm()
    messages = run(funasr_client(twopass.http, "online", pcm))
    chunks = reference.chunk_texts(str(tiny_model), pcm, reference_options())
    texts = [m["text"] for m in messages if m.get("mode") == "online" and m["text"]]
    assert texts == [t for t in chunks if t]
    assert messages[-1]["is_end"] is True


def test_8khz_audio_is_resampled_to_what_16khz_audio_gives(twopass):
    import soxr

    pcm = speech_pcm()
    audio16 = np.frombuffer(pcm, dtype="<i2")
    audio8 = soxr.resample(audio16, 16000, 8000).astype("<i2")
    messages = run(funasr_client(twopass.http, "offline", audio8.tobytes(), audio_fs=8000))
    offline = sentences_of(messages, "offline")
    assert len(offline) == 3, "the 8 kHz recording has the same three sentences"
    for got, want in zip(offline, reference_segments(str(real_vad_dir()), pcm)):
        assert abs(got["start_time"] - want[0]) <= 100 and abs(got["end_time"] - want[1]) <= 100


def test_a_worker_without_the_2pass_models_refuses_those_modes_at_configuration(stack):
    """The shared stack's workers serve the tiny streaming model only (a real model set, no VAD configured)."""

    async def configure(mode: str) -> dict:
        async with websockets.connect(stack.url.rsplit("/ws", 1)[0] + "/", subprotocols=["binary"]) as ws:
            await ws.send(json.dumps({"mode": mode, "wav_name": "x", "is_speaking": True}))
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
            await asyncio.wait_for(ws.wait_closed(), timeout=10)
            return dict(message, close=ws.close_code)

    refused = run(configure("2pass"))
    assert refused["code"] == "unsupported_mode" and refused["close"] == 1003
    assert "VAD" in refused["message"] and "online" in refused["message"]


def test_a_worker_killed_mid_session_loses_no_sentence(make_stack, models):
    """SIGKILL the session's worker after its first corrected sentence: the session moves (its audio replayed,
    the VAD rebuilt, the sentence in flight sent again) and every sentence still arrives, with FunASR's text."""
    from tests.stack import wait_until

    s = make_stack(
        "kill2pass",
        vad_model=models["vad"],
        offline_model=models["offline"],
        punc_model=models["punc"],
        heartbeat_interval=0.5,
        heartbeat_ttl=2,
    )
    for name in ("w1", "w2"):
        s.start_worker(name)
    s.start_gateway()
    procs = {s.worker_id(p.name): p for p in s.procs if p.name.startswith("w")}
    pcm = speech_pcm()
    expected = reference_sentences(models, pcm)
    messages: list[dict] = []

    async def scenario():
        session = asyncio.create_task(funasr_client(s.http, "2pass", pcm, realtime=0.5, into=messages))
        await asyncio.to_thread(
            wait_until, lambda: sentences_of(messages, "2pass-offline"), 30, 0.05, "the first corrected sentence"
        )
        busiest = max(s.api_queue()["workers"], key=lambda w: w["streams"])
        procs[busiest["id"]].kill()
        await session
        return busiest

    victim = run(scenario())

    assert victim["streams"] == 1
    assert not [m for m in messages if m.get("type") == "error"], messages
    offline = sentences_of(messages, "2pass-offline")
    assert [m["text"] for m in offline] == [e["text"] for e in expected if e["text"]]
    assert [(m["start_time"], m["end_time"]) for m in offline] == [(e["start"], e["end"]) for e in expected]
    assert messages[-1]["is_end"] is True
