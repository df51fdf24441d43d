"""Resident memory (RSS) of the gateway and worker processes, for the soak test.

The processes are found through ``/api/queue``: each worker's heartbeat carries its ``pid`` and the gateway reports
its own (``gateway_pid``, the gunicorn worker process that answered). Only processes on this machine can be
measured; a pid that is gone (a killed worker) reads as None.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import psutil

from bench.poller import QueueSample

logger = logging.getLogger(__name__)

MB = 1024 * 1024


def service_pids(sample: QueueSample | None, gateway_pid: int | None = None) -> dict[str, int]:
    """Process name → pid: ``gateway`` (``gateway_pid`` overrides the reported one) and ``worker:<id>``."""
    pids: dict[str, int] = {}
    gateway = gateway_pid or (sample.gateway_pid if sample else None)
    if gateway:
        pids["gateway"] = int(gateway)
    for worker in sample.workers if sample else ():
        if worker.get("pid"):
            pids[f"worker:{worker['id']}"] = int(worker["pid"])
    return pids


def rss(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes; None when the process is gone or not ours to read."""
    try:
        return psutil.Process(pid).memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


@dataclass(frozen=True)
class MemorySample:
    """RSS in bytes per process name at monotonic time ``t``."""

    t: float
    rss: dict[str, int | None]

    @classmethod
    def take(cls, pids: dict[str, int]) -> MemorySample:
        return cls(time.monotonic(), {name: rss(pid) for name, pid in pids.items()})

    def to_json(self, t0: float) -> dict:
        return {"t": round(self.t - t0, 3), "rss_mb": {k: _mb(v) for k, v in self.rss.items()}}


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / MB, 1)


def change(start: MemorySample | None, end: MemorySample | None) -> dict[str, dict]:
    """Per process: RSS at start and end in MiB and the change in percent (None where either is missing)."""
    if start is None or end is None:
        return {}
    out = {}
    for name in sorted(set(start.rss) | set(end.rss)):
        before, after = start.rss.get(name), end.rss.get(name)
        pct = None if not before or after is None else round(100.0 * (after - before) / before, 1)
        out[name] = {"start_mb": _mb(before), "end_mb": _mb(after), "change_pct": pct}
    return out
