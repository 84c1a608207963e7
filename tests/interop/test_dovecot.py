"""Our client (blocking, asyncio and trio drivers) against a private Dovecot 2.3 LMTP server.

How it works: each test starts its own Dovecot (the ``dovecot``/``dovecot_tls`` fixtures), delivers
with one of our drivers through ``runtimes_interop``, and checks three independent records of what
happened: the ``TransactionResult`` our client returned, the Maildir copies Dovecot stored (with the
header fields it prepends stripped by ``DovecotLMTP.body_of``), and Dovecot's raw session logs.

Dovecot's rawlog (``lmtp_rawlog_dir``) writes one ``<session>.in`` file (bytes read from the client)
and one ``<session>.out`` file (bytes written to it) per connection, unbuffered and flushed as it
goes; every line starts with ``<seconds>.<microseconds> ``, the time Dovecot read (or wrote) the
chunk the line came in (``iostream_rawlog_write()`` refreshes the clock for each chunk, and every
line of a chunk gets that chunk's stamp).  So "MAIL, every RCPT and ``BDAT n LAST`` with its octets
carry one stamp, no later than the stamp of the reply to MAIL" shows that they arrived in one read,
before Dovecot had answered anything: one flight, PIPELINING really used.  After STARTTLS Dovecot
starts a second pair of files for the encrypted part of the session, logged as plaintext.

Users: ``alice`` and ``bob`` are delivered; ``quota`` is accepted at RCPT and refused with ``552
5.2.2`` after the data; ``tempquota`` the same with ``452 4.2.2``; any other user gets ``550 5.1.1``
at RCPT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from _dovecot import DovecotLMTP
from runtimes_interop import RUNTIMES, deliver, deliver_all

from lmtp_core import Stage, Status, TransactionResult
from transports import TLSError

if TYPE_CHECKING:
    import trustme

SENDER = "sender@example.com"
ALICE = "alice@example.org"
BOB = "bob@example.org"
QUOTA = "quota@example.org"
TEMPQUOTA = "tempquota@example.org"
NOBODY = "nobody@example.org"

LONG_LINE = b"0123456789" * 99 + b"01234567"  # 998 octets: the longest line RFC 5321 allows

# Dot lines (one that needs stuffing, a lone ".", a ".." line), bare LF line ends (one of them
# around a lone dot: "\n.\n", the SMTP smuggling shape), 8-bit UTF-8 and a 998-octet line.
MESSAGE = (
    b"From: <sender@example.com>\r\n"
    b"To: <alice@example.org>\r\n"
    b"Subject: interop with Dovecot\r\n"
    b"Message-ID: <interop-dovecot@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b".A line that starts with a dot.\r\n"
    b"..Two dots.\r\n"
    b".\r\n"
    b"Bare LF line ends from here\n"
    b".\n"
    b"still bare LF\n"
    b"\r\n" + "UTF-8: Grüße aus Köln, ☃ and 𝄞.\r\n".encode() + LONG_LINE + b"\r\n"
    b"Last line.\n"
)


def crlf(message: bytes) -> bytes:
    """The message with every line ending as CRLF (what an LMTP client must send)."""
    return message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


assert len(LONG_LINE) == 998 and LONG_LINE in crlf(MESSAGE).split(b"\r\n")
assert b"\n" in MESSAGE.replace(b"\r\n", b"")  # some bare LFs are left to normalise

QUOTA_TEXT = "Quota exceeded (mailbox for user is full)"
TIMEOUT = 30.0  # every phase; nothing here should take more than milliseconds


# ----------------------------------------------------------------------------- rawlog


@dataclass(frozen=True)
class RawLine:
    stamp: int  # microseconds
    text: bytes  # without the line end


@dataclass(frozen=True)
class RawSession:
    """One pair of rawlog files: what the client sent and what Dovecot answered."""

    name: str
    sent: list[RawLine]
    replies: list[RawLine]

    def sent_texts(self) -> list[bytes]:
        return [line.text for line in self.sent]

    def reply_texts(self) -> list[bytes]:
        return [line.text for line in self.replies]

    def lhlo_reply(self) -> list[bytes]:
        """The lines of the reply to LHLO (the first 250 reply, continuation lines included)."""
        texts = self.reply_texts()
        start = next(i for i, text in enumerate(texts) if text.startswith(b"250"))
        end = next(i for i in range(start, len(texts)) if texts[i].startswith(b"250 "))
        return texts[start : end + 1]

    def first_reply(self, prefix: bytes) -> RawLine:
        return next(line for line in self.replies if line.text.startswith(prefix))


_RAW_LINE = re.compile(rb"(\d+)\.(\d{6}) (.*?)\r?", re.DOTALL)


def parse_rawlog(data: bytes) -> list[RawLine]:
    lines = []
    raw = data.split(b"\n")
    if raw[-1] == b"":
        raw.pop()  # after the last line end
    for line in raw:
        match = _RAW_LINE.fullmatch(line)
        assert match is not None, f"unexpected rawlog line {line!r}"
        seconds, micros, text = match.groups()
        lines.append(RawLine(int(seconds) * 1_000_000 + int(micros), text))
    return lines


def raw_sessions(server: DovecotLMTP) -> list[RawSession]:
    """Client sessions from the rawlog directory, oldest first (start-up probes excluded)."""
    by_name: dict[str, dict[str, bytes]] = {}
    for path in server.rawlogs():
        by_name.setdefault(path.stem, {})[path.suffix] = path.read_bytes()
    sessions = [
        RawSession(name, parse_rawlog(files.get(".in", b"")), parse_rawlog(files.get(".out", b"")))
        for name, files in by_name.items()
    ]
    return sorted(
        sessions, key=lambda s: min((line.stamp for line in s.sent + s.replies), default=0)
    )


def transaction_session(server: DovecotLMTP) -> RawSession:
    """The one session in which a MAIL command was sent."""
    (session,) = [
        s for s in raw_sessions(server) if any(t.startswith(b"MAIL FROM:") for t in s.sent_texts())
    ]
    return session


def assert_one_flight(session: RawSession, commands: list[bytes]) -> int:
    """``commands`` (MAIL ... up to BDAT or DATA) arrived in one read, before Dovecot answered
    MAIL; returns their stamp."""
    texts = session.sent_texts()
    start = texts.index(commands[0])
    flight = session.sent[start : start + len(commands)]
    assert [line.text for line in flight] == commands, texts
    stamps = {line.stamp for line in flight}
    assert len(stamps) == 1, f"not sent in one flight: {flight}"
    (stamp,) = stamps
    assert stamp <= session.first_reply(b"250 2.1.0").stamp, "a command waited for MAIL's reply"
    return stamp


# ----------------------------------------------------------------------------- helpers


def write_ca(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "dovecot-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


TRANSPORTS = ["unix", "tcp", "starttls-tcp", "starttls-unix"]


def connect_to(
    request: pytest.FixtureRequest, transport: str, tmp_path: Path
) -> tuple[DovecotLMTP, dict[str, Any]]:
    """Start the right Dovecot for ``transport``; return it and our client's settings."""
    settings: dict[str, Any] = {"timeout": TIMEOUT}
    if transport.startswith("starttls"):
        server, ca = request.getfixturevalue("dovecot_tls")
        settings.update(starttls=True, ssl_opts={"cafile": write_ca(ca, tmp_path)})
    else:
        server = request.getfixturevalue("dovecot")
    if transport.endswith("unix"):
        settings["socket_path"] = str(server.socket_path)
        if transport.startswith("starttls"):
            # No host name on a UNIX socket: name the one in Dovecot's certificate.
            settings["ssl_opts"]["server_hostname"] = "localhost"
    else:
        settings.update(host=server.host, port=server.port)
    return server, settings


def outcomes(result: TransactionResult) -> list[tuple[str, Status, Stage | None, int | None]]:
    return [
        (r.recipient, r.status, r.stage, r.reply.code if r.reply else None)
        for r in result.recipients
    ]


def assert_four_outcomes(result: TransactionResult) -> None:
    """alice delivered, nobody refused at RCPT, quota 552 and tempquota 452 after the data."""
    assert outcomes(result) == [
        (ALICE, Status.DELIVERED, Stage.DATA, 250),
        (NOBODY, Status.PERMANENT, Stage.RCPT, 550),
        (QUOTA, Status.PERMANENT, Stage.DATA, 552),
        (TEMPQUOTA, Status.TEMPORARY, Stage.DATA, 452),
    ]
    alice, nobody, quota, tempquota = (r.reply for r in result.recipients)
    assert alice is not None and nobody is not None and quota is not None
    assert tempquota is not None
    assert alice.enhanced == "2.0.0" and re.fullmatch(rf"<{ALICE}> \S+ Saved", alice.text)
    assert (nobody.enhanced, nobody.text) == ("5.1.1", f"<{NOBODY}> User doesn't exist: {NOBODY}")
    assert (quota.enhanced, quota.text) == ("5.2.2", f"<{QUOTA}> {QUOTA_TEXT}")
    assert (tempquota.enhanced, tempquota.text) == ("4.2.2", f"<{TEMPQUOTA}> {QUOTA_TEXT}")


def assert_stored_only_for_alice(server: DovecotLMTP, message: bytes) -> None:
    (stored,) = server.messages(ALICE)
    assert server.body_of(stored) == message
    # Several recipients: Return-Path and Received are prepended, Delivered-To is not.
    assert stored.startswith(f"Return-Path: <{SENDER}>\r\nReceived: ".encode())
    assert server.messages(QUOTA) == []
    assert server.messages(TEMPQUOTA) == []
    assert not server.maildir(NOBODY).exists()


FOUR = [ALICE, NOBODY, QUOTA, TEMPQUOTA]
RCPT_LINES = [f"RCPT TO:<{r}>".encode() for r in FOUR]
MAIL_LINE = f"MAIL FROM:<{SENDER}> BODY=8BITMIME".encode()


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_outcome_in_order_with_bdat(
    request: pytest.FixtureRequest, tmp_path: Path, transport: str, runtime: str
) -> None:
    """One transaction, four outcomes in order; the stored copy is the CRLF-normalised message;
    MAIL, the RCPTs and ``BDAT n LAST`` went out in one flight."""
    server, settings = connect_to(request, transport, tmp_path)
    result = deliver(runtime, MESSAGE, SENDER, FOUR, **settings)

    assert_four_outcomes(result)
    assert_stored_only_for_alice(server, crlf(MESSAGE))

    session = transaction_session(server)
    bdat = f"BDAT {len(crlf(MESSAGE))} LAST".encode()
    stamp = assert_one_flight(session, [MAIL_LINE, *RCPT_LINES, bdat])
    assert b"DATA" not in session.sent_texts()
    # The chunk's octets came with the commands (Dovecot logs them as lines too).
    body_start = session.sent_texts().index(bdat) + 1
    assert session.sent[body_start].text == b"From: <sender@example.com>"
    assert session.sent[body_start].stamp == stamp
    assert LONG_LINE in session.sent_texts()
    lhlo = session.lhlo_reply()
    for extension in (b"PIPELINING", b"CHUNKING", b"8BITMIME", b"ENHANCEDSTATUSCODES"):
        assert any(line[4:] == extension for line in lhlo), lhlo

    sessions = raw_sessions(server)
    if transport.startswith("starttls"):
        assert len(sessions) == 2, sessions
        # A plaintext part (LHLO, STARTTLS) and then the TLS part with the transaction, whose
        # LHLO reply no longer offers STARTTLS.
        assert sessions[0].sent_texts() == [b"LHLO localhost", b"STARTTLS"]
        assert b"250 STARTTLS" in sessions[0].lhlo_reply()
        assert sessions[0].reply_texts()[-1] == b"220 2.0.0 Begin TLS negotiation now."
        # What was sent is compared: Dovecot may log its 221 to QUIT between two reads.
        assert sessions[1].sent == session.sent
    else:
        assert [s.sent for s in sessions] == [session.sent]
    assert not any(b"STARTTLS" in line for line in lhlo)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_each_outcome_in_order_with_data(dovecot: DovecotLMTP, runtime: str) -> None:
    """chunking=False: DATA (pipelined with MAIL and RCPT), a dot-stuffed body after the 354, and
    the same four outcomes."""
    result = deliver(
        runtime,
        MESSAGE,
        SENDER,
        FOUR,
        socket_path=str(dovecot.socket_path),
        chunking=False,
        timeout=TIMEOUT,
    )

    assert_four_outcomes(result)
    assert_stored_only_for_alice(dovecot, crlf(MESSAGE))

    session = transaction_session(dovecot)
    texts = session.sent_texts()
    assert not any(text.startswith(b"BDAT") for text in texts)
    assert_one_flight(session, [MAIL_LINE, *RCPT_LINES, b"DATA"])
    # The body came only after the 354, dot-stuffed, and ended with a lone dot.
    start = texts.index(b"DATA") + 1
    end = texts.index(b".", start)
    assert session.sent[start].stamp >= session.first_reply(b"354 ").stamp
    wire = texts[start:end]
    assert wire[0] == b"From: <sender@example.com>"
    assert b"..A line that starts with a dot." in wire
    assert b"...Two dots." in wire
    assert wire.count(b"..") == 2  # the two lone dots of the message, stuffed
    assert b"." not in wire
    unstuffed = b"".join((t[1:] if t.startswith(b".") else t) + b"\r\n" for t in wire)
    assert unstuffed == crlf(MESSAGE)


def test_duplicate_recipients(dovecot: DovecotLMTP) -> None:
    """alice twice: two outcomes, each with its own (identical) reply; Dovecot stores one copy."""
    result = deliver(
        "blocking",
        MESSAGE,
        SENDER,
        [ALICE, BOB, ALICE],
        socket_path=str(dovecot.socket_path),
        timeout=TIMEOUT,
    )

    assert outcomes(result) == [
        (ALICE, Status.DELIVERED, Stage.DATA, 250),
        (BOB, Status.DELIVERED, Stage.DATA, 250),
        (ALICE, Status.DELIVERED, Stage.DATA, 250),
    ]
    first, _, second = result.recipients
    assert first.reply == second.reply  # same text, same session/queue id
    session = transaction_session(dovecot)
    assert session.sent_texts().count(f"RCPT TO:<{ALICE}>".encode()) == 2
    after_data = [t for t in session.reply_texts() if t.startswith(b"250 2.0.0 <")]
    assert len(after_data) == 3  # one reply per RCPT, duplicates included
    # Dovecot delivers a duplicate recipient once.
    assert [dovecot.body_of(m) for m in dovecot.messages(ALICE)] == [crlf(MESSAGE)]
    assert [dovecot.body_of(m) for m in dovecot.messages(BOB)] == [crlf(MESSAGE)]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_several_messages_on_one_connection(dovecot: DovecotLMTP, runtime: str) -> None:
    """A reused Client: three transactions in one session (one LHLO), three stored copies."""
    messages = [b"Subject: message %d\r\n\r\nBody %d.\r\n" % (n, n) for n in range(3)]
    results = deliver_all(
        runtime,
        messages,
        SENDER,
        [ALICE],
        socket_path=str(dovecot.socket_path),
        timeout=TIMEOUT,
    )

    assert [outcomes(r) for r in results] == [[(ALICE, Status.DELIVERED, Stage.DATA, 250)]] * 3
    stored = sorted(dovecot.body_of(m) for m in dovecot.messages(ALICE))
    assert stored == sorted(messages)

    (session,) = raw_sessions(dovecot)
    texts = session.sent_texts()
    assert texts.count(b"LHLO localhost") == 1
    # 7-bit bytes: no BODY=8BITMIME.
    assert texts.count(f"MAIL FROM:<{SENDER}>".encode()) == 3
    assert [t for t in texts if t.startswith(b"BDAT")] == [
        f"BDAT {len(m)} LAST".encode() for m in messages
    ]
    assert texts[-1] == b"QUIT"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_starttls_refuses_a_certificate_from_another_ca(
    dovecot_tls: tuple[DovecotLMTP, trustme.CA], tmp_path: Path, runtime: str
) -> None:
    """The certificate really is verified: another CA's file makes the handshake fail and no
    MAIL is ever sent."""
    server, ca = dovecot_tls
    other_ca = write_ca(type(ca)(), tmp_path)
    with pytest.raises(TLSError):
        deliver(
            runtime,
            MESSAGE,
            SENDER,
            [ALICE],
            host=server.host,
            port=server.port,
            starttls=True,
            ssl_opts={"cafile": other_ca},
            timeout=TIMEOUT,
        )
    assert server.messages(ALICE) == []
    assert not any(b"MAIL" in t for s in raw_sessions(server) for t in s.sent_texts())


def test_starttls_on_the_unix_socket_checks_the_name(
    dovecot_tls: tuple[DovecotLMTP, trustme.CA], tmp_path: Path
) -> None:
    """Over the UNIX socket the server_hostname given is checked against the certificate."""
    server, ca = dovecot_tls
    with pytest.raises(TLSError):
        deliver(
            "blocking",
            MESSAGE,
            SENDER,
            [ALICE],
            socket_path=str(server.socket_path),
            starttls=True,
            ssl_opts={"cafile": write_ca(ca, tmp_path), "server_hostname": "mx.example.net"},
            timeout=TIMEOUT,
        )
    assert server.messages(ALICE) == []


def test_dovecot_version(dovecot: DovecotLMTP) -> None:
    """The peer these tests describe (the behaviours above were seen with 2.3.19)."""
    assert re.match(r"2\.3\.\d+", dovecot.version), dovecot.version
    assert re.fullmatch(rb"220 \S+ Dovecot( \(\w+\))? ready\.", dovecot.greeting), dovecot.greeting
