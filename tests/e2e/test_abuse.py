"""Bursts, floods and abusive clients against a real gateway, Redis and workers (issue 7's findings).

Each test fails on the code before the session core: a burst right after start lost admitted sessions, a frame
flood froze the gateway, a client that never read grew its memory without bound, text messages kept idle sockets
alive, and the per-client limit was counted per process after the handshake.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from bench.client import StreamClient
from tests import audio, reference
from tests.stack import wait_until

CONFIG = {"mode": "online", "chunk_size": [5, 10, 5], "wav_name": "abuse", "audio_fs": 16000, "is_speaking": True}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def limited(redis_url, tiny_model, logdir):
    """A stack with small limits, so each one is reached in seconds."""
    from tests.stack import Stack

    s = Stack(
        "limited",
        redis_url,
        str(tiny_model),
        logdir,
        settings={"config_timeout": 1.5, "idle_timeout": 3, "max_outbox_bytes": 4096},
    )
    try:
        s.start_worker("w1")
        s.start_gateway()
        yield s
    finally:
        s.stop()


async def flood(url: str, seconds: float) -> tuple[int | None, list[dict], int]:
    """Valid config, then 2-byte frames as fast as the socket takes them; (close code, errors, frames sent)."""
    sent = 0
    errors: list[dict] = []

    async def receive(ws) -> None:
        try:
            async for raw in ws:
                message = json.loads(raw)
                if message.get("type") == "error":
                    errors.append(message)
        except ConnectionClosed:
            pass

    async with websockets.connect(url, subprotocols=["binary"], max_size=None) as ws:
        receiver = asyncio.create_task(receive(ws))
        await ws.send(json.dumps(CONFIG))
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                await ws.send(b"\x00\x00")
                sent += 1
                if sent % 200 == 0:
                    await asyncio.sleep(0)
        except ConnectionClosed:
            pass
        await asyncio.wait_for(receiver, 10)
        return ws.close_code, errors, sent


def test_a_frame_flood_is_cut_off_and_a_healthy_session_on_the_same_gateway_is_unaffected(stack, tiny_model):
    pcm = audio.noise(4.0, seed=300)
    expected = [t for t in reference.chunk_texts(str(tiny_model), pcm) if t]

    async def both():
        healthy = asyncio.create_task(StreamClient(stack.url, config={"wav_name": "healthy"}, pace=1.0).run(pcm))
        await asyncio.sleep(0.5)
        flooder = await flood(stack.url, 3.0)
        return await healthy, flooder

    healthy, (close_code, flood_errors, _) = asyncio.run(both())

    assert close_code == 1008 and [e["code"] for e in flood_errors] == ["rate_limited"]
    assert healthy.error is None and not healthy.errors and healthy.texts == expected


def test_a_client_that_never_reads_is_disconnected_once_it_is_a_bounded_amount_behind(limited):
    # Every message names unknown fields, so each one is answered with a ~300-byte warning the client never
    # reads: the kernel's socket buffers fill, then the gateway's outbox (4 KiB here), then it lets go.
    noisy = json.dumps({"is_speaking": True, **{f"{c * 40}": 1 for c in "abcde"}})

    async def never_read() -> int:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", int(limited.http.rsplit(":", 1)[1])))
        ws = await websockets.connect(limited.url, sock=sock, subprotocols=["binary"], max_queue=1, max_size=None)
        await ws.send(json.dumps(CONFIG))
        sent = 0
        try:
            for i in range(6000):  # 300 a second (the rate limit is 400) for up to 20 s
                await ws.send(noisy)
                if i % 10 == 0:
                    await ws.send(b"\x00" * 640)  # a little audio, so the session is not idle
                sent += 1
                await asyncio.sleep(1 / 300)
        except ConnectionClosed:
            pass
        ws.transport.abort()
        return sent

    sent = asyncio.run(never_read())

    assert sent < 6000, "the gateway dropped the connection before the client gave up"
    log = next(p for p in limited.procs if p.name == "gateway").log.read_text(errors="replace")
    assert "bytes behind; disconnecting" in log
    wait_until(lambda: limited.api_queue()["gateway_sessions"] == 0, 10, what="the session to be freed")


def test_text_messages_over_the_limit_are_refused_with_1009(stack):
    async def big() -> tuple[list[dict], int | None]:
        async with websockets.connect(stack.url, subprotocols=["binary"], max_size=None) as ws:
            await ws.send(json.dumps(CONFIG))
            await ws.send(json.dumps({"is_speaking": True, "pad": "x" * (70 << 10)}))
            replies = []
            try:
                while True:
                    replies.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
            except (ConnectionClosed, asyncio.TimeoutError):
                pass
            return replies, ws.close_code

    replies, code = asyncio.run(big())
    assert [r["code"] for r in replies if r.get("type") == "error"] == ["message_too_big"] and code == 1009


def test_a_socket_that_never_configures_is_closed_and_frees_its_worker_slot(limited):
    async def silent() -> tuple[list[dict], int | None]:
        async with websockets.connect(limited.url, subprotocols=["binary"]) as ws:
            replies = []
            try:
                for _ in range(20):  # 6 s at most, sending nothing at all
                    try:
                        replies.append(json.loads(await asyncio.wait_for(ws.recv(), 0.3)))
                    except asyncio.TimeoutError:
                        pass
            except ConnectionClosed:
                pass
            return replies, ws.close_code

    replies, code = asyncio.run(silent())
    assert [r["code"] for r in replies if r.get("type") == "error"] == ["config_timeout"] and code == 1008
    wait_until(lambda: all(w["leases"] == 0 for w in limited.api_queue()["workers"]), 5, what="the lease to go")


def test_text_messages_do_not_keep_an_idle_session_open(limited):
    async def chatter() -> tuple[list[dict], int | None, float]:
        async with websockets.connect(limited.url, subprotocols=["binary"]) as ws:
            await ws.send(json.dumps(CONFIG))
            started = time.monotonic()
            replies = []
            try:
                for _ in range(40):
                    await ws.send("{}")
                    try:
                        replies.append(json.loads(await asyncio.wait_for(ws.recv(), 0.5)))
                    except asyncio.TimeoutError:
                        pass
            except ConnectionClosed:
                pass
            return replies, ws.close_code, time.monotonic() - started

    replies, code, _ = asyncio.run(chatter())
    assert code == 1000 and any(r.get("code") == "idle_timeout" for r in replies)


def test_client_supplied_names_cannot_forge_log_lines(stack):
    record = asyncio.run(
        StreamClient(stack.url, config={"wav_name": "evil\nFORGED log line"}, pace=0).run(audio.noise(0.7, seed=302))
    )
    assert record.final is not None
    gateway_log = next(p for p in stack.procs if p.name == "gateway").log.read_text(errors="replace")
    assert "evil\\nFORGED" in gateway_log
    assert not any(line.startswith("FORGED") for line in gateway_log.splitlines())


def test_a_burst_right_after_start_loses_no_admitted_session(make_stack, tiny_model):
    s = make_stack("burst", worker_max_streams=10)
    s.start_worker("w1", concurrency=16)
    s.start_gateway()  # returns as soon as /healthz first says 200: the gateway is cold
    pcm = audio.noise(2.0, seed=303)

    async def burst():
        clients = [StreamClient(s.url, config={"wav_name": f"b{i}"}, pace=1.0, timeout=60) for i in range(40)]
        return await asyncio.gather(*(c.run(pcm) for c in clients))

    records = asyncio.run(burst())
    refused = [r for r in records if r.refused_status is not None]
    admitted = [r for r in records if r.refused_status is None]
    lost = [r for r in admitted if r.final is None or r.error or r.errors]
    assert not lost, [(r.error, r.errors) for r in lost]
    assert len(admitted) == 10 and {r.refused_status for r in refused} == {503}


def test_the_per_client_limit_holds_under_a_burst_across_gateway_processes(make_stack):
    s = make_stack("perclient", max_sessions_per_client=2, gateway_processes=2)
    s.start_worker("w1")
    s.start_gateway()

    async def burst():
        clients = [StreamClient(s.url, pace=1.0, timeout=60) for _ in range(8)]
        return await asyncio.gather(*(c.run(audio.noise(2.0, seed=304 + i)) for i, c in enumerate(clients)))

    records = asyncio.run(burst())
    assert sorted(r.refused_status or 0 for r in records) == [0, 0] + [429] * 6
    assert all(r.final is not None for r in records if r.refused_status is None)


def test_unanswered_audio_past_the_replay_cap_is_replayed_whole_after_a_worker_loss(make_stack):
    s = make_stack("replaycap", replay_max_seconds=1, heartbeat_interval=0.5, heartbeat_ttl=2)
    for name in ("w1", "w2"):
        s.start_worker(name)
    s.start_gateway()
    procs = {s.worker_id(p.name): p for p in s.procs if p.name.startswith("w")}
    pcm = audio.noise(8.0, seed=305)

    async def scenario():
        client = StreamClient(s.url, config={"wav_name": "cap"}, pace=4.0, timeout=60)
        session = asyncio.create_task(client.run(pcm))
        await asyncio.to_thread(wait_until, lambda: client.record.texts, 30, 0.02, "a first result")
        busy = max(s.api_queue()["workers"], key=lambda w: w["leases"])
        procs[busy["id"]].popen.send_signal(signal.SIGSTOP)  # unanswered audio piles up past the 1 s cap
        await asyncio.sleep(1.5)
        procs[busy["id"]].kill()
        return await session

    record = asyncio.run(scenario())
    assert record.error is None and not record.errors, (record.error, record.errors)
    assert record.final is not None, "every chunk was answered: the session did not hang"
