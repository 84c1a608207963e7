"""A pytest plugin for testing code that delivers mail over LMTP: a real server per test.

How it works: installing the package registers this module as a pytest plugin (the
`pytest11` entry point), so a test asks for the `lmtp_server` fixture (a UNIX socket in
a temporary directory) or `lmtp_server_tcp` (127.0.0.1, a free port) and gets an
LMTPTestServer: our blocking Server running in a background thread for the test, whose
handler records every message it accepts. A thread serves the same fixture to blocking,
asyncio and trio code alike, with no async test plugin. Policy is set per address:
reject() refuses a recipient at RCPT, fail() fails it after the data (4xx or 5xx, so
that partial failure can be tested); anything else is accepted and delivered::

    def test_my_adapter(lmtp_server):
        lmtp_server.reject("nobody@example.org")
        my_adapter.send(..., socket_path=lmtp_server.socket_path)
        (message,) = lmtp_server.messages
        assert message.recipients == ["alice@example.org"]
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmtp_core import Params, Reply

from ._config import ClientSettings
from ._session import Decision, Envelope, Handler, Verdicts
from .blocking import Server

__all__ = ["LMTPTestServer", "ReceivedMessage", "lmtp_server", "lmtp_server_tcp"]


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


class LMTPTestServer:
    """A running LMTP server for one test: where it listens, what it received, and the
    policy for each address (see the module comment)."""

    def __init__(self, server: Server, recorder: _Recorder) -> None:
        self._server = server
        self._recorder = recorder
        address = server.address
        #: The UNIX socket path, or None for a TCP server.
        self.socket_path: str | None = address if isinstance(address, str) else None
        #: The host of a TCP server (None on a UNIX socket).
        self.host: str | None = None if isinstance(address, str) else address[0]
        #: The port of a TCP server (None on a UNIX socket).
        self.port: int | None = None if isinstance(address, str) else address[1]

    @property
    def settings(self) -> ClientSettings:
        """Client settings that reach this server: ``Client(**lmtp_server.settings)``."""
        if self.socket_path is not None:
            return {"socket_path": self.socket_path}
        assert self.host is not None and self.port is not None
        return {"host": self.host, "port": self.port}

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


def _running(socket_path: str | None = None) -> Iterator[LMTPTestServer]:
    recorder = _Recorder()
    with Server(recorder, socket_path=socket_path, host="127.0.0.1", port=0) as server:
        yield LMTPTestServer(server, recorder)


@pytest.fixture
def lmtp_server() -> Iterator[LMTPTestServer]:
    """An LMTP server on a UNIX socket in a temporary directory, for this test."""
    # Not tmp_path: its long names can exceed the 107-octet limit of a socket path.
    with tempfile.TemporaryDirectory(prefix="lmtp-") as directory:
        yield from _running(socket_path=str(Path(directory) / "lmtp.sock"))


@pytest.fixture
def lmtp_server_tcp() -> Iterator[LMTPTestServer]:
    """An LMTP server on 127.0.0.1 and a free port, for this test."""
    yield from _running()
