"""Redis restarted under load: gateway and workers reconnect by themselves; sessions recover or end clearly."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest
import redis

from bench.client import StreamClient
from tests import audio, reference
from tests.stack import PrivateRedis, wait_until

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")


def test_sessions_survive_a_redis_restart_and_new_sessions_work_soon_after(make_stack, tiny_model, tmp_path):
    server = PrivateRedis(tmp_path)  # restarting it disturbs nothing else
    server.start()
    try:
        s = make_stack("restart", redis_url=server.url, heartbeat_interval=0.5, heartbeat_ttl=2)
        s.redis = redis.Redis.from_url(server.url, decode_responses=True)
        s.start_worker("w1")
        s.start_gateway()
        pcms = [audio.noise(8.0, seed=60 + i) for i in range(3)]

        async def scenario():
            clients = [StreamClient(s.url, config={"wav_name": f"r{i}"}, pace=1.0, timeout=90) for i in range(3)]
            sessions = [asyncio.create_task(c.run(pcm)) for c, pcm in zip(clients, pcms)]
            await asyncio.sleep(2.5)
            server.stop()  # everything in Redis is gone: queues, heartbeats, subscriptions
            await asyncio.sleep(1.0)
            server.start()
            restarted = time.monotonic()
            return await asyncio.gather(*sessions), restarted

        records, restarted = asyncio.run(scenario())

        for record, pcm in zip(records, pcms):
            assert record.error is None, "no session may hang until its client gives up"
            if record.errors:  # ending is allowed, with a clear error
                assert record.close_code in (1011, 1013) and record.errors[-1]["message"]
            else:
                assert record.texts == [t for t in reference.chunk_texts(str(tiny_model), pcm) if t]

        def new_session_works():
            record = asyncio.run(StreamClient(s.url, pace=0, timeout=20).run(audio.noise(1.0, seed=69)))
            return record.final is not None

        wait_until(new_session_works, 30, interval=0.5, what="a new session to succeed after the restart")
        print(
            f"new sessions work {time.monotonic() - restarted:.1f} s after the restart; "
            f"{sum(not r.errors for r in records)}/3 in-flight sessions recovered"
        )
    finally:
        server.stop()
