"""Testing code that delivers over LMTP with the lmtp pytest plugin (no conftest needed).

Run: python -m pytest docs/examples/test_adapter.py (with the lmtp package installed;
adapter.py sits next to this file).
"""

import asyncio
import logging

import pytest
import trio
from adapter import LMTPBackend, OutgoingMessage

from lmtp_core import Reply, Stage, Status
from transports import ConnectError
from transports import asyncio as lmtp_asyncio
from transports import trio as lmtp_trio
from transports.pytest_plugin import LMTPTCPTestServer, LMTPUnixTestServer

MESSAGE = b"Subject: Welcome\r\n\r\nHello.\r\n.A line that starts with a dot.\r\n"


def test_a_message_arrives(lmtp_server: LMTPUnixTestServer) -> None:
    with LMTPBackend(socket_path=lmtp_server.socket_path) as backend:
        sent = backend.send_messages(
            [OutgoingMessage("app@example.net", ["alice@example.org"], MESSAGE)]
        )
    assert sent == 1
    (received,) = lmtp_server.messages
    assert received.sender == "app@example.net"
    assert received.recipients == ["alice@example.org"]
    assert received.data == MESSAGE  # as sent: dot-unstuffed again, CRLF line ends
    assert ("SIZE", str(len(MESSAGE))) in received.mail_params


def test_partial_failure_is_logged_per_recipient(
    lmtp_server: LMTPUnixTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    lmtp_server.reject("nobody@example.org")  # 550 5.1.1 at RCPT
    lmtp_server.fail("full@example.org")  # accepted, then 452 4.2.2 after the data
    lmtp_server.fail("gone@example.org", reply=Reply(554, "5.2.1", "Mailbox disabled"))
    to = ["alice@example.org", "nobody@example.org", "full@example.org", "gone@example.org"]
    with (
        caplog.at_level(logging.WARNING, logger="lmtp_adapter"),
        LMTPBackend(socket_path=lmtp_server.socket_path) as backend,
    ):
        result = backend.send(OutgoingMessage("app@example.net", to, MESSAGE))
    assert result is not None
    assert [(r.status, r.stage) for r in result.recipients] == [
        (Status.DELIVERED, Stage.DATA),
        (Status.PERMANENT, Stage.RCPT),
        (Status.TEMPORARY, Stage.DATA),
        (Status.PERMANENT, Stage.DATA),
    ]
    assert [record.getMessage() for record in caplog.records] == [
        "LMTP delivery to nobody@example.org: permanent at rcpt: 550 5.1.1 User unknown",
        "LMTP delivery to full@example.org: temporary at data: 452 4.2.2 Mailbox full",
        "LMTP delivery to gone@example.org: permanent at data: 554 5.2.1 Mailbox disabled",
    ]
    (received,) = lmtp_server.messages
    assert received.recipients == ["alice@example.org", "full@example.org", "gone@example.org"]
    assert received.delivered == ["alice@example.org"]


def test_no_server_means_an_exception(lmtp_server: LMTPUnixTestServer) -> None:
    backend = LMTPBackend(socket_path=lmtp_server.socket_path + ".missing")
    with pytest.raises(ConnectError, match="cannot connect"):
        backend.send(OutgoingMessage("app@example.net", ["a@example.org"], MESSAGE))


def test_tcp_and_the_async_runtimes(lmtp_server_tcp: LMTPTCPTestServer) -> None:
    # The server runs in a thread, so asyncio and trio code needs no async test plugin.
    settings = lmtp_server_tcp.settings  # {"host": "127.0.0.1", "port": ...}

    async def with_asyncio() -> Status:
        result = await lmtp_asyncio.deliver(MESSAGE, "", ["a@example.org"], **settings)
        return result.recipients[0].status

    async def with_trio() -> Status:
        result = await lmtp_trio.deliver(MESSAGE, "", ["b@example.org"], **settings)
        return result.recipients[0].status

    assert asyncio.run(with_asyncio()) is Status.DELIVERED
    assert trio.run(with_trio) is Status.DELIVERED
    assert [m.recipients for m in lmtp_server_tcp.messages] == [
        ["a@example.org"],
        ["b@example.org"],
    ]
    assert lmtp_server_tcp.messages[0].sender == ""  # the null sender <>
