"""Thousands of malformed protocol messages at a real gateway: it answers each session sanely and stays up."""

from __future__ import annotations

import asyncio
import json

import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from bench.client import StreamClient
from tests import audio, reference

FIELDS = [
    "mode",
    "chunk_size",
    "chunk_interval",
    "wav_name",
    "wav_format",
    "audio_fs",
    "is_speaking",
    "hotwords",
    "itn",
    "encoder_chunk_look_back",
    "decoder_chunk_look_back",
    "queue_status",
    "timing",
    "is_end",
    "bogus",
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)
config_like = st.dictionaries(
    st.sampled_from(FIELDS),
    json_values
    | st.sampled_from(["online", "offline", "2pass", "pcm", [5, 10, 5], "5,10,5", 16000, 8000, True, False]),
    max_size=8,
)
text_messages = st.one_of(
    config_like.map(json.dumps),
    st.text(max_size=200),
    json_values.map(json.dumps),
    st.just('{"is_speaking": false}'),
)
binary_messages = st.binary(max_size=5000) | st.integers(0, 4000).map(lambda n: b"\x01\x00" * n)
# Large and long messages: around the text and frame limits, and deeply nested JSON.
large_messages = st.one_of(
    st.integers((64 << 10) - 64, (64 << 10) + 64).map(lambda n: '{"is_speaking": true, "x": "' + "y" * n + '"}'),
    st.integers((1 << 20) - 4, (1 << 20) + 4).map(lambda n: b"\x00" * (n // 2 * 2)),
    st.integers(100, 5000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(1, 40).map(lambda n: json.dumps({f"f{i}\n": i for i in range(n * 50)})),
)
sessions = st.lists(text_messages | binary_messages | large_messages, min_size=1, max_size=12)


async def play(url: str, messages: list) -> list[dict]:
    replies = []
    try:
        async with websockets.connect(url, subprotocols=["binary"], max_size=None, open_timeout=10) as ws:
            for message in messages:
                await ws.send(message)
            while True:
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), 0.3)))
    except (ConnectionClosed, asyncio.TimeoutError):
        pass
    return replies


def test_fuzzed_sessions_get_only_well_formed_replies_and_the_gateway_stays_up(stack, tiny_model):
    seen = {"messages": 0}
    pcm = audio.noise(20.0, seed=91)
    expected = [t for t in reference.chunk_texts(str(tiny_model), pcm) if t]

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(sessions)
    def one(messages):
        seen["messages"] += len(messages)
        for reply in asyncio.run(play(stack.url, messages)):
            assert reply.get("type") in ("error", "queue_status", "closing") or reply.get("mode") == "online"
            if reply.get("type") == "error":
                assert reply["code"] and reply["message"]

    async def fuzz_beside_a_healthy_session():
        healthy = asyncio.create_task(
            StreamClient(stack.url, config={"wav_name": "beside"}, pace=1.0, timeout=240).run(pcm)
        )
        await asyncio.to_thread(one)
        return await healthy

    record = asyncio.run(fuzz_beside_a_healthy_session())

    assert seen["messages"] > 1000
    assert record.error is None and not record.errors and record.texts == expected, "the healthy session kept up"
    status, health = stack.get(stack.http + "/healthz")
    assert status == 200, health
    after = asyncio.run(StreamClient(stack.url, pace=0).run(audio.noise(1.0, seed=90)))
    assert after.final is not None and not after.errors
