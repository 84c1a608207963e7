"""Deliver with the asyncio driver.

Start a receiver first (see the tutorial), then run: python client_asyncio.py [SOCKET_PATH]
"""

import asyncio
import sys
from email.message import EmailMessage

from transports import LMTPError
from transports import asyncio as lmtp_asyncio

SOCKET = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lmtp-tutorial.sock"
SENDER = "bounces@example.net"


def make_message(to: str) -> EmailMessage:
    message = EmailMessage()  # sent with CRLF line ends (the SMTP policy)
    message["From"] = "news@example.net"
    message["To"] = to
    message["Subject"] = "Hello"
    message.set_content("Hello over LMTP, from asyncio.\n")
    return message


async def main() -> None:
    # One call: connect, deliver, QUIT.
    result = await lmtp_asyncio.deliver(
        make_message("alice@example.org"), SENDER, ["alice@example.org"], socket_path=SOCKET
    )
    print(result.recipients[0])

    # One connection shared by concurrent tasks: their deliveries take turns on it.
    async with lmtp_asyncio.Client(socket_path=SOCKET) as client:
        names = ["alice", "bob", "nobody"]
        results = await asyncio.gather(
            *(client.deliver(make_message(n), SENDER, [f"{n}@example.org"]) for n in names),
            return_exceptions=True,
        )
    for name, outcome in zip(names, results, strict=True):
        if isinstance(outcome, LMTPError):
            print(name, "not tried:", outcome)
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            print(name, outcome.recipients[0].status)


if __name__ == "__main__":
    asyncio.run(main())
