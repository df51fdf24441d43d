"""Flower as ``make run`` starts it (the Procfile's ``flower:`` line): basic auth, and no way for another site's page
to shut workers down through a developer's browser."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

from tests.stack import ROOT, Stack, free_port, wait_until

pytestmark = pytest.mark.slow

CREDENTIALS = "asr:flower-test-password"  # what scripts/run.sh exports as FLOWER_BASIC_AUTH (user:password)
BASIC = "Basic " + base64.b64encode(CREDENTIALS.encode()).decode()
CROSS_SITE = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}


def procfile_command(name: str) -> str:
    """The command of one Procfile entry, as honcho reads it (``name: command``, ``#`` lines are comments)."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        key, sep, command = line.partition(":")
        if sep and not line.startswith("#") and key.strip() == name:
            return command.strip()
    raise LookupError(f"no {name!r} entry in the Procfile")


def flower_env(stack: Stack, port: int, credentials: str | None) -> dict:
    env = stack.env(flower_port=port)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # run.sh puts .venv/bin first
    env.pop("FLOWER_UNAUTHENTICATED_API", None)
    env.pop("FLOWER_BASIC_AUTH", None)
    if credentials is not None:
        env["FLOWER_BASIC_AUTH"] = credentials
    return env


def request(url: str, method: str = "GET", **headers: str) -> tuple[int, Message, bytes]:
    """Status, headers (case-insensitive: Tornado writes ``Www-Authenticate``) and body of one request."""
    req = urllib.request.Request(url, method=method, headers=headers, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def stop(proc: subprocess.Popen) -> None:
    """End the shell and the Flower it started: its own session, so its process group id is its pid."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def flower(redis_url, tiny_model, logdir):
    """One worker and Flower started by ``sh -c <the Procfile line>`` (what honcho runs), with run.sh's env."""
    stack = Stack("flower", redis_url, str(tiny_model), logdir)
    port = free_port()
    log = (logdir / "flower-flower.log").open("ab")
    proc = None
    try:
        stack.start_worker("w1")
        proc = subprocess.Popen(
            ["/bin/sh", "-c", procfile_command("flower")],
            cwd=ROOT,
            env=flower_env(stack, port, CREDENTIALS),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        http = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"flower exited with {proc.returncode}; see {log.name}")
            try:
                return request(http + "/healthcheck")[0] == 200
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        wait_until(up, 60, what="flower /healthcheck")
        yield stack, http
    finally:
        if proc is not None:
            stop(proc)
        log.close()
        stack.stop()


def test_the_api_needs_the_credentials(flower):
    stack, http = flower
    anonymous, _, _ = request(http + "/api/workers")
    wrong, _, _ = request(http + "/api/workers", Authorization="Basic " + base64.b64encode(b"asr:guess").decode())
    status, _, body = request(http + "/api/workers?refresh=1", Authorization=BASIC)
    page, headers, _ = request(http + "/")  # the UI asks the browser for the login
    assert anonymous == 401 and wrong == 401
    assert page == 401 and headers.get("WWW-Authenticate", "").startswith("Basic")
    assert status == 200 and stack.worker_id("w1") in body.decode()


def test_another_site_cannot_shut_a_worker_down(flower):
    """Without credentials, and with them too: a browser replays a saved basic-auth login on cross-site requests."""
    stack, http = flower
    worker = stack.worker_id("w1")
    url = f"{http}/api/worker/shutdown/{worker}"
    anonymous, anonymous_headers, _ = request(url, "POST", **CROSS_SITE)
    replayed, replayed_headers, _ = request(url, "POST", Authorization=BASIC, **CROSS_SITE)
    no_fetch_metadata, _, _ = request(url, "POST", Authorization=BASIC, Origin="http://evil.example")
    assert anonymous in (401, 403) and replayed == 403 and no_fetch_metadata == 403
    assert "Access-Control-Allow-Origin" not in anonymous_headers
    assert "Access-Control-Allow-Origin" not in replayed_headers
    assert stack.redis.exists(f"{stack.prefix}worker:{worker}")
    assert all(p.popen.poll() is None for p in stack.procs)


def test_the_procfile_line_refuses_to_start_flower_without_credentials(flower):
    stack, port = flower[0], free_port()
    proc = subprocess.Popen(
        ["/bin/sh", "-c", procfile_command("flower")],
        cwd=ROOT,
        env=flower_env(stack, port, None),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode != 0 and "FLOWER_BASIC_AUTH" in output
