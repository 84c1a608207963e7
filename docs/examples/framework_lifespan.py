"""A Pool held for an application's whole life, as an asyncio web framework holds one.

Run: python framework_lifespan.py [SOCKET_PATH] (a receiver listening there). The
lifespan below is the shape of an ASGI framework's start-up and shutdown hooks
(Starlette's and FastAPI's `lifespan=`, for instance): the pool is opened in the event
loop that serves the requests, every request handler delivers through it, and shutdown
closes it, which waits for the deliveries in flight and QUITs every connection.
"""

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

from lmtp_core import Status
from transports import LMTPError, Timeouts
from transports import asyncio as lmtp_asyncio

SOCKET = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lmtp-tutorial.sock"
log = logging.getLogger("myapp.mail")


@dataclass(frozen=True)
class State:
    """What the framework keeps for the application's life (app.state, say)."""

    pool: lmtp_asyncio.Pool


@contextlib.asynccontextmanager
async def lifespan() -> AsyncIterator[State]:
    # Start-up, in the event loop that will run the requests: an asyncio Pool (or
    # Client) belongs to the loop it first runs in, and is used from that loop only.
    pool = lmtp_asyncio.Pool(
        socket_path=SOCKET,
        max_connections=4,  # at most 4 connections, whatever the number of requests
        timeout=Timeouts(total=30),  # a delivery gives outcomes within 30 s, or raises
    )
    try:
        yield State(pool)
    finally:
        await pool.close()  # shutdown: waits for deliveries in flight, then QUITs


async def sign_up(state: State, address: str) -> str:
    """A request handler: send the welcome mail, answer the request."""
    message = f"Subject: Welcome\r\nTo: {address}\r\n\r\nWelcome aboard.\r\n".encode()
    try:
        result = await state.pool.deliver(message, "noreply@example.net", [address])
    except LMTPError as exc:  # the server could not be reached, nobody was tried
        log.warning("welcome mail to %s not sent: %s", address, exc)
        return "queued for later"
    outcome = result.recipients[0]
    if outcome.status is not Status.DELIVERED:
        log.warning("welcome mail to %s: %s", address, outcome.reply or outcome.reason)
        return "not delivered"
    return "welcome mail sent"


async def main() -> None:
    # The library's loggers are "transports" (the client: [c12] connection ids) and
    # "transports.server"; configure them with the application's own.
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    async with lifespan() as state:
        # The framework runs the requests, many at once, all in this one event loop.
        addresses = [f"user{n}@example.org" for n in range(20)] + ["nobody@example.org"]
        answers = await asyncio.gather(*(sign_up(state, a) for a in addresses))
        for address, answer in zip(addresses, answers, strict=True):
            print(address, answer)
        print("connections open:", state.pool.open)
    print("after shutdown:", state.pool.open)


if __name__ == "__main__":
    asyncio.run(main())
