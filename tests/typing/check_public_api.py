"""Pins the public signatures with assert_type; checked by `mypy --strict`, not run.

How it works: mypy evaluates every assert_type() below against the declared types of
lmtp_core and transports; a changed signature makes the typing session fail. Nothing
here is collected by pytest (the name does not start with test_).
"""

from __future__ import annotations

import socket
from typing import IO, assert_type

from lmtp_core import (
    Capabilities,
    ClientConnection,
    ConnectionClosed,
    Limits,
    MailFrom,
    Params,
    Phase,
    RcptTo,
    RecipientResult,
    Reply,
    ServerConnection,
    Signal,
    Stage,
    Status,
    TransactionResult,
)
from transports import (
    Envelope,
    Handler,
    SessionInfo,
    blocking,
    inline,
    serve_workers,
    systemd_socket,
)
from transports import asyncio as aio
from transports import trio as tr
from transports._config import Timeouts
from transports.pytest_plugin import (
    LMTPServer,
    LMTPServerFactory,
    LMTPTCPTestServer,
    LMTPTestServer,
    LMTPUnixTestServer,
)


def core_client(conn: ClientConnection) -> None:
    assert_type(conn.data_to_send(), bytes)
    assert_type(conn.phase, Phase)
    assert_type(conn.reusable, bool)
    assert_type(conn.capabilities, Capabilities | None)
    assert_type(conn.take_trace(), list[tuple[str, str]])
    conn.start_transaction("a@example.org", ["b@example.org", RcptTo("c@example.org")])
    conn.start_transaction(MailFrom("", (("BODY", "8BITMIME"),)), ["b@example.org"], size=10)
    event = conn.next_event()
    if isinstance(event, TransactionResult):
        first = event.recipients[0]
        assert_type(first, RecipientResult)
        assert_type(first.status, Status)
        assert_type(first.stage, Stage)
        assert_type(first.reply, Reply | None)
        assert_type(event.retry, tuple[RecipientResult, ...])
    elif event is Signal.NEED_DATA:
        conn.receive_data(b"250 OK\r\n")
    elif isinstance(event, ConnectionClosed):
        assert_type(event.reply, Reply | None)


def core_server(conn: ServerConnection) -> None:
    assert_type(conn.owed_replies, int)
    assert_type(conn.data_to_send(), bytes)
    conn.send(Reply(250, "2.1.5", "OK"))
    assert_type(Limits().max_recipients, int)


def drivers(result: TransactionResult) -> None:
    assert_type(
        blocking.deliver(b"x", "a@example.org", ["b@example.org"], socket_path="/s"),
        TransactionResult,
    )
    with blocking.Client(host="127.0.0.1", port=2424, timeout=Timeouts(total=5)) as client:
        assert_type(client.deliver(b"x", "a@example.org", ["b@example.org"]), TransactionResult)


async def async_drivers() -> None:
    assert_type(await aio.deliver(b"x", "a@example.org", ["b@example.org"]), TransactionResult)
    assert_type(await tr.deliver(b"x", "a@example.org", ["b@example.org"]), TransactionResult)
    async with aio.Client(starttls=True) as client:
        assert_type(await client.deliver([b"x"], "a@e.org", ["b@e.org"]), TransactionResult)


async def pools() -> None:
    async with aio.Pool(socket_path="/s", max_connections=4, idle_timeout=2.0) as pool:
        assert_type(await pool.deliver(b"x", "a@e.org", ["b@e.org"]), TransactionResult)
        assert_type(pool.open, int)
        assert_type(pool.idle + pool.busy, int)
    async with tr.Pool(recipients_per_transaction=50) as tpool:
        assert_type(await tpool.deliver(b"x", "a@e.org", ["b@e.org"]), TransactionResult)
    with blocking.Pool(wait_timeout=5, max_lifetime=300) as bpool:
        assert_type(bpool.deliver(b"x", "a@e.org", ["b@e.org"]), TransactionResult)


class Checked(Handler):
    @inline
    def rcpt_to(self, recipient: str, params: Params) -> Reply | None:
        return None


class WithSession(Handler):
    """Overrides that ask for the session type-check against Handler's signatures."""

    def mail_from(
        self, sender: str, params: Params, *, session: SessionInfo | None = None
    ) -> Reply | None:
        assert session is not None
        assert_type(session.peer, str)
        assert_type(session.tls, bool)
        assert_type(session.lhlo, str)
        assert_type(session.name, str)
        return None

    async def deliver(self, envelope: Envelope, *, session: SessionInfo | None = None) -> None:
        assert_type(envelope.message, IO[bytes] | None)


def plugin(unix: LMTPUnixTestServer, tcp: LMTPTCPTestServer, factory: LMTPServerFactory) -> None:
    assert_type(unix.socket_path, str)
    assert_type(tcp.host, str)
    assert_type(tcp.port, int)
    recording: LMTPTestServer = unix
    assert_type(recording.socket_path, str | None)
    assert_type(factory(WithSession(), host="127.0.0.1", grace=1.0), LMTPServer)
    assert_type(factory(limits=Limits(max_recipients=2)), LMTPTestServer)
    assert_type(factory(Handler()).socket_path, str | None)
    assert_type(factory(Handler()).stop(grace=0), None)


async def servers(listener: socket.socket) -> None:
    with blocking.Server(
        Checked(), port=0, require_tls=False, max_connections=10, handler_threads=2, grace=1.0
    ) as server:
        assert_type(server.shutdown(grace=0.5), None)
    async with aio.Server(Handler(), sock=listener, refusal_soft_limit=5, refusal_delay=0.5) as a:
        assert_type(await a.close(grace=0), None)
    assert_type(tr.Server(Handler(), socket_path="/s").close(grace=2), None)
    assert_type(blocking.serve(Handler(), handle_signals=False, socket_path="/s"), None)
    assert_type(await aio.serve(Handler(), handle_signals=True, grace=5.0), None)
    assert_type(await tr.serve(Handler(), handle_signals=False, sock=listener), None)
    assert_type(serve_workers(Handler(), 4, runtime="trio", socket_path="/s", grace=5.0), None)
    assert_type(systemd_socket(), socket.socket | None)
    conn = ServerConnection("mx.example.org", require_tls=True, tls_available=True, busy=False)
    assert_type(conn.idle, bool)
    assert_type(conn.close_when_idle(), None)
