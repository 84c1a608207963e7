"""Receive mail with the trio driver: the server runs in a nursery.

Run: python server_trio.py [SOCKET_PATH], then deliver to that socket
(/tmp/lmtp-tutorial.sock by default); Ctrl-C stops it gracefully.
"""

import signal
import sys

import trio

from lmtp_core import Params, Reply
from transports import Envelope, Handler
from transports import trio as lmtp_trio

SOCKET = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lmtp-tutorial.sock"


class Printer(Handler):
    """Refuses one address, and prints the size of every message."""

    def rcpt_to(self, recipient: str, params: Params) -> Reply | None:
        # A plain method: the trio server runs it in a worker thread.
        return Reply(550, "5.1.1", "No such user") if recipient.startswith("nobody@") else None

    async def deliver(self, envelope: Envelope) -> list[Reply | None]:
        # An async method runs in the server's own trio task.
        print(f"{envelope.sender or '<>'} -> {envelope.recipients}: {envelope.size} octets")
        return [None] * len(envelope.recipients)


async def main() -> None:
    # Ctrl-C (SIGINT) or SIGTERM stops the server the graceful way: close() (a plain call
    # in trio) answers idle sessions 421 at once and gives transactions in flight `grace`
    # seconds; the nursery then waits for the sessions. Without it, Ctrl-C would raise
    # KeyboardInterrupt in the middle of every session and cut them all off.
    # (transports.trio.serve() does all this itself.)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            server: lmtp_trio.Server = await nursery.start(
                lmtp_trio.Server(Printer(), socket_path=SOCKET).serve
            )
            print("listening on", server.address)
            # ... the application runs here, in other tasks of the nursery.
            async for signum in signals:
                print("stopping on", signal.Signals(signum).name)
                server.close()
                break
    print("stopped")


if __name__ == "__main__":
    trio.run(main)
