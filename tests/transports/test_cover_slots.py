"""transports/_slots.py: what test_slots.py leaves out. The one timer finds a waiter
that was cancelled while it waited (still in the queue, as nobody removes it) and
skips it, failing only the live waiter whose end passed; the slot stays whole."""

from __future__ import annotations

import asyncio

import pytest

from transports._slots import Slots


def test_the_timer_skips_a_waiter_cancelled_before_its_end() -> None:
    async def main() -> None:
        slots = Slots(1)
        await slots.acquire(None)
        # The cancelled waiter's end comes first: the timer is armed for it, and when it
        # runs it must pass over it (done) and fail the live one, whose end has passed.
        cancelled = asyncio.create_task(slots.acquire(0.01))
        live = asyncio.create_task(slots.acquire(0.02))
        await asyncio.sleep(0)  # both queued
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        with pytest.raises(TimeoutError):
            await live
        assert slots.locked()  # neither took the slot
        slots.release()
        assert not slots.locked()
        await slots.acquire(0)  # and it is free to take at once

    asyncio.run(asyncio.wait_for(main(), 10))
