"""``funasr-stream``: the operator's command line, installed as a console script by ``pip install .``.

    funasr-stream gateway [gunicorn options]     gunicorn + gevent with config/gunicorn.py, serving wsgi:app
    funasr-stream worker [celery worker options] celery -A tasks worker …, options passed through unchanged
    funasr-stream modelgen [options]             python -m tasks.modelgen: generate a random-weight model
    funasr-stream health [options]               python -m tasks.healthcheck: a worker's readiness probe
    funasr-stream plan [options]                 python -m bench.plan: workers needed for N streams
    funasr-stream config                         python -m config: the settings table

Everything after the command goes to it unparsed, so ``funasr-stream worker --help`` is Celery's help.
``gateway`` and ``worker`` replace this process (``exec``) with this interpreter running gunicorn or Celery, so
signals (SIGTERM's graceful drain) reach them directly and no wrapper process stays around. The gunicorn
configuration file is found beside this module, inside the installed ``config`` package, so the command works
from any directory. Settings come from ``ASR_*`` variables as everywhere else (``funasr-stream config``).

This module lives in ``config`` because it imports nothing heavy: each command imports what it runs only when
it runs (``config`` and ``plan`` need neither torch nor Celery).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

PROG = "funasr-stream"
GUNICORN_CONFIG = Path(__file__).resolve().with_name("gunicorn.py")
WSGI_APP = "wsgi:app"


def gateway_argv(args: Sequence[str]) -> list[str]:
    """The gunicorn command line the gateway runs: this interpreter, config/gunicorn.py, then ``args``."""
    return [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONFIG), *args, WSGI_APP]


def worker_argv(args: Sequence[str]) -> list[str]:
    """The Celery command line a worker runs: ``celery -A tasks worker`` with ``args`` appended."""
    return [sys.executable, "-m", "celery", "-A", "tasks", "worker", *args]


def _exec(argv: list[str]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
    return 1  # not reached: execv replaces the process or raises OSError


def _gateway(args: Sequence[str]) -> int:
    return _exec(gateway_argv(args))


def _worker(args: Sequence[str]) -> int:
    return _exec(worker_argv(args))


def _modelgen(args: Sequence[str]) -> int:
    from tasks import modelgen

    modelgen.main(list(args))
    return 0


def _health(args: Sequence[str]) -> int:
    from tasks import healthcheck

    return healthcheck.main(args)


def _plan(args: Sequence[str]) -> int:
    from bench import plan

    return plan.main(args)


def _config(args: Sequence[str]) -> int:
    from config import __main__ as settings_table

    if args:
        print(f"{PROG} config: takes no arguments, got {' '.join(args)}", file=sys.stderr)
        return 2
    settings_table.main()
    return 0


#: command → (one-line description, runner). Runners take the remaining arguments and return an exit status.
COMMANDS: dict[str, tuple[str, Callable[[Sequence[str]], int]]] = {
    "gateway": ("run the gateway: gunicorn -c config/gunicorn.py [ARGS] wsgi:app", _gateway),
    "worker": ("run a worker: celery -A tasks worker [ARGS]", _worker),
    "modelgen": ("generate a random-weight FunASR model folder (python -m tasks.modelgen)", _modelgen),
    "health": ("exit 0 if this worker is registered and its engine ok (python -m tasks.healthcheck)", _health),
    "plan": ("workers, cores or GPUs needed for N streams, from a benchmark JSON (python -m bench.plan)", _plan),
    "config": ("print the settings table: every ASR_* variable, default, unit (python -m config)", _config),
}


def build_parser() -> argparse.ArgumentParser:
    commands = "\n".join(f"  {name:<9} {text}" for name, (text, _) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run and inspect the streaming speech-recognition service.",
        epilog=f"commands:\n{commands}\n\n`{PROG} COMMAND --help` shows that command's own options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="passed to the command unparsed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    _, run = COMMANDS[ns.command]
    return run(ns.args)


if __name__ == "__main__":
    sys.exit(main())
