"""Deliver many messages at once through one Pool of connections (asyncio driver).

Start a receiver first (see the tutorial), then run: python pool_asyncio.py [SOCKET_PATH]
"""

import asyncio
import sys

from transports import Timeouts
from transports import asyncio as lmtp_asyncio

SOCKET = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lmtp-tutorial.sock"
SENDER = "bounces@example.net"


async def main() -> None:
    batch = [
        (f"Subject: {n}\r\n\r\nHello number {n}.\r\n".encode(), [f"user{n}@example.org"])
        for n in range(200)
    ]
    async with lmtp_asyncio.Pool(
        socket_path=SOCKET,
        max_connections=8,  # never more than 8 connections open at once
        idle_timeout=2.0,  # an idle connection is QUIT after 2 s
        wait_timeout=30.0,  # a delivery waits at most 30 s for a free connection
        timeout=Timeouts(total=60.0),  # and no delivery takes longer than 60 s in all
    ) as pool:
        results = await asyncio.gather(
            *(pool.deliver(message, SENDER, recipients) for message, recipients in batch)
        )
        print(f"open {pool.open}, idle {pool.idle}, busy {pool.busy}")
    delivered = sum(result.all_delivered for result in results)
    print(f"{delivered} of {len(batch)} messages delivered to every recipient")


if __name__ == "__main__":
    asyncio.run(main())
