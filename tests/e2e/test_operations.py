"""Operating workers as Celery users expect: the prefetch bound, every stop path draining, remote ``drain``,
``--autoscale`` refused, and unique node names under ``honcho start -c worker=2``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.client import StreamClient
from config.settings import Settings
from tasks import wire
from tasks.celery_app import create_celery_app
from tasks.wire import ChunkJob
from tests import audio, reference
from tests.stack import ROOT, Stack, wait_until

pytestmark = pytest.mark.slow


def celery_cli(stack: Stack, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """``celery -A tasks <args>`` with the stack's environment, as an operator would run it."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", *args],
        cwd=ROOT,
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def control_reply(stack: Stack, kind: str, command: str, worker_id: str) -> dict:
    """The one worker's reply to ``celery control|inspect <command> -d <worker> --json``."""
    done = celery_cli(stack, kind, command, "-d", worker_id, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    replies = json.loads(done.stdout.strip().splitlines()[-1])
    if isinstance(replies, list):  # control: [{node: reply}]; inspect: {node: reply}
        replies = {k: v for reply in replies for k, v in reply.items()}
    return replies[worker_id]


def heartbeat(stack: Stack, worker_id: str) -> dict | None:
    raw = stack.redis.get(f"{stack.prefix}worker:{worker_id}")
    return json.loads(raw) if raw else None


def test_a_worker_takes_at_most_concurrency_chunks_out_of_redis(make_stack):
    """3N chunks whose predecessor never comes wait ``gap_timeout`` (5 s) inside task bodies: meanwhile the
    worker must have taken N of them (one more may be in a fetch already sent), leaving at least 2N - 1 in Redis.
    Celery's prefetch would take 2N (N started and acknowledged, N more reserved behind them)."""
    n = 4
    s = make_stack("prefetch")
    s.start_worker("w1", concurrency=n)
    worker_id = s.worker_id("w1")
    queue = wire.worker_queue(s.queue, worker_id)
    app = create_celery_app(Settings.from_env(s.env()))
    try:
        with app.producer_or_acquire() as producer:
            for seq in range(1, 3 * n + 1):  # no seq 0: every chunk waits for it
                job = ChunkJob("gap/0", seq, b"\0\0" * 960, channel=f"{s.prefix}result:gap")
                app.send_task(wire.TASK_CHUNK, args=(job.to_wire(),), queue=queue, producer=producer)
    finally:
        app.close()
    start = time.monotonic()
    lengths = []
    while time.monotonic() - start < 3.5:  # well inside the 5 s gap timeout
        lengths.append(s.redis.llen(queue))
        time.sleep(0.05)

    taken = 3 * n - min(lengths)
    assert n <= taken <= n + 1, f"the worker took {taken} chunks out of Redis with --concurrency {n}: {lengths}"


def test_remote_shutdown_deregisters_at_once_and_the_sessions_move(make_stack, tiny_model):
    """``celery control shutdown`` (Flower's button sends the same) skips ``worker_shutting_down``: the runtime must
    still deregister at once, not after the 30 s heartbeat TTL, and its session must finish elsewhere."""
    s = make_stack("rshutdown", heartbeat_ttl=30)
    for name in ("w1", "w2"):
        s.start_worker(name)
    s.start_gateway()
    procs = {s.worker_id(p.name): p for p in s.procs if p.name.startswith("w")}
    pcms = [audio.noise(8.0, seed=70 + i) for i in range(2)]

    async def scenario():
        clients = [StreamClient(s.url, config={"wav_name": f"r{i}"}, pace=1.0, timeout=60) for i in range(2)]
        sessions = [asyncio.create_task(c.run(pcm)) for c, pcm in zip(clients, pcms)]
        await asyncio.to_thread(
            wait_until, lambda: all(len(c.record.texts) >= 1 for c in clients), 30, 0.1, "first results"
        )
        busiest = max(s.api_queue()["workers"], key=lambda w: w["streams"])["id"]
        sent = time.monotonic()
        # The worker raises WorkerShutdown before it could reply, so the CLI waits its 1 s and exits 69 ("No nodes
        # replied"), as with any Celery worker.
        done = await asyncio.to_thread(celery_cli, s, "control", "shutdown", "-d", busiest)
        await asyncio.to_thread(
            wait_until, lambda: heartbeat(s, busiest) is None, 10, 0.05, "the heartbeat key to be deleted"
        )
        return busiest, done, time.monotonic() - sent, await asyncio.gather(*sessions)

    stopped, done, gone_after, records = asyncio.run(scenario())

    assert done.returncode in (0, 69), done.stdout + done.stderr
    assert gone_after < 5, f"deregistered {gone_after:.1f} s after the command: the TTL expired it, no drain ran"
    for record, pcm in zip(records, pcms):
        assert record.error is None and not record.errors, (record.error, record.errors)
        assert record.texts == [t for t in reference.chunk_texts(str(tiny_model), pcm) if t]
    wait_until(lambda: procs[stopped].popen.poll() is not None, 10, what="the worker to exit")
    assert procs[stopped].popen.returncode == 0


def test_a_drained_worker_finishes_its_sessions_and_takes_no_new_ones(make_stack, tiny_model):
    """One session on each worker; drain one; two new sessions would be shared out one each, but both go to the
    worker that is not draining. Every session finishes with the reference text, the drained worker's streams
    reach 0, and ``undrain`` makes it take sessions again."""
    s = make_stack("drain-cmd")
    for name in ("w1", "w2"):
        s.start_worker(name)
    s.start_gateway()
    drained, other = s.worker_id("w1"), s.worker_id("w2")
    pcms = [audio.noise(8.0, seed=80), audio.noise(8.0, seed=81), audio.noise(3.0, seed=82), audio.noise(3.0, seed=83)]

    def leases() -> dict:
        return {w["id"]: w["leases"] for w in s.api_queue()["workers"]}

    async def started(clients: list[tuple[StreamClient, bytes]]) -> list[asyncio.Task]:
        """Start sessions one after the other, each once the previous one has results (so its lease counts)."""
        sessions = []
        for client, pcm in clients:
            sessions.append(asyncio.create_task(client.run(pcm)))
            await asyncio.to_thread(wait_until, lambda c=client: len(c.record.texts) >= 1, 30, 0.1, "first results")
        return sessions

    def sampled_since(t: float) -> bool:
        """The gateway's snapshot began after ``t`` (it samples every 0.25 s; a sample takes milliseconds)."""
        return s.api_queue()["sampled_at"] > t + 0.3

    async def scenario():
        clients = [
            (StreamClient(s.url, config={"wav_name": f"d{i}"}, pace=1.0, timeout=60), pcm) for i, pcm in enumerate(pcms)
        ]
        before = await started(clients[:2])
        spread = leases()
        reply = await asyncio.to_thread(control_reply, s, "control", "drain", drained)
        body = heartbeat(s, drained)
        replied = time.time()
        await asyncio.to_thread(wait_until, lambda: sampled_since(replied), 10, 0.05, "the gateway's next sample")
        after = await started(clients[2:])
        return spread, reply, body, leases(), await asyncio.gather(*before, *after)

    spread, reply, body, leases_after, records = asyncio.run(scenario())

    assert spread == {drained: 1, other: 1}, spread
    assert reply["draining"] is True and reply["streams"] == 1, reply
    assert body is not None and body["draining"] is True
    assert leases_after == {drained: 1, other: 3}, "both new sessions went to the worker that is not draining"
    for record, pcm in zip(records, pcms):
        assert record.error is None and not record.errors, (record.error, record.errors)
        assert record.texts == [t for t in reference.chunk_texts(str(tiny_model), pcm) if t]
    wait_until(
        lambda: control_reply(s, "inspect", "streams", drained)["streams"] == 0,
        20,
        0.5,
        "the drained worker's streams to reach 0",
    )
    assert control_reply(s, "control", "undrain", drained)["draining"] is False
    assert heartbeat(s, drained)["draining"] is False  # type: ignore[index]


def test_autoscale_is_refused_with_a_clear_message(make_stack):
    s = make_stack("autoscale")
    done = celery_cli(
        s,
        "worker",
        "-Q",
        s.queue,
        "-n",
        s.worker_id("w1"),
        "--autoscale",
        "4,1",
        "--without-mingle",
        "--without-gossip",
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "--autoscale 4,1 is not supported" in output and "--concurrency" in output, output


def test_honcho_runs_two_workers_under_two_names(make_stack):
    """``honcho start -c worker=2`` runs the Procfile's worker line twice: two heartbeats, two private queues."""
    s = make_stack("honcho")
    env = s.env(worker_concurrency=2)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # run.sh puts .venv/bin first
    log = (s.logdir / f"{s.name}-honcho.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "honcho", "start", "-f", "Procfile", "-c", "worker=2", "worker"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        ids = wait_until(
            lambda: (
                sorted(s.redis.scan_iter(f"{s.prefix}worker:*"))
                if len(list(s.redis.scan_iter(f"{s.prefix}worker:*"))) == 2
                else None
            ),
            60,
            0.2,
            "two workers to register",
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
    names = [key.removeprefix(f"{s.prefix}worker:") for key in ids]
    assert [n.partition("@")[0] for n in names] == ["worker.1", "worker.2"], names
