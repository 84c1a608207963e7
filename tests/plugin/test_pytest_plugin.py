"""The pytest plugin (transports.pytest_plugin) as a user meets it.

How it works: these tests ask for the plugin's fixtures by name, with no conftest
providing them (the `pytest11` entry point registers the plugin), and deliver to them
with each runtime's client. Two more run pytest in a subprocess on a test file written
the way a user would: installing the package is all it takes, every test gets servers
of its own that are stopped (their socket files removed) when it ends, and
`-p no:lmtp` turns the plugin off. test_server_factory.py tests lmtp_server_factory.
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
from transports.pytest_plugin import LMTPTCPTestServer, LMTPTestServer, LMTPUnixTestServer

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


def test_blocking_client_against_the_unix_fixture(lmtp_server: LMTPUnixTestServer) -> None:
    assert isinstance(lmtp_server, LMTPTestServer)
    assert isinstance(lmtp_server.socket_path, str) and lmtp_server.socket_path.endswith(".sock")
    assert lmtp_server.host is None and lmtp_server.port is None
    _policy(lmtp_server)
    result = blocking.deliver(MESSAGE, SENDER, TO, socket_path=lmtp_server.socket_path)
    _check(lmtp_server, result)


def test_asyncio_client_against_the_tcp_fixture(lmtp_server_tcp: LMTPTCPTestServer) -> None:
    assert isinstance(lmtp_server_tcp, LMTPTestServer)
    assert lmtp_server_tcp.host == "127.0.0.1" and lmtp_server_tcp.port > 0
    assert lmtp_server_tcp.socket_path is None
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


USER_TESTS = """
import os
from pathlib import Path

from transports import Handler, blocking

PATHS = Path(__file__).with_name("paths.txt")


def note(*paths):
    with PATHS.open("a") as file:
        file.writelines(path + "\\n" for path in paths)


def test_one(lmtp_server, lmtp_server_factory):
    mine = lmtp_server_factory(Handler())
    note(lmtp_server.socket_path, mine.socket_path)
    blocking.deliver(b"Subject: a\\r\\n\\r\\n", "", ["a@x.example"], **lmtp_server.settings)
    assert len(lmtp_server.messages) == 1


def test_two(lmtp_server, lmtp_server_factory):
    mine = lmtp_server_factory(Handler())
    before = PATHS.read_text().split()
    assert lmtp_server.socket_path not in before and mine.socket_path not in before
    assert not any(os.path.exists(path) for path in before)  # the first test's are gone
    note(lmtp_server.socket_path, mine.socket_path)
    assert lmtp_server.messages == []  # nothing carried over
"""


def run_pytest(directory: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options, "."],
        capture_output=True,
        text=True,
        cwd=directory,
        timeout=120,
        check=False,
    )


def test_every_test_gets_its_own_servers_stopped_when_it_ends(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    done = run_pytest(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
    paths = (tmp_path / "paths.txt").read_text().split()
    assert len(set(paths)) == 4
    assert not any(Path(path).exists() for path in paths)


def test_p_no_lmtp_turns_the_plugin_off(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    done = run_pytest(tmp_path, "-p", "no:lmtp")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "fixture 'lmtp_server' not found" in done.stdout
    assert "2 error" in done.stdout
