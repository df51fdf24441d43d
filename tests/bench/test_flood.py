"""The flood scenario's lag windows and the flooders, against a small real WebSocket server."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from bench.client import SessionRecord
from bench.flooders import TEXT_LIMIT, TEXT_MARGIN, FlooderRecord, _padded, flood_one
from bench.scenarios.flood import healthy_sessions, lag_windows


def partial(chunk: int) -> dict:
    return {"mode": "online", "text": "x", "is_final": False, "chunk": chunk}


def test_lag_windows_group_by_when_the_chunk_was_sent():
    rec = SessionRecord(
        started=0.0,
        chunk_ends=[1.0, 2.0, 3.0, 4.0, 5.0],
        messages=[
            (1.1, partial(0)),
            (6.0, partial(1)),
            (6.5, partial(2)),
            (5.2, partial(4)),
            (5.3, {"mode": "online", "text": "", "is_final": True, "chunk": 4}),
        ],
    )
    windows = lag_windows([rec], start=2.0, end=4.0)
    assert windows["before"]["n"] == 1 and abs(windows["before"]["max"] - 0.1) < 1e-9
    assert windows["during"]["n"] == 2 and abs(windows["during"]["max"] - 4.0) < 1e-9  # 6.0 - 2.0
    assert (windows["during"]["chunks_sent"], windows["after"]["chunks_sent"]) == (2, 2)
    assert windows["after"]["n"] == 1  # chunk 3 never got a result: sent, but no sample
    row = healthy_sessions([rec], 2.0, 4.0)[0]
    assert row["outcome"] == "completed" and row["lag_during"]["n"] == 2


def test_padded_messages_are_exactly_under_and_over_the_limit():
    for size in (TEXT_LIMIT - TEXT_MARGIN, TEXT_LIMIT + TEXT_MARGIN):
        text = _padded(size)
        assert len(text.encode()) == size and json.loads(text)["is_speaking"] is True


def test_record_round_trips_through_json():
    rec = FlooderRecord("silent", 1, 10.0, connected=10.5, closed=12.0, close_code=1008, codes=["too_many"])
    again = FlooderRecord.from_json(json.loads(json.dumps(rec.to_json())))
    assert again == rec and again.seconds_to_close == 1.5 and again.error_code == "too_many"


async def _strict_server(ws):
    """Takes the configuration, then closes with 1008 and a JSON error after 1000 binary frames."""
    await ws.recv()
    for _ in range(1000):
        await ws.recv()
    await ws.send(json.dumps({"type": "error", "code": "too_many_frames", "is_end": True}))
    await ws.close(1008, "too_many_frames")


@pytest.mark.parametrize("kind", ["tiny-frames", "silent"])
def test_flooder_records_how_the_server_ended_it(kind):
    async def main() -> FlooderRecord:
        async with websockets.serve(_strict_server, "127.0.0.1", 0, max_size=None, close_timeout=0.5) as server:
            port = server.sockets[0].getsockname()[1]
            return await flood_one(f"ws://127.0.0.1:{port}/ws", kind, 0, 1.5, 0.0)

    rec = asyncio.run(main())
    assert rec.connected is not None
    if kind == "tiny-frames":
        assert (rec.ended_by, rec.close_code, rec.codes) == ("server closed", 1008, ["too_many_frames"])
        assert rec.frames_out >= 1000 and rec.seconds_to_close < 1.5
    else:  # "{}" once a second: the server is still waiting for binary frames when the time is up
        assert rec.ended_by == "ran its time" and rec.close_code is None and 1 <= rec.frames_out <= 3
