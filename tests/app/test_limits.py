"""The meters behind the gateway's bounds: token bucket, frame guard, outbox (plain values, no I/O)."""

from __future__ import annotations

import subprocess
import sys

from app.limits import FrameGuard, Limits, TokenBucket
from app.outbox import CloseFrame, Outbox
from tests.stack import ROOT


def test_token_bucket_allows_bursts_then_the_rate():
    bucket = TokenBucket(rate=10, burst=20, now=0.0)
    assert sum(bucket.take(0.0) for _ in range(30)) == 20
    assert sum(bucket.take(1.0) for _ in range(30)) == 10


def test_frame_guard_stops_a_flood_of_tiny_frames():
    guard = FrameGuard(Limits(max_messages_per_second=100), now=0.0)
    verdicts = [guard.frame(text=False, message_bytes=2, now=0.001 * i) for i in range(1000)]
    first = next(i for i, v in enumerate(verdicts) if v is not None)
    assert 200 <= first < 230 and verdicts[first].code == "rate_limited" and verdicts[first].close_code == 1008


def test_frame_guard_limits_text_and_binary_separately_and_as_they_arrive():
    guard = FrameGuard(Limits(max_text_bytes=100, max_frame_bytes=1000, max_messages_per_second=0), now=0.0)
    assert guard.frame(text=False, message_bytes=1000, now=0) is None
    assert guard.frame(text=True, message_bytes=101, now=0).code == "message_too_big"
    assert guard.frame(text=False, message_bytes=1001, now=0).close_code == 1009


def test_outbox_refuses_past_its_bound_and_drops_droppable_messages_while_behind():
    box = Outbox(max_bytes=10)
    assert box.put("12345") and box.put("12345")
    assert box.put("queue", droppable=True) and box.bytes == 10, "dropped, not queued, while others wait"
    assert not box.put("x"), "one byte over: refused"
    assert box.get() == "12345" and box.bytes == 5
    box.close(CloseFrame(1000, "bye"))
    assert not box.put("late")
    assert [box.get(), box.get()] == ["12345", CloseFrame(1000, "bye")]


def test_the_gateway_imports_neither_numpy_nor_torch_nor_funasr():
    code = (
        "import sys, app, app.ws, app.api, app.services, app.handler, app.session, app.reader\n"
        "print(','.join(m for m in ('numpy', 'torch', 'funasr') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
