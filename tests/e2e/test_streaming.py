"""End to end through real processes: WebSocket client → gateway → Celery worker (FunASR) → Redis → client."""

from __future__ import annotations

import asyncio

from bench.client import StreamClient
from tests import audio, reference


def run(coro):
    return asyncio.run(coro)


def test_transcript_equals_funasr_on_the_same_chunks(stack, tiny_model):
    pcm = audio.noise(4.7, seed=1)
    expected = reference.chunk_texts(str(tiny_model), pcm)

    record = run(StreamClient(stack.url, config={"wav_name": "faithful"}, pace=0).run(pcm))

    assert record.error is None and not record.errors
    assert record.texts == [t for t in expected if t]  # same partial boundaries, not only the same total
    assert record.text == "".join(expected)
    assert record.final is not None and record.final["is_final"] is True
    assert all(m["wav_name"] == "faithful" and m["mode"] == "online" for m in record.results)


def test_chunk_size_from_the_client_is_honoured(stack, tiny_model):
    from tasks.recognizer import StreamOptions

    pcm = audio.tones(3.1, seed=2)
    options = StreamOptions(chunk_size=(8, 8, 4))
    expected = reference.chunk_texts(str(tiny_model), pcm, options)

    record = run(StreamClient(stack.url, config={"chunk_size": "8,8,4"}, frame_ms=100, pace=0).run(pcm))

    assert record.error is None and not record.errors
    assert record.texts == [t for t in expected if t]


def test_twenty_concurrent_sessions_on_two_workers_get_their_own_results_in_order(stack, tiny_model):
    pcms = [audio.noise(2.0 + 0.3 * i, seed=100 + i) for i in range(20)]
    expected = [reference.chunk_texts(str(tiny_model), pcm) for pcm in pcms]

    async def all_sessions():
        clients = [StreamClient(stack.url, config={"wav_name": f"s{i}"}, pace=4.0) for i in range(20)]
        return await asyncio.gather(*(c.run(pcm) for c, pcm in zip(clients, pcms)))

    records = run(all_sessions())

    for i, (record, want) in enumerate(zip(records, expected)):
        assert record.error is None and not record.errors, (i, record.error, record.errors)
        assert {m["wav_name"] for m in record.results} == {f"s{i}"}
        assert record.texts == [t for t in want if t], f"session {i} got another session's text or wrong order"
    workers = stack.api_queue()["workers"]
    assert len(workers) == 2
    assert all(w["stats"]["chunks"] > 0 for w in workers), "both workers should have served sessions"


def test_utterances_in_one_session_each_end_with_a_final(stack, tiny_model):
    first, second = audio.noise(1.5, seed=7), audio.noise(1.0, seed=8)

    async def two_utterances():
        import json

        import websockets

        async with websockets.connect(stack.url, subprotocols=["binary"]) as ws:
            await ws.send(json.dumps({"mode": "online", "wav_name": "two"}))
            finals = []
            for pcm in (first, second):
                await ws.send(pcm)
                await ws.send(json.dumps({"is_speaking": False}))
                texts = []
                while True:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if "mode" in message:
                        texts.append(message["text"])
                        if message["is_final"]:
                            break
                finals.append("".join(texts))
            return finals

    got = run(two_utterances())

    assert got == ["".join(reference.chunk_texts(str(tiny_model), pcm)) for pcm in (first, second)]


def test_funasr_clients_connect_at_the_root_path_and_the_page_is_still_served_there(stack, tiny_model):
    import urllib.request

    pcm = audio.noise(2.0, seed=410)
    root = stack.url.removesuffix("/ws") + "/"
    record = asyncio.run(StreamClient(root, config={"wav_name": "root"}, pace=0).run(pcm))
    assert record.error is None and not record.errors
    assert record.texts == [t for t in reference.chunk_texts(str(tiny_model), pcm) if t]
    with urllib.request.urlopen(stack.http + "/", timeout=5) as response:
        assert response.status == 200 and b"<html" in response.read().lower()
