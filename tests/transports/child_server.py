"""One of our servers in a child process, for the tests that signal or fork it.

Run from the repository root: ``python -m tests.transports.child_server HOW RUNTIME
SOCKET [--grace S] [--gate ENTERED,RELEASE] [--workers N]``. HOW is ``serve`` (the
runtime's public serve()), ``unhandled`` (the same with handle_signals=False),
``recipe`` (the blocking Server with ``signal.signal(SIGTERM, lambda *a:
server.shutdown())`` and ``serve_forever()``) or ``workers`` (transports.serve_workers
with N workers).

How it works: the handler answers MAIL with ``250 2.1.0 pid <its process id>``, so a
client learns which process serves it. With ``--gate``, two inherited pipe descriptors
make deliver() deterministic: it writes one byte to ENTERED (a delivery is in flight)
and returns only once it has read one byte from RELEASE. When serving ends it prints
``returned`` and whether SIGTERM's handler is back to the default (``restored``), and
exits 0. Log records go to stderr, one a line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from lmtp_core import Reply
from transports import Envelope, Handler, blocking, serve_workers
from transports import asyncio as lmtp_asyncio


class Gated(Handler):
    def __init__(self, gate: tuple[int, int] | None) -> None:
        self.gate = gate

    def mail_from(self, sender: str, params: Any) -> Reply | None:
        return Reply(250, "2.1.0", f"pid {os.getpid()}")

    def deliver(self, envelope: Envelope) -> None:
        if self.gate is not None:
            entered, release = self.gate
            logging.getLogger("child").info("delivering to %s", ", ".join(envelope.recipients))
            os.write(entered, b"E")
            os.read(release, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("how", choices=["serve", "unhandled", "recipe", "workers"])
    parser.add_argument("runtime", choices=["asyncio", "trio", "blocking"])
    parser.add_argument("socket")
    parser.add_argument("--grace", type=float, default=30.0)
    parser.add_argument("--gate", default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s", stream=sys.stderr)
    gate = tuple(int(fd) for fd in args.gate.split(",")) if args.gate else None
    handler = Gated(gate)  # type: ignore[arg-type]
    settings: dict[str, Any] = {"socket_path": args.socket, "grace": args.grace}
    handle = args.how != "unhandled"
    if args.how == "workers":
        serve_workers(handler, args.workers, runtime=args.runtime, **settings)
    elif args.how == "recipe":
        server = blocking.Server(handler, **settings)
        signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
        server.serve_forever()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    elif args.runtime == "blocking":
        blocking.serve(handler, handle_signals=handle, **settings)
    elif args.runtime == "asyncio":
        asyncio.run(lmtp_asyncio.serve(handler, handle_signals=handle, **settings))
    else:
        import trio

        from transports import trio as lmtp_trio

        async def serve() -> None:
            await lmtp_trio.serve(handler, handle_signals=handle, **settings)

        trio.run(serve)
    restored = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    print("returned", "restored" if restored else "not restored", flush=True)


if __name__ == "__main__":
    main()
