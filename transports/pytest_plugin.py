"""A pytest plugin for testing code that delivers mail over LMTP: a real server per test.

How it works: installing the package registers this module as a pytest plugin (the
`pytest11` entry point named `lmtp`; `pytest -p no:lmtp` turns it off), so a test asks
for a fixture by name. `lmtp_server` (a UNIX socket in a temporary directory) and
`lmtp_server_tcp` (127.0.0.1, a free port) give an LMTPTestServer: our blocking Server
running in a background thread for the test, whose handler records every message it
accepts. A thread serves the same fixture to blocking, asyncio and trio code alike,
with no async test plugin. Policy is set per address: reject() refuses a recipient at
RCPT, fail() fails it after the data (4xx or 5xx, so that partial failure can be
tested); anything else is accepted and delivered::

    def test_my_adapter(lmtp_server):
        lmtp_server.reject("nobody@example.org")
        my_adapter.send(..., socket_path=lmtp_server.socket_path)
        (message,) = lmtp_server.messages
        assert message.recipients == ["alice@example.org"]

`lmtp_server_factory` starts servers with your own Handler and any ServerSettings
(limits, TLS, timeouts): factory(handler, **settings) gives an LMTPServer, and
factory(**settings) the recording handler's LMTPTestServer. Every fixture is
function-scoped: each server is stopped (and its socket file removed) when the test
ends; an LMTPServerFactory used as a context manager serves a wider scope. The
fixtures serve with the blocking Server, so handler methods must be plain functions
(the factory refuses `async def` ones at once).
"""

from __future__ import annotations

import contextlib
import inspect
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack, overload

import pytest

from lmtp_core import Params, Reply

from ._config import ClientSettings, ServerSettings
from ._session import Decision, Envelope, Handler, Verdicts
from .blocking import Server

__all__ = [
    "LMTPServer",
    "LMTPServerFactory",
    "LMTPTCPTestServer",
    "LMTPTestServer",
    "LMTPUnixTestServer",
    "ReceivedMessage",
    "lmtp_server",
    "lmtp_server_factory",
    "lmtp_server_tcp",
]


@dataclass(frozen=True)
class ReceivedMessage:
    """One message as the server received it (delivered to `recipients`)."""

    sender: str
    #: The recipients accepted at RCPT, in order, those failed after the data included.
    recipients: list[str]
    #: The message as received: dot-unstuffed, CRLF line ends.
    data: bytes
    mail_params: Params
    rcpt_params: list[Params]
    #: The recipients whose delivery succeeded (not failed with fail()).
    delivered: list[str]


class _Recorder(Handler):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[ReceivedMessage] = []
        self.refused: dict[str, Reply] = {}
        self.failing: dict[str, Reply] = {}

    def rcpt_to(self, recipient: str, params: Params) -> Decision:
        with self.lock:
            return self.refused.get(recipient.lower())

    def deliver(self, envelope: Envelope) -> Verdicts:
        with self.lock:
            verdicts = [self.failing.get(r.lower()) for r in envelope.recipients]
            delivered = [r for r, v in zip(envelope.recipients, verdicts, strict=True) if v is None]
            self.messages.append(
                ReceivedMessage(
                    envelope.sender,
                    list(envelope.recipients),
                    envelope.read(),
                    envelope.mail_params,
                    list(envelope.rcpt_params),
                    delivered,
                )
            )
        return verdicts


class LMTPServer:
    """A running server of the plugin's, for one test: where it listens, and how to
    reach it. Made by the fixtures; stopped when the test ends."""

    def __init__(self, server: Server) -> None:
        self._server = server
        #: Where it listens: the UNIX socket path, or the (host, port, ...) it bound.
        self.address: str | tuple[Any, ...] = server.address

    @property
    def socket_path(self) -> str | None:
        """The UNIX socket path, or None for a TCP server."""
        return self.address if isinstance(self.address, str) else None

    @property
    def host(self) -> str | None:
        """The host of a TCP server (None on a UNIX socket)."""
        return None if isinstance(self.address, str) else str(self.address[0])

    @property
    def port(self) -> int | None:
        """The port of a TCP server (None on a UNIX socket)."""
        return None if isinstance(self.address, str) else int(self.address[1])

    @property
    def settings(self) -> ClientSettings:
        """Client settings that reach this server: ``Client(**lmtp_server.settings)``
        (add TLS settings of your own to a TLS server's)."""
        if isinstance(self.address, str):
            return {"socket_path": self.address}
        return {"host": str(self.address[0]), "port": int(self.address[1])}

    def stop(self, grace: float | None = None) -> None:
        """Stop the server before the test ends (to test what a client does when its
        server goes away): as Server.shutdown(); stopping again does nothing."""
        self._server.shutdown(grace)


class LMTPTestServer(LMTPServer):
    """A running server whose handler records what it receives, with the policy for
    each address (see the module comment). ``lmtp_server`` gives an
    LMTPUnixTestServer, ``lmtp_server_tcp`` an LMTPTCPTestServer."""

    def __init__(self, server: Server, recorder: _Recorder) -> None:
        super().__init__(server)
        self._recorder = recorder

    @property
    def messages(self) -> list[ReceivedMessage]:
        """Every message received so far, in the order they were complete."""
        with self._recorder.lock:
            return list(self._recorder.messages)

    def reject(self, *addresses: str, reply: Reply | None = None) -> None:
        """Refuse these recipients at RCPT (default 550 5.1.1 User unknown)."""
        refusal = reply or Reply(550, "5.1.1", "User unknown")
        if refusal.code < 400:
            raise ValueError("reject() needs a 4xx or 5xx reply")
        with self._recorder.lock:
            self._recorder.refused.update((a.lower(), refusal) for a in addresses)

    def fail(self, *addresses: str, reply: Reply | None = None) -> None:
        """Accept these recipients at RCPT, then fail them after the data (default
        452 4.2.2 Mailbox full: temporary; give a 5xx Reply for a permanent failure)."""
        failure = reply or Reply(452, "4.2.2", "Mailbox full")
        if failure.code < 400:
            raise ValueError("fail() needs a 4xx or 5xx reply")
        with self._recorder.lock:
            self._recorder.failing.update((a.lower(), failure) for a in addresses)

    def clear(self) -> None:
        """Forget the messages received and every reject() and fail()."""
        with self._recorder.lock:
            self._recorder.messages.clear()
            self._recorder.refused.clear()
            self._recorder.failing.clear()


class LMTPUnixTestServer(LMTPTestServer):
    """The ``lmtp_server`` fixture's server, on a UNIX socket: ``socket_path`` is a
    ``str``."""

    @property
    def socket_path(self) -> str:
        """The UNIX socket path."""
        assert isinstance(self.address, str)
        return self.address


class LMTPTCPTestServer(LMTPTestServer):
    """The ``lmtp_server_tcp`` fixture's server, on 127.0.0.1: ``host`` and ``port``
    are set."""

    @property
    def host(self) -> str:
        """The address it listens on, 127.0.0.1."""
        assert not isinstance(self.address, str)
        return str(self.address[0])

    @property
    def port(self) -> int:
        """The port it listens on (a free one, picked when it started)."""
        assert not isinstance(self.address, str)
        return int(self.address[1])


_ENDPOINT_KEYS = frozenset({"socket_path", "host", "port", "sock"})


class LMTPServerFactory:
    """The ``lmtp_server_factory`` fixture: call it to start a server for the test.

    ``factory(handler, **settings)`` serves your Handler and gives an LMTPServer;
    ``factory(**settings)`` serves the recording handler of ``lmtp_server`` and gives an
    LMTPTestServer. The settings are a Server's (ServerSettings). Without
    ``socket_path``, ``host``, ``port`` or ``sock`` it listens on a UNIX socket in a
    temporary directory; with ``host`` and no ``port`` it picks a free port.

    The fixture makes one per test and closes it when the test ends. For servers that
    outlive a test, use one in a fixture of a wider scope:
    ``with LMTPServerFactory() as factory: yield factory(handler)``."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._directory: str | None = None
        self._count = 0

    def __enter__(self) -> LMTPServerFactory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every server this factory started (their socket files removed)."""
        self._stack.close()

    @overload
    def __call__(
        self, handler: None = None, **settings: Unpack[ServerSettings]
    ) -> LMTPTestServer: ...

    @overload
    def __call__(self, handler: Handler, **settings: Unpack[ServerSettings]) -> LMTPServer: ...

    def __call__(
        self, handler: Handler | None = None, **settings: Unpack[ServerSettings]
    ) -> LMTPServer:
        if handler is not None:
            _refuse_async(handler)
        if not _ENDPOINT_KEYS & settings.keys():
            settings["socket_path"] = self._socket_path()
        elif settings.get("socket_path") is None and settings.get("sock") is None:
            settings.setdefault("port", 0)
        if handler is None:
            recorder = _Recorder()
            return LMTPTestServer(self._start(recorder, settings), recorder)
        return LMTPServer(self._start(handler, settings))

    def _start(self, handler: Handler, settings: ServerSettings) -> Server:
        return self._stack.enter_context(Server(handler, **settings))

    def _socket_path(self) -> str:
        if self._directory is None:
            # Not tmp_path: its long names can exceed the 107-octet limit of a socket path.
            self._directory = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="lmtp-"))
        self._count += 1
        return str(Path(self._directory) / f"lmtp-{self._count}.sock")


def _refuse_async(handler: Handler) -> None:
    for name in ("mail_from", "rcpt_to", "deliver"):
        method = getattr(handler, name)
        if inspect.iscoroutinefunction(method):
            raise TypeError(
                f"lmtp_server_factory serves with the blocking Server, which needs plain "
                f"methods: {type(handler).__qualname__}.{name} is async def"
            )


@pytest.fixture
def lmtp_server() -> Iterator[LMTPUnixTestServer]:
    """An LMTP server on a UNIX socket in a temporary directory, for this test."""
    # Not tmp_path: its long names can exceed the 107-octet limit of a socket path.
    with tempfile.TemporaryDirectory(prefix="lmtp-") as directory:
        recorder = _Recorder()
        with Server(recorder, socket_path=str(Path(directory) / "lmtp.sock")) as server:
            yield LMTPUnixTestServer(server, recorder)


@pytest.fixture
def lmtp_server_tcp() -> Iterator[LMTPTCPTestServer]:
    """An LMTP server on 127.0.0.1 and a free port, for this test."""
    recorder = _Recorder()
    with Server(recorder, host="127.0.0.1", port=0) as server:
        yield LMTPTCPTestServer(server, recorder)


@pytest.fixture
def lmtp_server_factory() -> Iterator[LMTPServerFactory]:
    """Start servers with your own Handler and settings: see LMTPServerFactory."""
    with LMTPServerFactory() as factory:
        yield factory
