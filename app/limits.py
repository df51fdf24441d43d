"""Per-session and per-process bounds of the gateway, and the small I/O-free meters that enforce them.

Every buffer a client can fill has a bound here or in ``config.settings`` (the README's limits table lists them):

============================  ============================================================================
input read ahead              at most ``READ_AHEAD_MESSAGES`` messages / ``READ_AHEAD_BYTES`` bytes parsed and not
                              yet handled; past it the reader stops reading the socket (TCP back-pressure)
message size                  binary ≤ ``ASR_MAX_FRAME_BYTES``, text ≤ ``ASR_MAX_TEXT_BYTES`` (close 1009)
message rate                  ``ASR_MAX_MESSAGES_PER_SECOND``, bursts of twice that (close 1008 ``rate_limited``)
audio without results         ``ASR_MAX_OUTSTANDING_SECONDS``; past it the gateway stops reading (back-pressure)
replay history                ``ASR_REPLAY_MAX_SECONDS`` per session, ``ASR_REPLAY_BUDGET_MB`` per process
results not yet written       ``ASR_MAX_OUTBOX_BYTES``; a client that far behind is closed (``slow_consumer``)
============================  ============================================================================
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from config.settings import Settings
from tasks.options import BYTES_PER_SAMPLE, SAMPLE_RATE

READ_AHEAD_MESSAGES = 64  # parsed messages waiting for the session handler, per connection
READ_AHEAD_BYTES = 1 << 20  # their payload bytes
BYTES_PER_SECOND = SAMPLE_RATE * BYTES_PER_SAMPLE  # 32,000 bytes of PCM per second of audio


@dataclass(frozen=True)
class Limits:
    """The per-session numbers the session core decides with (seconds, bytes, messages)."""

    max_frame_bytes: int = 1 << 20
    max_text_bytes: int = 64 << 10
    max_messages_per_second: float = 400.0
    config_timeout: float = 10.0
    idle_timeout: float = 30.0
    chunk_timeout: float = 60.0
    max_outstanding_bytes: int = 10 * BYTES_PER_SECOND
    replay_max_bytes: int = 120 * BYTES_PER_SECOND
    max_outbox_bytes: int = 1 << 20
    queue_status_interval: float = 1.0
    queue_status_step: int = 10

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_frame_bytes=settings.max_frame_bytes,
            max_text_bytes=settings.max_text_bytes,
            max_messages_per_second=settings.max_messages_per_second,
            config_timeout=settings.config_timeout,
            idle_timeout=settings.idle_timeout,
            chunk_timeout=settings.chunk_timeout,
            max_outstanding_bytes=int(settings.max_outstanding_seconds * BYTES_PER_SECOND),
            replay_max_bytes=int(settings.replay_max_seconds * BYTES_PER_SECOND),
            max_outbox_bytes=settings.max_outbox_bytes,
            queue_status_interval=settings.queue_status_interval,
            queue_status_step=settings.queue_status_step,
        )


class TokenBucket:
    """``rate`` events per second on average, ``burst`` at once. Time is passed in (any monotonic clock)."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = now

    def take(self, now: float, n: float = 1.0) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < n:
            return False
        self._tokens -= n
        return True


@dataclass(frozen=True)
class Violation:
    """What the reader hands the session instead of a message when a client broke a hard limit."""

    code: str
    message: str
    close_code: int


class FrameGuard:
    """Decides, per WebSocket frame as it is parsed, whether the connection is within its limits (no I/O).

    Fragments count as frames (a client cannot dodge the rate by fragmenting), and the size limit applies to a
    message's bytes so far, so an oversized message is refused before it is buffered whole.
    """

    def __init__(self, limits: Limits, now: float) -> None:
        self.limits = limits
        rate = limits.max_messages_per_second
        self.bucket = TokenBucket(rate, 2 * rate, now) if rate > 0 else None

    def frame(self, *, text: bool, message_bytes: int, now: float) -> Violation | None:
        """One frame of a message of which ``message_bytes`` have arrived so far; a Violation ends the session."""
        if self.bucket is not None and not self.bucket.take(now):
            return Violation(
                "rate_limited",
                f"more than {self.limits.max_messages_per_second:.0f} WebSocket messages per second",
                1008,
            )
        limit = self.limits.max_text_bytes if text else self.limits.max_frame_bytes
        if message_bytes > limit:
            kind = "text message" if text else "binary frame"
            return Violation(
                "message_too_big" if text else "frame_too_large",
                f"{kind} of more than {limit} bytes; the limit is {limit}",
                1009,
            )
        return None


class ReplayBudget:
    """The process-wide bound on replay history (``ASR_REPLAY_BUDGET_MB``). Thread-safe.

    Sessions charge the audio they keep for a replay beyond what is still unanswered; once the budget is spent
    they keep only their unanswered audio (itself bounded per session), so a replay after a worker loss may
    start later in the utterance than it would have.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._lock = threading.Lock()

    def charge(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.max_bytes:
                return False
            self.used += n
            return True

    def refund(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)
