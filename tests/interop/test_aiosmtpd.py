"""Our client (all three drivers) against aiosmtpd's LMTP server, a second independent peer.

How it works: ``running_lmtp()`` starts ``aiosmtpd.lmtp.LMTP`` in aiosmtpd's own threaded
controller, on a UNIX socket (``UnixSocketController``) or on 127.0.0.1 with a port the kernel
picked (a ``Controller`` whose listening socket is bound before the server starts, so there is no
window in which another process could take the port).  The server class is a subclass that records,
per connection, every chunk the transport delivered (``data_received``) and every reply line it
pushed, in the order they happened in the server's event loop: that transcript shows what aiosmtpd
advertised and that our client, without PIPELINING, sent one command per write and only after
the previous reply.  Handlers record the envelopes aiosmtpd hands them.  The transcript is read
only after the controller has stopped (its thread joined).

aiosmtpd sends one reply after the data however many recipients were accepted (unless the handler
returns the per-recipient lines joined with CRLF), so a correct LMTP client must wait for the
others: with ``Timeouts(data_end=1.0)`` our client reports the first recipient delivered and the
rest unknown (the message may have been stored), after about a second, never earlier.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AnyStr

import aiosmtpd
import pytest
from aiosmtpd.controller import Controller, UnixSocketController
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session
from runtimes_interop import RUNTIMES, deliver

from lmtp_core import Stage, Status, TransactionResult
from transports import Timeouts

SENDER = "sender@example.com"
ALICE = "alice@example.org"
NOBODY = "nobody@example.org"
QUOTA = "quota@example.org"
TEMPQUOTA = "tempquota@example.org"
HOSTNAME = "aiosmtpd.test"  # given, so aiosmtpd does not look up the FQDN

# Dot lines, a bare LF line end, 8-bit UTF-8 and a 998-octet line.
MESSAGE = (
    b"From: <sender@example.com>\r\n"
    b"Subject: interop with aiosmtpd\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b".A line that starts with a dot.\r\n"
    b".\r\n"
    b"A bare LF line end\n" + "Grüße ☃\r\n".encode() + b"y" * 998 + b"\r\n"
)
WIRE_MESSAGE = MESSAGE.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

TIMEOUT = 30.0
TRANSPORTS = ["unix", "tcp"]


# ----------------------------------------------------------------------------- aiosmtpd side


class RecordingLMTP(LMTP):
    """aiosmtpd's LMTP server, recording the connection's traffic in order."""

    def __init__(self, *args: Any, transcript: list[tuple[str, bytes]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transcript = transcript

    def data_received(self, data: bytes) -> None:
        self.transcript.append(("in", bytes(data)))
        super().data_received(data)

    async def push(self, status: AnyStr) -> None:
        self.transcript.append(("out", status.encode() if isinstance(status, str) else status))
        await super().push(status)


class _Recording:
    """Mixin for aiosmtpd controllers: one RecordingLMTP (and transcript) per connection."""

    handler: Any
    SMTP_kwargs: dict[str, Any]
    transcripts: list[list[tuple[str, bytes]]]

    def factory(self) -> SMTP:
        transcript: list[tuple[str, bytes]] = []
        self.transcripts.append(transcript)
        return RecordingLMTP(self.handler, transcript=transcript, **self.SMTP_kwargs)


class UnixLMTPController(_Recording, UnixSocketController):
    pass


class TcpLMTPController(_Recording, Controller):
    """Listens on a socket bound to 127.0.0.1:0 before the server starts."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        super().__init__(handler, hostname="127.0.0.1", port=self._sock.getsockname()[1], **kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock)

    def stop(self, no_assert: bool = False) -> None:
        try:
            super().stop(no_assert)
        finally:
            self._sock.close()


@dataclass
class Running:
    """A started aiosmtpd LMTP server: how our client reaches it, and what it saw."""

    settings: dict[str, Any]
    transcripts: list[list[tuple[str, bytes]]] = field(default_factory=list)

    def sessions(self) -> list[list[tuple[str, bytes]]]:
        """Transcripts of connections in which the client sent anything (not the
        controller's start-up probe, which only reads the greeting)."""
        return [t for t in self.transcripts if any(d == "in" for d, _ in t)]


@contextlib.contextmanager
def running_lmtp(handler: Any, transport: str, socket_dir: Path) -> Iterator[Running]:
    controller: UnixLMTPController | TcpLMTPController
    if transport == "unix":
        path = socket_dir / "aiosmtpd.sock"
        controller = UnixLMTPController(handler, unix_socket=path, server_hostname=HOSTNAME)
        settings: dict[str, Any] = {"socket_path": str(path)}
    else:
        controller = TcpLMTPController(handler, server_hostname=HOSTNAME)
        settings = {"host": "127.0.0.1", "port": controller.port}
    running = Running(settings)
    controller.transcripts = running.transcripts
    controller.start()
    try:
        yield running
    finally:
        controller.stop()


class Recorder:
    """A conventional aiosmtpd handler: records each message and answers once."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


AFTER_DATA = {
    QUOTA: "552 5.2.2 <{}> Mailbox full",
    TEMPQUOTA: "452 4.2.2 <{}> Mailbox full, try later",
}


class PerRecipient(Recorder):
    """Refuses ``nobody`` at RCPT; after the data answers each accepted recipient on its own
    line (the lines joined with CRLF make one push), as LMTP requires."""

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address == NOBODY:
            return f"550 5.1.1 <{address}> No such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await super().handle_DATA(server, session, envelope)
        return "\r\n".join(
            AFTER_DATA.get(rcpt, "250 2.0.0 <{}> Saved").format(rcpt) for rcpt in envelope.rcpt_tos
        )


# ----------------------------------------------------------------------------- transcript


def commands(transcript: list[tuple[str, bytes]]) -> list[bytes]:
    """The client's command lines up to and including DATA (the body is not a command)."""
    lines: list[bytes] = []
    for direction, data in transcript:
        if direction == "in":
            lines.extend(data.splitlines())
            if lines and lines[-1] == b"DATA":
                return lines
    return lines


def assert_lock_step(transcript: list[tuple[str, bytes]]) -> None:
    """Until the 354, each chunk the server received holds exactly one command line, and
    between two such chunks the server sent a reply: no pipelining."""
    previous = "out"  # the greeting
    for direction, data in transcript:
        if direction == "out" and data.startswith(b"354"):
            return
        if direction == "in":
            assert previous == "out", f"two client writes without a reply between: {transcript}"
            assert data.endswith(b"\r\n") and data.count(b"\r\n") == 1, data
        previous = direction
    raise AssertionError(f"no 354 in {transcript}")


def replies_after_body(transcript: list[tuple[str, bytes]]) -> list[bytes]:
    """Reply lines the server sent after the 354 and before the client's next command."""
    out: list[bytes] = []
    seen_354 = False
    for direction, data in transcript:
        if direction == "out" and data.startswith(b"354"):
            seen_354 = True
        elif seen_354 and direction == "out":
            out.extend(data.split(b"\r\n"))
        elif seen_354 and out and direction == "in":
            break
    return out


def outcomes(result: TransactionResult) -> list[tuple[str, Status, Stage, str | None]]:
    return [
        (r.recipient, r.status, r.stage, f"{r.reply.code} {r.reply.text}" if r.reply else None)
        for r in result.recipients
    ]


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_one_recipient(socket_dir: Path, transport: str, runtime: str) -> None:
    """Delivered; aiosmtpd got the exact message; our client used DATA, one command at a time,
    and the SIZE and BODY parameters aiosmtpd offers."""
    handler = Recorder()
    with running_lmtp(handler, transport, socket_dir) as server:
        result = deliver(runtime, MESSAGE, SENDER, [ALICE], timeout=TIMEOUT, **server.settings)

    assert outcomes(result) == [
        (ALICE, Status.DELIVERED, Stage.DATA, "250 Message accepted for delivery")
    ]
    (envelope,) = handler.envelopes
    assert (envelope.mail_from, envelope.rcpt_tos) == (SENDER, [ALICE])
    assert envelope.content == WIRE_MESSAGE
    body, size = envelope.mail_options
    assert re.fullmatch(r"SIZE=\d+", size) and body == "BODY=8BITMIME"

    (transcript,) = server.sessions()
    direction, greeting = transcript[0]
    assert direction == "out"
    assert greeting == f"220 {HOSTNAME} Python SMTP {aiosmtpd.__version__}".encode()
    # What aiosmtpd's LMTP advertises: no PIPELINING, CHUNKING or ENHANCEDSTATUSCODES.
    lhlo = [data for direction, data in transcript[2:7]]
    assert lhlo == [
        f"250-{HOSTNAME}".encode(),
        b"250-SIZE 33554432",
        b"250-8BITMIME",
        b"250-SMTPUTF8",
        b"250 HELP",
    ]
    assert commands(transcript) == [
        b"LHLO localhost",
        f"MAIL FROM:<{SENDER}> BODY=8BITMIME {size}".encode(),
        f"RCPT TO:<{ALICE}>".encode(),
        b"DATA",
    ]
    assert_lock_step(transcript)
    assert not any(d == "in" and b"BDAT" in data for d, data in transcript)
    assert replies_after_body(transcript) == [b"250 Message accepted for delivery"]
    assert transcript[-2:] == [("in", b"QUIT\r\n"), ("out", b"221 Bye")]


@pytest.mark.parametrize(
    "message",
    [WIRE_MESSAGE, b"Subject: bare LF\n\nline one\nline two\n"],
    ids=["crlf", "bare-lf"],
)
def test_size_counts_the_octets_sent(socket_dir: Path, message: bytes) -> None:
    """RFC 1870 section 4: the SIZE= value is the number of octets sent after the 354, CRLF pairs
    included.  Our client normalises each bare LF to CRLF, so a message given with bare LFs is
    sent longer than it was given; the declared SIZE must count what is sent."""
    handler = Recorder()
    with running_lmtp(handler, "unix", socket_dir) as server:
        result = deliver("blocking", message, SENDER, [ALICE], timeout=TIMEOUT, **server.settings)

    assert result.all_delivered
    (envelope,) = handler.envelopes
    sent = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert envelope.content == sent
    declared = [o for o in envelope.mail_options if o.startswith("SIZE=")]
    assert declared == [f"SIZE={len(sent)}"], f"{len(message)} octets given, {len(sent)} sent"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_one_reply_for_three_recipients_leaves_two_unknown(socket_dir: Path, runtime: str) -> None:
    """Stock aiosmtpd answers once after DATA: the first recipient is delivered, the other two
    unknown once data_end passes; nothing is guessed and nothing hangs."""
    handler = Recorder()
    recipients = [ALICE, QUOTA, TEMPQUOTA]
    timeouts = Timeouts(data_end=1.0, total=TIMEOUT)
    with running_lmtp(handler, "unix", socket_dir) as server:
        started = time.monotonic()
        result = deliver(runtime, MESSAGE, SENDER, recipients, timeout=timeouts, **server.settings)
        elapsed = time.monotonic() - started

    assert outcomes(result) == [
        (ALICE, Status.DELIVERED, Stage.DATA, "250 Message accepted for delivery"),
        (QUOTA, Status.UNKNOWN, Stage.DATA, None),  # accepted at RCPT, then no reply
        (TEMPQUOTA, Status.UNKNOWN, Stage.DATA, None),
    ]
    assert [r.recipient for r in result.retry] == [QUOTA, TEMPQUOTA]
    # It waited for the missing replies (data_end), and not much longer.
    assert 1.0 <= elapsed < 10.0, elapsed
    # aiosmtpd did take the message for all three: "unknown", not "temporary", is right.
    (envelope,) = handler.envelopes
    assert envelope.rcpt_tos == recipients
    (transcript,) = server.sessions()
    assert replies_after_body(transcript) == [b"250 Message accepted for delivery"]
    # The connection was out of step, so it was dropped without QUIT.
    assert ("in", b"QUIT\r\n") not in transcript


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_per_recipient_replies(socket_dir: Path, transport: str, runtime: str) -> None:
    """With a handler that answers each recipient after the data, every outcome is right."""
    handler = PerRecipient()
    recipients = [ALICE, NOBODY, QUOTA, TEMPQUOTA]
    with running_lmtp(handler, transport, socket_dir) as server:
        started = time.monotonic()
        result = deliver(runtime, MESSAGE, SENDER, recipients, timeout=TIMEOUT, **server.settings)
        elapsed = time.monotonic() - started

    assert outcomes(result) == [
        (ALICE, Status.DELIVERED, Stage.DATA, f"250 <{ALICE}> Saved"),
        (NOBODY, Status.PERMANENT, Stage.RCPT, f"550 <{NOBODY}> No such user"),
        (QUOTA, Status.PERMANENT, Stage.DATA, f"552 <{QUOTA}> Mailbox full"),
        (TEMPQUOTA, Status.TEMPORARY, Stage.DATA, f"452 <{TEMPQUOTA}> Mailbox full, try later"),
    ]
    assert [r.reply.enhanced for r in result.recipients if r.reply] == [
        "2.0.0",
        "5.1.1",
        "5.2.2",
        "4.2.2",
    ]
    assert elapsed < 5.0  # no reply was waited for in vain
    (envelope,) = handler.envelopes
    assert envelope.rcpt_tos == [ALICE, QUOTA, TEMPQUOTA]
    (transcript,) = server.sessions()
    assert_lock_step(transcript)
    assert len(replies_after_body(transcript)) == 3
    assert transcript[-2:] == [("in", b"QUIT\r\n"), ("out", b"221 Bye")]


def test_aiosmtpd_version() -> None:
    """The peer these tests describe (its behaviours above were seen with 1.4.6)."""
    assert re.fullmatch(r"1\.4\.\d+", aiosmtpd.__version__), aiosmtpd.__version__
