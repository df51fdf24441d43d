"""What every scenario needs: its own service stack, a private Redis when it will be restarted, checks, output.

Stacks are :class:`tests.stack.Stack` namespaces (own key prefix and queue) on a Redis database reserved for
benchmarks (``redis://127.0.0.1:6379/12`` by default, never 0 or 15). Every process a scenario starts is stopped
in a ``finally``, and its keys are deleted, whatever happens.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.loadtest import save
from bench.runner import LoadResult
from bench.table import format_report
from tests.stack import Proc, Stack

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_REDIS = "redis://127.0.0.1:6379/12"
DEFAULT_MODEL = ROOT / "models" / "tiny"
EXIT_OK, EXIT_FAILED, EXIT_SETUP = 0, 1, 2
PIDBOX_BINDINGS = "_kombu.binding.celery.pidbox"  # kombu's set of remote-control queues, one per worker


@dataclass
class Options:
    """Options shared by all scenarios (the CLI's global flags)."""

    out: Path
    redis_url: str = DEFAULT_REDIS
    model: Path = DEFAULT_MODEL
    quick: bool = False
    batching: bool = True
    progress: bool = True
    frame_ms: int = 100
    worker_loglevel: str = "WARNING"  # INFO logs two lines per chunk task: real CPU at hundreds of tasks/s


class BenchStack(Stack):
    """A :class:`Stack` whose workers log at a chosen level (tests.stack always starts them at INFO)."""

    loglevel = "WARNING"

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
            self.loglevel,
            "--without-mingle",
            "--without-gossip",
        ]
        proc = self._spawn(name, argv, self.env(**overrides))
        if wait:
            self.wait_worker(worker_id, proc)
        return proc

    def worker_procs(self) -> dict[str, Proc]:
        """Worker id → process, for the workers this stack started."""
        return {self.worker_id(p.name): p for p in self.procs if p.name != "gateway"}

    def stop(self) -> None:
        """Stop the processes (always), then delete the namespace's keys (if Redis answers)."""
        workers = list(self.worker_procs())
        try:
            super().stop()
            for key in self.redis.scan_iter(f"_kombu.binding*{self.queue}*"):  # left behind by kombu
                self.redis.delete(key)
            pidboxes = tuple(f"{worker_id}.celery.pidbox" for worker_id in workers)
            for member in self.redis.smembers(PIDBOX_BINDINGS):  # "<routing key>\x06\x16<pattern>\x06\x16<queue>"
                if member.endswith(pidboxes):
                    self.redis.srem(PIDBOX_BINDINGS, member)
        except redis.RedisError as exc:
            logger.warning("stack %s stopped, but its Redis keys could not be deleted: %s", self.name, exc)


def ensure_model(path: Path) -> Path:
    """The tiny random-weight model folder, generated if missing."""
    if not (path / "model.pt").exists():
        from tasks import modelgen

        modelgen.generate(path, "tiny")
    return path


@contextmanager
def running_stack(
    opts: Options, name: str, *, workers: list[tuple[str, int]], redis_url: str | None = None, **settings
) -> Iterator[BenchStack]:
    """Start workers (name, concurrency) and a gateway with ASR_* ``settings``; stop everything on exit."""
    settings = {"batching": int(opts.batching), **settings}
    stack = BenchStack(
        f"{name}-{os.getpid()}",
        redis_url or opts.redis_url,
        str(ensure_model(opts.model)),
        opts.out / "logs",
        settings=settings,
    )
    stack.loglevel = opts.worker_loglevel
    try:
        for worker, concurrency in workers:
            stack.start_worker(worker, concurrency=concurrency, wait=False)
        for worker_id, proc in stack.worker_procs().items():
            stack.wait_worker(worker_id, proc)
        stack.start_gateway()
        logger.info("stack %s up: %s, workers %s, settings %s", stack.name, stack.url, workers, settings)
        yield stack
    finally:
        stack.stop()


def stack_pids(stack: Stack) -> dict[str, int]:
    """Process name → pid of every process the stack started (the gateway's is gunicorn's master)."""
    return {proc.name: proc.popen.pid for proc in stack.procs}


@dataclass
class Checks:
    """A scenario's assertions: each is printed with PASS/FAIL; the exit status is non-zero if any failed."""

    items: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.items.append((what, bool(ok), detail))
        return bool(ok)

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.items)

    def render(self) -> str:
        return "\n".join(
            f"{'PASS' if ok else 'FAIL'}  {what}" + (f"  ({detail})" if detail else "")
            for what, ok, detail in self.items
        )

    def exit_code(self) -> int:
        return EXIT_OK if self.passed else EXIT_FAILED

    def to_json(self) -> list[dict]:
        return [{"check": what, "passed": ok, "detail": detail} for what, ok, detail in self.items]


def save_figures(out: Path, figures: dict, checks: Checks) -> None:
    """Write the scenario's own figures and checks to ``out/scenario.json``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "scenario.json").write_text(
        json.dumps({"figures": figures, "checks": checks.to_json()}, indent=1, default=str)
    )


def save_run(result: LoadResult, out: Path, title: str) -> dict:
    """Save one run's report, JSON and plot under ``out`` and print its table."""
    report = save(result, out, title)
    print(f"\n=== {title} ===\n{format_report(report)}\n(report: {out / 'report.json'}, plot: {out / 'load.png'})")
    return report
