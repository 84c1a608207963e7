"""Receive mail with the trio driver: the server runs in a nursery.

Run: python server_trio.py [SOCKET_PATH], then deliver to that socket
(/tmp/lmtp-tutorial.sock by default); Ctrl-C stops it.
"""

import sys

import trio

from lmtp_core import Reply
from transports import Envelope, Handler
from transports import trio as lmtp_trio

SOCKET = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lmtp-tutorial.sock"


class Printer(Handler):
    """Refuses one address, and prints the size of every message."""

    def rcpt_to(self, recipient: str, params: tuple) -> Reply | None:
        # A plain method: the trio server runs it in a worker thread.
        return Reply(550, "5.1.1", "No such user") if recipient.startswith("nobody@") else None

    async def deliver(self, envelope: Envelope) -> list[Reply | None]:
        # An async method runs in the server's own trio task.
        print(f"{envelope.sender or '<>'} -> {envelope.recipients}: {envelope.size} octets")
        return [None] * len(envelope.recipients)


async def main() -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(lmtp_trio.Server(Printer(), socket_path=SOCKET).serve)
        print("listening on", server.address)
        # ... the application runs here; server.close() would stop the server, and the
        # nursery then waits for the sessions still open (at most `grace` seconds).


if __name__ == "__main__":
    try:
        trio.run(main)
    except* KeyboardInterrupt:  # trio raises it inside an exception group
        pass
