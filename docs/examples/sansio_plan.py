"""Recipient limits by hand: lmtp_core.DeliveryPlan over a client and a server core.

How it works: no sockets. Our server core takes at most 2 recipients per transaction
(Limits.max_recipients) and answers 452 4.5.3 past that; the plan puts the deferred
recipients into a further transaction on the same connection, and result() is one
outcome per recipient, in the order given. Run: python sansio_plan.py
"""

from lmtp_core import (
    ClientConnection,
    DeliveryPlan,
    EndOfData,
    Limits,
    MailFrom,
    RcptTo,
    Ready,
    Reply,
    ServerConnection,
    Signal,
    TransactionResult,
)

MESSAGE = b"Subject: many recipients\r\n\r\nHello.\r\n"
RECIPIENTS = [f"user{n}@example.org" for n in range(5)]


def answer(server: ServerConnection) -> None:
    """The server application: accept everyone, store nothing."""
    while (event := server.next_event()) is not Signal.NEED_DATA:
        if isinstance(event, MailFrom | RcptTo):
            server.send(Reply(250, "2.0.0", "OK"))
        elif isinstance(event, EndOfData):
            for _ in range(server.owed_replies):
                server.send(Reply(250, "2.0.0", "Saved"))


def main() -> None:
    client = ClientConnection()
    server = ServerConnection("mx.example.org", limits=Limits(max_recipients=2))
    plan = DeliveryPlan(RECIPIENTS)  # per_transaction=None: no cap of our own
    transactions = 0

    def next_transaction(rcptmax: int | None) -> bool:
        nonlocal transactions
        batch = plan.next_batch(rcptmax)  # None once every recipient has a result
        if batch is None:
            return False
        transactions += 1
        client.start_transaction("app@example.net", batch, size=len(MESSAGE))
        return True

    while True:
        event = client.next_event()
        if event is Signal.NEED_DATA:  # move the bytes: what a driver does
            server.receive_data(client.data_to_send())
            answer(server)
            client.receive_data(server.data_to_send())
        elif event is Signal.NEED_BODY:
            client.send_body(MESSAGE)
            client.end_body()
        elif isinstance(event, Ready):
            next_transaction(event.capabilities.rcptmax)  # RFC 9422 LIMITS, if offered
        elif isinstance(event, TransactionResult):
            plan.record(event)  # puts back the recipients deferred with 452 4.5.3
            if not client.reusable:
                plan.abandon()  # the connection ended: the rest stays as it is
                break
            assert client.capabilities is not None
            if not next_transaction(client.capabilities.rcptmax):
                break
        else:
            raise SystemExit(f"unexpected {event!r}")
    result = plan.result()
    print(f"{transactions} transactions")
    for r in result.recipients:
        print(r.recipient, r.status, r.stage, r.reply)


if __name__ == "__main__":
    main()
