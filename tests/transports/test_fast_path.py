"""The asyncio and trio clients' plain SocketStream (transports/_plain.py): a call that
can complete at once takes no turn of the event loop (that is what makes them as cheap
as the blocking client), yet a peer that is always ready cannot starve the other tasks: every
FAST_TURNS calls in a row the stream yields, and a call that must wait still waits
within its timeout. Each check counts the turns a ticker task gets meanwhile."""

from __future__ import annotations

import asyncio
import socket
import ssl
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


# ---- asyncio: the reader that stays registered -----------------------------------------
# When it must wait, asyncio's SocketStream registers a reader that reads for itself and
# keeps it for the next wait (registering one per wait cost about a fifth of the client's
# CPU per delivery); it stops when bytes come while nobody waits, at end of file or an
# error, and before the socket is closed or handed to TLS. "Nobody waits yet" below is
# one asyncio.sleep(0): the receive has tried at once, found nothing, and awaits.


def run_asyncio(body: Callable[[Any, socket.socket], Awaitable[None]]) -> None:
    a, b = socket.socketpair()

    async def main() -> None:
        await asyncio.wait_for(body(lmtp_asyncio.SocketStream(a), b), 10)

    try:
        asyncio.run(main())
    finally:
        a.close()
        b.close()


def test_asyncio_one_reader_serves_every_wait() -> None:
    async def body(stream: Any, peer: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        added: list[int] = []
        real_add = loop.add_reader

        def add_reader(fd: int, callback: Callable[..., object], *args: Any) -> None:
            added.append(fd)
            real_add(fd, callback, *args)

        loop.add_reader = add_reader  # type: ignore[method-assign]
        for n in range(5):
            waiting = asyncio.create_task(stream.receive_some(5.0))
            await asyncio.sleep(0)  # it waits now
            peer.sendall(b"250 %d\r\n" % n)
            assert await waiting == b"250 %d\r\n" % n
        assert added == [stream._fd]  # one reader for the five waits
        assert stream.idle_clean()
        await stream.aclose()
        assert loop.remove_reader(stream._fd) is False  # closing removed it

    run_asyncio(body)


@pytest.mark.parametrize("what", [b"421 4.3.2 bye\r\n", b""], ids=["bytes", "end of file"])
def test_asyncio_what_comes_while_nobody_waits_is_kept_and_stops_the_reader(
    what: bytes,
) -> None:
    async def body(stream: Any, peer: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        waiting = asyncio.create_task(stream.receive_some(5.0))
        await asyncio.sleep(0)
        peer.sendall(b"250 ok\r\n")
        assert await waiting == b"250 ok\r\n"
        if what:
            peer.sendall(what)
        else:
            peer.shutdown(socket.SHUT_WR)
        for _ in range(3):  # turns of the loop, nobody waiting: the reader runs once
            await asyncio.sleep(0)
        assert loop.remove_reader(stream._fd) is False  # it stopped itself
        assert not stream.idle_clean()  # what it read is seen before reuse
        assert await stream.receive_some(1.0) == what
        await stream.aclose()

    run_asyncio(body)


def test_asyncio_an_error_read_by_the_reader_is_raised_by_the_receive() -> None:
    async def body(stream: Any, peer: socket.socket) -> None:
        await stream.send_all(b"unread\r\n", 1.0)  # the peer never reads it...
        waiting = asyncio.create_task(stream.receive_some(5.0))
        await asyncio.sleep(0)
        peer.close()  # ...and closes: a reset for the side that wrote it
        with pytest.raises(ConnectionResetError):
            await waiting
        await stream.aclose()

    run_asyncio(body)


def test_asyncio_bytes_read_ahead_of_a_tls_upgrade_are_refused() -> None:
    async def body(stream: Any, peer: socket.socket) -> None:
        waiting = asyncio.create_task(stream.receive_some(5.0))
        await asyncio.sleep(0)
        peer.sendall(b"220 2.0.0 go ahead\r\n")
        assert await waiting == b"220 2.0.0 go ahead\r\n"
        peer.sendall(b"250 injected\r\n")  # plaintext after the 220
        for _ in range(3):
            await asyncio.sleep(0)
        with pytest.raises(ConnectionError, match="STARTTLS response injection"):
            await stream.start_tls(ssl.create_default_context(), "mx.example.org", 1.0)
        await stream.aclose()

    run_asyncio(body)
