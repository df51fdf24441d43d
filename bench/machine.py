"""Who used the machine's CPU during a run: the service's processes, the load client, and everything else.

The development machine has 2 cores shared with other work; a run whose "others" share is large was disturbed
and its figures are pessimistic. CPU seconds are read from /proc through psutil at the start and end of a run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import psutil


def _busy(times) -> float:
    """Busy CPU seconds of a psutil.cpu_times() result (all but idle and iowait)."""
    return sum(getattr(times, name) for name in times._fields if name not in ("idle", "iowait", "guest", "guest_nice"))


def _tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its live children; 0 when it is gone."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                continue
    except psutil.NoSuchProcess:
        pass
    return total


@dataclass
class CpuAccount:
    """Start with :meth:`begin`, finish with :meth:`end`; ``service_pids`` are roots of the service's trees."""

    service_pids: dict[str, int]
    started: float = 0.0
    _busy0: float = 0.0
    _proc0: dict[str, float] = field(default_factory=dict)
    _self0: float = 0.0

    def begin(self) -> CpuAccount:
        self.started = time.monotonic()
        self._busy0 = _busy(psutil.cpu_times())
        self._proc0 = {name: _tree_cpu(pid) for name, pid in self.service_pids.items()}
        self._self0 = time.process_time()
        return self

    def end(self) -> dict:
        """CPU seconds per service process, the client, others, the machine's total, and the load averages.

        A process killed during the run (kill-worker) reads as 0 at the end and is left out.
        """
        wall = time.monotonic() - self.started
        busy = _busy(psutil.cpu_times()) - self._busy0
        service = {}
        for name, pid in self.service_pids.items():
            now = _tree_cpu(pid)
            if now >= self._proc0.get(name, 0.0):
                service[name] = round(now - self._proc0.get(name, 0.0), 1)
        client = time.process_time() - self._self0
        others = max(0.0, busy - sum(service.values()) - client)
        cores = psutil.cpu_count() or 1
        return {
            "wall_s": round(wall, 1),
            "cores": cores,
            "busy_s": round(busy, 1),
            "busy_pct_of_machine": round(100 * busy / (wall * cores), 1) if wall > 0 else None,
            "service_s": service,
            "client_s": round(client, 1),
            "others_s": round(others, 1),
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        }


def format_cpu(cpu: dict) -> str:
    """One line: where the machine's CPU went during the run."""
    service = ", ".join(f"{k} {v:.1f}" for k, v in cpu["service_s"].items())
    return (
        f"CPU over {cpu['wall_s']:.0f} s on {cpu['cores']} cores: machine busy {cpu['busy_pct_of_machine']} % "
        f"({cpu['busy_s']:.1f} s); service: {service}; load client {cpu['client_s']:.1f} s; "
        f"other processes {cpu['others_s']:.1f} s"
    )
