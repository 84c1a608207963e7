"""The plugin's lmtp_server_factory fixture: a server with your own Handler and settings.

How it works: each test asks for the fixture by name (the installed plugin provides it),
starts servers with it and delivers to them with our clients in every runtime; a handler
of the test's own records what it saw, the session included (Handler methods that declare
`session`). TLS uses a throwaway trustme CA. What the fixture does when the test ends
(servers stopped, socket files removed) is checked from outside, in test_pytest_plugin.py.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trustme

from lmtp_core import Limits, Params, Reply, Stage, Status
from transports import ConnectError, Envelope, Handler, SessionInfo, blocking, server_context
from transports import asyncio as lmtp_asyncio
from transports import trio as lmtp_trio
from transports.pytest_plugin import LMTPServer, LMTPServerFactory, LMTPTestServer

MESSAGE = b"Subject: factory\r\n\r\nbody\r\n"
SENDER = "s@example.net"
NO_USER = Reply(550, "5.1.1", "No such user here")


class Directory(Handler):
    """Knows some users; remembers what each call saw of its session."""

    def __init__(self, *users: str) -> None:
        self.users = set(users)
        self.lock = threading.Lock()
        self.sessions: list[SessionInfo | None] = []
        self.stored: list[tuple[str, list[str], bytes]] = []

    def rcpt_to(
        self, recipient: str, params: Params, *, session: SessionInfo | None = None
    ) -> Reply | None:
        with self.lock:
            self.sessions.append(session)
        return None if recipient in self.users else NO_USER

    def deliver(self, envelope: Envelope) -> None:
        with self.lock:
            self.stored.append((envelope.sender, list(envelope.recipients), envelope.read()))


def test_your_handler_on_a_unix_socket_by_default(
    lmtp_server_factory: LMTPServerFactory,
) -> None:
    handler = Directory("alice@example.org")
    server = lmtp_server_factory(handler)
    assert isinstance(server, LMTPServer) and not isinstance(server, LMTPTestServer)
    assert server.socket_path is not None and Path(server.socket_path).is_socket()
    assert len(server.socket_path.encode()) < 100  # short enough for sun_path
    assert server.host is None and server.port is None
    assert server.settings == {"socket_path": server.socket_path} == {"socket_path": server.address}
    result = blocking.deliver(
        MESSAGE, SENDER, ["alice@example.org", "bob@example.org"], **server.settings
    )
    assert [(r.status, r.stage) for r in result.recipients] == [
        (Status.DELIVERED, Stage.DATA),
        (Status.PERMANENT, Stage.RCPT),
    ]
    assert handler.stored == [(SENDER, ["alice@example.org"], MESSAGE)]
    infos = handler.sessions
    assert len(infos) == 2 and infos[0] == infos[1]
    assert infos[0] is not None and infos[0].peer == f"unix:{server.socket_path}"


def test_each_call_starts_another_server(lmtp_server_factory: LMTPServerFactory) -> None:
    first, second = Directory("a@example.org"), Directory("b@example.org")
    one, two = lmtp_server_factory(first), lmtp_server_factory(second)
    assert one.socket_path != two.socket_path
    blocking.deliver(MESSAGE, SENDER, ["a@example.org"], **one.settings)
    blocking.deliver(MESSAGE, SENDER, ["b@example.org"], **two.settings)
    assert [s[1] for s in first.stored] == [["a@example.org"]]
    assert [s[1] for s in second.stored] == [["b@example.org"]]


def test_tcp_with_a_free_port_and_limits_for_every_client_runtime(
    lmtp_server_factory: LMTPServerFactory,
) -> None:
    handler = Directory("a@example.org")
    server = lmtp_server_factory(handler, host="127.0.0.1", limits=Limits(max_message_size=100))
    assert server.socket_path is None and server.host == "127.0.0.1"
    assert server.port and server.port != 2424  # a free port, not the default
    settings = server.settings
    big = b"Subject: big\r\n\r\n" + b"x" * 200 + b"\r\n"

    async def with_asyncio() -> list[Status]:
        small = await lmtp_asyncio.deliver(MESSAGE, SENDER, ["a@example.org"], **settings)
        large = await lmtp_asyncio.deliver(big, SENDER, ["a@example.org"], **settings)
        return [small.recipients[0].status, large.recipients[0].status]

    async def with_trio() -> list[Status]:
        small = await lmtp_trio.deliver(MESSAGE, SENDER, ["a@example.org"], **settings)
        large = await lmtp_trio.deliver(big, SENDER, ["a@example.org"], **settings)
        return [small.recipients[0].status, large.recipients[0].status]

    sizes = [Status.DELIVERED, Status.PERMANENT]  # SIZE 100 is offered: too big is refused
    assert asyncio.run(with_asyncio()) == sizes
    assert trio.run(with_trio) == sizes
    assert blocking.deliver(big, SENDER, ["a@example.org"], **settings).recipients[0].stage == (
        Stage.LOCAL
    )
    assert len(handler.stored) == 2


def test_the_recording_handler_with_settings(lmtp_server_factory: LMTPServerFactory) -> None:
    server = lmtp_server_factory(limits=Limits(max_recipients=2))
    assert isinstance(server, LMTPTestServer)
    server.fail("b@example.org")
    to = ["a@example.org", "b@example.org", "c@example.org"]
    result = blocking.deliver(MESSAGE, SENDER, to, **server.settings)
    assert result.recipients[0].status is Status.DELIVERED
    assert result.recipients[1].status is Status.TEMPORARY
    message = server.messages[0]
    assert message.recipients == to[:2] and message.delivered == ["a@example.org"]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """(CA file, certificate chain, key) for mail.example.org and 127.0.0.1."""
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    leaf = ca.issue_cert("mail.example.org", "127.0.0.1")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    leaf.private_key_pem.write_to_path(str(directory / "key.pem"))
    for blob in leaf.cert_chain_pems:
        blob.write_to_path(str(directory / "chain.pem"), append=True)
    return str(directory / "ca.pem"), str(directory / "chain.pem"), str(directory / "key.pem")


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_tls(
    lmtp_server_factory: LMTPServerFactory, tls_files: tuple[str, str, str], mode: str
) -> None:
    ca_file, cert_file, key_file = tls_files
    context = server_context(cert_file, key_file)
    handler = Directory("a@example.org")
    if mode == "starttls":
        server = lmtp_server_factory(
            handler, host="127.0.0.1", starttls_context=context, require_tls=True
        )
    else:
        server = lmtp_server_factory(handler, host="127.0.0.1", ssl_context=context)
    result = blocking.deliver(
        MESSAGE,
        SENDER,
        ["a@example.org"],
        **server.settings,
        ssl=mode == "implicit",
        starttls=mode == "starttls",
        ssl_opts={"cafile": ca_file, "server_hostname": "mail.example.org"},
        timeout=10,
    )
    assert result.all_delivered
    (info,) = handler.sessions
    assert info is not None and info.tls


def test_stop_ends_the_server_early(lmtp_server_factory: LMTPServerFactory) -> None:
    server = lmtp_server_factory(Handler())
    assert server.socket_path is not None
    server.stop(grace=0)
    assert not os.path.exists(server.socket_path)
    with pytest.raises(ConnectError):
        blocking.deliver(MESSAGE, SENDER, ["a@example.org"], **server.settings, timeout=5)
    server.stop()  # again: nothing happens


ADDRESSES: set[str] = set()


@pytest.fixture(scope="module")
def shared() -> Iterator[LMTPServer]:
    with LMTPServerFactory() as factory:
        yield factory(Directory("a@example.org"))


@pytest.mark.parametrize("attempt", [1, 2])
def test_a_factory_of_your_own_serves_a_wider_scope(shared: LMTPServer, attempt: int) -> None:
    assert blocking.deliver(MESSAGE, SENDER, ["a@example.org"], **shared.settings).all_delivered
    ADDRESSES.add(str(shared.address))
    assert len(ADDRESSES) == 1  # the same server for both tests


def test_closing_a_factory_stops_its_servers() -> None:
    with LMTPServerFactory() as factory:
        unix, tcp = factory(Handler()), factory(Handler(), host="127.0.0.1")
        path = unix.socket_path
        assert path is not None and os.path.exists(path)
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))
    with pytest.raises(ConnectError):
        blocking.deliver(MESSAGE, SENDER, ["a@example.org"], **tcp.settings, timeout=5)
    factory.close()  # again: nothing happens


def test_async_handler_methods_are_refused_at_once(
    lmtp_server_factory: LMTPServerFactory,
) -> None:
    class Async(Handler):
        async def deliver(self, envelope: Envelope) -> None:
            return None

    with pytest.raises(TypeError, match=r"blocking Server.*Async\.deliver is async def"):
        lmtp_server_factory(Async())


def test_bad_settings_are_the_servers_errors(lmtp_server_factory: LMTPServerFactory) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'hots'"):
        lmtp_server_factory(Handler(), hots="127.0.0.1")  # type: ignore[call-overload]
