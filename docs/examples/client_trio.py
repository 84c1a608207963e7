"""Deliver with the trio driver (pip install '.[trio]' from a checkout).

Start a receiver first (see the tutorial), then run: python client_trio.py [SOCKET_PATH]
"""

import sys
from collections.abc import AsyncIterator

import trio

from transports import trio as lmtp_trio

SOCKET = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lmtp-tutorial.sock"
SENDER = "bounces@example.net"
MESSAGE = b"Subject: Hello\r\n\r\nHello over LMTP, from trio.\r\n"


async def pieces() -> AsyncIterator[bytes]:  # an async iterable: the async drivers take one
    for line in (b"Subject: Streamed\r\n", b"\r\n", b"Sent piece by piece.\r\n"):
        yield line
        await trio.sleep(0)


async def main() -> None:
    result = await lmtp_trio.deliver(MESSAGE, SENDER, ["alice@example.org"], socket_path=SOCKET)
    print(result.recipients[0])

    async with lmtp_trio.Client(socket_path=SOCKET) as client:
        async with trio.open_nursery() as nursery:
            for name in ("alice", "bob"):
                nursery.start_soon(deliver_one, client, name)
        result = await client.deliver(pieces(), SENDER, ["bob@example.org"])
        print("streamed:", result.recipients[0].status)


async def deliver_one(client: lmtp_trio.Client, name: str) -> None:
    result = await client.deliver(MESSAGE, SENDER, [f"{name}@example.org"])
    print(name, result.recipients[0].status, result.recipients[0].reply)


if __name__ == "__main__":
    trio.run(main)
