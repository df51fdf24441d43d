"""The live status line of a load test: a tqdm bar on a terminal, a log line every few seconds otherwise.

Updated by the runner about twice a second (never per frame or per message), so it costs the client next to
nothing next to the load it generates.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time

from tqdm import tqdm

logger = logging.getLogger(__name__)

LOG_EVERY = 5.0  # seconds between log lines when stderr is not a terminal


class Progress:
    """Sessions finished out of ``total`` (None for an open-ended soak), with counts and service figures."""

    def __init__(self, total: int | None, *, enabled: bool = True, label: str = "load") -> None:
        self.enabled = enabled
        self.label = label
        self._bar = None
        self._last_log = 0.0
        self._done = 0
        if enabled and sys.stderr.isatty():
            width = shutil.get_terminal_size().columns or 120  # a pty without a size reports 0 columns
            self._bar = tqdm(total=total, desc=label, unit="sess", ncols=width, leave=True, mininterval=0.5)

    def update(self, counts: dict[str, int], pending: int | None, latency_p95: float | None) -> None:
        """``counts``: outcome → sessions so far plus ``active``; ``pending`` from /api/queue (None if down)."""
        if not self.enabled:
            return
        finished = sum(counts.get(k, 0) for k in ("completed", "refused", "timed_out", "failed"))
        fields = {
            "active": counts.get("active", 0),
            "ok": counts.get("completed", 0),
            "503": counts.get("refused", 0),
            "t/o": counts.get("timed_out", 0),
            "fail": counts.get("failed", 0),
            "pending": "-" if pending is None else pending,
            "p95": "-" if latency_p95 is None else f"{latency_p95:.2f}s",
        }
        if self._bar is not None:
            self._bar.update(finished - self._done)
            self._bar.set_postfix(fields, refresh=False)
        elif time.monotonic() - self._last_log >= LOG_EVERY:
            self._last_log = time.monotonic()
            logger.info("%s: finished %d %s", self.label, finished, " ".join(f"{k}={v}" for k, v in fields.items()))
        self._done = finished

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
