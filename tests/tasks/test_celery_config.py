"""The worker app's Celery configuration: the prefetch bound, the stop step, the operator commands, node names."""

from __future__ import annotations

import os
import subprocess

from celery.worker.control import Panel

from config.settings import Settings
from tasks import control
from tasks.celery_app import create_celery_app
from tests.e2e.test_flower import procfile_command


def test_the_worker_app_bounds_what_it_takes_from_redis_to_its_concurrency():
    app = create_celery_app(Settings(), worker=True)
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.worker_disable_prefetch is True  # else N running + N reserved chunks leave Redis
    assert app.conf.worker_pool == "threads"


def test_every_stop_path_runs_the_runtime_stop_step():
    assert control.StopRuntime in create_celery_app(Settings(), worker=True).steps["worker"]
    assert control.StopRuntime not in create_celery_app(Settings()).steps["worker"]  # the gateway's app


def test_the_operator_commands_are_registered_for_the_cli():
    create_celery_app(Settings(), worker=True)
    assert Panel.meta["drain"].type == "control" and Panel.meta["undrain"].type == "control"
    assert Panel.meta["streams"].type == "inspect"


def test_the_procfile_gives_each_honcho_worker_process_its_own_node_name():
    """honcho sets HONCHO_PROCESS_NAME=worker.1, worker.2 … and runs the line with /bin/sh."""
    command = procfile_command("worker")

    def argv(process_name: str) -> list[str]:
        env = dict(os.environ, HONCHO_PROCESS_NAME=process_name)
        out = subprocess.run(
            ["/bin/sh", "-c", 'printf "%s\\n" ' + command.removeprefix("celery ")],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return out

    names = [(args := argv(p))[args.index("-n") + 1] for p in ("worker.1", "worker.2")]
    assert names == ["worker.1@%h", "worker.2@%h"]
