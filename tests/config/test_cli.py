"""funasr-stream (config.cli): each command runs what it names, from any directory, as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config import cli

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ASR_")}
    environ.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, "-m", "config.cli", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_gateway_and_worker_command_lines():
    gateway = cli.gateway_argv(["--worker-tmp-dir", "/dev/shm"])
    assert gateway[:5] == [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "config" / "gunicorn.py")]
    assert gateway[5:] == ["--worker-tmp-dir", "/dev/shm", "wsgi:app"]
    assert cli.worker_argv(["-Q", "gpu", "-c", "4"]) == [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks",
        "worker",
        "-Q",
        "gpu",
        "-c",
        "4",
    ]


def test_help_lists_every_command(tmp_path):
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    for name in cli.COMMANDS:
        assert f"  {name} " in result.stdout


def test_an_unknown_command_is_a_usage_error(tmp_path):
    result = run("serve", cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_config_prints_the_settings_table_as_python_m_config_does(tmp_path):
    result = run("config", cwd=tmp_path)
    expected = subprocess.run(
        [sys.executable, "-m", "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0 and result.stdout == expected.stdout and "`ASR_REDIS_URL`" in result.stdout


def test_gateway_execs_gunicorn_with_the_packaged_config_from_any_directory(tmp_path):
    # --print-config loads config/gunicorn.py (which reads ASR_* settings) and exits without serving.
    result = run("gateway", "--print-config", cwd=tmp_path, ASR_DRAIN_SECONDS="17")
    assert result.returncode == 0, result.stderr
    assert "graceful_timeout                   = 17" in result.stdout
    assert f"config                             = {ROOT / 'config' / 'gunicorn.py'}" in result.stdout


def test_worker_passes_its_arguments_to_celery_worker(tmp_path):
    result = run("worker", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "celery worker [OPTIONS]" in result.stdout and "--concurrency" in result.stdout


def test_health_is_the_readiness_probe(tmp_path):
    # Nothing listens on port 1: the probe fails fast and says why, with the probe's own exit status.
    result = run("health", "--worker-id", "w@x", "--timeout", "1", cwd=tmp_path, ASR_REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 1 and "cannot read Redis" in result.stderr


@pytest.mark.parametrize("command,usage", [("modelgen", "--size"), ("plan", "--streams")])
def test_modelgen_and_plan_take_their_own_options(tmp_path, command, usage):
    result = run(command, "--help", cwd=tmp_path)
    assert result.returncode == 0 and usage in result.stdout, result.stderr
