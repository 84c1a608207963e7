"""transports/_plain.py, the plain-socket fast path, with no runtime under it: PlainStream
itself supplies none of the ways to go through a runtime (each raises
NotImplementedError), so these tests see exactly when the fast path asks the runtime.
It does not while the socket is ready, for FAST_TURNS calls in a row; the next call
yields first; a receive with nothing there waits for readability; a send the kernel
cannot take at all waits for writability; the TLS upgrade is the runtime's."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator

import pytest

from transports._plain import FAST_TURNS, PlainStream


@pytest.fixture
def pair() -> Iterator[tuple[PlainStream, socket.socket]]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield PlainStream(ours), theirs


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def test_ready_calls_never_ask_the_runtime_until_the_turns_run_out(
    pair: tuple[PlainStream, socket.socket],
) -> None:
    stream, peer = pair

    async def main() -> None:
        for turn in range(FAST_TURNS):
            await stream.send_all(b"%d\r\n" % turn, 5.0)
        with pytest.raises(NotImplementedError):  # the next one yields to the runtime
            await stream.send_all(b"late\r\n", 5.0)

    run(main())
    peer.settimeout(5)
    received = b""
    while len(received) < len(b"".join(b"%d\r\n" % t for t in range(FAST_TURNS))):
        received += peer.recv(4096)
    assert received == b"".join(b"%d\r\n" % t for t in range(FAST_TURNS))


def test_a_receive_with_nothing_there_waits_through_the_runtime(
    pair: tuple[PlainStream, socket.socket],
) -> None:
    stream, peer = pair
    peer.sendall(b"220 ready\r\n")
    assert run(stream.receive_some(5.0)) == b"220 ready\r\n"  # there already: no wait
    with pytest.raises(NotImplementedError):
        run(stream.receive_some(5.0))


def test_a_send_the_kernel_takes_none_of_waits_through_the_runtime(
    pair: tuple[PlainStream, socket.socket],
) -> None:
    stream, _ = pair
    sock = stream._sock
    for _ in range(100_000):  # bounded: a socketpair's buffers hold well under this
        try:
            sock.send(b"x" * 65536)
        except BlockingIOError:
            break
    else:
        pytest.fail("the socket buffer never filled")
    with pytest.raises(NotImplementedError):
        run(stream.send_all(b"MAIL FROM:<a@x.org>\r\n", 5.0))


def test_tls_and_the_peer_name(pair: tuple[PlainStream, socket.socket]) -> None:
    stream, _ = pair
    with pytest.raises(NotImplementedError):
        run(stream.start_tls(ssl.create_default_context(), "mx", 5.0))
    # A UNIX socket has no name of its own: the endpoint it was reached by is used.
    assert stream.peer("/run/lmtp.sock") == "unix:/run/lmtp.sock"
