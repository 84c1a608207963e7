"""Deliver with the blocking driver: one call, then one reused connection.

Start a receiver first (see the tutorial), then run: python client_blocking.py [SOCKET_PATH]
"""

import sys

from transports import LMTPError, blocking

SOCKET = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lmtp-tutorial.sock"
SENDER = "bounces@example.net"
MESSAGE = b"From: news@example.net\r\nSubject: Hello\r\n\r\nHello over LMTP.\r\n"


def main() -> int:
    # One message, one connection: connect, LHLO, one transaction, QUIT.
    try:
        result = blocking.deliver(
            MESSAGE, SENDER, ["alice@example.org", "nobody@example.org"], socket_path=SOCKET
        )
    except LMTPError as exc:  # nobody could be tried: no connection, TLS, greeting...
        print(f"not delivered: {exc}")
        return 75
    for r in result.recipients:  # one entry per recipient, in the order given
        print(r.recipient, r.status, r.stage, r.reply or r.reason)

    # Several messages on one connection: a Client opens it on the first deliver()
    # and keeps it until close() (here: the end of the with block).
    with blocking.Client(socket_path=SOCKET, timeout=30) as client:
        for name in ("alice", "bob"):
            result = client.deliver(MESSAGE, SENDER, [f"{name}@example.org"])
            print(name, "delivered" if result.all_delivered else result.recipients[0].status)

    # A file is streamed in pieces, never read whole.
    with open(__file__, "rb") as source:
        result = blocking.deliver(source, SENDER, ["bob@example.org"], socket_path=SOCKET)
    if result.all_delivered:
        return 0
    retry = [r.recipient for r in result.retry]  # TEMPORARY and UNKNOWN outcomes
    print("to try again later:", retry)
    return 75 if retry else 1


if __name__ == "__main__":
    raise SystemExit(main())
