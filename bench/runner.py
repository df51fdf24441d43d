"""Runs many FunASR-protocol sessions at once on one asyncio event loop and collects what they saw.

Two shapes of load:

* **ramped** (default): ``streams`` sessions, session *i* starting ``i × ramp / streams`` seconds after the run
  starts, each streaming the same audio at ``pace`` (1.0 = real time) in ``frame_ms`` frames, each bounded by
  its own ``timeout``;
* **soak**: ``streams`` slots, each opening a session as soon as its previous one closed, until ``soak_seconds``
  have passed or ``soak_sessions`` sessions were started; resident memory of the service's processes is sampled
  once ``warmup_sessions`` sessions have finished and again at the end.

Meanwhile /api/queue is polled (bench.poller) and a progress line is kept up to date (bench.progress).

The client shares the machine with the service, so it is kept cheap: one event loop, one small write per frame
(100 ms frames by default: 10 writes/s per stream; FunASR's sample clients use 60 ms), JSON only for the two
control messages, frame sends of all sessions coalesced on a 10 ms grid (bench.client.Pacer), and live
statistics computed twice a second rather than per message. What remains is mostly the kernel's cost of a
loopback TCP send, about 40–100 µs per frame on the 2-core development VM.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from bench.client import Pacer, SessionRecord, StreamClient
from bench.memory import MemorySample, service_pids
from bench.poller import QueuePoller, QueueSample, http_base, url_token
from bench.progress import Progress
from bench.stats import COMPLETED, classify, percentile

logger = logging.getLogger(__name__)

TICK = 0.5  # seconds between progress updates
PACER_GRID = 0.01  # seconds: frames of all sessions leave on this shared grid (one loop wake-up per point)
SETTLE = 2.0  # seconds to wait after a soak before the final memory sample (sessions being torn down)
SOAK_BACKOFF = 0.5  # seconds a soak slot waits after a session that did not complete (e.g. refused)


@dataclass(frozen=True)
class LoadPlan:
    """What load to generate. Times in seconds; ``pcm`` is 16 kHz 16-bit mono audio streamed by every session."""

    url: str
    pcm: bytes
    streams: int = 10
    ramp: float = 0.0
    frame_ms: int = 100
    pace: float = 1.0
    timeout: float = 60.0
    timing: bool = True  # ask for the per-chunk latency breakdown (config field "timing")
    soak_seconds: float = 0.0
    soak_sessions: int = 0
    warmup_sessions: int = 0  # soak: memory "start" is sampled once this many sessions finished
    memory_interval: float = 0.0  # seconds between RSS samples during the run; 0 = start and end only (soak)
    poll_interval: float = 0.5
    gateway_pid: int | None = None  # overrides the gateway_pid /api/queue reports
    config: dict = field(default_factory=dict)  # extra first-message fields
    label: str = "load"

    @property
    def soak(self) -> bool:
        return self.soak_seconds > 0 or self.soak_sessions > 0


@dataclass
class LoadResult:
    """Everything a run recorded; monotonic times, ``t0`` the start of the run."""

    plan: LoadPlan
    t0: float
    t_end: float
    records: list[SessionRecord]
    polls: list[QueueSample]
    memory: list[MemorySample] = field(default_factory=list)
    memory_start: MemorySample | None = None
    memory_end: MemorySample | None = None
    events: list[tuple[float, str]] = field(default_factory=list)
    client_cpu_s: float = 0.0


class LoadRunner:
    """One load run. Scenarios may read ``clients`` (live records) and call :meth:`mark` while it runs."""

    def __init__(self, plan: LoadPlan, *, progress: bool = True) -> None:
        self.plan = plan
        self.clients: list[StreamClient] = []
        self.counts: Counter[str] = Counter()
        self.events: list[tuple[float, str]] = []
        self.poller = QueuePoller(http_base(plan.url), interval=plan.poll_interval, token=url_token(plan.url))
        self.memory: list[MemorySample] = []
        self.memory_start: MemorySample | None = None
        self._progress = Progress(None if plan.soak else plan.streams, enabled=progress, label=plan.label)
        self._active: set[int] = set()
        self._cursor: dict[int, int] = {}
        self._recent: deque[list[float]] = deque(maxlen=4)  # chunk latencies of the last few ticks
        self._issued = 0
        self.pacer = Pacer(PACER_GRID)
        self.t0 = 0.0

    def mark(self, what: str) -> None:
        """Record a scenario event (shown on the plot and in the JSON)."""
        self.events.append((time.monotonic(), what))
        logger.info("event at +%.1f s: %s", time.monotonic() - self.t0, what)

    async def run(self) -> LoadResult:
        self.t0 = time.monotonic()
        cpu0 = time.process_time()
        stop = asyncio.Event()
        background = [asyncio.create_task(self.poller.run(stop)), asyncio.create_task(self._tick(stop))]
        try:
            await (self._soak() if self.plan.soak else self._ramped())
        finally:
            stop.set()
            await asyncio.gather(*background, return_exceptions=True)
            self._progress.close()
        memory_end = await self._final_memory() if self.plan.soak else None
        return LoadResult(
            self.plan,
            self.t0,
            time.monotonic(),
            [c.record for c in self.clients],
            self.poller.samples,
            self.memory,
            self.memory_start,
            memory_end,
            self.events,
            time.process_time() - cpu0,
        )

    # --- sessions -------------------------------------------------------------------------------------------------
    async def _session(self, index: int) -> SessionRecord:
        plan = self.plan
        config = {"wav_name": f"{plan.label}-{index}", "timing": plan.timing, **plan.config}
        client = StreamClient(
            plan.url, config=config, frame_ms=plan.frame_ms, pace=plan.pace, timeout=plan.timeout, pacer=self.pacer
        )
        self.clients.append(client)
        slot = len(self.clients) - 1
        self._active.add(slot)
        self.counts["started"] += 1
        try:
            record = await client.run(plan.pcm)
        except Exception as exc:  # noqa: BLE001 - one session's surprise (a non-JSON message …) must not end the run
            logger.warning("session %d: client error %r", index, exc)
            record = client.record
            record.error, record.finished = f"client error: {exc!r}", time.monotonic()
        finally:
            self._active.discard(slot)
        self.counts[classify(record)] += 1
        self._after_session()
        return record

    async def _ramped(self) -> None:
        n = self.plan.streams

        async def delayed(i: int) -> None:
            await asyncio.sleep(max(0.0, self.t0 + i * self.plan.ramp / n - time.monotonic()))
            await self._session(i)

        await asyncio.gather(*(delayed(i) for i in range(n)))

    async def _soak(self) -> None:
        plan = self.plan
        deadline = self.t0 + plan.soak_seconds if plan.soak_seconds > 0 else math.inf
        limit = plan.soak_sessions if plan.soak_sessions > 0 else math.inf

        async def slot(k: int) -> None:
            await asyncio.sleep(k * plan.ramp / plan.streams)
            while time.monotonic() < deadline and self._issued < limit:
                self._issued += 1
                record = await self._session(self._issued - 1)
                if classify(record) != COMPLETED:
                    await asyncio.sleep(SOAK_BACKOFF)

        await asyncio.gather(*(slot(k) for k in range(plan.streams)))

    def _after_session(self) -> None:
        finished = self.counts["started"] - len(self._active)
        if self.plan.soak and self.memory_start is None and finished >= self.plan.warmup_sessions:
            self.memory_start = self._sample_memory()
            logger.info("warm-up done after %d sessions; memory at start: %s", finished, self.memory_start.rss)

    # --- memory ---------------------------------------------------------------------------------------------------
    def _sample_memory(self) -> MemorySample:
        sample = MemorySample.take(service_pids(self.poller.latest_ok, self.plan.gateway_pid))
        self.memory.append(sample)
        return sample

    async def _final_memory(self) -> MemorySample:
        await asyncio.sleep(SETTLE)
        await self.poller.poll_once()
        return self._sample_memory()

    # --- live figures ---------------------------------------------------------------------------------------------
    async def _tick(self, stop: asyncio.Event) -> None:
        last_memory = 0.0
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), TICK)
            except TimeoutError:
                pass
            self._recent.append(self._new_latencies())
            latest = self.poller.latest
            counts = dict(self.counts, active=len(self._active))
            recent = [x for tick in self._recent for x in tick]
            self._progress.update(counts, latest.pending if latest else None, percentile(recent, 95))
            interval = self.plan.memory_interval
            if interval > 0 and time.monotonic() - last_memory >= interval and self.poller.latest_ok:
                last_memory = time.monotonic()
                self._sample_memory()

    def _new_latencies(self) -> list[float]:
        """Chunk latencies of partials that arrived since the last tick, over the active sessions."""
        latencies = []
        for slot in list(self._active):
            record = self.clients[slot].record
            start = self._cursor.get(slot, 0)
            for received, message in record.messages[start:]:
                chunk = message.get("chunk")
                if isinstance(chunk, int) and 0 <= chunk < len(record.chunk_ends) and not message.get("is_final"):
                    latencies.append(received - record.chunk_ends[chunk])
            self._cursor[slot] = len(record.messages)
        return latencies
