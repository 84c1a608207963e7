"""Deliver from many threads through one Pool of connections (blocking driver).

Start a receiver first (see the tutorial), then run: python pool_blocking.py [SOCKET_PATH]
"""

import sys
from concurrent.futures import ThreadPoolExecutor

from transports import LMTPError, blocking

SOCKET = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lmtp-tutorial.sock"
SENDER = "bounces@example.net"


def message(number: int) -> bytes:
    return f"Subject: message {number}\r\n\r\nHello number {number}.\r\n".encode()


def main() -> None:
    # At most 4 connections, shared by 16 threads; leaving the block waits for the
    # deliveries in flight, then QUITs every idle connection.
    with (
        blocking.Pool(socket_path=SOCKET, max_connections=4) as pool,
        ThreadPoolExecutor(16) as threads,
    ):
        futures = [
            threads.submit(pool.deliver, message(n), SENDER, [f"user{n}@example.org"])
            for n in range(100)
        ]
        delivered = failed = 0
        for future in futures:
            try:
                result = future.result()
            except LMTPError as exc:  # no connection, or none free within wait_timeout
                print("not tried:", exc)
                failed += 1
                continue
            delivered += result.all_delivered
            failed += not result.all_delivered
        print(f"{delivered} delivered, {failed} not; {pool.open} connections open")


if __name__ == "__main__":
    main()
