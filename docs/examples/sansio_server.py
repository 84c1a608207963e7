"""Drive lmtp_core.ServerConnection by hand over blocking sockets: the whole loop.

Run: python sansio_server.py [SOCKET_PATH], then deliver to it (Ctrl-C stops). One
connection at a time, to keep the loop in view; the drivers in transports/ serve many.
"""

import contextlib
import os
import socket
import sys

from lmtp_core import (
    ConnectionClosed,
    EndOfData,
    Lhlo,
    MailFrom,
    MessageData,
    MessageRefused,
    Quit,
    RcptTo,
    Reply,
    Rset,
    ServerConnection,
    Signal,
    StartTls,
)

MAILBOXES = {"alice@example.org", "bob@example.org"}
#: Seconds a read or write may wait: a silent client cannot hold the server for ever.
IDLE_TIMEOUT = 300.0


def serve_one(sock: socket.socket, store: dict[str, list[bytes]]) -> None:
    conn = ServerConnection("mx.example.org")  # the 220 greeting is already queued
    accepted: list[str] = []  # this transaction's recipients, in RCPT order
    pieces: list[bytes] = []  # this transaction's message
    while True:
        event = conn.next_event()
        data = conn.data_to_send()  # replies the core queued (its own and ours)
        if data:
            sock.sendall(data)
        if event is Signal.NEED_DATA:
            received = sock.recv(65536)
            if received:
                conn.receive_data(received)
            else:
                conn.receive_eof()
        elif event is Signal.PAUSED:  # a reply is owed: this loop answers at once
            raise AssertionError(f"{conn.owed_replies} replies owed")
        elif isinstance(event, Lhlo | Rset):  # a new session or transaction: forget
            accepted.clear()
            pieces.clear()
        elif isinstance(event, MailFrom):
            accepted.clear()
            pieces.clear()
            conn.send(Reply(250, "2.1.0", "Sender OK"))
        elif isinstance(event, RcptTo):
            if event.address.lower() in MAILBOXES:
                accepted.append(event.address.lower())
                conn.send(Reply(250, "2.1.5", "Recipient OK"))
            else:
                conn.send(Reply(550, "5.1.1", "No such user here"))
        elif isinstance(event, MessageData):  # dot-unstuffed pieces, as they arrive
            pieces.append(event.data)
        elif isinstance(event, EndOfData):  # the message is whole: one reply each
            message = b"".join(pieces)
            assert conn.owed_replies == len(accepted)
            for recipient in accepted:
                store.setdefault(recipient, []).append(message)
                conn.send(Reply(250, "2.0.0", f"Saved for {recipient}"))
            accepted.clear()
            pieces.clear()
        elif isinstance(event, MessageRefused):  # refused by the core, already answered
            accepted.clear()
            pieces.clear()
        elif isinstance(event, Quit):  # 221 is queued; ConnectionClosed comes next
            pass
        elif isinstance(event, StartTls):  # only with ServerConnection(tls_available=True)
            raise NotImplementedError("wrap the socket with ssl, then conn.tls_established()")
        elif isinstance(event, ConnectionClosed):  # the replies were written above
            return


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lmtp-tutorial.sock"
    store: dict[str, list[bytes]] = {}
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        print("listening on", path)
        try:
            while True:
                sock, _ = listener.accept()
                with sock:
                    sock.settimeout(IDLE_TIMEOUT)  # every wait bounded
                    try:
                        serve_one(sock, store)
                    except OSError as exc:  # the client went away or fell silent
                        print("connection lost:", exc)
        except KeyboardInterrupt:
            pass
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
    print("stored:", {recipient: len(messages) for recipient, messages in store.items()})


if __name__ == "__main__":
    main()
