"""Bad input gets a clear JSON error and a proper close; the gateway, the workers and other sessions carry on."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from bench.client import StreamClient
from tests import audio, reference
from tests.stack import wait_until

CONFIG = {"mode": "online", "chunk_size": [5, 10, 5], "wav_name": "bad", "audio_fs": 16000, "is_speaking": True}


async def exchange(url: str, messages: list, wait: float = 10.0) -> tuple[list[dict], int | None]:
    """Send ``messages`` (str/dict/bytes) in order; collect replies until a final result, a close, or silence."""
    received: list[dict] = []
    async with websockets.connect(url, subprotocols=["binary"], max_size=None) as ws:
        try:
            for message in messages:
                await ws.send(json.dumps(message) if isinstance(message, dict) else message)
            while not received or not received[-1].get("is_final"):
                received.append(json.loads(await asyncio.wait_for(ws.recv(), wait)))
        except (ConnectionClosed, asyncio.TimeoutError):
            pass
        return received, ws.close_code


def errors(received: list[dict]) -> list[dict]:
    return [m for m in received if m.get("type") == "error"]


FATAL_CASES = [
    pytest.param(["not json at all"], "bad_json", 1008, id="non-json-first-message"),
    pytest.param([{**CONFIG, "sample_rate": 16000}], "unknown_field", 1008, id="unknown-field"),
    pytest.param([{**CONFIG, "mode": "karaoke"}], "unsupported_mode", 1003, id="unknown-mode"),
    # the shared stack's workers load no VAD/offline model: they serve online only
    pytest.param([{**CONFIG, "mode": "2pass"}], "unsupported_mode", 1003, id="2pass-without-its-models"),
    pytest.param([{**CONFIG, "mode": "offline"}], "unsupported_mode", 1003, id="offline-without-its-models"),
    pytest.param([{**CONFIG, "mode": "3pass"}], "unsupported_mode", 1003, id="unknown-mode"),
    pytest.param([{**CONFIG, "audio_fs": 4000}], "unsupported_sample_rate", 1003, id="audio-fs-too-low"),
    pytest.param([{**CONFIG, "audio_fs": 96000}], "unsupported_sample_rate", 1003, id="audio-fs-too-high"),
    pytest.param([{**CONFIG, "chunk_size": [5, 0, 5]}], "bad_config", 1008, id="bad-chunk-size"),
    pytest.param([b"\x00\x01" * 100], "audio_before_config", 1008, id="binary-before-config"),
    pytest.param([CONFIG, b"\x00" * 1921], "odd_frame", 1007, id="odd-length-frame"),
    pytest.param([CONFIG, b"\x00" * (1 << 20) + b"\x00\x00"], "frame_too_large", 1009, id="frame-over-limit"),
]


@pytest.mark.parametrize("messages, code, close_code", FATAL_CASES)
def test_fatal_bad_input_gets_an_error_and_a_close_code(stack, messages, code, close_code):
    received, closed_with = asyncio.run(exchange(stack.url, messages))

    assert [e["code"] for e in errors(received)] == [code]
    assert errors(received)[0]["message"]
    assert closed_with == close_code
    status, health = stack.get(stack.http + "/healthz")
    assert status == 200, health


def test_garbage_text_mid_stream_is_reported_and_the_session_goes_on(stack, tiny_model):
    pcm = audio.noise(2.0, seed=11)
    expected = reference.chunk_texts(str(tiny_model), pcm)
    half = len(pcm) // 2 // 1920 * 1920

    received, _ = asyncio.run(
        exchange(
            stack.url,
            [
                CONFIG,
                pcm[:half],
                "{{{ not json",
                {"hello": 1},
                pcm[half:],
                {"is_speaking": False},
            ],
        )
    )

    assert [e["code"] for e in errors(received)] == ["bad_json", "unknown_field"]
    assert "".join(m["text"] for m in received if "mode" in m) == "".join(expected)
    assert any(m.get("is_final") for m in received)


def test_a_second_config_message_is_refused_and_the_first_config_kept(stack, tiny_model):
    pcm = audio.noise(1.5, seed=12)
    expected = reference.chunk_texts(str(tiny_model), pcm)

    second_config = {k: v for k, v in CONFIG.items() if k != "is_speaking"} | {"chunk_size": [8, 8, 4]}

    received, _ = asyncio.run(exchange(stack.url, [CONFIG, second_config, pcm, {"is_speaking": False}]))

    assert [e["code"] for e in errors(received)] == ["already_configured"]
    assert "".join(m["text"] for m in received if "mode" in m) == "".join(expected)


def test_a_worker_raising_on_one_chunk_ends_only_that_session(stack, tiny_model):
    good_pcm = audio.noise(3.0, seed=13)
    expected = reference.chunk_texts(str(tiny_model), good_pcm)

    async def both():
        bad = StreamClient(stack.url, config={"wav_name": "__raise__2"}, pace=2.0)
        good = StreamClient(stack.url, config={"wav_name": "good"}, pace=2.0)
        return await asyncio.gather(bad.run(audio.noise(3.0, seed=14)), good.run(good_pcm))

    bad, good = asyncio.run(both())

    assert [e["code"] for e in bad.errors] == ["recognition_failed"]
    assert "injected fault" in bad.errors[0]["message"]
    assert bad.close_code == 1011
    assert len(bad.texts) == 2, "the chunks before the failing one were delivered"
    assert good.error is None and good.texts == [t for t in expected if t]
    again = asyncio.run(StreamClient(stack.url, config={"wav_name": "after"}, pace=0).run(good_pcm))
    assert again.texts == [t for t in expected if t], "the worker keeps serving new sessions"


def test_a_client_vanishing_mid_stream_frees_its_state_on_gateway_and_worker(stack):
    async def vanish():
        ws = await websockets.connect(stack.url, subprotocols=["binary"])
        await ws.send(json.dumps(CONFIG))
        await ws.send(audio.noise(1.3, seed=15))
        await asyncio.sleep(0.5)
        ws.transport.abort()  # TCP reset, no close frame

    asyncio.run(vanish())

    def freed():
        state = stack.api_queue()
        return state["gateway_sessions"] == 0 and state["streams"] == 0

    wait_until(freed, 15, what="the vanished session's state to be freed")
