"""Drive lmtp_core.ClientConnection by hand over a blocking socket: the whole loop.

Run: python sansio_client.py [SOCKET_PATH] (a server such as sansio_server.py, or
`lmtp serve`, listening there).
"""

import socket
import sys
import time

from lmtp_core import (
    ClientConnection,
    ConnectionClosed,
    Ready,
    Signal,
    StartTls,
    TransactionResult,
    normalized_size,
)
from transports import Timeouts

TIMEOUTS = Timeouts()  # seconds per phase (RFC 5321 4.5.3.2), looked up by conn.phase


def deliver(
    sock: socket.socket, message: bytes, sender: str, recipients: list[str]
) -> TransactionResult | None:
    """One transaction, then QUIT. None if the session never opened."""
    conn = ClientConnection(lhlo_name="client.example")
    result: TransactionResult | None = None
    awaited, deadline = -1, 0.0  # which reply is awaited (a count), and until when
    while True:
        event = conn.next_event()
        data = conn.data_to_send()  # after every next_event(), before any wait
        if data:
            try:
                sock.settimeout(TIMEOUTS.data_block)  # each write: one bounded wait
                sock.sendall(data)
            except OSError as exc:
                conn.send_failed(f"write failed: {exc}")  # what it carried never left
                continue
        if event is Signal.NEED_DATA:
            # Each reply gets its phase's time from when it began to be awaited (the
            # count changed), not again at every recv(): a server that drips one byte
            # at a time cannot stretch the wait.
            if conn.replies_received != awaited:
                awaited = conn.replies_received
                deadline = time.monotonic() + TIMEOUTS.for_phase(conn.phase)
            try:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("timed out waiting for a reply")
                sock.settimeout(left)
                received = sock.recv(65536)
            except OSError as exc:  # TimeoutError included
                conn.abort(f"read failed: {exc}")  # settles every recipient
                continue
            if received:
                conn.receive_data(received)
            else:
                conn.receive_eof()
        elif event is Signal.NEED_BODY:
            conn.send_body(message)  # any number of pieces, of any size
            conn.end_body()
        elif isinstance(event, Ready):  # greeting and LHLO done
            print("server offers:", [keyword for keyword, _ in event.capabilities.extensions])
            # SIZE= counts the message as sent: CRLF line ends (a bare LF becomes two
            # octets), so normalized_size(), not len(), for a message that may have bare LFs.
            conn.start_transaction(sender, recipients, size=normalized_size(message))
        elif isinstance(event, TransactionResult):  # one outcome per recipient, in order
            result = event
            conn.quit()  # or start_transaction() again; calling next_event() now,
            # with nothing asked of the server, would raise LocalProtocolError
        elif isinstance(event, StartTls):  # only with ClientConnection(require_starttls=True)
            raise NotImplementedError("wrap the socket with ssl, then conn.tls_established()")
        elif isinstance(event, ConnectionClosed):  # after QUIT, or for event.reason
            return result


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lmtp-tutorial.sock"
    # Bare LF line ends, as a file written on Unix has them: the core sends CRLF.
    message = b"Subject: by hand\n\nDelivered by a hand-written loop.\n.dot\n"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        result = deliver(sock, message, "s@example.net", ["alice@example.org", "nobody@x.org"])
    for r in result.recipients if result else ():
        print(r.recipient, r.status, r.stage, r.reply or r.reason)


if __name__ == "__main__":
    main()
