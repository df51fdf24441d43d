"""The shared frame pacer of the load tester: grid wake-ups, and one sleeper's cancellation sparing the others."""

from __future__ import annotations

import asyncio
import math
import time

from bench.client import Pacer


def test_sleepers_never_wake_before_their_due_time_and_share_one_timer():
    async def scenario():
        pacer = Pacer(grid=0.05)
        due = (math.ceil(time.monotonic() / 0.05) + 2) * 0.05 - 0.01  # three due times inside one grid step
        sleepers = [asyncio.create_task(pacer.sleep_until(due + i * 0.001)) for i in range(3)]
        await asyncio.sleep(0)
        slots = len(pacer._slots)
        await asyncio.gather(*sleepers)
        return time.monotonic() - due, slots, len(pacer._slots)

    late, slots_while_waiting, slots_after = asyncio.run(scenario())
    assert late >= 0
    assert slots_while_waiting == 1 and slots_after == 0


def test_a_cancelled_sleeper_does_not_cancel_others_on_the_same_grid_point():
    async def scenario():
        pacer = Pacer(grid=0.05)
        due = time.monotonic() + 0.05
        first = asyncio.create_task(pacer.sleep_until(due))
        second = asyncio.create_task(pacer.sleep_until(due))
        await asyncio.sleep(0)
        first.cancel()
        await second
        return first.cancelled(), second.done() and not second.cancelled()

    assert asyncio.run(scenario()) == (True, True)


def test_a_due_time_in_the_past_returns_without_scheduling_anything():
    async def scenario():
        pacer = Pacer(grid=1.0)
        await pacer.sleep_until(time.monotonic() - 5)
        return pacer._slots

    assert asyncio.run(scenario()) == {}
