"""TLS between our clients and servers: implicit TLS and STARTTLS, over TCP and UNIX sockets.

Certificates come from trustme at test time (see conftest.py). Every client runtime runs
against every server runtime for the working cases; failures (wrong CA, wrong host name, a
TLS client against a plain server, STARTTLS required but not offered) run each client
runtime against the blocking server and must raise the documented transports error before
any MAIL reached the handler, with the client's socket closed (``RawTLSPeer``, a one-shot
TCP peer, checks that the client hangs up after a failed handshake). Over a UNIX socket the
client needs ssl_opts server_hostname, and its absence is a ConfigurationError raised before
connecting.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import pytest

from lmtp_core import Stage, Status
from transports import ConfigurationError, SessionError, Timeout, Timeouts, TLSError

from .conftest import PKI, SERVER_NAME
from .runtimes import (
    RUNTIMES,
    Recorder,
    deliver,
    endpoint,
    failure_of,
    resource_warnings,
    running_server,
)

SENDER = "bounces@example.net"
MESSAGE = b"Subject: over TLS\r\n\r\nsecret body\r\n"
PAIRS = [(client, server) for client in RUNTIMES for server in RUNTIMES]
PAIR_IDS = [f"{client}-client-{server}-server" for client, server in PAIRS]
MODES = ["implicit", "starttls"]
TRANSPORTS = ["tcp", "unix"]


def server_settings(mode: str, pki: PKI) -> dict[str, Any]:
    key = "ssl_context" if mode == "implicit" else "starttls_context"
    return {key: pki.server_context()}


def client_settings(mode: str, **ssl_opts: Any) -> dict[str, Any]:
    flag = "ssl" if mode == "implicit" else "starttls"
    return {flag: True, "ssl_opts": ssl_opts, "timeout": 10}


def where(transport: str, sock_path: str) -> dict[str, Any]:
    return {"socket_path": sock_path} if transport == "unix" else {}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("client", "server"), PAIRS, ids=PAIR_IDS)
def test_tls_delivery(  # noqa: PLR0917
    client: str, server: str, mode: str, transport: str, pki: PKI, sock_path: str
) -> None:
    handler = Recorder()
    opts: dict[str, Any] = {"cafile": pki.ca_file}
    if transport == "unix":
        opts["server_hostname"] = SERVER_NAME
    with running_server(
        server, handler, **where(transport, sock_path), **server_settings(mode, pki)
    ) as address:
        result = deliver(
            client,
            MESSAGE,
            SENDER,
            ["a@example.org", "b@example.org"],
            **endpoint(address),
            **client_settings(mode, **opts),
        )
    assert [(r.status, r.stage) for r in result.recipients] == [(Status.DELIVERED, Stage.DATA)] * 2
    (received,) = handler.messages
    assert received.data == MESSAGE
    assert received.tls is True  # after STARTTLS too, not only with implicit TLS


@pytest.mark.parametrize("client", RUNTIMES)
def test_tls_over_unix_socket_needs_server_hostname_before_connecting(
    client: str, sock_path: str, pki: PKI
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(sock_path)
        listener.listen(1)
        for settings in (client_settings("implicit"), client_settings("starttls")):
            settings["ssl_opts"] = {"cafile": pki.ca_file}
            with pytest.raises(ConfigurationError, match="server_hostname"):
                deliver(client, MESSAGE, SENDER, ["a@x.example"], socket_path=sock_path, **settings)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize("mode", MODES)
def test_tls_over_unix_socket_with_check_hostname_off(
    client: str, mode: str, sock_path: str, pki: PKI
) -> None:
    # README: give ssl_opts["server_hostname"] "or set check_hostname=False explicitly"
    handler = Recorder()
    with running_server("blocking", handler, socket_path=sock_path, **server_settings(mode, pki)):
        result = deliver(
            client,
            MESSAGE,
            SENDER,
            ["a@x.example"],
            socket_path=sock_path,
            **client_settings(mode, cafile=pki.ca_file, check_hostname=False),
        )
    assert result.all_delivered
    assert handler.messages[0].tls is True


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize("mode", MODES)
def test_ready_made_ssl_context(client: str, mode: str, pki: PKI) -> None:
    context = ssl.create_default_context(cafile=pki.ca_file)
    handler = Recorder()
    with running_server("blocking", handler, **server_settings(mode, pki)) as address:
        flag = "ssl" if mode == "implicit" else "starttls"
        result = deliver(
            client,
            MESSAGE,
            SENDER,
            ["a@x.example"],
            **endpoint(address),
            ssl_context=context,
            **{flag: True},
        )
    assert result.all_delivered
    assert handler.messages[0].tls is True


FAILURES: dict[str, Callable[[PKI], dict[str, Any]]] = {
    "wrong-ca": lambda pki: {"cafile": pki.other_ca_file},
    "wrong-host-name": lambda pki: {"cafile": pki.ca_file, "server_hostname": "other.example"},
    "system-ca-only": lambda pki: {},
}


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("failure_name", list(FAILURES))
def test_verification_failures_are_tls_errors(
    client: str, mode: str, failure_name: str, pki: PKI
) -> None:
    handler = Recorder()
    with running_server("blocking", handler, **server_settings(mode, pki)) as address:
        # failure_of() drops the exception and collects, so a leaked client socket is
        # found here, and closed before the server waits for it to go away
        failure = failure_of(
            lambda: deliver(
                client,
                MESSAGE,
                SENDER,
                ["a@x.example"],
                **endpoint(address),
                **client_settings(mode, **FAILURES[failure_name](pki)),
            )
        )
    assert failure.error is TLSError, failure
    message = failure.message.lower()
    assert "certificate" in message or "verif" in message or "hostname" in message
    assert handler.senders == []  # no MAIL ever reached the server
    assert failure.leaks == [], "the client left its connection open"


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize("mode", MODES)
def test_verify_false_connects_and_warns(
    client: str, mode: str, pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    handler = Recorder()
    with (
        caplog.at_level(logging.WARNING, logger="transports"),
        running_server("blocking", handler, **server_settings(mode, pki)) as address,
    ):
        result = deliver(
            client,
            MESSAGE,
            SENDER,
            ["a@x.example"],
            **endpoint(address),
            **client_settings(mode, verify=False),  # the CA is not trusted: no check
        )
    assert result.all_delivered
    assert handler.messages[0].tls is True
    warnings = [
        r for r in caplog.records if r.name == "transports" and r.levelno == logging.WARNING
    ]
    assert any("verification is OFF" in r.getMessage() for r in warnings)


@pytest.mark.parametrize("client", RUNTIMES)
def test_starttls_required_but_not_offered_is_a_session_error_before_mail(client: str) -> None:
    handler = Recorder()
    with (
        running_server("blocking", handler) as address,  # no starttls_context
        pytest.raises(SessionError, match="STARTTLS"),
    ):
        deliver(
            client, MESSAGE, SENDER, ["a@x.example"], **endpoint(address), starttls=True, timeout=10
        )
    assert handler.senders == [] and handler.recipients == [] and handler.messages == []


class RawTLSPeer:
    """A TCP server for one connection that makes the client's TLS fail in a chosen way,
    then records whether the client closed the connection (EOF) within `patience`."""

    def __init__(self, behaviour: str, pki: PKI, patience: float = 3.0) -> None:
        self.behaviour = behaviour
        self.pki = pki
        self.patience = patience
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.eof: bool | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RawTLSPeer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.thread.join(self.patience + 10)
        self.listener.close()

    def _run(self) -> None:
        self.listener.settimeout(10)
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(self.patience)
            if self.behaviour == "plain-greeting":
                conn.sendall(b"220 plain.example LMTP ready\r\n")
            elif self.behaviour == "untrusted-cert":
                with (
                    conn.dup() as raw,
                    contextlib.suppress(OSError),
                    self.pki.server_context().wrap_socket(raw, server_side=True),
                ):
                    pass  # the client refuses the certificate: the handshake fails here
            self.eof = self._wait_for_eof(conn)

    @staticmethod
    def _wait_for_eof(conn: socket.socket) -> bool:
        try:
            while conn.recv(65536):
                pass
        except TimeoutError:
            return False
        except OSError:
            return True  # reset: closed as well
        return True


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize("behaviour", ["plain-greeting", "untrusted-cert", "silent"])
def test_failed_tls_connect_raises_and_closes_the_connection(
    client: str, behaviour: str, pki: PKI
) -> None:
    expected = Timeout if behaviour == "silent" else TLSError
    with resource_warnings() as leaks, RawTLSPeer(behaviour, pki) as peer:
        with pytest.raises(expected) as caught:
            deliver(
                client,
                MESSAGE,
                SENDER,
                ["a@x.example"],
                **endpoint(peer.address),
                ssl=True,
                ssl_opts={"cafile": pki.other_ca_file},
                timeout=Timeouts(connect=0.5, greeting=0.5),
            )
        peer.thread.join(peer.patience + 5)  # while the exception (and its frames) lives
        del caught
    assert peer.eof is True, "the client left the failed connection open"
    assert leaks == []


@pytest.mark.parametrize("client", RUNTIMES)
def test_implicit_tls_against_a_plain_server_is_a_tls_error(client: str) -> None:
    handler = Recorder()
    with running_server("blocking", handler) as address:
        failure = failure_of(
            lambda: deliver(
                client,
                MESSAGE,
                SENDER,
                ["a@x.example"],
                **endpoint(address),
                **client_settings("implicit", verify=False),
            )
        )
    assert failure.error is TLSError, failure
    assert handler.senders == []
    assert failure.leaks == [], "the client left its connection open"


@pytest.mark.parametrize("server", RUNTIMES)
def test_plain_session_on_a_starttls_server_is_not_tls(server: str) -> None:
    handler = Recorder()
    with running_server(
        server, handler, starttls_context=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ) as address:
        result = deliver("blocking", MESSAGE, SENDER, ["a@x.example"], **endpoint(address))
    assert result.all_delivered
    assert handler.messages[0].tls is False
