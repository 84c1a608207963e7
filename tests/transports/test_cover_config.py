"""transports/_config.py: what test_config.py leaves out. Settings refused before any
connection (recipients_per_transaction, the Pool's own, ssl_opts types, the listen
backlog), a TLSVersion given as such, a client certificate that a server requiring
one accepts (and its absence refused), and a server on a TCP socket it was handed
naming that endpoint."""

from __future__ import annotations

import math
import socket
import ssl
from typing import Any

import pytest

from lmtp_core import Status
from transports import ConfigurationError, ConnectError, Handler, blocking
from transports import asyncio as lmtp_asyncio
from transports import trio as lmtp_trio

from .conftest import PKI
from .runtimes import RUNTIMES, deliver

CLIENTS: dict[str, Any] = {
    "blocking": blocking.Client,
    "asyncio": lmtp_asyncio.Client,
    "trio": lmtp_trio.Client,
}
POOLS: dict[str, Any] = {
    "blocking": blocking.Pool,
    "asyncio": lmtp_asyncio.Pool,
    "trio": lmtp_trio.Pool,
}
MESSAGE = b"Subject: config\r\n\r\nbody\r\n"

BAD_CLIENT = {
    "rpt-zero": (
        {"recipients_per_transaction": 0},
        "recipients_per_transaction must be a positive int or None, not 0",
    ),
    "rpt-bool": (
        {"recipients_per_transaction": True},
        "recipients_per_transaction must be a positive int or None, not True",
    ),
    "cafile-not-str": (
        {"ssl": True, "ssl_opts": {"cafile": 5}},
        "ssl_opts cafile must be a string",
    ),
    "version-float": (
        {"ssl": True, "ssl_opts": {"minimum_version": 1.2}},
        "minimum_version must be 'TLSv1.2', 'TLSv1.3' or a TLSVersion",
    ),
    "version-unknown": (
        {"ssl": True, "ssl_opts": {"minimum_version": "SSLv3"}},
        "minimum_version must be one of",
    ),
    "certfile-missing": (
        {"ssl": True, "ssl_opts": {"certfile": "/nonexistent/client.pem"}},
        "cannot set up TLS",
    ),
}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("case", list(BAD_CLIENT))
def test_bad_client_settings_are_refused_before_connecting(runtime: str, case: str) -> None:
    settings, words = BAD_CLIENT[case]
    with pytest.raises(ConfigurationError) as caught:
        CLIENTS[runtime](host="127.0.0.1", port=1, **settings)
    assert words in str(caught.value)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"max_connections": 0}, "max_connections must be a positive int, not 0"),
        ({"max_connections": 2.0}, "max_connections must be a positive int, not 2.0"),
        ({"idle_timeout": 0}, "idle_timeout must be a positive, finite number, not 0"),
        ({"max_lifetime": math.inf}, "max_lifetime must be a positive, finite number, not inf"),
        ({"wait_timeout": True}, "wait_timeout must be a positive, finite number, not True"),
    ],
)
def test_bad_pool_settings_are_refused(runtime: str, settings: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        POOLS[runtime](socket_path="/nonexistent/lmtp.sock", **settings)
    assert words in str(caught.value)


def test_a_minimum_version_given_as_a_tls_version_is_used() -> None:
    config = blocking.Client(ssl=True, ssl_opts={"minimum_version": ssl.TLSVersion.TLSv1_3}).config
    assert config.ssl_context is not None
    assert config.ssl_context.minimum_version is ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("backlog", [0, True, 1.5])
def test_a_bad_backlog_is_refused_before_listening(
    runtime: str, backlog: object, sock_path: str
) -> None:
    servers: dict[str, Any] = {
        "blocking": blocking.Server,
        "asyncio": lmtp_asyncio.Server,
        "trio": lmtp_trio.Server,
    }
    with pytest.raises(ConfigurationError, match="backlog must be a positive int"):
        servers[runtime](Handler(), socket_path=sock_path, backlog=backlog)


def _requiring_client_certificates(pki: PKI) -> ssl.SSLContext:
    context = pki.server_context()
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(pki.ca_file)
    return context


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_client_certificate_from_ssl_opts_is_presented(runtime: str, pki: PKI) -> None:
    # The server certificate is signed by the CA the server trusts for clients too.
    context = _requiring_client_certificates(pki)
    with blocking.Server(Handler(), host="127.0.0.1", port=0, ssl_context=context) as server:
        host, port = server.address[:2]
        opts = {"cafile": pki.ca_file, "certfile": pki.cert_file, "keyfile": pki.key_file}
        result = deliver(
            runtime, MESSAGE, "a@x.org", ["b@x.org"], host=host, port=port, ssl=True, ssl_opts=opts
        )
        assert [r.status for r in result.recipients] == [Status.DELIVERED]
        with pytest.raises(ConnectError):  # without it the server ends the session
            deliver(
                runtime,
                MESSAGE,
                "a@x.org",
                ["b@x.org"],
                host=host,
                port=port,
                ssl=True,
                ssl_opts={"cafile": pki.ca_file},
                timeout=10,
            )


def test_a_server_on_a_tcp_socket_it_was_given_names_that_endpoint() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with blocking.Server(Handler(), sock=listener) as server:
        assert server.config.endpoint == f"127.0.0.1:{port}"
        result = blocking.deliver(MESSAGE, "a@x.org", ["b@x.org"], host="127.0.0.1", port=port)
    assert [r.status for r in result.recipients] == [Status.DELIVERED]
    assert listener.fileno() == -1  # the server closed the socket it was given
