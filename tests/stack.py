"""Real service processes for system tests: Celery workers and a gunicorn gateway on a real Redis.

Each :class:`Stack` is an isolated namespace (its own Redis key prefix and queue name) on the test Redis database,
so several stacks can run side by side and none sees another's workers or sessions.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


@dataclass
class Stack:
    """Workers and gateways of one isolated namespace; ``settings`` are ASR_* overrides for all of them."""

    name: str
    redis_url: str
    model: str
    logdir: Path
    settings: dict = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    url: str = ""
    http: str = ""

    def __post_init__(self) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.redis = redis.Redis.from_url(self.redis_url, decode_responses=True)

    @property
    def prefix(self) -> str:
        return f"asrtest-{self.name}:"

    @property
    def queue(self) -> str:
        return f"gpu-{self.name}"

    def env(self, **overrides) -> dict:
        env = dict(os.environ)
        env.update(
            {
                "ASR_REDIS_URL": self.redis_url,
                "ASR_MODEL": self.model,
                "ASR_KEY_PREFIX": self.prefix,
                "ASR_QUEUE": self.queue,
                "ASR_NCPU": "1",
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(ROOT),
                "ASR_BATCHING": os.environ.get("ASR_TEST_BATCHING", "1"),
            }
        )
        env.update({f"ASR_{k.upper()}": str(v) for k, v in {**self.settings, **overrides}.items()})
        return env

    def _spawn(self, name: str, argv: list[str], env: dict) -> Proc:
        log = self.logdir / f"{self.name}-{name}.log"
        handle = log.open("ab")
        popen = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def worker_id(self, name: str) -> str:
        return f"{name}@{self.name}"

    def start_worker(self, name: str = "w1", concurrency: int = 8, wait: bool = True, **overrides) -> Proc:
        worker_id = self.worker_id(name)
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "worker",
            "-Q",
            self.queue,
            "-n",
            worker_id,
            "--concurrency",
            str(concurrency),
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ]
        proc = self._spawn(name, argv, self.env(**overrides))
        if wait:
            self.wait_worker(worker_id, proc)
        return proc

    def wait_worker(self, worker_id: str, proc: Proc, timeout: float = 90) -> None:
        def registered():
            if proc.popen.poll() is not None:
                raise RuntimeError(f"worker {worker_id} exited:\n{proc.tail()}")
            return self.redis.exists(f"{self.prefix}worker:{worker_id}")

        wait_until(registered, timeout, what=f"worker {worker_id} to load its model")

    def start_gateway(self, name: str = "gateway", wait_healthy: bool = True, **overrides) -> str:
        port = free_port()
        argv = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "config" / "gunicorn.py"), "wsgi:app"]
        proc = self._spawn(name, argv, self.env(bind=f"127.0.0.1:{port}", **overrides))
        http = f"http://127.0.0.1:{port}"

        def up():
            if proc.popen.poll() is not None:
                raise RuntimeError(f"gateway exited:\n{proc.tail()}")
            status, _ = self.get(http + "/healthz")
            return status == 200 or (status == 503 and not wait_healthy)

        wait_until(up, 30, what="gateway /healthz")
        self.http, self.url = http, f"ws://127.0.0.1:{port}/ws"
        return self.url

    @staticmethod
    def get(url: str) -> tuple[int | None, dict | None]:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None, None

    def api_queue(self, http: str | None = None) -> dict:
        status, body = self.get((http or self.http) + "/api/queue")
        assert status == 200, (status, body)
        return body  # type: ignore[return-value]

    def stop(self) -> None:
        for proc in self.procs:  # all at once: each may take seconds to wind down
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()
        try:
            for pattern in (f"{self.prefix}*", f"{self.queue}*"):
                for key in self.redis.scan_iter(pattern):
                    self.redis.delete(key)
        except redis.RedisError:
            pass  # a test's private Redis may already be gone


class PrivateRedis:
    """A throw-away ``redis-server`` on a free port, no persistence: scenarios may stop and restart it."""

    def __init__(self, logdir: Path) -> None:
        self.port = free_port()
        self.logdir = logdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/1"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.logdir.mkdir(parents=True, exist_ok=True)
        log = (self.logdir / f"redis-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                "10000",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        client = redis.Redis(port=self.port)
        wait_until(lambda: _pings(client), 10, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        """Kill it (SIGKILL: like a crash, nothing flushed) and wait for it to exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, down: float) -> float:
        """Kill it, stay down ``down`` seconds, start it again; returns the monotonic time it answered again."""
        self.stop()
        time.sleep(down)
        self.start()
        return time.monotonic()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
