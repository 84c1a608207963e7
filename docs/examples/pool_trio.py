"""Deliver many messages at once through one Pool of connections (trio driver).

Start a receiver first (see the tutorial), then run: python pool_trio.py [SOCKET_PATH]
"""

import sys

import trio

from lmtp_core import TransactionResult
from transports import trio as lmtp_trio

SOCKET = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lmtp-tutorial.sock"
SENDER = "bounces@example.net"


async def main() -> None:
    results: list[TransactionResult] = []

    async def deliver(pool: lmtp_trio.Pool, number: int) -> None:
        message = f"Subject: {number}\r\n\r\nHello number {number}.\r\n".encode()
        results.append(await pool.deliver(message, SENDER, [f"user{number}@example.org"]))

    # Leaving the nursery waits for every delivery; leaving the pool then QUITs.
    async with (
        lmtp_trio.Pool(socket_path=SOCKET, max_connections=8) as pool,
        trio.open_nursery() as nursery,
    ):
        for number in range(200):
            nursery.start_soon(deliver, pool, number)
    print(sum(r.all_delivered for r in results), "of", len(results), "delivered")


if __name__ == "__main__":
    trio.run(main)
