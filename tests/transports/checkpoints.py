"""A backend that counts the driver's waits, for the cancellation tests.

How it works. ``Checkpoints`` wraps a runtime's real network backend (real sockets, so
that a leaked descriptor shows) and counts every call of the driver that can wait:
connecting, each send and receive, the TLS upgrade, taking a lock or a pool slot, a
Pool's pause before it tries again, closing (async runtimes). At the ``cancel_at``-th of
them it interrupts the delivery right there, the way the runtime does: asyncio cancels
the running task and yields (CancelledError comes out of that yield), trio cancels the
test's scope and passes a checkpoint (Cancelled), the blocking runtime raises
KeyboardInterrupt in place of the call (Ctrl-C while a thread is blocked). Right there,
whatever the timing: a cancel left to land at the next real wait would land nowhere when
the peer's bytes are already in (the fast path does not wait), and the points a run
reaches would depend on the machine's load. Waits that are cancelled inside the
runtime's own wait are tested on real waits (test_cancellation.py). Anything the wrapper
does not know (a method added to the backend later) is passed through uncounted; a test
that drives cancellation to every point until a delivery completes with none left covers
every counted wait, present and future.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["AsyncCheckpoints", "SyncCheckpoints"]


class _Counter:
    def __init__(self, cancel: Callable[[], None]) -> None:
        self.cancel = cancel
        self.cancel_at = 0  # 0: never
        self.count = 0
        self.fired = False
        self.points: list[str] = []
        self.at = ""  # the kind of wait it cancelled at

    def arm(self, cancel_at: int) -> None:
        self.cancel_at, self.count, self.fired, self.points = cancel_at, 0, False, []
        self.at = ""

    def hit(self, what: str) -> bool:
        self.count += 1
        self.points.append(what)
        if self.count == self.cancel_at:
            self.fired, self.at = True, what
            return True
        return False


class AsyncCheckpoints(_Counter):
    """The asyncio or trio backend `real`, counted; `cancel` cancels and yields."""

    def __init__(self, real: Any, cancel: Callable[[], Awaitable[None]]) -> None:
        super().__init__(lambda: None)
        self._cancel = cancel
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def point(self, what: str) -> None:
        if self.hit(what):
            await self._cancel()

    async def connect(self, config: Any, timeout: float) -> Any:
        await self.point("connect")
        return _AsyncStream(await self._real.connect(config, timeout), self)

    async def acquire(self, lock: Any, timeout: float | None) -> None:
        await self.point("acquire")
        await self._real.acquire(lock, timeout)

    async def sleep(self, seconds: float) -> None:
        await self.point("sleep")
        await self._real.sleep(seconds)


class _AsyncStream:
    def __init__(self, real: Any, counter: AsyncCheckpoints) -> None:
        self._real, self._counter = real, counter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def send_all(self, data: bytes, timeout: float) -> None:
        await self._counter.point("send")
        await self._real.send_all(data, timeout)

    async def receive_some(self, timeout: float) -> bytes:
        await self._counter.point("receive")
        data: bytes = await self._real.receive_some(timeout)
        return data

    async def start_tls(self, *args: Any, **kwargs: Any) -> _AsyncStream:
        await self._counter.point("start_tls")
        return _AsyncStream(await self._real.start_tls(*args, **kwargs), self._counter)

    async def aclose(self, forceful: bool = False) -> None:
        try:
            await self._counter.point("close")
        finally:  # a stream closes even when cancelled (ours close before any wait)
            await self._real.aclose(forceful)


class SyncCheckpoints(_Counter):
    """The blocking backend `real`, counted; KeyboardInterrupt in place of the Nth wait."""

    def __init__(self, real: Any) -> None:
        super().__init__(self._interrupt)
        self._real = real

    @staticmethod
    def _interrupt() -> None:
        raise KeyboardInterrupt

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def point(self, what: str) -> None:
        if self.hit(what):
            self.cancel()

    def connect(self, config: Any, timeout: float) -> Any:
        self.point("connect")
        return _SyncStream(self._real.connect(config, timeout), self)

    def acquire(self, lock: Any, timeout: float | None) -> None:
        self.point("acquire")
        self._real.acquire(lock, timeout)

    def sleep(self, seconds: float) -> None:
        self.point("sleep")
        self._real.sleep(seconds)


class _SyncStream:
    def __init__(self, real: Any, counter: SyncCheckpoints) -> None:
        self._real, self._counter = real, counter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def send_all(self, data: bytes, timeout: float) -> None:
        self._counter.point("send")
        self._real.send_all(data, timeout)

    def receive_some(self, timeout: float) -> bytes:
        self._counter.point("receive")
        data: bytes = self._real.receive_some(timeout)
        return data

    def start_tls(self, *args: Any, **kwargs: Any) -> _SyncStream:
        self._counter.point("start_tls")
        return _SyncStream(self._real.start_tls(*args, **kwargs), self._counter)

    # close() is passed through: closing a socket never waits, so Ctrl-C has no wait
    # to land in there.
