"""Receive mail with the asyncio driver; the handler's methods may be async.

Run: python server_asyncio.py [SOCKET_PATH], then deliver to that socket
(/tmp/lmtp-tutorial.sock by default); Ctrl-C stops it gracefully.
"""

import asyncio
import contextlib
import sys

from lmtp_core import Params, Reply
from transports import Envelope, Handler
from transports import asyncio as lmtp_asyncio

SOCKET = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lmtp-tutorial.sock"


class Inbox(Handler):
    """Hands each message to a queue that another task consumes."""

    def __init__(self, queue: asyncio.Queue[tuple[str, bytes]]) -> None:
        self.queue = queue

    async def rcpt_to(self, recipient: str, params: Params) -> Reply | None:
        if not recipient.endswith("@example.org"):
            return Reply(550, "5.1.2", "We do not relay")
        return None

    async def deliver(self, envelope: Envelope) -> Reply | None:
        data = envelope.read()
        for recipient in envelope.recipients:
            await self.queue.put((recipient, data))
        return None  # one answer for every recipient: 250 2.0.0 Delivered


async def consume(queue: asyncio.Queue[tuple[str, bytes]]) -> None:
    while True:
        recipient, data = await queue.get()
        print(f"{recipient}: {len(data)} octets")


async def main() -> None:
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    consumer = asyncio.create_task(consume(queue))
    async with lmtp_asyncio.Server(Inbox(queue), socket_path=SOCKET) as server:
        print("listening on", server.address)
        # Until cancelled (Ctrl-C under asyncio.run() cancels this task), or until
        # `await server.close()`; leaving the block stops the server gracefully: 421
        # to idle sessions, `grace` seconds for transactions in flight.
        await server.serve_forever()
    consumer.cancel()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
