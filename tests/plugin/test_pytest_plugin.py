"""The pytest plugin (transports.pytest_plugin) as a user meets it.

How it works: these tests ask for the plugin's fixtures by name, with no conftest
providing them (the `pytest11` entry point registers the plugin), and deliver to them
with each runtime's client; one more test runs pytest in a subprocess on a test file
written the way a user would, to prove that installing the package is all it takes.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import trio

from lmtp_core import Reply, Stage, Status
from transports import asyncio as lmtp_asyncio
from transports import blocking
from transports import trio as lmtp_trio
from transports.pytest_plugin import LMTPTestServer

MESSAGE = b"Subject: plugin\r\n\r\n.a leading dot\r\nbody\r\n"
SENDER = "s@example.net"
TO = ["ok@example.org", "nobody@example.org", "full@example.org", "gone@example.org"]


def _check(server: LMTPTestServer, result: object) -> None:
    from lmtp_core import TransactionResult

    assert isinstance(result, TransactionResult)
    assert [(r.status, r.stage, r.reply.code if r.reply else None) for r in result.recipients] == [
        (Status.DELIVERED, Stage.DATA, 250),
        (Status.PERMANENT, Stage.RCPT, 550),
        (Status.TEMPORARY, Stage.DATA, 452),
        (Status.PERMANENT, Stage.DATA, 554),
    ]
    (message,) = server.messages
    assert message.sender == SENDER
    assert message.recipients == ["ok@example.org", "full@example.org", "gone@example.org"]
    assert message.delivered == ["ok@example.org"]
    assert message.data == MESSAGE  # dot-unstuffed again, byte for byte
    assert ("BODY", "7BIT") not in message.mail_params
    assert len(message.rcpt_params) == 3


def _policy(server: LMTPTestServer) -> None:
    server.reject("nobody@example.org")
    server.fail("full@example.org")
    server.fail("gone@example.org", reply=Reply(554, "5.2.1", "Mailbox disabled"))


def test_blocking_client_against_the_unix_fixture(lmtp_server: LMTPTestServer) -> None:
    assert lmtp_server.socket_path is not None and lmtp_server.port is None
    _policy(lmtp_server)
    result = blocking.deliver(MESSAGE, SENDER, TO, socket_path=lmtp_server.socket_path)
    _check(lmtp_server, result)


def test_asyncio_client_against_the_tcp_fixture(lmtp_server_tcp: LMTPTestServer) -> None:
    assert lmtp_server_tcp.host == "127.0.0.1" and lmtp_server_tcp.port
    _policy(lmtp_server_tcp)

    async def main() -> object:
        async with lmtp_asyncio.Client(**lmtp_server_tcp.settings) as client:
            return await client.deliver(MESSAGE, SENDER, TO)

    _check(lmtp_server_tcp, asyncio.run(main()))


def test_trio_client_and_settings(lmtp_server: LMTPTestServer) -> None:
    _policy(lmtp_server)

    async def main() -> object:
        return await lmtp_trio.deliver(MESSAGE, SENDER, TO, **lmtp_server.settings)

    _check(lmtp_server, trio.run(main))


def test_clear_forgets_messages_and_policy(lmtp_server: LMTPTestServer) -> None:
    _policy(lmtp_server)
    blocking.deliver(MESSAGE, SENDER, TO, socket_path=lmtp_server.socket_path)
    lmtp_server.clear()
    assert lmtp_server.messages == []
    again = blocking.deliver(MESSAGE, SENDER, TO, socket_path=lmtp_server.socket_path)
    assert again.all_delivered
    assert lmtp_server.messages[0].delivered == TO


def test_installed_plugin_needs_no_conftest(tmp_path: Path) -> None:
    test_file = tmp_path / "test_user.py"
    test_file.write_text(
        textwrap.dedent(
            """
            from transports import blocking

            def test_partial_failure(lmtp_server):
                lmtp_server.reject("nobody@example.org")
                result = blocking.deliver(
                    b"Subject: hi\\r\\n\\r\\nhello\\r\\n",
                    "me@example.net",
                    ["you@example.org", "nobody@example.org"],
                    socket_path=lmtp_server.socket_path,
                )
                assert [r.status.value for r in result.recipients] == ["delivered", "permanent"]
                assert lmtp_server.messages[0].recipients == ["you@example.org"]
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
