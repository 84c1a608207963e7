"""A UNIX listener whose queue is full: the clients wait for room, never report a
socket connected that is not.

How it works: a listening socket that never accepts, with the smallest queue, is filled
with connections. A non-blocking UNIX connect then fails at once with EAGAIN, which
asyncio and trio take for "in progress" and report as connected (the first read then
fails with EINVAL). unix_connect() says "full" (None) instead, and each runtime's
client waits and tries again within its connect deadline.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from transports import Timeout
from transports._net import unix_connect

from .runtimes import RUNTIMES, deliver, failure_of


@pytest.fixture
def full_queue(sock_path: str) -> Iterator[str]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(0)
    queued = []
    try:
        while (sock := unix_connect(sock_path)) is not None:
            queued.append(sock)
            assert len(queued) < 100, "the queue never filled"
        yield sock_path
    finally:
        for sock in queued:
            sock.close()
        listener.close()


def test_a_full_queue_is_said_not_hidden(full_queue: str) -> None:
    assert unix_connect(full_queue) is None


@pytest.mark.parametrize("client", RUNTIMES)
def test_clients_wait_for_room_within_the_connect_deadline(client: str, full_queue: str) -> None:
    failure = failure_of(
        lambda: deliver(client, b"x\r\n", "a@example.org", ["b@example.org"],
                        socket_path=full_queue, timeout=0.3)
    )  # fmt: skip
    assert failure.kind is Timeout, failure
    assert "connecting to unix:" in failure.message
    assert "Invalid argument" not in failure.message
