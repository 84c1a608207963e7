"""Settings: what is refused before connecting, the timeout defaults, and connect failures.

Every invalid combination must raise ConfigurationError from each runtime's Client (and
deliver) without a connection being attempted: the tests point the client at a listening
socket and check afterwards that nothing was accepted. Timeouts follow RFC 5321 4.5.3.2 by
default and ``Timeouts.of(n)`` sets every phase. A refused TCP connection (a port that is
bound but not listening, so nothing can race for it) and a missing UNIX socket raise
ConnectError with a message that says what failed and where.
"""

from __future__ import annotations

import dataclasses
import math
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from lmtp_core import Phase
from transports import (
    ConfigurationError,
    ConnectError,
    LMTPError,
    Timeouts,
    blocking,
    server_context,
)
from transports import asyncio as lmtp_asyncio
from transports import trio as lmtp_trio

from .conftest import PKI
from .runtimes import RUNTIMES, deliver, failure_of

MESSAGE = b"Subject: x\r\n\r\nx\r\n"
SENDER = "a@example.net"
RECIPIENTS = ["b@example.org"]
CLIENTS = {"blocking": blocking.Client, "asyncio": lmtp_asyncio.Client, "trio": lmtp_trio.Client}


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening TCP socket that must never see a connection."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.accept()  # nobody connected


BAD_SETTINGS: dict[str, dict[str, Any]] = {
    "ssl-and-starttls": {"ssl": True, "starttls": True},
    "port-0": {"port": 0},
    "port-70000": {"port": 70000},
    "port-negative": {"port": -1},
    "port-str": {"port": "25"},
    "port-bool": {"port": True},
    "port-float": {"port": 24.0},
    "host-empty": {"host": ""},
    "socket-path-empty": {"socket_path": ""},
    "unknown-ssl-opts": {"ssl": True, "ssl_opts": {"cafile": None, "verify_mode": "none"}},
    "ssl-opts-without-tls": {"ssl_opts": {"verify": False}},
    "check-hostname-without-verify": {
        "ssl": True,
        "ssl_opts": {"verify": False, "check_hostname": True},
    },
    "verify-not-bool": {"ssl": True, "ssl_opts": {"verify": "no"}},
    "server-hostname-not-str": {"ssl": True, "ssl_opts": {"server_hostname": 127}},
    "missing-cafile": {"ssl": True, "ssl_opts": {"cafile": "/nonexistent/ca.pem"}},
    "bad-minimum-version": {"starttls": True, "ssl_opts": {"minimum_version": "SSLv3"}},
    "bad-ciphers": {"ssl": True, "ssl_opts": {"ciphers": "NO-SUCH-CIPHER"}},
    "context-and-opts": {
        "ssl": True,
        "ssl_context": ssl.create_default_context(),
        "ssl_opts": {"cafile": "x"},
    },
    "timeout-zero": {"timeout": 0},
    "timeout-negative": {"timeout": -1.5},
    "timeout-str": {"timeout": "30"},
    "timeout-bool": {"timeout": True},
    "timeout-nan": {"timeout": math.nan},
    "timeout-list": {"timeout": [30]},
    "lhlo-name": {"lhlo_name": "not a host name"},
}


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize("name", list(BAD_SETTINGS))
def test_bad_settings_are_refused_before_connecting(
    client: str, name: str, listener: socket.socket
) -> None:
    settings = {"host": "127.0.0.1", "port": listener.getsockname()[1], **BAD_SETTINGS[name]}
    with pytest.raises(ConfigurationError):
        CLIENTS[client](**settings)
    with pytest.raises(ConfigurationError):
        deliver(client, MESSAGE, SENDER, RECIPIENTS, **settings)


def test_configuration_error_is_a_value_error_and_an_lmtp_error() -> None:
    with pytest.raises(ValueError, match="exclude each other") as caught:
        blocking.Client(ssl=True, starttls=True)
    assert isinstance(caught.value, LMTPError)


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize("mode", ["ssl", "starttls"])
def test_tls_over_unix_socket_without_server_hostname(client: str, mode: str, pki: PKI) -> None:
    settings: dict[str, Any] = {"socket_path": "/nonexistent/lmtp.sock", mode: True}
    with pytest.raises(ConfigurationError, match="server_hostname"):
        CLIENTS[client](**settings, ssl_opts={"cafile": pki.ca_file})
    with pytest.raises(ConfigurationError, match="server_hostname"):  # a context checks too
        CLIENTS[client](**settings, ssl_context=ssl.create_default_context(cafile=pki.ca_file))
    # the two ways out the README gives are accepted
    CLIENTS[client](**settings, ssl_opts={"cafile": pki.ca_file, "server_hostname": "mx"})
    CLIENTS[client](**settings, ssl_opts={"cafile": pki.ca_file, "check_hostname": False})


def test_good_tls_settings_build_a_verifying_context(pki: PKI) -> None:
    config = blocking.Client(
        host="mx.example.org", starttls=True, ssl_opts={"cafile": pki.ca_file}
    ).config
    context = config.ssl_context
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert config.server_hostname == "mx.example.org"  # the host name is checked by default
    insecure = blocking.Client(ssl=True, ssl_opts={"verify": False}).config.ssl_context
    assert insecure is not None and insecure.verify_mode is ssl.CERT_NONE
    tls13 = blocking.Client(ssl=True, ssl_opts={"minimum_version": "TLSv1.3"}).config
    assert tls13.ssl_context is not None
    assert tls13.ssl_context.minimum_version is ssl.TLSVersion.TLSv1_3


def test_server_settings_are_checked(pki: PKI) -> None:
    context = pki.server_context()
    with pytest.raises(ConfigurationError):
        blocking.Server(object(), port=0, ssl_context=context, starttls_context=context)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        lmtp_asyncio.Server(object(), idle_timeout=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        lmtp_trio.Server(object(), session_timeout=-1)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="certificate"):
        server_context("/nonexistent/cert.pem")


# ---- timeouts -----------------------------------------------------------------------------

RFC_5321_4_5_3_2 = {
    "greeting": 300.0,  # Initial 220 Message: 5 minutes
    "mail": 300.0,  # MAIL Command: 5 minutes
    "rcpt": 300.0,  # RCPT Command: 5 minutes
    "data_init": 120.0,  # DATA Initiation: 2 minutes
    "data_block": 180.0,  # Data Block: 3 minutes
    "data_end": 600.0,  # DATA Termination: 10 minutes
}


def test_default_timeouts_follow_rfc_5321() -> None:
    defaults = Timeouts()
    for name, seconds in RFC_5321_4_5_3_2.items():
        assert getattr(defaults, name) == seconds, name
    assert defaults.total is None
    assert Timeouts.of(None) == defaults
    assert blocking.Client().config.timeouts == defaults
    for phase in Phase:  # the drivers look every phase up; each has a positive deadline
        assert defaults.for_phase(phase) > 0
    assert defaults.for_phase(Phase.DATA_END) == 600.0
    assert defaults.for_phase(Phase.DATA_INIT) == 120.0


@pytest.mark.parametrize("number", [7, 0.25, 1e6])
def test_timeouts_of_a_number_sets_every_phase(number: float) -> None:
    timeouts = Timeouts.of(number)
    phases = [f.name for f in dataclasses.fields(Timeouts) if f.name != "total"]
    assert {name: getattr(timeouts, name) for name in phases} == dict.fromkeys(phases, number)
    assert all(timeouts.for_phase(phase) == number for phase in Phase)
    assert blocking.Client(timeout=number).config.timeouts == timeouts
    explicit = Timeouts(data_end=42)
    assert Timeouts.of(explicit) is explicit


@pytest.mark.parametrize(
    "field", [f.name for f in dataclasses.fields(Timeouts)], ids=lambda name: name
)
@pytest.mark.parametrize("value", [0, -1, "5", math.nan], ids=["zero", "negative", "str", "nan"])
def test_every_timeout_field_is_checked(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=field):
        Timeouts(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("client", RUNTIMES)
def test_infinite_timeout_is_refused_or_works(client: str) -> None:
    # math.inf passes Timeouts' "positive number" check; then it must work as "no limit"
    # in every runtime, not crash in one (socket.settimeout(inf) raises OverflowError).
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = bound.getsockname()[1]
        failure = failure_of(
            lambda: deliver(client, MESSAGE, SENDER, RECIPIENTS, port=port, timeout=math.inf)
        )
    assert issubclass(failure.error, ConfigurationError | ConnectError), failure
    assert failure.leaks == []


# ---- connect failures ---------------------------------------------------------------------


@pytest.mark.parametrize("client", RUNTIMES)
def test_connection_refused_is_a_connect_error_with_a_clear_message(client: str) -> None:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = bound.getsockname()[1]
        failure = failure_of(
            lambda: deliver(client, MESSAGE, SENDER, RECIPIENTS, port=port, timeout=5)
        )
    assert failure.error is ConnectError  # not TLSError or Timeout
    assert failure.cause is not None and issubclass(failure.cause, OSError)  # kept as cause
    assert failure.leaks == []
    assert "refused" in failure.message.lower(), failure.message  # what went wrong
    assert str(port) in failure.message, failure.message  # and where


@pytest.mark.parametrize("client", RUNTIMES)
def test_missing_socket_path_is_a_connect_error_naming_it(client: str, sock_path: str) -> None:
    failure = failure_of(
        lambda: deliver(client, MESSAGE, SENDER, RECIPIENTS, socket_path=sock_path)
    )
    assert failure.error is ConnectError
    assert failure.leaks == [], "the client left its socket open"
    assert "no such file" in failure.message.lower(), failure.message
    assert sock_path in failure.message, failure.message


@pytest.mark.parametrize("client", RUNTIMES)
def test_socket_path_that_is_not_a_socket_is_a_connect_error(client: str, sock_path: str) -> None:
    with open(sock_path, "w") as file:
        file.write("not a socket")
    failure = failure_of(
        lambda: deliver(client, MESSAGE, SENDER, RECIPIENTS, socket_path=sock_path)
    )
    assert failure.error is ConnectError
    assert failure.leaks == [], "the client left its socket open"


def test_ssl_context_without_ssl_or_starttls_is_refused() -> None:
    # Silently ignoring a TLS context would send in the clear what the caller meant to
    # protect; ssl_opts without TLS is refused the same way.
    import ssl as _ssl

    from transports import ConfigurationError
    from transports import blocking as _blocking

    context = _ssl.create_default_context()
    with pytest.raises(ConfigurationError, match="ssl_context given"):
        _blocking.Client(socket_path="/nonexistent/lmtp.sock", ssl_context=context)
    _blocking.Client(host="127.0.0.1", ssl_context=context, starttls=True)
