"""Deliver one message from our client core to our server core, in memory.

How it works: no sockets at all. The bytes each side writes are handed to the other
side's receive_data(), which is all a real driver does too. The server refuses one
recipient at RCPT and fails one after the data, so every kind of outcome shows.
"""

from __future__ import annotations

from lmtp_core import (
    ClientConnection,
    ConnectionClosed,
    EndOfData,
    MailFrom,
    MessageData,
    RcptTo,
    Ready,
    Reply,
    ServerConnection,
    Signal,
    TransactionResult,
)

MESSAGE = b"From: demo@example.net\r\nSubject: hello\r\n\r\n.a line that starts with a dot\r\n"
RECIPIENTS = ["alice@example.org", "nobody@example.org", "full@example.org", "bob@example.org"]


def serve(server: ServerConnection, stored: list[bytes]) -> None:
    """Answer everything the server has to say about what it has received so far."""
    while True:
        event = server.next_event()
        if event is Signal.NEED_DATA or isinstance(event, ConnectionClosed):
            return
        if isinstance(event, MailFrom):
            server.send(Reply(250, "2.1.0", "Sender OK"))
        elif isinstance(event, RcptTo):
            known = event.address != "nobody@example.org"
            server.send(Reply(250, "2.1.5", "OK") if known else Reply(550, "5.1.1", "No such user"))
        elif isinstance(event, MessageData):
            stored.append(event.data)
        elif isinstance(event, EndOfData):
            # One reply per accepted recipient, in RCPT order: alice, full, bob.
            server.send(Reply(250, "2.0.0", "Saved"))
            server.send(Reply(552, "5.2.2", "Mailbox full"))
            server.send(Reply(250, "2.0.0", "Saved"))


def main() -> None:
    client, server, stored = ClientConnection(), ServerConnection("mx.example.org"), []
    while True:
        event = client.next_event()
        if event is Signal.NEED_DATA:
            # receive_data(b"") would mean end of file, so pass only real bytes.
            server.receive_data(client.data_to_send())
            serve(server, stored)
            client.receive_data(server.data_to_send())
        elif event is Signal.NEED_BODY:
            client.send_body(MESSAGE)
            client.end_body()
        elif isinstance(event, Ready):
            client.start_transaction("demo@example.net", RECIPIENTS)
        elif isinstance(event, TransactionResult):
            for r in event.recipients:
                reply = f"{r.reply.code} {r.reply.enhanced} {r.reply.text}" if r.reply else "-"
                print(f"{r.recipient:22} {r.status:10} {r.stage or '-':5} {reply}")
            print(f"server stored {len(b''.join(stored))} octets")
            return
        else:
            raise SystemExit(f"unexpected {event!r}")


if __name__ == "__main__":
    main()
