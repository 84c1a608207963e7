"""A client's plain (not TLS) connection, tried first: the part asyncio and trio share.

How it works. The socket is non-blocking. Every send and receive is tried at once and
goes through the runtime only when the call would block: a reply that is already there
costs one system call and no turn of the event loop. A runtime's subclass supplies the
three ways to go through it (yield_now, readable, writable) and the TLS upgrade;
asyncio's replaces receive_waiting() with a reader that stays registered and reads for
itself, and gives what it read first (read_ahead()). After FAST_TURNS calls in a row
that did not wait, the next one yields first, so that a peer that is always ready
cannot starve the other tasks. The blocking driver's SocketStream does the same with
poll() and no turns to count.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._net import UNIX_RETRY, Poller, peer_name, unix_connect

__all__ = ["FAST_TURNS", "PlainStream", "unix_socket"]

#: Sends and receives in a row that may complete without going through the runtime.
FAST_TURNS = 16


class PlainStream:
    """An AsyncStream over a non-blocking socket (see the module comment)."""

    tls = False

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._readable = Poller(sock.fileno(), select.POLLIN | select.POLLPRI)
        self._turns = 0  # calls in a row that did not go through the runtime

    # ---- what a runtime supplies ---------------------------------------------------

    async def yield_now(self) -> None:
        """Let the runtime run other tasks (a checkpoint)."""
        raise NotImplementedError

    async def readable(self, timeout: float) -> None:
        """Wait until the socket is readable (or closed); TimeoutError after `timeout`."""
        raise NotImplementedError

    async def writable(self, timeout: float) -> None:
        """Wait until the socket is writable (or closed); TimeoutError after `timeout`."""
        raise NotImplementedError

    async def start_tls(
        self,
        context: ssl.SSLContext,
        server_hostname: str | None,
        timeout: float,
        server_side: bool = False,
    ) -> Any:
        raise NotImplementedError

    # ---- the stream -----------------------------------------------------------------

    def _must_yield(self, timeout: float) -> bool:
        """Count a call (a plain method: no coroutine made on the fast path); True when
        FAST_TURNS calls in a row did not wait, so this one yields first."""
        if timeout <= 0:
            raise TimeoutError("timed out")
        if self._turns < FAST_TURNS:
            self._turns += 1
            return False
        self._turns = 0
        return True

    async def send_all(self, data: bytes, timeout: float) -> None:
        if self._must_yield(timeout):
            await self.yield_now()
        sock = self._sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        self._turns = 0
        rest = memoryview(data)[sent:]
        end = time.monotonic() + timeout
        while rest:
            await self.writable(max(0.0, end - time.monotonic()))
            with contextlib.suppress(BlockingIOError):
                rest = rest[sock.send(rest) :]

    def unsent(self) -> bool:
        return True  # a send fails only before the kernel took the last byte

    async def receive_some(self, timeout: float) -> bytes:
        if self._must_yield(timeout):
            await self.yield_now()
        early = self.read_ahead()
        if early is not None:
            return early
        try:
            return self._sock.recv(65536)
        except BlockingIOError:
            pass
        self._turns = 0
        return await self.receive_waiting(timeout)

    def read_ahead(self) -> bytes | None:
        """Bytes the runtime already read from the socket, owed before any new ones
        (none here; asyncio's reader reads for itself)."""
        return None

    async def receive_waiting(self, timeout: float) -> bytes:
        """Wait for bytes (or end of file) and take them: what receive_some() does once
        a receive tried at once would block."""
        sock = self._sock
        end = time.monotonic() + timeout
        while True:
            await self.readable(max(0.0, end - time.monotonic()))
            with contextlib.suppress(BlockingIOError):  # a spurious wake-up
                return sock.recv(65536)

    def idle_clean(self) -> bool:
        return self._sock.fileno() >= 0 and not self._readable.ready(0)

    def peer(self, listening: str) -> str:
        return peer_name(self._sock, listening)

    async def aclose(self, forceful: bool = False) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


async def unix_socket(path: str, sleep: Callable[[float], Awaitable[object]]) -> socket.socket:
    """Connected, waiting with the runtime's `sleep` (within the caller's deadline)
    while the listen queue is full."""
    pause, most = UNIX_RETRY
    while (sock := unix_connect(path)) is None:
        await sleep(pause)
        pause = min(pause * 2, most)
    return sock
