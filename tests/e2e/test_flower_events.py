"""Flower as the Procfile starts it leaves task events off in the workers (they cost broker traffic per chunk), and
shows the workers' private queues once it has inspected the workers."""

from __future__ import annotations

import json
import subprocess
import urllib.error

import pytest

from tasks import wire
from tests.e2e.test_flower import BASIC, CREDENTIALS, flower_env, procfile_command, request, stop
from tests.stack import ROOT, Stack, free_port, wait_until

pytestmark = pytest.mark.slow


def test_flower_does_not_switch_task_events_on_and_lists_the_private_queues(redis_url, tiny_model, logdir):
    stack = Stack("flower-events", redis_url, str(tiny_model), logdir)
    port = free_port()
    log = (logdir / "flower-events-flower.log").open("ab")
    proc = None
    try:
        worker = stack.start_worker("w1")
        proc = subprocess.Popen(
            ["/bin/sh", "-c", procfile_command("flower")],
            cwd=ROOT,
            env=flower_env(stack, port, CREDENTIALS),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        http = f"http://127.0.0.1:{port}"

        def inspected() -> bool:  # ?refresh=1: Flower inspects the workers again and learns their queues
            try:
                return request(http + "/api/workers?refresh=1", Authorization=BASIC)[0] == 200
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        wait_until(inspected, 60, 0.5, "flower to answer")
        status, _, body = request(http + "/api/queues/length", Authorization=BASIC)
        # Flower enables events on a 5 s timer from its start (flower/events.py): 7 s covers its first round.
        with pytest.raises(TimeoutError):
            wait_until(lambda: "enabled by remote" in worker.tail(400), 7, 0.25, "a remote enable_events")
    finally:
        if proc is not None:
            stop(proc)
        log.close()
        stack.stop()

    assert status == 200
    names = {q["name"] for q in json.loads(body)["active_queues"]}
    assert wire.worker_queue(stack.queue, stack.worker_id("w1")) in names, names
