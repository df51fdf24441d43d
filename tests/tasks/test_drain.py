"""The workers' pre-stop hook: ``python -m tasks.drain`` drains a real worker and waits for its sessions."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from bench.client import StreamClient
from tests import audio
from tests.stack import ROOT, wait_until

pytestmark = pytest.mark.slow


def test_the_pre_stop_drain_waits_for_open_sessions_and_new_ones_go_elsewhere(make_stack):
    s = make_stack("prestop")
    s.start_worker("w1")
    s.start_gateway()
    worker = s.worker_id("w1")

    async def scenario():
        session = asyncio.create_task(StreamClient(s.url, pace=1.0, timeout=60).run(audio.noise(4.0, seed=400)))
        await asyncio.to_thread(wait_until, lambda: s.api_queue()["streams"] == 1, 20, 0.1, "the session to start")
        hook = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tasks.drain",
            "--worker",
            worker,
            "--wait",
            "30",
            cwd=ROOT,
            env=s.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        await asyncio.sleep(1.0)
        refused = await StreamClient(s.url, pace=0).run(audio.noise(0.5, seed=401))
        out, _ = await hook.communicate()
        return await session, refused, out.decode(), hook.returncode

    record, refused, output, code = asyncio.run(scenario())

    assert code == 0 and "no open streams" in output, output
    assert record.final is not None and not record.errors, "the open session finished on the draining worker"
    assert refused.refused_status == 503 and refused.refused_body["code"] == "at_capacity"
    body = json.loads(s.redis.get(f"{s.prefix}worker:{worker}"))
    assert body["draining"] is True and body["streams"] == 0
