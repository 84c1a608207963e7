"""The asyncio and trio clients' plain SocketStream (transports/_plain.py): a call that
can complete at once takes no turn of the event loop (that is what makes them as cheap
as the blocking client), yet a peer that is always ready cannot starve the other tasks: every
FAST_TURNS calls in a row the stream yields, and a call that must wait still waits
within its timeout. Each check counts the turns a ticker task gets meanwhile."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from transports import asyncio as lmtp_asyncio
from transports import trio as lmtp_trio
from transports._plain import FAST_TURNS

RUNTIMES = ["asyncio", "trio"]


Body = Callable[[Any, socket.socket, Callable[[], int]], Awaitable[None]]


def run(runtime: str, body: Body) -> None:
    """Run `body(stream, peer, ticks)`: a SocketStream on one end of a socketpair, the
    other end, and a ticker task's count of its turns."""
    a, b = socket.socketpair()
    count = 0

    async def tick_forever(sleep: Callable[[float], Awaitable[None]]) -> None:
        nonlocal count
        while True:
            count += 1
            await sleep(0)

    try:
        if runtime == "asyncio":

            async def main_asyncio() -> None:
                ticker = asyncio.get_running_loop().create_task(tick_forever(asyncio.sleep))
                await asyncio.sleep(0)
                try:
                    await body(lmtp_asyncio.SocketStream(a), b, lambda: count)
                finally:
                    ticker.cancel()

            asyncio.run(main_asyncio())
        else:

            async def main_trio() -> None:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(tick_forever, trio.sleep)
                    await trio.sleep(0)
                    await body(lmtp_trio.SocketStream(a), b, lambda: count)
                    nursery.cancel_scope.cancel()

            trio.run(main_trio)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_reply_already_there_takes_no_turn_of_the_loop(runtime: str) -> None:
    async def body(stream: Any, peer: socket.socket, ticks: Callable[[], int]) -> None:
        before = ticks()
        await stream.send_all(b"MAIL FROM:<a@example.org>\r\n", 1.0)
        assert peer.recv(100) == b"MAIL FROM:<a@example.org>\r\n"
        peer.sendall(b"250 2.1.0 OK\r\n")
        assert await stream.receive_some(1.0) == b"250 2.1.0 OK\r\n"
        assert ticks() == before  # both went at once: no turn of the loop

    run(runtime, body)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_peer_always_ready_cannot_starve_other_tasks(runtime: str) -> None:
    calls = 10 * (FAST_TURNS + 1)

    async def body(stream: Any, peer: socket.socket, ticks: Callable[[], int]) -> None:
        before = ticks()
        for _ in range(calls):  # the socket buffer has room: every send can complete
            await stream.send_all(b"x", 1.0)
        # one yield every FAST_TURNS + 1 calls; trio randomises the order of the tasks
        # it runs in one batch, so not every yield gives the ticker its turn at once.
        # Without the yields the ticker would get none at all.
        assert ticks() - before >= calls // (FAST_TURNS + 1) // 2
        assert len(peer.recv(1000)) == calls

    run(runtime, body)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_receive_with_nothing_there_waits_within_its_timeout(runtime: str) -> None:
    async def body(stream: Any, peer: socket.socket, ticks: Callable[[], int]) -> None:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await stream.receive_some(0.2)
        assert 0.15 < time.monotonic() - started < 2.0
        with pytest.raises(TimeoutError):  # a deadline already passed: no read at all
            await stream.receive_some(0)

    run(runtime, body)
