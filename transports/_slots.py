"""Slots: the asyncio driver's semaphore (a Pool's connections, a shared Client's turn).

How it works. A count of free slots and a first-come-first-served queue of waiters,
each a future with the loop time by which it gives up. release() hands the slot
straight to the oldest waiter still waiting (skipping those cancelled or timed out)
and counts it free only when the queue is empty, so acquire() takes a free slot at
once. A timed wait does not arm a timer of its own: one timer, at the earliest end
of a waiter, fails every waiter whose end has passed and is armed again for the next.
Under load (200 deliveries waiting for 8 connections) that replaces a timer per wait,
with asyncio.timeout()'s bookkeeping around it, by one deque entry; the pool's
delivery costs about 8 us less (benchmarks/RESULTS.md). A waiter cancelled just after
it was handed a slot gives it back. Only one event loop's tasks may use it (no lock).

Why ours: against asyncio.Semaphore under asyncio.timeout() it saves 6.4 to 8.0 % of the
client's CPU per pooled delivery (Pool(8), 200 in flight; three interleaved runs of
`python benchmarks/bench_primitives.py --rounds 5 --messages 2000`, 2026-12-08), over
the 5 % a hand-made primitive must pay (issue 23).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

__all__ = ["Slots"]


class Slots:
    """`value` slots, taken in order of arrival; acquire(timeout) raises TimeoutError
    when none came within `timeout` seconds (None: no limit)."""

    __slots__ = ("_free", "_timer", "_waiters")

    def __init__(self, value: int) -> None:
        self._free = value
        self._waiters: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def locked(self) -> bool:
        """True if acquire() would wait."""
        return self._free == 0

    async def acquire(self, timeout: float | None = None) -> None:
        if self._free:  # then nobody is queued (release() empties the queue first)
            self._free -= 1
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        end = math.inf if timeout is None else loop.time() + timeout
        self._waiters.append((end, waiter))
        if end < math.inf and (self._timer is None or end < self._timer.when()):
            self._arm(loop, end)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # handed a slot, then cancelled before it could run
            raise

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()[1]
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        # A timer may run up to the clock's resolution early: 1 ms of slack, so that it
        # does not find nothing due and arm itself again for the same instant.
        now, alive = loop.time() + 0.001, deque[tuple[float, asyncio.Future[None]]]()
        for end, waiter in self._waiters:
            if waiter.done():
                continue
            if end <= now:
                waiter.set_exception(TimeoutError("timed out"))
            else:
                alive.append((end, waiter))
        self._waiters = alive
        nearest = min((end for end, _ in alive), default=math.inf)
        if nearest < math.inf:
            self._arm(loop, nearest)
