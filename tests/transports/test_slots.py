"""The asyncio driver's Slots (transports/_slots.py): the Pool's connections and a
shared Client's turn. Slots are taken in order of arrival, a timed wait ends in
TimeoutError when its own end passes (one timer serves every waiter, so each check
makes waiters whose ends come in another order than their arrival), a cancelled
waiter loses its place and a waiter cancelled after it was handed a slot gives it
back, so no slot is ever lost."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from transports._slots import Slots


def run(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(main, 10))  # a bug here must not hang the suite


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_free_slots_are_taken_at_once_and_then_callers_wait() -> None:
    async def main() -> None:
        slots = Slots(2)
        await slots.acquire(None)
        await slots.acquire(0)  # a free slot needs no time at all
        assert slots.locked()
        with pytest.raises(TimeoutError):
            await slots.acquire(0.01)
        slots.release()
        assert not slots.locked()
        await slots.acquire(0.01)

    run(main())


def test_slots_go_in_order_of_arrival() -> None:
    async def main() -> None:
        slots, order = Slots(1), []
        await slots.acquire(None)

        async def waiter(n: int) -> None:
            await slots.acquire(5)
            order.append(n)
            await asyncio.sleep(0)
            slots.release()

        tasks = []
        for n in range(6):
            tasks.append(asyncio.create_task(waiter(n)))
            await asyncio.sleep(0)  # queued in this order
        slots.release()
        await asyncio.gather(*tasks)
        assert order == list(range(6))
        assert not slots.locked()

    run(main())


def test_each_waiter_times_out_at_its_own_end_whatever_the_order() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slots = Slots(1)
        await slots.acquire(None)
        ended: dict[str, float] = {}  # in the order they timed out

        async def waiter(name: str, timeout: float) -> None:
            start = loop.time()
            with pytest.raises(TimeoutError):
                await slots.acquire(timeout)
            ended[name] = loop.time() - start

        # The later arrivals have the earlier ends: the one timer is armed again.
        tasks = [
            asyncio.create_task(waiter("long", 0.30)),
            asyncio.create_task(slots.acquire(60)),
            asyncio.create_task(waiter("short", 0.05)),
            asyncio.create_task(waiter("middle", 0.15)),
        ]
        await asyncio.gather(*tasks[0::2], tasks[3])
        assert list(ended) == ["short", "middle", "long"]
        assert 0.05 <= ended["short"] < 0.15
        assert 0.15 <= ended["middle"] < 0.30
        assert ended["long"] >= 0.30
        assert not tasks[1].done()  # still waiting, and first in line now
        slots.release()
        await asyncio.sleep(0)
        await tasks[1]  # the slot reached it although earlier waiters timed out
        assert slots.locked()

    run(main())


def test_a_waiter_cancelled_in_line_loses_its_place() -> None:
    async def main() -> None:
        slots = Slots(1)
        await slots.acquire(None)
        first = asyncio.create_task(slots.acquire(5))
        second = asyncio.create_task(slots.acquire(None))
        await settle()
        first.cancel()
        await settle()
        assert first.cancelled()
        slots.release()
        await second  # the slot skipped the cancelled waiter
        assert slots.locked()

    run(main())


def test_a_waiter_cancelled_after_it_was_handed_a_slot_gives_it_back() -> None:
    async def main() -> None:
        slots = Slots(1)
        await slots.acquire(None)
        handed = asyncio.create_task(slots.acquire(5))
        behind = asyncio.create_task(slots.acquire(5))
        await settle()
        slots.release()  # the slot is handed to `handed`, which has not run yet...
        handed.cancel()  # ...and is cancelled before it does
        await settle()
        assert handed.cancelled()
        await behind  # it went on to the next in line
        slots.release()
        assert not slots.locked()  # nothing leaked: the one slot is free again

    run(main())


def test_release_skips_waiters_that_gave_up_and_frees_the_slot() -> None:
    async def main() -> None:
        slots = Slots(1)
        await slots.acquire(None)
        gave_up = [asyncio.create_task(slots.acquire(None)) for _ in range(3)]
        await settle()
        for task in gave_up:
            task.cancel()
        await settle()
        slots.release()  # nobody left to hand it to
        assert not slots.locked()
        await slots.acquire(0)

    run(main())
