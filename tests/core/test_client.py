"""The client role (lmtp_core.ClientConnection), through its public API only.

Covers: the greeting and LHLO (refusals, capability parsing, never HELO/EHLO); what goes
out in one write with and without PIPELINING and CHUNKING, the body only after 354,
BDAT chunking and BDAT 0 LAST; LMTP's per-recipient outcomes paired by position (mixed
replies after the data, refusals at MAIL and RCPT, duplicates, nobody accepted, DATA
refused); the connection ending (end of file, abort, a failed write) or a 421 at every
point of a transaction, with the stage each unanswered recipient reached, and when the
end of data counts as written (UNKNOWN) or not (TEMPORARY); many transactions and QUIT;
STARTTLS (required, refused, response injection); misuse that raises and queues nothing
(addresses, lengths, parameter syntax, BODY values); what this server cannot take, which
is an outcome instead (PERMANENT at Stage.LOCAL with a reason, nothing written, the
connection reusable: SIZE, 8BITMIME, BINARYMIME and CHUNKING, NUL, SMTPUTF8, parameters
not offered; one recipient alone when only it needs what is missing; a body found
uncarriable while it streams settles and closes); hostile replies, UTF-8 reply text
(decoded, invalid UTF-8 replaced, C1 controls refused), and surplus replies (in the read
that brought the last reply due: no DATA outcome of that transaction stands; in a later
read: the result stands, and the next start_transaction() settles TEMPORARY and closes
without writing); the reason carried by every outcome without a reply; the transcript
(trace=True) and reusable; Phase and replies_received; and a sweep over reachable states
and API calls (works or LocalProtocolError, nothing else).

How it works: drive() is a scripted server. It takes the server's bytes (a list of
chunks released one per read, or a function of what the client wrote since the last
read), drives a ClientConnection as a driver would (write, read, feed the body on
Signal.NEED_BODY, start the next transaction on Ready), and records every event and
what the client had written (and replies_received and phase) at each read. When the
server has nothing more to say it ends as told: end of file, abort(), send_failed(),
or abort() before the last write. run_splits() feeds the server's bytes whole,
byte by byte and in random splits (tests/core/helpers.every_split) and asserts that all
give the same events and the same bytes written. The bytes come in segments that end
where the client goes idle (after LHLO, between transactions), and after each reply
without PIPELINING (stream_of()): no read hands the client a reply to a command it has
not sent yet, since a reply already there when the client goes idle is unsolicited.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmtp_core import (
    COMPILED,
    Capabilities,
    ClientConnection,
    ClientState,
    ConnectionClosed,
    Limits,
    LocalProtocolError,
    LongLines,
    MailFrom,
    Phase,
    RcptTo,
    Ready,
    RemoteProtocolError,
    Reply,
    Signal,
    Stage,
    StartTls,
    Status,
    TransactionResult,
)
from tests.core.helpers import every_split

# When an example fails, hypothesis's pytest plugin imports libcst to suggest a patch,
# and libcst's import warns (mypy_extensions.TypedDict is deprecated); with the
# project's filterwarnings = ["error"] that aborts the whole session with an
# INTERNALERROR instead of reporting the failure. Import it once here, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    with contextlib.suppress(ImportError):  # libcst may not be installed
        import hypothesis.extra._patching  # noqa: F401

NAME = "client.example"
SENDER = "sender@example.org"
A, B, C = "a@example.org", "b@example.org", "c@example.org"
GREETING = b"220 mx.example.org LMTP ready\r\n"
LHLO = b"LHLO client.example\r\n"
MAIL = b"MAIL FROM:<sender@example.org>\r\n"
DATA = b"DATA\r\n"
RSET = b"RSET\r\n"
QUIT = b"QUIT\r\n"
BODY = b"Subject: hi\r\n\r\nhello\r\n"

DEL, TMP, PRM, UNK = Status.DELIVERED, Status.TEMPORARY, Status.PERMANENT, Status.UNKNOWN
RC, DT, LC = Stage.RCPT, Stage.DATA, Stage.LOCAL

#: The reasons the core gives (RecipientResult.reason, ConnectionClosed.reason).
UNSOLICITED = "reply from the server that answers no command"
DISTRUSTED = "more replies came than were due: the pairing cannot be trusted"
NUL_REFUSED = "the message has NUL bytes, which only BODY=BINARYMIME can carry"
EIGHT_BIT_REFUSED = "the message has 8-bit bytes and the server did not offer 8BITMIME"
EIGHT_BIT_STREAMED = "the message has 8-bit bytes but the server did not offer 8BITMIME"
UTF8_SENDER = "the sender's address needs SMTPUTF8, which the server did not offer"
UTF8_RECIPIENT = "this address needs SMTPUTF8, which the server did not offer"
CLOSING = "the server is closing the connection"

Outcome = tuple[Status, int | None, Stage]


# ---- the scripted server ------------------------------------------------------------


def r(code: int, text: str = "ok") -> bytes:
    return f"{code} {text}\r\n".encode()


def lhlo(*extensions: str, name: str = "mx.example.org") -> bytes:
    lines = [name, *extensions]
    last = len(lines) - 1
    return "".join(
        f"250{'-' if i < last else ' '}{line}\r\n" for i, line in enumerate(lines)
    ).encode()


def hello(*extensions: str) -> bytes:
    return GREETING + lhlo(*extensions)


def rcpt(address: str, params: str = "") -> bytes:
    return f"RCPT TO:<{address}>{params}\r\n".encode()


def bdat(body: bytes, *, last: bool = True) -> bytes:
    return f"BDAT {len(body)}{' LAST' if last else ''}\r\n".encode() + body


@dataclass(frozen=True)
class Txn:
    recipients: Sequence[str | RcptTo]
    body: Sequence[bytes] = (BODY,)
    sender: str | MailFrom = SENDER
    size: int | None = None
    eight_bit: bool | None = None
    nul: bool | None = None


Server = Sequence[bytes] | Callable[[bytes], bytes | None]


@dataclass
class Run:
    conn: ClientConnection
    #: Every event next_event() returned other than a Signal, in order.
    events: list[object] = field(default_factory=list)
    #: What the client had written before each read, then what was left at the end.
    flushes: list[bytes] = field(default_factory=list)
    #: conn.replies_received and conn.phase at each read (before the bytes were fed).
    received: list[int] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    #: Server chunks never released (the run stopped first).
    leftover: list[bytes] = field(default_factory=list)

    @property
    def written(self) -> bytes:
        return b"".join(self.flushes)

    @property
    def results(self) -> list[TransactionResult]:
        return [e for e in self.events if isinstance(e, TransactionResult)]

    @property
    def result(self) -> TransactionResult:
        (result,) = self.results
        return result

    @property
    def closed(self) -> ConnectionClosed:
        last = self.events[-1]
        assert isinstance(last, ConnectionClosed), self.events
        return last


def client(**options: object) -> ClientConnection:
    options.setdefault("lhlo_name", NAME)
    return ClientConnection(**options)  # type: ignore[arg-type]


#: What the driver does when the server has nothing more to say, and its reason.
ENDS = {
    "eof": "the server closed the connection",
    "abort": "read timeout",
    "send_failed": "write failed",
    "abort_unwritten": "write timeout",
}


def drive(
    server: Server,
    *txns: Txn,
    then_quit: bool = False,
    end: str = "eof",
    body_end: str = "end",
    conn: ClientConnection | None = None,
    **options: object,
) -> Run:
    """Run a client against `server` until the last transaction's result (or QUIT's
    ConnectionClosed, or any ConnectionClosed). When the server has nothing more to
    say, `end` is "eof" (receive_eof), "abort" (abort("read timeout")), "send_failed"
    (the last write failed: send_failed("write failed")), "abort_unwritten" (the
    deadline passes before the driver writes what the client queued while reading the
    last bytes: abort("write timeout") before that data_to_send()) or "stop". When the
    body is all given, `body_end` is "end" (end_body()), "end_abort" (end_body(), then
    abort("write timeout") before the next data_to_send()) or "send_failed" (the write
    of the body so far failed: send_failed("write failed") instead of end_body())."""
    conn = conn if conn is not None else client(**options)
    run = Run(conn)
    pending = list(txns)
    body: list[bytes] = []
    chunks = None if callable(server) else list(server)
    out = bytearray()
    while True:
        out += conn.data_to_send()
        event = conn.next_event()
        if event is Signal.NEED_DATA:
            if end == "abort_unwritten" and chunks == []:
                conn.abort(ENDS[end])
                continue
            run.flushes.append(bytes(out + conn.data_to_send()))
            run.received.append(conn.replies_received)
            run.phases.append(conn.phase)
            out.clear()
            if chunks is not None:
                data = chunks.pop(0) if chunks else None
            else:
                assert callable(server)
                data = server(run.flushes[-1])
            if data is not None:
                conn.receive_data(data)
            elif end == "eof":
                conn.receive_eof()
            elif end == "abort":
                conn.abort(ENDS[end])
            elif end == "send_failed":
                conn.send_failed(ENDS[end])
            else:
                break
        elif event is Signal.NEED_BODY:
            if body:
                conn.send_body(body.pop(0))
            elif body_end == "send_failed":
                conn.send_failed("write failed")
            else:
                conn.end_body()
                if body_end == "end_abort":
                    conn.abort("write timeout")
        else:
            run.events.append(event)
            if isinstance(event, ConnectionClosed):
                break
            if isinstance(event, StartTls):
                conn.tls_established()
            elif conn.state is ClientState.READY:
                if pending:
                    txn = pending.pop(0)
                    conn.start_transaction(
                        txn.sender,
                        txn.recipients,
                        size=txn.size,
                        eight_bit=txn.eight_bit,
                        nul=txn.nul,
                    )
                    body = list(txn.body)
                elif then_quit:
                    conn.quit()
                    then_quit = False
                else:
                    break
    run.flushes.append(bytes(out) + conn.data_to_send())
    run.leftover = chunks or []
    return run


def norm(events: list[object]) -> list[object]:
    """Events made comparable: exceptions inside ConnectionClosed by type and text."""
    return [
        (e.reason, e.reply, type(e.error), str(e.error)) if isinstance(e, ConnectionClosed) else e
        for e in events
    ]


Segments = bytes | Sequence[bytes]


def splits(segments: Segments) -> Iterator[list[bytes]]:
    """The server's bytes whole, byte by byte and in random pieces, cut the same way in
    every segment and never across two. A server cannot answer what was not written
    yet, and the client takes bytes that arrived before it wrote what they would
    answer for a reply ahead of its command (it closes): so segments end where the
    client writes something a later reply answers (after the greeting and LHLO, after
    each reply without PIPELINING, after a BDAT chunk's reply when another chunk
    follows, after the reply that makes it send RSET, between transactions), and a
    segment is also cut after a 354, since the body goes out before anything more can
    be said."""
    parts = [piece for part in _segments(segments) for piece in _after_354(part)]
    ways = [list(every_split(part)) if len(part) > 1 else [[part]] * 5 for part in parts if part]
    for i in range(5):
        yield [chunk for way in ways for chunk in way[i]]


def _segments(segments: Segments) -> list[bytes]:
    return [segments] if isinstance(segments, bytes) else list(segments)


def _after_354(part: bytes) -> list[bytes]:
    """`part` cut after each 354 reply that something follows."""
    pieces, start = [], 0
    for line in part.splitlines(keepends=True):
        start += len(line)
        if line.startswith((b"354 ", b"354\r")) and start < len(part):
            pieces.append(part[:start])
            part, start = part[start:], 0
    return [*pieces, part]


def run_splits(segments: Segments, *txns: Txn, **kwargs: object) -> Run:
    """drive() with the server's bytes cut every way of splits(): all must agree."""
    runs = [drive(chunks, *txns, **kwargs) for chunks in splits(segments)]  # type: ignore[arg-type]
    first = runs[0]
    for other in runs[1:]:
        assert norm(other.events) == norm(first.events)
        assert other.written == first.written
    return first


def stream_of(exts: Sequence[str], *groups: Sequence[bytes]) -> list[bytes]:
    """hello(*exts), then the replies: each group as one segment with PIPELINING, each
    reply as its own without (a server answers a command only once it was sent)."""
    segments = [hello(*exts)]
    for group in groups:
        segments += [b"".join(group)] if "PIPELINING" in exts else list(group)
    return segments


def outcomes(result: TransactionResult) -> list[Outcome]:
    return [(x.status, x.reply.code if x.reply else None, x.stage) for x in result.recipients]


def reasons(result: TransactionResult) -> list[str | None]:
    return [x.reason for x in result.recipients]


def same_read(chunks: Sequence[bytes], end: int) -> bool:
    """Whether the byte at offset ``end`` of the stream came in the same read as the one
    before it (so it was already received when the reply ending there was read)."""
    offset = 0
    for chunk in chunks:
        offset += len(chunk)
        if offset >= end:
            return offset > end
    return False


def ready(*extensions: str, **options: object) -> ClientConnection:
    """A client that has read the greeting and LHLO reply, its output drained."""
    conn = client(**options)
    conn.receive_data(hello(*extensions))
    event = conn.next_event()
    assert isinstance(event, Ready), event
    conn.data_to_send()
    return conn


def settle(conn: ClientConnection) -> list[object]:
    """next_event() until a Signal (or ConnectionClosed): the events before it."""
    events: list[object] = []
    while True:
        event = conn.next_event()
        if isinstance(event, Signal):
            return events
        events.append(event)
        if isinstance(event, ConnectionClosed | StartTls) or conn.state is ClientState.READY:
            return events


def closed_after(run: Run) -> object:
    """The ConnectionClosed that ends `run`: already among its events, or the next
    event once the unreleased server bytes are fed (or what next_event() raised)."""
    if run.events and isinstance(run.events[-1], ConnectionClosed):
        return run.events[-1]
    for chunk in run.leftover:
        run.conn.receive_data(chunk)
    return event_or_error(run.conn)


def event_or_error(conn: ClientConnection) -> object:
    try:
        return conn.next_event()
    except Exception as exc:
        return exc


class FakeServer:
    """A function of what the client wrote: answers every complete command (MAIL 250,
    RCPT from `rcpt` codes, DATA 354 when someone was accepted, BDAT chunks from `bdat`
    codes, one final reply per accepted recipient from `final` codes)."""

    def __init__(
        self,
        *extensions: str,
        rcpt: Sequence[int] = (),
        final: Sequence[int] = (),
        bdat: Sequence[int] = (),
    ) -> None:
        self.caps = lhlo(*extensions)
        self.rcpt, self.final, self.bdat = list(rcpt), list(final), list(bdat)
        self.pending = b""
        self.started = False
        self.in_data = False
        self.accepted = 0
        self.bdat_sizes: list[tuple[int, bool]] = []
        self.message = b""  # BDAT payloads joined, or the raw DATA body

    def __call__(self, written: bytes) -> bytes | None:
        if not self.started:
            self.started = True
            return GREETING
        self.pending += written
        out = b""
        while (reply := self._step()) is not None:
            out += reply
        return out or None

    def _finals(self) -> bytes:
        codes = [self.final.pop(0) if self.final else 250 for _ in range(self.accepted)]
        return b"".join(r(code, "final") for code in codes)

    def _step(self) -> bytes | None:
        if self.in_data:
            if self.pending.startswith(b".\r\n"):
                end = 0
            else:
                end = self.pending.find(b"\r\n.\r\n")
                if end < 0:
                    return None
                end += 2
            self.message += self.pending[:end]
            self.pending = self.pending[end + 3 :]
            self.in_data = False
            return self._finals()
        cut = self.pending.find(b"\r\n")
        if cut < 0:
            return None
        words = self.pending[:cut].decode().split(" ")
        verb = words[0].upper()
        if verb == "BDAT":
            size, last = int(words[1]), words[-1] == "LAST"
            if len(self.pending) < cut + 2 + size:
                return None
            self.message += self.pending[cut + 2 : cut + 2 + size]
            self.pending = self.pending[cut + 2 + size :]
            self.bdat_sizes.append((size, last))
            if not last:
                return r(self.bdat.pop(0) if self.bdat else 250, "chunk")
            return self._finals() if self.accepted else r(503, "no valid recipients")
        self.pending = self.pending[cut + 2 :]
        if verb == "LHLO":
            return self.caps
        if verb == "MAIL":
            self.accepted = 0
            return r(250)
        if verb == "RCPT":
            code = self.rcpt.pop(0) if self.rcpt else 250
            self.accepted += code < 400
            return r(code)
        if verb == "DATA":
            self.in_data = bool(self.accepted)
            return r(354, "go") if self.accepted else r(503, "no valid recipients")
        if verb == "QUIT":
            return r(221, "bye")
        return r(250)


# ---- greeting, LHLO and capabilities ------------------------------------------------


def test_greeting_220_gets_lhlo_and_ready() -> None:
    run = drive([GREETING, lhlo("PIPELINING", "8BITMIME")])
    assert run.flushes == [b"", LHLO, b""]
    (event,) = run.events
    assert isinstance(event, Ready)
    assert event.capabilities == run.conn.capabilities
    assert event.capabilities.server == "mx.example.org"
    assert "PIPELINING" in event.capabilities and "8BITMIME" in event.capabilities
    assert run.conn.state is ClientState.READY
    assert b"HELO" not in run.written and b"EHLO" not in run.written


def test_greeting_and_lhlo_same_for_every_split() -> None:
    run = run_splits(hello("PIPELINING", "CHUNKING", "SIZE 100"))
    assert run.written == LHLO
    (event,) = run.events
    assert isinstance(event, Ready)
    assert event.capabilities.size == 100


@pytest.mark.parametrize(
    "greeting",
    [b"554 5.3.2 go away\r\n", b"421 4.3.2 shutting down\r\n", b"554-no\r\n554 really not\r\n"],
)
def test_greeting_refused_closes_with_that_reply(greeting: bytes) -> None:
    run = run_splits(greeting, Txn([A]))
    (closed,) = run.events
    assert isinstance(closed, ConnectionClosed)
    assert closed.reply is not None and closed.reply.code == int(greeting[:3])
    assert closed.error is None
    assert b"LHLO" not in run.written and b"MAIL" not in run.written
    assert run.conn.state is ClientState.CLOSED
    with pytest.raises(LocalProtocolError):
        run.conn.next_event()


@pytest.mark.parametrize("refusal", [b"500 5.5.1 what\r\n", b"421 4.3.2 bye\r\n", b"550 no\r\n"])
def test_lhlo_refused_closes(refusal: bytes) -> None:
    run = run_splits(GREETING + refusal, Txn([A]))
    (closed,) = run.events
    assert isinstance(closed, ConnectionClosed)
    assert closed.reply is not None and closed.reply.code == int(refusal[:3])
    assert run.written == LHLO
    assert run.conn.capabilities is None


def test_never_helo_or_ehlo_even_when_lhlo_is_refused() -> None:
    run = drive([GREETING, b"500 5.5.1 say EHLO\r\n"])
    assert b"HELO" not in run.written.upper() and b"EHLO" not in run.written.upper()
    assert isinstance(run.closed, ConnectionClosed)


def test_capabilities_from_reply() -> None:
    reply = Reply(
        250,
        None,
        "mx.example.org hello there\npipelining\nSize 1000\nXFOO bar  baz\n8bitmime"
        "\nbad_keyword!\n\nENHANCEDSTATUSCODES",
    )
    caps = Capabilities.from_reply(reply)
    assert caps.server == "mx.example.org"
    assert caps.extensions == (
        ("PIPELINING", ""),
        ("SIZE", "1000"),
        ("XFOO", "bar  baz"),
        ("8BITMIME", ""),
        ("ENHANCEDSTATUSCODES", ""),
    )
    assert "pipelining" in caps and "Pipelining" in caps
    assert caps.param("xfoo") == "bar  baz"
    assert caps.param("PIPELINING") == ""
    assert caps.param("CHUNKING") is None
    assert "CHUNKING" not in caps
    assert 42 not in caps
    assert caps.size == 1000


@pytest.mark.parametrize(
    ("line", "offered", "size"),
    [
        ("SIZE", True, None),
        ("SIZE 0", True, None),
        ("SIZE 1000", True, 1000),
        ("SIZE lots", True, None),
        ("PIPELINING", False, None),
    ],
)
def test_capabilities_size(line: str, offered: bool, size: int | None) -> None:
    caps = Capabilities.from_reply(Reply(250, None, f"mx\n{line}"))
    assert ("SIZE" in caps) is offered
    assert caps.size == size


@pytest.mark.parametrize(
    ("line", "rcptmax"),
    [
        ("LIMITS RCPTMAX=10", 10),
        ("LIMITS MAILMAX=5 RCPTMAX=20", 20),
        ("limits rcptmax=7", 7),
        ("LIMITS RCPTMAX=3 RCPTMAX=9", 3),  # the first one
        ("LIMITS RCPTMAX=0", None),  # 0 is no limit
        ("LIMITS RCPTMAX=x", None),
        ("LIMITS RCPTMAX=", None),
        ("LIMITS MAILMAX=5", None),
        ("LIMITS", None),
        ("PIPELINING", None),
    ],
)
def test_capabilities_rcptmax(line: str, rcptmax: int | None) -> None:
    # RFC 9422 LIMITS: the most recipients the server takes in one transaction.
    caps = Capabilities.from_reply(Reply(250, None, f"mx\n{line}"))
    assert caps.rcptmax == rcptmax


def test_address_checks_give_the_same_verdict_however_many_addresses_were_seen() -> None:
    # A delivery checks each address before connecting and again in
    # start_transaction(); whatever the client remembers, a verdict never changes.
    many = [f"user{i}@example.org" for i in range(5000)]
    ClientConnection.check_envelope(many[0], many)
    ClientConnection.check_envelope(many[-1], many[::-1])
    for bad in ["user1@", "a\r\n@example.org", "l" * 65 + "@example.org"]:
        with pytest.raises(LocalProtocolError):
            ClientConnection.check_envelope(SENDER, [bad])
        with pytest.raises(LocalProtocolError):
            ClientConnection.check_envelope(bad, [A])
    ClientConnection.check_envelope("", [A])  # the null sender, never a recipient
    with pytest.raises(LocalProtocolError):
        ClientConnection.check_envelope(SENDER, [""])


def test_lhlo_name_is_checked() -> None:
    with pytest.raises(LocalProtocolError):
        ClientConnection(lhlo_name="bad name\r\nMAIL FROM:<x@y>")
    conn = ClientConnection(lhlo_name="[192.0.2.1]")
    conn.receive_data(GREETING)
    assert conn.next_event() is Signal.NEED_DATA
    assert conn.data_to_send() == b"LHLO [192.0.2.1]\r\n"


# ---- what goes out in one write -----------------------------------------------------


def test_pipelining_sends_mail_rcpts_and_data_in_one_write() -> None:
    conn = ready("PIPELINING")
    conn.start_transaction(SENDER, [A, B, C])
    assert conn.data_to_send() == MAIL + rcpt(A) + rcpt(B) + rcpt(C) + DATA
    conn.receive_data(r(250) * 4)
    assert conn.next_event() is Signal.NEED_DATA  # no body before 354
    assert conn.data_to_send() == b""
    assert conn.phase is Phase.DATA_INIT
    conn.receive_data(r(354, "go"))
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(b".hidden\nline\r\n.")
    conn.end_body()
    assert conn.data_to_send() == b"..hidden\r\nline\r\n..\r\n.\r\n"
    assert conn.next_event() is Signal.NEED_DATA
    conn.receive_data(r(250) * 3)
    result = conn.next_event()
    assert isinstance(result, TransactionResult) and result.all_delivered


def test_pipelining_and_chunking_send_envelope_and_first_chunk_in_one_write() -> None:
    conn = ready("PIPELINING", "CHUNKING")
    conn.start_transaction(SENDER, [A, B])
    assert conn.data_to_send() == b""  # held for the first chunk
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(b"Subject: x\n\n.dot\n")
    assert conn.next_event() is Signal.NEED_BODY
    conn.end_body()
    assert conn.next_event() is Signal.NEED_DATA
    payload = b"Subject: x\r\n\r\n.dot\r\n"  # normalised, never dot-stuffed
    assert conn.data_to_send() == MAIL + rcpt(A) + rcpt(B) + bdat(payload)
    conn.receive_data(r(250) * 3 + r(250) + r(452))
    result = conn.next_event()
    assert isinstance(result, TransactionResult)
    assert outcomes(result) == [(DEL, 250, DT), (TMP, 452, DT)]


def test_without_pipelining_one_command_per_reply() -> None:
    server = FakeServer(rcpt=[250, 250], final=[250, 250])
    run = drive(server, Txn([A, B]))
    assert run.flushes == [b"", LHLO, MAIL, rcpt(A), rcpt(B), DATA, BODY + b".\r\n", b""]
    assert outcomes(run.result) == [(DEL, 250, DT), (DEL, 250, DT)]
    assert server.message == BODY


def test_chunking_without_pipelining_sends_bdat_after_the_last_rcpt_reply() -> None:
    server = FakeServer("CHUNKING")
    run = drive(server, Txn([A, B]))
    assert run.flushes == [b"", LHLO, MAIL, rcpt(A), rcpt(B), bdat(BODY), b""]
    assert run.result.all_delivered


def test_chunking_false_forces_data() -> None:
    server = FakeServer("PIPELINING", "CHUNKING")
    run = drive(server, Txn([A]), chunking=False)
    assert run.flushes == [b"", LHLO, MAIL + rcpt(A) + DATA, BODY + b".\r\n", b""]
    assert b"BDAT" not in run.written
    assert run.result.all_delivered


@pytest.mark.parametrize("pipelining", [True, False])
def test_large_body_goes_in_chunks_each_after_the_previous_reply(pipelining: bool) -> None:
    exts = ("PIPELINING", "CHUNKING") if pipelining else ("CHUNKING",)
    server = FakeServer(*exts)
    pieces = [b"0123456789" * 7 + b"\n"] * 3  # 3 lines of 70 + CRLF = 216 octets
    run = drive(server, Txn([A, B], body=pieces), limits=Limits(bdat_chunk=64))
    assert server.bdat_sizes == [(64, False), (64, False), (64, False), (24, True)]
    assert server.message == (b"0123456789" * 7 + b"\r\n") * 3
    # every read follows exactly one BDAT command: the next chunk waits for the reply
    chunk_reads = [f for f in run.flushes if b"BDAT" in f]
    assert [f.count(b"BDAT ") for f in chunk_reads] == [1, 1, 1, 1]
    if pipelining:
        assert chunk_reads[0].startswith(MAIL + rcpt(A) + rcpt(B) + b"BDAT 64\r\n")
    else:
        assert run.flushes[3:5] == [rcpt(A), rcpt(B)]
        assert chunk_reads[0].startswith(b"BDAT 64\r\n")
    assert run.result.all_delivered


def test_body_ending_at_a_chunk_boundary_ends_with_bdat_0_last() -> None:
    server = FakeServer("PIPELINING", "CHUNKING")
    body = b"x" * 62 + b"\r\n"
    run = drive(server, Txn([A], body=[body]), limits=Limits(bdat_chunk=64))
    assert server.bdat_sizes == [(64, False), (0, True)]
    assert run.flushes[-2] == b"BDAT 0 LAST\r\n"
    assert server.message == body
    assert run.result.all_delivered


def test_bdat_stream_same_for_every_split() -> None:
    stream = [hello("PIPELINING", "CHUNKING"), r(250) * 3 + r(250, "chunk"), r(250) + r(550)]
    body = [b"a" * 40 + b"\n", b"b" * 40]
    run = run_splits(stream, Txn([A, B], body=body), limits=Limits(bdat_chunk=64))
    payload = b"a" * 40 + b"\r\n" + b"b" * 40 + b"\r\n"
    assert run.written == (
        LHLO + MAIL + rcpt(A) + rcpt(B) + bdat(payload[:64], last=False) + bdat(payload[64:])
    )
    assert outcomes(run.result) == [(DEL, 250, DT), (PRM, 550, DT)]


def test_refused_bdat_chunk_fails_everyone_and_sends_no_more_chunks() -> None:
    server = FakeServer("PIPELINING", "CHUNKING", rcpt=[250, 550, 250], bdat=[250, 552])
    body = [b"y" * 300 + b"\n"]
    run = drive(server, Txn([A, B, C], body=body), limits=Limits(bdat_chunk=100))
    assert server.bdat_sizes == [(100, False), (100, False)]
    assert outcomes(run.result) == [(PRM, 552, DT), (PRM, 550, RC), (PRM, 552, DT)]
    assert run.written.endswith(b"BDAT 100\r\n" + b"y" * 100 + RSET)


def test_binarymime_passes_bytes_untouched_over_bdat() -> None:
    conn = ready("CHUNKING", "BINARYMIME", "PIPELINING", chunking=False)
    conn.start_transaction(MailFrom(SENDER, (("BODY", "BINARYMIME"),)), [A])
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(b"a\nb\x00\xff\r")
    conn.end_body()
    assert conn.next_event() is Signal.NEED_DATA
    line = b"MAIL FROM:<sender@example.org> BODY=BINARYMIME\r\n"
    assert conn.data_to_send() == line + rcpt(A) + bdat(b"a\nb\x00\xff\r")


def test_empty_body() -> None:
    run = drive(FakeServer("PIPELINING"), Txn([A], body=[]))
    assert run.flushes[-2] == b".\r\n"
    run = drive(FakeServer("PIPELINING", "CHUNKING"), Txn([A], body=[]))
    assert run.flushes[-2] == MAIL + rcpt(A) + b"BDAT 0 LAST\r\n"
    assert run.result.all_delivered


# ---- per-recipient outcomes ---------------------------------------------------------


@pytest.mark.parametrize("exts", [("PIPELINING",), (), ("PIPELINING", "CHUNKING"), ("CHUNKING",)])
def test_mixed_replies_after_data_paired_by_position(exts: tuple[str, ...]) -> None:
    # RCPT: a 250, b 550, c 250, d 450, e 250; after the data: a 250, c 452, e 552
    rcpts = [r(250), r(550), r(250), r(450), r(250)]
    data = [] if "CHUNKING" in exts else [r(354)]
    stream = stream_of(exts, [r(250), *rcpts, *data], [r(250) + r(452) + r(552)])
    run = run_splits(stream, Txn([A, B, C, "d@example.org", "e@example.org"]))
    result = run.result
    assert outcomes(result) == [
        (DEL, 250, DT),
        (PRM, 550, RC),
        (TMP, 452, DT),
        (TMP, 450, RC),
        (PRM, 552, DT),
    ]
    assert [x.recipient for x in result.recipients] == [
        A,
        B,
        C,
        "d@example.org",
        "e@example.org",
    ]
    assert isinstance(result.recipients, tuple)
    assert [x.recipient for x in result.delivered] == [A]
    assert [x.recipient for x in result.retry] == [C, "d@example.org"]
    assert [x.recipient for x in result.failed] == [B, "e@example.org"]
    assert not result.all_delivered
    assert reasons(result) == [None] * 5  # every outcome has its reply: no reason needed


def test_enhanced_codes_and_texts_reach_the_results() -> None:
    stream = [hello("PIPELINING"), r(250) + r(250) + r(354)]
    stream[1] += b"250-2.0.0 saved\r\n250 2.0.0 as 1234\r\n"
    run = run_splits(stream, Txn([A]))
    (x,) = run.result.recipients
    assert x.reply == Reply(250, "2.0.0", "saved\nas 1234")


def test_duplicate_recipients_get_separate_outcomes() -> None:
    stream = [hello("PIPELINING"), r(250) + r(250) + r(550) + r(250) + r(354) + r(250) + r(452)]
    run = run_splits(stream, Txn([A, A, A]))
    assert outcomes(run.result) == [(DEL, 250, DT), (PRM, 550, RC), (TMP, 452, DT)]
    assert [x.recipient for x in run.result.recipients] == [A, A, A]


@pytest.mark.parametrize("code", [550, 451])
def test_rejected_mail_fails_every_recipient_pipelined(code: int) -> None:
    stream = [hello("PIPELINING"), r(code, "sender refused") + r(503) * 2 + r(503)]
    run = run_splits(stream, Txn([A, B]))
    status = PRM if code == 550 else TMP
    assert outcomes(run.result) == [(status, code, RC)] * 2
    assert all(x.reply == Reply(code, None, "sender refused") for x in run.result.recipients)
    assert run.written == LHLO + MAIL + rcpt(A) + rcpt(B) + DATA  # no RSET, no body


def test_rejected_mail_without_pipelining_sends_no_rcpt() -> None:
    run = run_splits([hello(), r(550, "no")], Txn([A, B]))
    assert outcomes(run.result) == [(PRM, 550, RC)] * 2
    assert run.written == LHLO + MAIL
    assert run.conn.state is ClientState.READY


def test_no_recipient_accepted_pipelined_data_gets_503_then_rset() -> None:
    stream = [hello("PIPELINING"), r(250) + r(550) + r(450) + r(503), r(250)]  # then RSET
    run = run_splits(stream, Txn([A, B]))
    assert outcomes(run.result) == [(PRM, 550, RC), (TMP, 450, RC)]
    assert run.written == LHLO + MAIL + rcpt(A) + rcpt(B) + DATA + RSET


def test_no_recipient_accepted_without_pipelining_sends_only_rset() -> None:
    run = run_splits(stream_of((), [r(250), r(550), r(550), r(250)]), Txn([A, B]))
    assert outcomes(run.result) == [(PRM, 550, RC)] * 2
    assert run.written == LHLO + MAIL + rcpt(A) + rcpt(B) + RSET


def test_no_recipient_accepted_pipelined_bdat() -> None:
    stream = [hello("PIPELINING", "CHUNKING"), r(250) + r(550) + r(503), r(250)]  # then RSET
    run = run_splits(stream, Txn([A]))
    assert outcomes(run.result) == [(PRM, 550, RC)]
    assert run.written == LHLO + MAIL + rcpt(A) + bdat(BODY) + RSET


def test_no_recipient_accepted_bdat_chunk_refused() -> None:
    stream = [hello("PIPELINING", "CHUNKING"), r(250) + r(550) + r(503), r(250)]  # then RSET
    run = run_splits(stream, Txn([A], body=[b"z" * 100]), limits=Limits(bdat_chunk=64))
    assert outcomes(run.result) == [(PRM, 550, RC)]
    assert run.written.endswith(b"BDAT 64\r\n" + b"z" * 64 + RSET)


@pytest.mark.parametrize("pipelining", [True, False])
def test_data_refused_fails_every_accepted_recipient(pipelining: bool) -> None:
    exts = ("PIPELINING",) if pipelining else ()
    replies = [r(250), r(250), r(550), r(250), r(451, "try later")]
    stream = stream_of(exts, replies, [r(250)])  # RSET's reply once RSET was written
    run = run_splits(stream, Txn([A, B, C]))
    assert outcomes(run.result) == [(TMP, 451, DT), (PRM, 550, RC), (TMP, 451, DT)]
    assert run.written.endswith(DATA + RSET)
    assert b"hello" not in run.written  # no body


def test_data_answered_250_is_not_a_delivery() -> None:
    # DATA must get 354 or a refusal; a 250 comes before any body was sent, so nothing
    # can have been delivered (README: "never reports a recipient delivered that the
    # server did not confirm"; the confirmation comes after the data).
    stream = [hello("PIPELINING"), r(250) + r(250) + r(250, "sure") + r(250) + r(250)]
    run = run_splits(stream, Txn([A]))
    assert b"hello" not in run.written
    assert run.result.recipients[0].status is not DEL, run.result


def test_a_3xx_reply_after_the_data_is_not_a_delivery() -> None:
    stream = [hello("PIPELINING"), r(250) + r(250) + r(354) + r(354, "again?")]
    run = run_splits(stream, Txn([A]))
    assert run.result.recipients[0].status is not DEL, run.result


# ---- the connection ending at every point --------------------------------------------

# Recipients a, b, c; RCPT replies 250, 550, 250; after the data 250 (a), 452 (c).
_REPLIES_DATA = [GREETING, lhlo(), r(250), r(250), r(550), r(250), r(354), r(250), r(452)]
_REPLIES_BDAT = [GREETING, lhlo("CHUNKING"), r(250), r(250), r(550), r(250), r(250), r(452)]
_REPLIES_PIPE_BDAT = [GREETING, lhlo("PIPELINING", "CHUNKING"), *_REPLIES_BDAT[2:]]

# Without a reply the stage is where the recipient got to: DATA once its RCPT was
# accepted, else RCPT (its RCPT reply, or MAIL's, never came).
_TR: Outcome = (TMP, None, RC)
_TD: Outcome = (TMP, None, DT)
_UR: Outcome = (UNK, None, RC)
_UD: Outcome = (UNK, None, DT)
_B: Outcome = (PRM, 550, RC)
_D: Outcome = (DEL, 250, DT)
# Expected outcomes after k transaction replies (MAIL first) then the end.
_CUT_DATA = [[_TR, _TR, _TR], [_TR, _TR, _TR], [_TD, _TR, _TR], [_TD, _B, _TR]]
_CUT_DATA += [[_TD, _B, _TD]]
_CUT_DATA += [[_UD, _B, _UD], [_D, _B, _UD]]  # after 354 the whole body and dot went out
_CUT_BDAT = [*_CUT_DATA[:4], [_UD, _B, _UD], [_D, _B, _UD]]  # BDAT LAST after the RCPTs
# Pipelined BDAT: the envelope and the whole (small) message went out in one write, so
# a recipient without a reply may have been delivered: UNKNOWN, never TEMPORARY.
_CUT_PIPE_BDAT = [[_UR, _UR, _UR], [_UR, _UR, _UR], [_UD, _UR, _UR], [_UD, _B, _UR]]
_CUT_PIPE_BDAT += [[_UD, _B, _UD], [_D, _B, _UD]]


# (name, replies, outcomes, how many transaction replies come before the end of data
# goes out, whether the client queues it in next_event() as it reads them (a BDAT
# chunk) rather than in end_body(), which the driver writes before it reads again)
_CUT_MODES: list[tuple[str, list[bytes], list[list[Outcome]], int, bool]] = [
    ("data", _REPLIES_DATA, _CUT_DATA, 5, False),
    ("pipelined-data", [GREETING, lhlo("PIPELINING"), *_REPLIES_DATA[2:]], _CUT_DATA, 5, False),
    ("bdat", _REPLIES_BDAT, _CUT_BDAT, 4, True),
    ("pipelined-bdat", _REPLIES_PIPE_BDAT, _CUT_PIPE_BDAT, 0, True),
]


def _cut_cases() -> list[object]:
    """Every mode, every k and every end, with the server's segments: the hello (or
    what came of it) | the replies before the end of data goes out | the rest, one
    segment a reply without PIPELINING. send_failed says the last write failed: it is
    left out once a reply that comes only after the end of data was read (the server had
    it then), the last row of each table."""
    cases: list[object] = []
    for mode, replies, table, end_at, in_read in _CUT_MODES:
        exts = ("PIPELINING",) if b"PIPELINING" in replies[1] else ()
        for k in range(len(replies)):
            cut = min(k, 2 + end_at)
            segments = stream_of(exts, replies[2:cut], replies[cut:k])
            segments[0] = b"".join(replies[: min(k, 2)])
            expected = table[k - 2] if k >= 2 else None
            for end in ENDS:
                if end == "send_failed" and k - 2 == len(table) - 1:
                    continue
                unwritten = end == "abort_unwritten" and in_read and k - 2 == end_at
                param = (segments, expected, end, unwritten)
                cases.append(pytest.param(*param, id=f"{mode}-after-{k}-replies-{end}"))
    return cases


def _temporary(outcomes: list[Outcome]) -> list[Outcome]:
    """The outcomes with UNKNOWN made TEMPORARY: the end of data was never written."""
    return [(TMP if status is UNK else status, code, stage) for status, code, stage in outcomes]


@pytest.mark.parametrize(("segments", "expected", "end", "unwritten"), _cut_cases())
def test_connection_ends_after_k_replies(
    segments: list[bytes], expected: list[Outcome] | None, end: str, unwritten: bool
) -> None:
    run = run_splits(segments, Txn([A, B, C]), end=end)
    closed = run.closed
    assert closed.reply is None and closed.error is None
    assert closed.reason == ENDS[end]
    assert run.conn.state is ClientState.CLOSED
    if expected is None:  # before the session was open: nothing to settle
        assert len(run.events) == 1
        return
    assert isinstance(run.events[0], Ready)
    # send_failed: every write that carried the end of data was the last write, so the
    # failed one. abort_unwritten: the driver gave up before writing the end of data.
    if end == "send_failed" or unwritten:
        expected = _temporary(expected)
    assert outcomes(run.result) == expected
    assert run.events[1] is run.result and len(run.events) == 3
    # an outcome settled because the connection ended says how it ended
    assert reasons(run.result) == [ENDS[end] if code is None else None for _, code, _ in expected]


@pytest.mark.parametrize("end", ["eof", "abort", "send_failed"])
def test_connection_ends_during_the_body(end: str) -> None:
    conn = ready("PIPELINING")
    conn.start_transaction(SENDER, [A, B])
    conn.data_to_send()
    conn.receive_data(r(250) + r(250) + r(550) + r(354))
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(b"half a mess")
    if end == "eof":
        conn.receive_eof()
    elif end == "abort":
        conn.abort("write failed")
    else:
        conn.send_failed("write failed")
    result = conn.next_event()
    assert isinstance(result, TransactionResult)
    assert outcomes(result) == [_TD, _B]
    closed = conn.next_event()
    assert isinstance(closed, ConnectionClosed)
    assert end == "eof" or closed.reason == "write failed"
    assert reasons(result) == [closed.reason, None]
    with pytest.raises(LocalProtocolError):
        conn.send_body(b"more")
    with pytest.raises(LocalProtocolError):
        conn.next_event()


def test_connection_ends_with_a_full_chunk_waiting() -> None:
    conn = ready("PIPELINING", "CHUNKING", limits=Limits(bdat_chunk=64))
    conn.start_transaction(SENDER, [A])
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(b"w" * 200)
    assert conn.next_event() is Signal.NEED_DATA  # first chunk out, the next waits
    assert conn.data_to_send().endswith(b"BDAT 64\r\n" + b"w" * 64)
    conn.receive_data(r(250) * 2)
    assert conn.next_event() is Signal.NEED_DATA  # still waiting for the chunk's reply
    conn.receive_eof()
    assert outcomes(conn.next_event()) == [_TD]  # type: ignore[arg-type]
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_eof_and_abort_when_idle_or_closed() -> None:
    conn = ready()
    conn.receive_eof()
    closed = conn.next_event()
    assert isinstance(closed, ConnectionClosed) and closed.reason
    conn.receive_eof()  # no effect once closed
    conn.abort("again")
    conn.receive_data(r(250))
    assert conn.state is ClientState.CLOSED
    assert conn.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        conn.next_event()


# ---- a failed write, and when the end of data counts as written ---------------------


# Recipients a, b, c, each way the end of data goes out: the transaction's replies
# before it goes out, those after it (with pipelined BDAT, the envelope's: c's never
# comes), and the outcomes once it was written and nothing more came.
_ENVELOPE = [r(250), r(250), r(550), r(250)]  # MAIL, RCPT a, b, c
_END_MODES = {
    "data": ((), [*_ENVELOPE, r(354)], [], [_UD, _B, _UD]),
    "pipelined-data": (("PIPELINING",), [*_ENVELOPE, r(354)], [], [_UD, _B, _UD]),
    "bdat": (("CHUNKING",), _ENVELOPE, [], [_UD, _B, _UD]),
    "pipelined-bdat": (("PIPELINING", "CHUNKING"), [], _ENVELOPE[:3], [_UD, _B, _UR]),
}
_END_IDS = list(_END_MODES)
_END_PARAMS = list(_END_MODES.values())
_END_EXTS = [exts for exts, *_ in _END_PARAMS]


def _end_of_data(write: bytes) -> bool:
    return write.endswith(b"\r\n.\r\n") or b" LAST\r\n" in write


@pytest.mark.parametrize("end", ["send_failed", "abort"])
@pytest.mark.parametrize(("exts", "before", "after", "written"), _END_PARAMS, ids=_END_IDS)
def test_a_failed_write_that_carried_the_end_of_data_is_temporary(
    exts: tuple[str, ...],
    before: list[bytes],
    after: list[bytes],
    written: list[Outcome],
    end: str,
) -> None:
    """send_failed(): the last write, which held the final dot or BDAT LAST, failed, so
    the server cannot have the message: TEMPORARY. abort() after that write: UNKNOWN."""
    run = run_splits(stream_of(exts, before, after), Txn([A, B, C]), end=end)
    writes = [f for f in run.flushes[:-1] if f]
    assert _end_of_data(writes[-1]), writes
    assert run.flushes[-1] == b""
    assert run.closed.reason == ENDS[end]
    assert outcomes(run.result) == (_temporary(written) if end == "send_failed" else written)


@pytest.mark.parametrize("exts", _END_EXTS, ids=_END_IDS)
def test_a_failed_write_before_the_end_of_data_is_temporary(exts: tuple[str, ...]) -> None:
    """send_failed() for a write that did not carry the end of data: TEMPORARY, and the
    end of data is never queued. With DATA the body's last write fails before
    end_body(); with BDAT the second of three chunks fails."""
    if "CHUNKING" in exts:
        stream = stream_of(exts, [*_ENVELOPE, r(250, "chunk")])
        kwargs: dict[str, object] = {"end": "send_failed", "limits": Limits(bdat_chunk=64)}
        body = [b"x" * 148 + b"\n"]
    else:
        stream = stream_of(exts, [*_ENVELOPE, r(354)])
        kwargs = {"body_end": "send_failed"}
        body = [BODY]
    run = run_splits(stream, Txn([A, B, C], body=body), **kwargs)
    writes = [f for f in run.flushes if f]
    assert not any(_end_of_data(f) for f in writes), writes
    if "CHUNKING" in exts:  # the second chunk was the last write
        assert run.written.count(b"BDAT ") == 2
        assert writes[-1].endswith(b"BDAT 64\r\n" + b"x" * 64)
    else:
        assert writes[-1].endswith(BODY)
    assert run.closed.reason == "write failed"
    assert outcomes(run.result) == [_TD, _B, _TD]


@pytest.mark.parametrize(("exts", "before", "after", "written"), _END_PARAMS, ids=_END_IDS)
def test_abort_after_end_body_before_the_end_is_handed_out_is_temporary(
    exts: tuple[str, ...], before: list[bytes], after: list[bytes], written: list[Outcome]
) -> None:
    """The end of data counts as written only once data_to_send() handed it out. With
    DATA, end_body() queues the final dot and abort() comes before the next
    data_to_send(). With BDAT, next_event() queues the LAST chunk after end_body(), and
    abort() comes before the data_to_send() that would hand it out. Nothing is handed
    out after."""
    stream = stream_of(exts, before)  # the replies after the end never come
    if "CHUNKING" in exts:
        run = run_splits(stream, Txn([A, B, C]), end="abort_unwritten")
    else:
        run = run_splits(stream, Txn([A, B, C]), body_end="end_abort", end="stop")
    assert run.closed.reason == "write timeout"
    assert not any(_end_of_data(f) for f in run.flushes), run.flushes
    if not before:  # pipelined BDAT: the envelope never went out either
        assert run.written == LHLO
        assert outcomes(run.result) == [_TR] * 3
    else:
        assert run.written.endswith(rcpt(C) if "CHUNKING" in exts else DATA + BODY)
        assert outcomes(run.result) == _temporary(written)


def test_the_end_of_data_counts_as_written_once_handed_out() -> None:
    # DATA: end_body() queues the dot, data_to_send() hands it out.
    for end in ["abort", "send_failed"]:
        for handed_out in [False, True]:
            conn = ready("PIPELINING")
            conn.start_transaction(SENDER, [A])
            conn.data_to_send()
            conn.receive_data(r(250) * 2 + r(354))
            assert conn.next_event() is Signal.NEED_BODY
            conn.send_body(BODY)
            conn.end_body()
            if handed_out:
                assert conn.data_to_send() == BODY + b".\r\n"
                assert conn.data_to_send() == b""  # an empty result is no write
                assert conn.next_event() is Signal.NEED_DATA
            getattr(conn, end)("gone")
            result = conn.next_event()
            assert isinstance(result, TransactionResult)
            unknown = handed_out and end == "abort"
            assert outcomes(result) == [_UD if unknown else _TD], (end, handed_out)
            assert isinstance(conn.next_event(), ConnectionClosed)


def test_send_failed_after_connection_closed_changes_nothing() -> None:
    stream = [hello("PIPELINING"), r(250) * 2 + r(550) + r(250) + r(354)]
    for chunks in splits(stream):
        run = drive(chunks, Txn([A, B, C]))  # the end of data went out, then end of file
        assert outcomes(run.result) == [_UD, _B, _UD]
        conn = run.conn
        count = conn.replies_received
        conn.send_failed("too late")
        conn.abort("too late")
        assert conn.state is ClientState.CLOSED
        assert conn.data_to_send() == b""
        assert conn.replies_received == count
        with pytest.raises(LocalProtocolError):
            conn.next_event()
        assert outcomes(run.result) == [_UD, _B, _UD]


def test_send_failed_with_no_transaction_just_closes() -> None:
    # Idle after a delivered transaction (whose dot was the last write), and idle at once.
    stream = [hello("PIPELINING"), r(250) * 2 + r(354) + r(250)]
    for chunks in splits(stream):
        run = drive(chunks, Txn([A]), end="stop")
        assert outcomes(run.result) == [(DEL, 250, DT)]
        run.conn.send_failed("write failed")
        closed = run.conn.next_event()
        assert isinstance(closed, ConnectionClosed), closed
        assert (closed.reason, closed.reply, closed.error) == ("write failed", None, None)
    for conn in [ready(), client()]:
        conn.send_failed("write failed")
        closed = conn.next_event()
        assert isinstance(closed, ConnectionClosed), closed
        assert closed.reason == "write failed"
        assert conn.state is ClientState.CLOSED


@pytest.mark.parametrize("exts", [("PIPELINING",), ("PIPELINING", "CHUNKING")])
def test_nothing_is_handed_out_after_the_end_of_data_was_settled_unsent(
    exts: tuple[str, ...],
) -> None:
    conn = ready(*exts)
    conn.start_transaction(SENDER, [A])
    if "CHUNKING" not in exts:
        conn.data_to_send()
        conn.receive_data(r(250) * 2 + r(354))
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(BODY)
    conn.end_body()
    if "CHUNKING" in exts:
        assert conn.next_event() is Signal.NEED_DATA  # the LAST chunk is queued
    conn.abort("write timeout")
    result = conn.next_event()
    assert isinstance(result, TransactionResult)
    assert result.recipients[0].status is TMP
    assert conn.data_to_send() == b""


def test_an_end_of_data_never_handed_out_does_not_mark_the_next_transaction() -> None:
    conn = ready("PIPELINING")
    conn.start_transaction(SENDER, [A])
    conn.data_to_send()
    conn.receive_data(r(250) * 2 + r(354))
    assert conn.next_event() is Signal.NEED_BODY
    conn.end_body()  # the dot is queued, and the driver has not written it yet ...
    conn.receive_data(r(250))  # ... when the (hostile) server answers
    assert isinstance(conn.next_event(), TransactionResult)
    conn.start_transaction(SENDER, [B])
    assert conn.phase is Phase.MAIL
    assert conn.data_to_send().endswith(MAIL + rcpt(B) + DATA)
    conn.abort("gone")  # B's end of data was never even queued
    result = conn.next_event()
    assert isinstance(result, TransactionResult)
    assert outcomes(result) == [_TR]


# 421 mid-transaction (no pipelining): (replies before the 421, MAIL's first; outcomes)
_421_CASES = [
    ([], [(TMP, 421, RC)] * 3),  # to MAIL
    ([r(250)], [(TMP, 421, RC), _TR, _TR]),  # to RCPT a
    ([r(250), r(250)], [_TD, (TMP, 421, RC), _TR]),  # to RCPT b
    ([r(250), r(250), r(550)], [_TD, _B, (TMP, 421, RC)]),  # to RCPT c
    ([r(250), r(250), r(550), r(250)], [(TMP, 421, DT), _B, (TMP, 421, DT)]),  # to DATA
    ([r(250), r(250), r(550), r(250), r(354)], [(TMP, 421, DT), _B, _UD]),  # final a
    ([r(250), r(250), r(550), r(250), r(354), r(250)], [_D, _B, (TMP, 421, DT)]),  # final c
]
_421_IDS = ["mail", "rcpt-a", "rcpt-b", "rcpt-c", "data", "final-a", "final-c"]


@pytest.mark.parametrize("exts", [(), ("PIPELINING",)], ids=["lockstep", "pipelined"])
@pytest.mark.parametrize(("before", "expected"), _421_CASES, ids=_421_IDS)
def test_421_settles_and_closes(
    before: list[bytes], expected: list[Outcome], exts: tuple[str, ...]
) -> None:
    run = run_splits(stream_of(exts, [*before, r(421, "bye")]), Txn([A, B, C]), end="stop")
    assert outcomes(run.result) == expected
    assert run.closed.reply == Reply(421, None, "bye")
    assert run.closed.reason == CLOSING
    assert run.conn.state is ClientState.CLOSED
    # the 421 is the reply of the one it answers; the others never got one
    assert reasons(run.result) == [CLOSING if code is None else None for _, code, _ in expected]


@pytest.mark.parametrize(("before", "expected"), _421_CASES, ids=_421_IDS)
def test_nothing_is_written_after_a_421(before: list[bytes], expected: list[Outcome]) -> None:
    # The server said it is closing the channel (RFC 5321 3.8, 4.2.3): the client
    # settles as if the connection were lost, so it should not go on writing the next
    # RCPT, DATA or RSET after the 421.
    run = drive([GREETING, lhlo(), *before, r(421, "bye")], Txn([A, B, C]), end="stop")
    assert isinstance(run.closed, ConnectionClosed)
    assert run.flushes[-1] == b""


def test_421_to_bdat_last_when_nobody_was_accepted() -> None:
    # The 421 answers the chunk (no recipient is waiting for a reply after the data).
    stream = [hello("PIPELINING", "CHUNKING"), r(250) + r(550) + r(421, "bye")]
    run = run_splits(stream, Txn([A]), end="stop")
    assert outcomes(run.result) == [_B]
    assert run.closed.reply == Reply(421, None, "bye")
    assert run.written == LHLO + MAIL + rcpt(A) + bdat(BODY)  # no RSET after a 421
    assert run.conn.replies_received == 5


def test_421_to_rset_closes() -> None:
    run = drive([hello(), r(250), r(550), r(421, "bye")], Txn([A]), end="stop")
    assert outcomes(run.result) == [_B]
    assert run.written.endswith(RSET)
    event = closed_after(run)
    assert isinstance(event, ConnectionClosed), event


# ---- many transactions, QUIT --------------------------------------------------------


def test_many_transactions_each_get_their_own_replies() -> None:
    stream = [
        hello("PIPELINING"),
        r(250) + r(250) + r(250) + r(354) + r(250) + r(550, "full"),  # a, b
        r(250) + r(450) + r(503),  # c refused: then RSET
        r(250, "reset"),
        r(250) + r(250) + r(354) + r(250, "third"),  # a
        r(221, "bye"),
    ]
    txns = [Txn([A, B]), Txn([C]), Txn([A], body=[b"third\n"])]
    run = run_splits(stream, *txns, then_quit=True)
    first, second, third = run.results
    assert outcomes(first) == [(DEL, 250, DT), (PRM, 550, DT)]
    assert outcomes(second) == [(TMP, 450, RC)]
    assert outcomes(third) == [(DEL, 250, DT)]
    assert third.recipients[0].reply == Reply(250, None, "third")
    envelope = MAIL + rcpt(A) + DATA
    assert run.written == (
        LHLO
        + MAIL
        + rcpt(A)
        + rcpt(B)
        + DATA
        + BODY
        + b".\r\n"
        + MAIL
        + rcpt(C)
        + DATA
        + RSET
        + envelope
        + b"third\r\n.\r\n"
        + QUIT
    )
    assert run.closed.reason == "quit"
    assert run.closed.reply == Reply(221, None, "bye")


def test_quit_then_eof() -> None:
    run = drive([hello()], then_quit=True)
    assert run.written == LHLO + QUIT
    assert isinstance(run.closed, ConnectionClosed)
    assert run.conn.state is ClientState.CLOSED


def test_no_command_after_quit() -> None:
    conn = ready("PIPELINING")
    assert conn.reusable
    conn.quit()
    assert conn.data_to_send() == QUIT
    assert conn.phase is Phase.COMMAND
    assert not conn.reusable
    with pytest.raises(LocalProtocolError):
        conn.quit()
    with pytest.raises(LocalProtocolError):
        conn.start_transaction(SENDER, [A])
    assert conn.data_to_send() == b""


def test_quit_outside_ready_raises() -> None:
    conn = client()
    with pytest.raises(LocalProtocolError):
        conn.quit()
    conn = ready()
    conn.start_transaction(SENDER, [A])
    conn.data_to_send()
    with pytest.raises(LocalProtocolError):
        conn.quit()
    assert conn.data_to_send() == b""


# ---- STARTTLS -----------------------------------------------------------------------


def test_starttls_not_offered_quits_before_any_mail() -> None:
    run = run_splits(hello("PIPELINING"), Txn([A]), require_starttls=True)
    assert run.written == LHLO + QUIT
    (closed,) = run.events
    assert isinstance(closed, ConnectionClosed) and "STARTTLS" in closed.reason


def test_starttls_refused_quits() -> None:
    stream = [hello("STARTTLS"), r(454, "TLS not available")]
    run = run_splits(stream, Txn([A]), require_starttls=True)
    assert run.written == LHLO + b"STARTTLS\r\n" + QUIT
    (closed,) = run.events
    assert isinstance(closed, ConnectionClosed)
    assert closed.reply == Reply(454, None, "TLS not available")


def test_starttls_not_used_unless_required() -> None:
    run = drive(FakeServer("STARTTLS", "PIPELINING"), Txn([A]))
    assert b"STARTTLS" not in run.written
    assert run.result.all_delivered


def test_starttls_then_fresh_lhlo_and_capabilities() -> None:
    # The 220 ends a read (what follows it in the same read is an injection, below).
    before = hello("STARTTLS") + r(220, "go ahead")
    after = [lhlo("PIPELINING", "SIZE 500", name="mx.secure"), r(250) + r(250) + r(354) + r(250)]
    run = run_splits([before, *after], Txn([A]), require_starttls=True)
    assert run.written.startswith(LHLO + b"STARTTLS\r\n" + LHLO + MAIL + rcpt(A) + DATA)
    lockstep = drive(
        [GREETING, lhlo("STARTTLS"), r(220, "go"), *after], Txn([A]), require_starttls=True
    )
    assert lockstep.flushes[:4] == [b"", LHLO, b"STARTTLS\r\n", LHLO]
    assert isinstance(run.events[0], StartTls)
    ready_event = run.events[1]
    assert isinstance(ready_event, Ready)
    assert ready_event.capabilities.server == "mx.secure"
    assert ready_event.capabilities.size == 500
    assert "STARTTLS" not in ready_event.capabilities
    assert run.result.all_delivered


def test_starttls_handshake_state() -> None:
    conn = client(require_starttls=True)
    conn.receive_data(hello("STARTTLS"))
    assert conn.next_event() is Signal.NEED_DATA
    assert conn.phase is Phase.STARTTLS
    assert conn.data_to_send() == LHLO + b"STARTTLS\r\n"
    conn.receive_data(r(220, "go"))
    assert isinstance(conn.next_event(), StartTls)
    assert conn.state is ClientState.TLS_HANDSHAKE
    conn.receive_data(b"")  # allowed, changes nothing
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"250 early\r\n")
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.start_transaction(SENDER, [A])
    assert conn.state is ClientState.TLS_HANDSHAKE
    assert conn.data_to_send() == b""
    conn.tls_established()
    assert conn.capabilities is None  # forgotten until the new LHLO reply
    assert conn.data_to_send() == LHLO
    assert conn.phase is Phase.LHLO
    with pytest.raises(LocalProtocolError):
        conn.tls_established()
    conn.receive_data(lhlo("STARTTLS"))
    assert isinstance(conn.next_event(), Ready)
    assert conn.data_to_send() == b""  # no second STARTTLS


@pytest.mark.parametrize("injected", [b"250 injected\r\n", b"2", b"250-a\r\n"])
def test_starttls_response_injection_closes(injected: bytes) -> None:
    before = hello("STARTTLS")
    for pre in every_split(before):
        run = drive([*pre, b"220 go\r\n" + injected], Txn([A]), require_starttls=True)
        (closed,) = run.events
        assert isinstance(closed, ConnectionClosed)
        assert isinstance(closed.error, RemoteProtocolError)
        assert run.written == LHLO + b"STARTTLS\r\n"
        assert run.conn.state is ClientState.CLOSED


def test_starttls_injection_split_after_the_220_is_refused_by_receive_data() -> None:
    conn = client(require_starttls=True)
    conn.receive_data(hello("STARTTLS") + b"22")
    assert conn.next_event() is Signal.NEED_DATA
    conn.receive_data(b"0 go\r\n")
    assert isinstance(conn.next_event(), StartTls)
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"250 injected\r\n")


# ---- local validation ---------------------------------------------------------------

_ALL = ("PIPELINING", "SIZE 1000", "8BITMIME", "SMTPUTF8", "DSN", "CHUNKING", "BINARYMIME")

_LOCAL_64 = "l" * 64
_DOMAIN_189 = "d" * 63 + "." + "d" * 63 + "." + "d" * 61  # 64 + 1 + 189 = 254 octets


def _refused(exts: Sequence[str], call: Callable[[ClientConnection], None]) -> None:
    """Misuse: `call` raises LocalProtocolError, queues nothing (no event either) and
    leaves the client READY and usable."""
    conn = ready(*exts, "PIPELINING")
    with pytest.raises(LocalProtocolError):
        call(conn)
    assert conn.data_to_send() == b""
    assert conn.state is ClientState.READY
    assert conn.phase is Phase.COMMAND
    conn.start_transaction(SENDER, [A], eight_bit=False)
    assert conn.state is ClientState.TRANSACTION
    assert conn.phase is Phase.MAIL


def _refused_here(
    exts: Sequence[str],
    sender: str | MailFrom,
    recipients: Sequence[str | RcptTo],
    reason: str,
    **kwargs: object,
) -> TransactionResult:
    """What this server cannot take: start_transaction() does not raise, writes
    nothing, and the next event is the TransactionResult, every recipient PERMANENT at
    Stage.LOCAL with no reply and `reason`; the connection stays READY and the next
    transaction goes out as usual."""
    conn = ready(*exts, "PIPELINING")
    received = conn.replies_received
    conn.start_transaction(sender, recipients, **kwargs)  # type: ignore[arg-type]
    assert conn.data_to_send() == b""
    assert conn.state is ClientState.READY and conn.reusable
    assert conn.phase is Phase.COMMAND
    result = conn.next_event()
    assert isinstance(result, TransactionResult), result
    assert outcomes(result) == [(PRM, None, LC)] * len(recipients)
    assert reasons(result) == [reason] * len(recipients)
    addresses = [x.address if isinstance(x, RcptTo) else x for x in recipients]
    assert [x.recipient for x in result.recipients] == addresses
    assert result.failed == result.recipients and not result.retry
    assert conn.data_to_send() == b""
    assert conn.state is ClientState.READY and conn.replies_received == received
    with pytest.raises(LocalProtocolError):
        conn.next_event()  # nothing else is pending
    conn.start_transaction(SENDER, [A], eight_bit=False)
    assert conn.state is ClientState.TRANSACTION
    assert conn.phase is Phase.MAIL
    if "CHUNKING" not in exts:
        assert conn.data_to_send() == MAIL + rcpt(A) + DATA
    return result


@pytest.mark.parametrize(
    "address",
    [
        "a\r\n@example.org",
        "a@example.org\r\nRSET",
        "a\n@example.org",
        "a\r@example.org",
        "a\x00@example.org",
        "a b@example.org",
        "a@exa mple.org",
        "<a@example.org>",
        "a@example.org>",
        "a>@example.org",
        "a@example.org> SIZE=1",
        "a<@example.org",
        "example.org",
        "",
        "a@",
        "@example.org",
        "a@@example.org",
        "a@example..org",
        "a@-example.org",
        "a\t@example.org",
        "l" * 65 + "@example.org",
        _LOCAL_64 + "@" + _DOMAIN_189 + "d",
        "a@" + ("d" * 63 + ".") * 4 + "org",  # domain over 255
    ],
)
def test_invalid_recipient_or_sender_address_is_refused(address: str) -> None:
    _refused(_ALL, lambda conn: conn.start_transaction(SENDER, [A, address]))
    if address:  # "" is the null sender
        _refused(_ALL, lambda conn: conn.start_transaction(address, [A]))


def test_address_length_limits_are_inclusive() -> None:
    longest = _LOCAL_64 + "@" + _DOMAIN_189
    assert len(longest) == 254  # + "<>" = 256, RFC 5321 4.5.3.1.3
    conn = ready("PIPELINING")
    conn.start_transaction(longest, [longest, '"quoted local"@[192.0.2.1]'])
    lines = conn.data_to_send().split(b"\r\n")
    assert lines[0] == f"MAIL FROM:<{longest}>".encode()
    assert lines[2] == b'RCPT TO:<"quoted local"@[192.0.2.1]>'


def test_null_sender() -> None:
    conn = ready("PIPELINING")
    conn.start_transaction("", [A])
    assert conn.data_to_send() == b"MAIL FROM:<>\r\n" + rcpt(A) + DATA


def test_non_ascii_address_needs_smtputf8() -> None:
    # A sender that needs SMTPUTF8 makes the whole message uncarriable to this server;
    # a recipient that needs it is refused alone (here the only one: nothing to send).
    _refused_here(("8BITMIME",), "ü@example.org", [A, B], UTF8_SENDER)
    _refused_here(("8BITMIME",), SENDER, ["用户@例子.广告"], UTF8_RECIPIENT)
    _refused_here(("8BITMIME",), SENDER, ["用户@例子.广告", "ü@example.org"], UTF8_RECIPIENT)
    conn = ready("PIPELINING", "SMTPUTF8")
    conn.start_transaction(SENDER, [A, "用户@例子.广告"])
    expected = MAIL[:-2] + b" SMTPUTF8\r\n" + rcpt(A) + "RCPT TO:<用户@例子.广告>\r\n".encode()
    assert conn.data_to_send() == expected + DATA


@pytest.mark.parametrize("address", ["\ud800@example.org", "a@\udfff.example"])
def test_lone_surrogate_in_address_is_a_local_protocol_error(address: str) -> None:
    _refused(("SMTPUTF8",), lambda conn: conn.start_transaction(address, [A]))
    _refused(("SMTPUTF8",), lambda conn: conn.start_transaction(SENDER, [address]))


def test_lone_surrogate_in_parameter_value_is_a_local_protocol_error() -> None:
    mail = MailFrom(SENDER, (("ENVID", "\ud800"),))
    _refused(("DSN", "SMTPUTF8"), lambda conn: conn.start_transaction(mail, [A]))


def _needs(key: str, extension: str) -> str:
    return f"parameter {key} needs {extension}, which the server did not offer"


@pytest.mark.parametrize(
    ("sender", "recipient", "reason"),
    [
        (MailFrom(SENDER, (("SIZE", "100"),)), A, _needs("SIZE", "SIZE")),
        (MailFrom(SENDER, (("BODY", "8BITMIME"),)), A, _needs("BODY", "8BITMIME")),
        (MailFrom(SENDER, (("BODY", "BINARYMIME"),)), A, _needs("BODY", "BINARYMIME")),
        (MailFrom(SENDER, (("RET", "HDRS"),)), A, _needs("RET", "DSN")),
        (MailFrom(SENDER, (("ENVID", "abc"),)), A, _needs("ENVID", "DSN")),
        (MailFrom(SENDER, (("SMTPUTF8", None),)), A, _needs("SMTPUTF8", "SMTPUTF8")),
        (MailFrom(SENDER, (("XFOO", None),)), A, _needs("XFOO", "XFOO")),
        (MailFrom(SENDER, (("xfoo", None),)), A, _needs("xfoo", "XFOO")),
        (SENDER, RcptTo(A, (("NOTIFY", "NEVER"),)), _needs("NOTIFY", "DSN")),
        (SENDER, RcptTo(A, (("ORCPT", "rfc822;a@example.org"),)), _needs("ORCPT", "DSN")),
        (SENDER, RcptTo(A, (("XFOO", "1"),)), _needs("XFOO", "XFOO")),
    ],
)
def test_parameters_not_advertised_are_refused(
    sender: str | MailFrom, recipient: str | RcptTo, reason: str
) -> None:
    # Not offered: this server cannot take it. A MAIL parameter refuses the message
    # (every recipient), a RCPT parameter only its recipient.
    _refused_here(("ENHANCEDSTATUSCODES",), sender, [recipient], reason)
    if isinstance(sender, MailFrom):
        _refused_here(("ENHANCEDSTATUSCODES",), sender, [recipient, B, C], reason)


@pytest.mark.parametrize("exts", [("PIPELINING",), ()], ids=["pipelined", "lockstep"])
def test_a_recipient_with_a_parameter_not_offered_is_refused_alone(exts: tuple[str, ...]) -> None:
    notify = RcptTo(B, (("NOTIFY", "NEVER"),))
    stream = stream_of(exts, [r(250), r(250), r(450), r(354)], [r(250, "saved")])
    run = run_splits(stream, Txn([A, notify, C]))
    assert outcomes(run.result) == [(DEL, 250, DT), (PRM, None, LC), (TMP, 450, RC)]
    assert reasons(run.result) == [None, _needs("NOTIFY", "DSN"), None]
    assert run.written == LHLO + MAIL + rcpt(A) + rcpt(C) + DATA + BODY + b".\r\n"


def test_advertised_parameters_are_sent() -> None:
    conn = ready("PIPELINING", "DSN", "XFOO")
    mail = MailFrom(SENDER, (("RET", "HDRS"), ("envid", "QQ314159"), ("XFOO", None)))
    notify = RcptTo(A, (("NOTIFY", "SUCCESS,FAILURE"), ("ORCPT", "rfc822;a@example.org")))
    conn.start_transaction(mail, [notify, RcptTo(B, (("xfoo", "1"),))])
    assert conn.data_to_send() == (
        b"MAIL FROM:<sender@example.org> RET=HDRS ENVID=QQ314159 XFOO\r\n"
        + rcpt(A, " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@example.org")
        + rcpt(B, " xfoo=1")
        + DATA
    )


@pytest.mark.parametrize(
    "param",
    [
        ("ENVID", "a b"),
        ("ENVID", "a=b"),
        ("ENVID", "a\r\nRSET"),
        ("ENVID", "a\nb"),
        ("ENVID", "a\x00"),
        ("ENVID", ""),
        ("X FOO", None),
        ("-XFOO", None),
        ("X=Y", None),
        ("X\r\nRSET", None),
        ("", None),
    ],
)
def test_malformed_parameters_are_refused(param: tuple[str, str | None]) -> None:
    mail = MailFrom(SENDER, (param,))
    _refused(("DSN", "XFOO"), lambda conn: conn.start_transaction(mail, [A]))
    rcpt_to = RcptTo(A, (param,))
    _refused(("DSN", "XFOO"), lambda conn: conn.start_transaction(SENDER, [rcpt_to]))


@pytest.mark.parametrize("keyword", ["BODY", "SIZE"])
def test_parameter_that_needs_a_value_is_refused_without_one(keyword: str) -> None:
    # RFC 1870 and 6152: SIZE=n and BODY=7BIT|8BITMIME; a bare "BODY" or "SIZE" is a
    # syntax error the server would refuse.
    mail = MailFrom(SENDER, ((keyword, None),))
    _refused(("8BITMIME", "SIZE"), lambda conn: conn.start_transaction(mail, [A]))


def test_unknown_body_type_is_refused() -> None:
    mail = MailFrom(SENDER, (("BODY", "9BITMIME"),))
    _refused(("8BITMIME",), lambda conn: conn.start_transaction(mail, [A]))


def test_binarymime_needs_chunking() -> None:
    mail = MailFrom(SENDER, (("BODY", "BINARYMIME"),))
    reason = "BODY=BINARYMIME needs CHUNKING, which the server did not offer"
    _refused_here(("BINARYMIME",), mail, [A, B], reason)
    _refused_here(("BINARYMIME",), mail, [A], reason, nul=True, eight_bit=True)


@pytest.mark.parametrize(
    ("exts", "size", "suffix"),
    [
        (("SIZE 1000",), 1000, b" SIZE=1000"),
        (("SIZE",), 10**9, b" SIZE=1000000000"),
        (("SIZE 0",), 10**9, b" SIZE=1000000000"),
        (("SIZE 1000",), None, b""),
        ((), 1000, b""),
        (("8BITMIME",), None, b" BODY=8BITMIME"),
        (("8BITMIME", "SIZE 50"), 20, b" BODY=8BITMIME SIZE=20"),
        (("8BITMIME", "SIZE 50"), 50, b" BODY=8BITMIME SIZE=50"),  # the limit is inclusive
    ],
)
def test_size_and_body_parameters(exts: tuple[str, ...], size: int | None, suffix: bytes) -> None:
    conn = ready("PIPELINING", *exts)
    conn.start_transaction(SENDER, [A], size=size)
    assert conn.data_to_send() == MAIL[:-2] + suffix + b"\r\n" + rcpt(A) + DATA


def test_size_over_the_server_limit_is_refused() -> None:
    reason = "the message (1001 octets) is over the server's SIZE limit (1000)"
    _refused_here(("SIZE 1000",), SENDER, [A, B, C], reason, size=1001)
    _refused_here(("SIZE 1000", "SMTPUTF8"), SENDER, ["ü@example.org"], reason, size=1001)


@pytest.mark.parametrize(
    "exts", [("PIPELINING",), (), ("PIPELINING", "CHUNKING")], ids=["pipelined", "lockstep", "bdat"]
)
def test_over_size_writes_nothing_and_the_connection_carries_the_next_message(
    exts: tuple[str, ...],
) -> None:
    # The first message is over the server's SIZE: its result comes at once, nothing
    # is written for it, and the same connection delivers the next one.
    data = [] if "CHUNKING" in exts else [r(354)]
    stream = stream_of((*exts, "SIZE 1000"), [r(250), r(250), *data], [r(250, "saved")])
    run = run_splits(stream, Txn([A, B], size=1001), Txn([C], size=1000))
    first, second = run.results
    assert outcomes(first) == [(PRM, None, LC)] * 2
    assert (
        reasons(first) == ["the message (1001 octets) is over the server's SIZE limit (1000)"] * 2
    )
    assert outcomes(second) == [(DEL, 250, DT)]
    assert isinstance(run.events[0], Ready) and run.events[1:] == [first, second]
    envelope = MAIL[:-2] + b" SIZE=1000\r\n" + rcpt(C)
    body = bdat(BODY) if "CHUNKING" in exts else DATA + BODY + b".\r\n"
    assert run.written == LHLO + envelope + body
    assert run.conn.state is ClientState.READY


def test_eight_bit_flag() -> None:
    _refused_here((), SENDER, [A, B], EIGHT_BIT_REFUSED, eight_bit=True)
    _refused_here(("SIZE 10",), SENDER, [A], EIGHT_BIT_REFUSED, eight_bit=True, size=5)
    conn = ready("PIPELINING", "8BITMIME")
    conn.start_transaction(SENDER, [A], eight_bit=True)
    assert conn.data_to_send().startswith(MAIL[:-2] + b" BODY=8BITMIME\r\n")
    conn = ready("PIPELINING", "8BITMIME")
    conn.start_transaction(SENDER, [A], eight_bit=False)
    assert conn.data_to_send().startswith(MAIL)
    conn.receive_data(r(250) * 2 + r(354))
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(b"caf\xc3\xa9\r\n")  # no longer raises: an outcome
    assert conn.data_to_send() == b""
    result = conn.next_event()
    assert isinstance(result, TransactionResult)
    assert outcomes(result) == [(PRM, None, LC)]
    assert reasons(result) == [EIGHT_BIT_STREAMED]


def _refused_while_streaming(
    conn: ClientConnection, result: object, reason: str, replies_received: int
) -> None:
    """A body refused as it streamed: the result, every undecided recipient PERMANENT
    at Stage.LOCAL with `reason`, then ConnectionClosed; nothing more is written."""
    assert isinstance(result, TransactionResult), result
    assert outcomes(result) == [(PRM, None, LC)] * len(result.recipients)
    assert reasons(result) == [reason] * len(result.recipients)
    assert conn.replies_received == replies_received
    closed = conn.next_event()
    assert isinstance(closed, ConnectionClosed)
    assert closed.reason == f"message refused locally: {reason}"
    assert closed.error is None and closed.reply is None
    assert conn.data_to_send() == b""
    assert conn.state is ClientState.CLOSED and not conn.reusable


# With DATA, a was accepted before the body; with pipelined BDAT the envelope waits for
# the first chunk, so the client never read those replies. Either way a cannot be
# carried to this server: PERMANENT, decided here.
@pytest.mark.parametrize("exts", [("PIPELINING",), ("PIPELINING", "CHUNKING")])
def test_eight_bit_body_without_8bitmime_is_refused_and_settles(exts: tuple[str, ...]) -> None:
    conn = ready(*exts)
    conn.start_transaction(SENDER, [A])
    before = conn.data_to_send()
    conn.receive_data(r(250) * 2 + (b"" if "CHUNKING" in exts else r(354)))
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(b"plain\r\n")
    conn.send_body(b"caf\xc3\xa9\r\n")  # no exception: the outcome says it
    # the plain line, not yet handed out, is dropped with the rest: nothing more goes out
    assert conn.data_to_send() == b""
    assert before == (b"" if "CHUNKING" in exts else MAIL + rcpt(A) + DATA)
    # greeting and LHLO, then MAIL, RCPT and 354 unless the replies were never read
    received = 2 if "CHUNKING" in exts else 5
    _refused_while_streaming(conn, conn.next_event(), EIGHT_BIT_STREAMED, received)


def test_a_body_refused_while_streaming_keeps_the_outcomes_already_decided() -> None:
    # b was refused at RCPT before the body: its outcome stands; a (accepted) becomes
    # PERMANENT here.
    conn = ready("PIPELINING")
    conn.start_transaction(SENDER, [A, B])
    conn.data_to_send()
    conn.receive_data(r(250) * 2 + r(550) + r(354))
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(b"\xff")
    result = conn.next_event()
    assert isinstance(result, TransactionResult)
    assert outcomes(result) == [(PRM, None, LC), _B]
    assert reasons(result) == [EIGHT_BIT_STREAMED, None]
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_long_body_line_is_refused_by_default() -> None:
    conn = ready("PIPELINING")
    conn.start_transaction(SENDER, [A])
    conn.data_to_send()
    conn.receive_data(r(250) * 2 + r(354))
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(b"x" * 998 + b"\r\n")  # 1000 octets with CRLF: the limit
    assert conn.data_to_send() == b"x" * 998 + b"\r\n"
    conn.send_body(b"y" * 999 + b"\r\n")
    reason = "the message has a line of more than 998 octets (RFC 5321 4.5.3.1.6)"
    _refused_while_streaming(conn, conn.next_event(), reason, 5)


def test_long_last_line_is_refused_at_end_body_and_settles_like_send_body() -> None:
    # send_body() settles the transaction and closes when it refuses the body; a last
    # line (no final CRLF) over the limit is found only by end_body(), which does the
    # same rather than leave the client asking for the body forever.
    conn = ready("PIPELINING")
    conn.start_transaction(SENDER, [A])
    conn.data_to_send()
    conn.receive_data(r(250) * 2 + r(354))
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(b"z" * 999)
    conn.end_body()  # no exception, and no final dot
    event = event_or_error(conn)
    reason = "the message has a line of more than 998 octets"
    _refused_while_streaming(conn, event, reason, 5)
    with pytest.raises(LocalProtocolError):
        conn.end_body()


def test_long_lines_allowed() -> None:
    line = b"q" * 5000 + b"\r\n"
    run = drive(FakeServer("PIPELINING"), Txn([A], body=[line]), long_lines=LongLines.ALLOW)
    assert run.result.all_delivered
    assert line + b".\r\n" in run.written


def test_command_longer_than_the_limit_is_refused() -> None:
    limits = Limits(command_line=64)
    ok = "r" * 40 + "@example.org"  # RCPT TO:<...> + CRLF = 64 octets
    too_long = "r" * 41 + "@example.org"

    conn = ready("PIPELINING", limits=limits)
    conn.start_transaction(SENDER, [ok])
    assert conn.data_to_send() == MAIL + rcpt(ok) + DATA
    conn = ready("PIPELINING", limits=limits)
    with pytest.raises(LocalProtocolError):
        conn.start_transaction(SENDER, [A, too_long])
    assert conn.data_to_send() == b""
    assert conn.state is ClientState.READY


def test_empty_recipient_list_is_refused() -> None:
    _refused((), lambda conn: conn.start_transaction(SENDER, []))


def test_start_transaction_outside_ready_is_refused() -> None:
    conn = client()
    with pytest.raises(LocalProtocolError):
        conn.start_transaction(SENDER, [A])
    assert conn.data_to_send() == b"" and conn.state is ClientState.CONNECTING
    conn = ready()
    conn.start_transaction(SENDER, [A])
    conn.data_to_send()
    with pytest.raises(LocalProtocolError):
        conn.start_transaction(SENDER, [B])
    assert conn.data_to_send() == b""
    assert conn.state is ClientState.TRANSACTION and conn.phase is Phase.MAIL
    conn.abort("done")
    with pytest.raises(LocalProtocolError):
        conn.start_transaction(SENDER, [A])


def test_body_calls_when_not_asked_for_are_refused() -> None:
    conn = ready("PIPELINING")
    for call in (lambda: conn.send_body(b"x"), conn.end_body):
        with pytest.raises(LocalProtocolError):
            call()
    conn.start_transaction(SENDER, [A])
    conn.data_to_send()
    with pytest.raises(LocalProtocolError):
        conn.send_body(b"too early")  # before 354
    assert conn.state is ClientState.TRANSACTION
    conn.receive_data(r(250) * 2 + r(354))
    assert conn.next_event() is Signal.NEED_BODY
    conn.end_body()
    with pytest.raises(LocalProtocolError):
        conn.end_body()
    with pytest.raises(LocalProtocolError):
        conn.send_body(b"after the end")
    assert conn.data_to_send() == b".\r\n"


# ---- hostile replies ----------------------------------------------------------------


def _in_transaction(final: bytes) -> list[bytes]:
    """Pipelined DATA to a (accepted), b (refused); `final` comes after the data."""
    return [hello("PIPELINING"), r(250) + r(250) + r(550) + r(354), final]


@pytest.mark.parametrize(
    "bad",
    [
        b"abc\r\n",
        b"600 x\r\n",
        b"199 x\r\n",
        b"260 x\r\n",
        b"2500 x\r\n",
        b"25\r\n",
        b"\r\n",
        b"250x\r\n",
        b"250-a\r\n251 b\r\n",
        b"250-a\r\n550 b\r\n",
        b"250 a\x00b\r\n",
        b"250 caf\xc3\xa9\x1b[0m\r\n",
        b"250 a\xc2\x85b\r\n",  # C1 (NEL) in UTF-8: a control character all the same
        b"250 \xc2\x9b31m\r\n",  # C1 CSI
        b"250 a\x7f\r\n",
        b"250\x01\r\n",
        b"250 ok\n" * 100,
        b"x" * 600 + b"\r\n",
    ],
)
def test_malformed_reply_settles_and_closes(bad: bytes) -> None:
    run = run_splits(_in_transaction(bad), Txn([A, B]))
    assert outcomes(run.result) == [_UD, _B]
    assert isinstance(run.closed.error, RemoteProtocolError)
    assert run.closed.reply is None
    assert run.closed.reason == str(run.closed.error)
    assert reasons(run.result) == [run.closed.reason, None]
    # at the greeting: nothing to settle
    run = run_splits(bad, Txn([A]))
    (closed,) = run.events
    assert isinstance(closed, ConnectionClosed)
    assert isinstance(closed.error, RemoteProtocolError)


def test_reply_with_a_tab_is_legal() -> None:
    # RFC 5321 4.2: textstring = 1*(%d09 / %d32-126); a HT in a reply is legal.
    run = drive([b"220 mx.example.org\tready\r\n", lhlo()])
    assert isinstance(run.events[0], Ready), run.events
    run = drive(_in_transaction(b"250 2.0.0 saved\tas 12\r\n"), Txn([A, B]))
    assert outcomes(run.result)[0][0] is DEL


def test_no_crlf_for_100k_closes_in_bounded_memory() -> None:
    fed = 0

    def endless_line(written: bytes) -> bytes:
        nonlocal fed
        assert fed < 100_000, "the client kept reading one line"
        fed += 100
        return GREETING if fed == 100 else b"z" * 100

    run = drive(endless_line)
    assert isinstance(run.closed.error, RemoteProtocolError)
    assert fed <= 512 + 2 * 100
    # one 100 KB read in a transaction
    run = drive(_in_transaction(b"250 " + b"z" * 100_000), Txn([A, B]))
    assert outcomes(run.result) == [_UD, _B]
    assert isinstance(run.closed.error, RemoteProtocolError)


def test_endless_continuation_lines_close() -> None:
    lines = 0

    def endless(written: bytes) -> bytes:
        nonlocal lines
        if lines == 0:
            lines = 1
            return GREETING
        assert lines < 10_000, "the client kept reading one reply"
        lines += 10
        return b"250-more\r\n" * 10

    run = drive(endless)
    assert isinstance(run.closed.error, RemoteProtocolError)
    assert lines <= Limits().reply_lines + 11
    run = drive(_in_transaction(b"250-more\r\n" * 200), Txn([A, B]))
    assert outcomes(run.result) == [_UD, _B]
    assert isinstance(run.closed.error, RemoteProtocolError)


def test_reply_lines_limit_counts_lines_of_one_reply() -> None:
    limits = Limits(reply_lines=3)
    assert isinstance(drive([GREETING, lhlo("A", "B")], limits=limits).events[0], Ready)
    run = drive([GREETING, lhlo("A", "B", "C")], limits=limits)
    assert isinstance(run.closed.error, RemoteProtocolError)


def test_reply_line_limit() -> None:
    limits = Limits(reply_line=64)
    fits = b"250 " + b"x" * 58 + b"\r\n"  # 64 octets with CRLF
    run = drive(_in_transaction(fits), Txn([A, B]), limits=limits)
    assert outcomes(run.result)[0][0] is DEL
    run = drive(_in_transaction(b"250 " + b"x" * 59 + b"\r\n"), Txn([A, B]), limits=limits)
    assert outcomes(run.result) == [_UD, _B]
    assert isinstance(run.closed.error, RemoteProtocolError)


def test_fewer_final_replies_then_eof() -> None:
    stream = [hello("PIPELINING"), r(250) + r(250) * 3 + r(354) + r(250) + r(451)]
    run = run_splits(stream, Txn([A, B, C]))
    assert outcomes(run.result) == [_D, (TMP, 451, DT), _UD]
    assert run.closed.error is None


@pytest.mark.parametrize("extra", [r(250, "extra"), r(550, "extra"), r(421, "idle"), b"2"])
def test_reply_after_the_transaction_closes_the_connection(extra: bytes) -> None:
    # More replies after the data than recipients, or any unsolicited reply: the
    # client must not keep it for the next command (it would be taken as the next
    # MAIL's reply), it ends the connection (README: "unsolicited or extra replies").
    # Already received when a's reply is read (the same read): a's 250 cannot be
    # trusted to be a's, so it is UNKNOWN. In a later read: the result stands.
    head = hello("PIPELINING")
    replies = r(250) + r(250) + r(354) + r(250, "saved")
    end = len(head) + len(replies)  # where the last reply due ends
    seen = set()
    for chunks in splits([head, replies + extra]):
        run = drive(chunks, Txn([A]), Txn([B]), end="stop")
        early = same_read(chunks, end)
        seen.add(early)
        # "421" whole in that read: the server is closing (a "4" alone cannot tell)
        closing = early and same_read(chunks, end + 1) and same_read(chunks, end + 2)
        if closing and extra.startswith(b"421"):
            # A 421 is the server closing, which it may say at any time: the pairing
            # stands, and the connection still ends before B.
            assert outcomes(run.result) == [_D]
            assert reasons(run.result) == [None]
            assert isinstance(run.events[-1], ConnectionClosed)
        elif early:
            assert outcomes(run.result) == [(UNK, 250, DT)]
            assert reasons(run.result) == [DISTRUSTED]
            assert run.result.recipients[0].reply == Reply(250, None, "saved")
            assert isinstance(run.events[-1], ConnectionClosed)  # at once, before B
            assert run.conn.replies_received == 6
        else:
            # the driver read no more before it started B's transaction: whatever came
            # later answers B's MAIL, which the client has no way to tell apart
            assert outcomes(run.results[0]) == [_D]
            assert reasons(run.results[0]) == [None]
            continue
        event = closed_after(run)
        assert isinstance(event, ConnectionClosed), event
        assert isinstance(event.error, RemoteProtocolError)
        assert event.reason == UNSOLICITED and event.reply is None
        assert run.written == LHLO + MAIL + rcpt(A) + DATA + BODY + b".\r\n"  # no MAIL for B
        assert run.conn.data_to_send() == b""
    assert seen == {True, False}


@pytest.mark.parametrize("extra", [r(250, "extra"), r(550, "extra"), r(421, "idle"), b"2"])
def test_reply_in_a_later_read_keeps_the_result_and_closes_before_the_next_command(
    extra: bytes,
) -> None:
    # The result was returned before the surplus came: it stands. The next
    # start_transaction() sees the bytes and writes nothing: TEMPORARY, then closed.
    stream = [hello("PIPELINING"), r(250) + r(250) + r(354) + r(250, "saved"), extra]
    for chunks in splits(stream):
        run = drive(chunks, Txn([A]), end="stop")
        assert outcomes(run.result) == [_D]
        for chunk in run.leftover:
            run.conn.receive_data(chunk)
        conn = run.conn
        assert conn.reusable  # it cannot know before it looks
        conn.start_transaction(SENDER, [B, C], size=10)
        assert conn.data_to_send() == b""
        result = conn.next_event()
        assert isinstance(result, TransactionResult)
        assert outcomes(result) == [_TR, _TR]
        assert reasons(result) == [UNSOLICITED] * 2
        closed = conn.next_event()
        assert isinstance(closed, ConnectionClosed)
        assert isinstance(closed.error, RemoteProtocolError)
        assert closed.reason == UNSOLICITED
        assert conn.data_to_send() == b"" and conn.state is ClientState.CLOSED


def test_354_when_no_recipient_was_accepted_closes_as_a_protocol_error() -> None:
    stream = [hello("PIPELINING"), r(250) + r(550) + r(354)]
    run = run_splits(stream, Txn([A]))
    assert outcomes(run.result) == [_B]
    assert b"hello" not in run.written
    assert isinstance(run.closed.error, RemoteProtocolError)


_CODES = [b"220", b"221", b"250", b"251", b"354", b"421", b"450", b"452", b"503", b"550"]
_CODES += [b"552", b"554", b"199", b"600", b"25", b"2500"]
_TEXTS = [b"ok", b"2.1.5 ok", b"5.1.1 no such user", b"PIPELINING", b"CHUNKING", b"SIZE 10"]
_TEXTS += [b"a\tb", b"a\x00b", b"caf\xc3\xa9", b"\xff", b"\r", b"\xc2\x85", b"\xe7\x94\xa8"]

#: Reply lines: mostly well formed, with any octet (0-255) in the text sometimes.
reply_lines = st.lists(
    st.builds(
        lambda code, sep, text: code + sep + text + b"\r\n",
        st.sampled_from(_CODES),
        st.sampled_from([b" ", b" ", b"-", b""]),
        st.one_of(
            st.sampled_from(_TEXTS),
            st.text(st.characters(max_codepoint=255), max_size=6).map(
                lambda t: t.encode("latin-1")
            ),
        ),
    ),
    min_size=1,
    max_size=3,
).map(b"".join)
server_bytes = st.one_of(reply_lines, reply_lines, st.binary(max_size=30))


@settings(max_examples=200, deadline=None)
@given(
    script=st.lists(server_bytes, max_size=12),
    pipelining=st.booleans(),
    chunking=st.booleans(),
)
def test_arbitrary_server_bytes_never_raise(
    script: list[bytes], pipelining: bool, chunking: bool
) -> None:
    exts = [e for e, on in (("PIPELINING", pipelining), ("CHUNKING", chunking)) if on]
    run = drive([hello(*exts), *script], Txn([A, B, A]), Txn([C]), then_quit=True)
    assert isinstance(run.closed, ConnectionClosed)
    for result in run.results:
        assert len(result.recipients) in (1, 3)
        for x in result.recipients:
            _check_outcome(x)
            assert x.stage is not LC  # these messages can be carried to any server


# ---- UTF-8 in reply text --------------------------------------------------------------

_UTF8_ADDRESS = "用户@例子.广告"
_MULLER = "müller@example.org"


@pytest.mark.parametrize("code", [250, 450, 550])
@pytest.mark.parametrize(
    "exts",
    [("PIPELINING",), (), ("PIPELINING", "CHUNKING"), ("CHUNKING",)],
    ids=["pipelined", "lockstep", "pipelined-bdat", "bdat"],
)
def test_utf8_in_a_rcpt_reply_the_outcome_follows_the_code(
    exts: tuple[str, ...], code: int
) -> None:
    # A server that echoes a UTF-8 address in its RCPT reply: the code decides, the
    # text is kept as decoded (it used to make every attempt TEMPORARY).
    text = {250: "2.1.5", 450: "4.2.1", 550: "5.1.1"}[code]
    echo = f"{code} {text} <{_UTF8_ADDRESS}> ✓ geprüft\r\n".encode()
    accepted = code == 250
    data = [] if "CHUNKING" in exts else [r(354)]
    finals = [f"250 2.0.0 <{_UTF8_ADDRESS}> gespeichert\r\n".encode()] if accepted else []
    finals.append(r(250, "saved"))  # B's
    stream = stream_of((*exts, "SMTPUTF8"), [r(250), echo, r(250), *data], finals)
    run = run_splits(stream, Txn([_UTF8_ADDRESS, B]))
    first, second = run.result.recipients
    reply = Reply(code, text, f"<{_UTF8_ADDRESS}> ✓ geprüft")
    if accepted:
        assert (first.status, first.stage) == (DEL, DT)
        assert first.reply == Reply(250, "2.0.0", f"<{_UTF8_ADDRESS}> gespeichert")
    else:
        assert (first.status, first.reply, first.stage) == (
            TMP if code == 450 else PRM,
            reply,
            RC,
        )
    assert first.reason is None
    assert outcomes(run.result)[1] == _D
    assert second.reply == Reply(250, None, "saved")
    line = f"RCPT TO:<{_UTF8_ADDRESS}>\r\n".encode()
    assert run.written.startswith(LHLO + MAIL[:-2] + b" SMTPUTF8\r\n" + line + rcpt(B))
    assert run.conn.state is ClientState.READY


@pytest.mark.parametrize(
    ("final", "expected"),
    [
        (
            f"250 2.0.0 <{_MULLER}> in INBOX gespeichert ✓\r\n".encode(),
            (DEL, Reply(250, "2.0.0", f"<{_MULLER}> in INBOX gespeichert ✓")),
        ),
        (
            f"250-2.0.0 <{_UTF8_ADDRESS}>\r\n250 2.0.0 已送达\r\n".encode(),
            (DEL, Reply(250, "2.0.0", f"<{_UTF8_ADDRESS}>\n已送达")),
        ),
        (
            "452 4.2.2 Postfach voll: müller\r\n".encode(),
            (TMP, Reply(452, "4.2.2", "Postfach voll: müller")),
        ),
        # invalid UTF-8 becomes U+FFFD; the code still decides
        (
            b"250 2.0.0 saved caf\xe9 \xff\xfe\r\n",
            (DEL, Reply(250, "2.0.0", "saved caf\ufffd \ufffd\ufffd")),
        ),
        (b"552 5.2.2 \xc3\r\n", (PRM, Reply(552, "5.2.2", "\ufffd"))),
    ],
)
@pytest.mark.parametrize("exts", [("PIPELINING",), ("PIPELINING", "CHUNKING")])
def test_utf8_in_the_reply_after_the_data(
    exts: tuple[str, ...], final: bytes, expected: tuple[Status, Reply]
) -> None:
    # UTF-8 text in the 250 after the data used to make the recipient UNKNOWN, so a
    # retrying caller delivered duplicates.
    data = b"" if "CHUNKING" in exts else r(354)
    stream = [hello(*exts), r(250) + r(250) + data + final]
    run = run_splits(stream, Txn([_MULLER.replace("ü", "u")]))
    (x,) = run.result.recipients
    assert (x.status, x.reply, x.stage, x.reason) == (*expected, DT, None)
    assert run.conn.state is ClientState.READY


def test_utf8_in_the_greeting_and_lhlo_reply() -> None:
    stream = [
        "220 mx.例子.广告 LMTP prêt\r\n".encode(),
        "250-mx.例子.广告 grüß dich\r\n250-PIPELINING\r\n250 8BITMIME\r\n".encode(),
    ]
    run = run_splits(stream)
    (ready_event,) = run.events
    assert isinstance(ready_event, Ready)
    assert ready_event.capabilities.server == "mx.例子.广告"
    assert "PIPELINING" in ready_event.capabilities and "8BITMIME" in ready_event.capabilities


@pytest.mark.parametrize("c1", [b"\xc2\x85", b"\xc2\x9b", b"\xc2\x80", b"\xc2\x9f"])
def test_c1_control_in_reply_text_closes_as_a_protocol_error(c1: bytes) -> None:
    # After the data: a's reply cannot be read, so a is UNKNOWN (the end went out).
    run = run_splits(_in_transaction(b"250 2.0.0 saved" + c1 + b"\r\n"), Txn([A, B]))
    assert outcomes(run.result) == [_UD, _B]
    error = run.closed.error
    assert isinstance(error, RemoteProtocolError)
    assert str(error).startswith("control character in reply line")
    assert reasons(run.result) == [str(error), None]
    # In a RCPT reply (pipelined DATA: no body went out): TEMPORARY.
    run = run_splits([hello("PIPELINING"), r(250) + b"250 ok" + c1 + b"\r\n"], Txn([A]))
    assert outcomes(run.result) == [_TR]
    assert isinstance(run.closed.error, RemoteProtocolError)
    assert run.written == LHLO + MAIL + rcpt(A) + DATA
    # In the greeting: nothing to settle, no LHLO.
    run = run_splits(b"220 mx" + c1 + b"\r\n", Txn([A]))
    (closed,) = run.events
    assert isinstance(closed, ConnectionClosed)
    assert isinstance(closed.error, RemoteProtocolError)
    assert run.written == b""


# ---- surplus replies ------------------------------------------------------------------


def _issue_stream(exts: tuple[str, ...], finals: list[bytes]) -> list[bytes]:
    """Recipients a, b, c: a refused at RCPT, b and c accepted; then `finals` as the
    segments after the end of data."""
    data = [] if "CHUNKING" in exts else [r(354)]
    return [*stream_of(exts, [r(250), r(550), r(250), r(250), *data]), *finals]


def _issue_written(exts: tuple[str, ...]) -> bytes:
    envelope = MAIL + rcpt(A) + rcpt(B) + rcpt(C)
    return LHLO + envelope + (bdat(BODY) if "CHUNKING" in exts else DATA + BODY + b".\r\n")


_ISSUE_EXTS = [("PIPELINING",), (), ("PIPELINING", "CHUNKING"), ("CHUNKING",)]
_ISSUE_IDS = ["pipelined", "lockstep", "pipelined-bdat", "bdat"]


@pytest.mark.parametrize("exts", _ISSUE_EXTS, ids=_ISSUE_IDS)
def test_surplus_in_the_same_read_no_delivery_stands(exts: tuple[str, ...]) -> None:
    # Issue 14, case 1: after the data the server sent 250 (meant for a), 250 (b), 452
    # (c) in one segment. c used to be reported DELIVERED. The third reply was already
    # received when c's was read: no outcome after the data may stand. Whatever the
    # split, the surplus closes the connection before anything more is written.
    segments = _issue_stream(exts, [r(250, "for a") + r(250, "for b") + r(452, "for c")])
    end = sum(map(len, segments)) - len(r(452, "for c"))  # where c's reply ends
    seen = set()
    for chunks in splits(segments):
        run = drive(chunks, Txn([A, B, C]), end="stop")
        early = same_read(chunks, end)
        seen.add(early)
        if early:
            assert outcomes(run.result) == [_B, (UNK, 250, DT), (UNK, 250, DT)]
            assert reasons(run.result) == [None, DISTRUSTED, DISTRUSTED]
            assert [x.reply for x in run.result.recipients][1:] == [
                Reply(250, None, "for a"),
                Reply(250, None, "for b"),
            ]
            assert not run.result.delivered
            assert [x.recipient for x in run.result.retry] == [B, C]
            closed = run.closed
        else:  # c's reply ended a read: the result was out before the 452 came
            assert outcomes(run.results[0]) == [_B, _D, _D]
            closed = closed_after(run)  # type: ignore[assignment]
        assert isinstance(closed, ConnectionClosed), closed
        assert isinstance(closed.error, RemoteProtocolError)
        assert closed.reason == UNSOLICITED
        if early:  # no next transaction, no QUIT: nothing after the end of data
            assert run.written == _issue_written(exts)
            assert run.conn.data_to_send() == b""
    assert seen == {True, False}


@pytest.mark.parametrize("exts", _ISSUE_EXTS, ids=_ISSUE_IDS)
def test_surplus_in_the_same_read_whole(exts: tuple[str, ...]) -> None:
    # The same, with the segment in one read, as the issue's fake server sent it.
    segments = _issue_stream(exts, [r(250, "for a") + r(250, "for b") + r(452, "for c")])
    run = drive([*segments], Txn([A, B, C]), Txn([A]), then_quit=True)
    assert outcomes(run.result) == [_B, (UNK, 250, DT), (UNK, 250, DT)]
    assert run.events[-1] == run.closed and len(run.events) == 3  # Ready, result, closed
    assert run.written == _issue_written(exts)


@pytest.mark.parametrize("exts", _ISSUE_EXTS, ids=_ISSUE_IDS)
def test_surplus_in_a_later_read_the_result_stands_and_nothing_more_is_written(
    exts: tuple[str, ...],
) -> None:
    # The 452 came in a later read, after the result was returned: the result cannot
    # be taken back, but the next transaction writes nothing: TEMPORARY, then closed.
    segments = _issue_stream(exts, [r(250, "for a") + r(250, "for b"), r(452, "for c")])
    for chunks in splits(segments):
        run = drive(chunks, Txn([A, B, C]), end="stop")
        assert outcomes(run.result) == [_B, _D, _D]
        assert run.written == _issue_written(exts)
        conn = run.conn
        for chunk in run.leftover:  # the 452
            conn.receive_data(chunk)
        conn.start_transaction(SENDER, [A, B])
        assert conn.data_to_send() == b""
        result = conn.next_event()
        assert isinstance(result, TransactionResult)
        assert outcomes(result) == [_TR, _TR]
        assert reasons(result) == [UNSOLICITED] * 2
        closed = conn.next_event()
        assert isinstance(closed, ConnectionClosed)
        assert isinstance(closed.error, RemoteProtocolError)
        assert conn.data_to_send() == b""
        with pytest.raises(LocalProtocolError):
            conn.start_transaction(SENDER, [A])


@pytest.mark.parametrize(
    ("replies", "written", "early_outcome", "late_outcome"),
    [
        # Nobody accepted, RSET answered: the RCPT outcomes came before the data and
        # stand either way.
        (
            [r(250), r(550), r(503), r(250, "reset")],
            MAIL + rcpt(A) + DATA + RSET,
            (_B, None),
            (_B, None),
        ),
        # DATA refused (451, a DATA-stage outcome), RSET answered: every DATA-stage
        # outcome becomes UNKNOWN, its reply kept, when the surplus was already there.
        (
            [r(250), r(250), r(451, "later"), r(250, "reset")],
            MAIL + rcpt(A) + DATA + RSET,
            ((UNK, 451, DT), DISTRUSTED),
            ((TMP, 451, DT), None),
        ),
        # MAIL refused without pipelining: no RSET, the result is due at once.
        ([r(550, "no")], MAIL, ((PRM, 550, RC), None), ((PRM, 550, RC), None)),
    ],
    ids=["nobody-accepted", "data-refused", "mail-refused-lockstep"],
)
def test_surplus_after_the_last_reply_of_a_transaction_without_a_delivery(
    replies: list[bytes],
    written: bytes,
    early_outcome: tuple[Outcome, str | None],
    late_outcome: tuple[Outcome, str | None],
) -> None:
    exts = ("PIPELINING",) if len(replies) > 1 else ()
    segments = [*stream_of(exts, replies[:-1]), replies[-1] + r(250, "extra")]
    end = sum(map(len, segments)) - len(r(250, "extra"))  # where the last reply due ends
    seen = set()
    for chunks in splits(segments):
        run = drive(chunks, Txn([A]), end="stop")
        early = same_read(chunks, end)
        seen.add(early)
        outcome, reason = early_outcome if early else late_outcome
        assert outcomes(run.result) == [outcome]
        assert reasons(run.result) == [reason]
        closed = closed_after(run)
        assert isinstance(closed, ConnectionClosed), closed
        assert closed.reason == UNSOLICITED
        assert isinstance(closed.error, RemoteProtocolError)
        assert run.written == LHLO + written
        assert run.conn.data_to_send() == b""
    assert seen == {True, False}


def test_surplus_before_start_transaction_misuse_still_raises() -> None:
    # Misuse is checked first: it raises and leaves the bytes for next_event().
    conn = ready("PIPELINING")
    conn.receive_data(r(250, "to nothing"))
    with pytest.raises(LocalProtocolError):
        conn.start_transaction(SENDER, ["not an address"])
    assert conn.state is ClientState.READY and conn.data_to_send() == b""
    closed = conn.next_event()
    assert isinstance(closed, ConnectionClosed)
    assert closed.reason == UNSOLICITED


# A reply already received when the client is about to write what it answers (the body
# after 354, the next BDAT chunk, the next command without PIPELINING) answers nothing
# sent: taken for the next reply due, it would shift the pairing by one, and a recipient
# would be reported DELIVERED on a reply that was not its own (in the pipelined DATA case
# before the body is even written). The client closes (RemoteProtocolError) before
# writing, and nobody can have been delivered (TEMPORARY). Found with issue 14, fixed
# since: every read is stamped with how many replies were due when it arrived.
@pytest.mark.parametrize(
    ("exts", "replies", "limits", "not_written"),
    [
        # pipelined DATA: 354 and a 250 in one read; the 250 became a's "final" reply
        (("PIPELINING",), r(250) * 2 + r(354) + r(250, "ahead"), None, BODY),
        # BDAT without PIPELINING: MAIL's reply and a 250 in one read; the 250 became
        # RCPT a's, and the server's real RCPT reply became a's "final" reply
        (("CHUNKING",), r(250) + r(250, "ahead"), None, rcpt(A)),
        # pipelined BDAT in two chunks: the first chunk's reply and a 250 in one read;
        # the 250 became a's "final" reply before the LAST chunk was written
        (
            ("PIPELINING", "CHUNKING"),
            r(250) * 2 + r(250, "chunk") + r(250, "ahead"),
            Limits(bdat_chunk=16),
            b"LAST",
        ),
    ],
    ids=["pipelined-data", "lockstep-bdat", "pipelined-bdat-chunks"],
)
def test_a_reply_ahead_of_what_it_would_answer_closes_before_writing_it(
    exts: tuple[str, ...], replies: bytes, limits: Limits | None, not_written: bytes
) -> None:
    later = [r(250, "rcpt a"), r(452, "full")]  # what the server would say next
    run = drive([hello(*exts), replies, *later], Txn([A]), end="stop", limits=limits)
    x = run.result.recipients[0]
    assert x.status is TMP, x  # the end of data never went out
    closed = closed_after(run)
    assert isinstance(closed, ConnectionClosed), closed
    assert isinstance(closed.error, RemoteProtocolError)
    assert not_written not in run.written + run.conn.data_to_send()


def test_a_reply_ahead_of_the_rset_after_a_refused_bdat_last_closes() -> None:
    # Nobody accepted, the LAST chunk refused: one reply was due after the data, and a
    # 250 in the same read answers nothing yet. Taken for the RSET's (still unwritten)
    # reply, it would shift the next transaction by one; the client closes instead.
    stream = [hello("PIPELINING", "CHUNKING"), r(250) + r(550) + r(503) + r(250, "ahead")]
    run = drive(stream, Txn([A]), Txn([B]), end="stop")
    assert outcomes(run.results[0]) == [(PRM, 550, RC)]
    closed = closed_after(run)
    assert isinstance(closed, ConnectionClosed) and closed.reason == UNSOLICITED
    assert RSET not in run.written + run.conn.data_to_send()


@pytest.mark.parametrize("cut", [1, 2])
def test_a_421_cut_short_by_a_read_is_not_taken_for_a_reply_ahead(cut: int) -> None:
    # Without PIPELINING: MAIL's 250, then "4" or "42" in the same read, the rest of
    # the 421 later. What may yet be a 421 is left to be read whole.
    bye = r(421, "bye")
    run = drive([hello(), r(250) + bye[:cut], bye[cut:]], Txn([A]), end="stop")
    assert outcomes(run.result) == [(TMP, 421, RC)]
    assert run.closed.reply == Reply(421, None, "bye")


def test_a_split_reply_left_to_be_read_whole_is_judged_by_where_it_ends() -> None:
    # Without PIPELINING: MAIL's 250 and a "4" in one read (what may yet be a 421 is
    # left to be read whole, so RCPT a goes out), then "50 later" and a 250 in the next:
    # the 450 ended after RCPT a was written, so it is a's; the 250 answers nothing yet.
    stream = [hello(), r(250) + b"4", b"50 later\r\n" + r(250, "ahead")]
    run = drive(stream, Txn([A, B]), end="stop")
    assert outcomes(run.result) == [(TMP, 450, RC), _TR]
    closed = closed_after(run)
    assert isinstance(closed, ConnectionClosed) and closed.reason == UNSOLICITED
    assert rcpt(B) not in run.written + run.conn.data_to_send()


def test_a_421_ahead_of_the_body_is_the_server_closing() -> None:
    # The server may say it is closing at any time: with the 354, the 421 is not taken
    # for a reply ahead; it is a's reply after the data, TEMPORARY, and the end.
    run = drive([hello("PIPELINING"), r(250) * 2 + r(354) + r(421, "bye")], Txn([A]))
    assert outcomes(run.result) == [(TMP, 421, DT)]
    assert run.closed.reply == Reply(421, None, "bye")


def test_a_reply_begun_during_the_body_and_ended_after_the_end_answers_the_end() -> None:
    # A driver that reads while the body streams: one byte of a's reply comes before
    # the end of data went out, the rest after. The reply is judged by where it ends,
    # and b's, wholly after the end, is no reply ahead of anything.
    conn = ready("PIPELINING")
    conn.start_transaction(SENDER, [A, B])
    conn.data_to_send()
    conn.receive_data(r(250) * 3 + r(354))
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(b"x\r\n")
    conn.data_to_send()
    conn.receive_data(b"2")
    conn.end_body()
    conn.data_to_send()  # the end of data: one reply per accepted recipient is due
    conn.receive_data(b"50 a\r\n" + r(250, "b"))
    result = conn.next_event()
    assert isinstance(result, TransactionResult)
    assert outcomes(result) == [(DEL, 250, DT)] * 2
    assert conn.reusable


def test_what_each_read_found_due_is_forgotten_once_it_was_taken() -> None:
    # One stretch of received bytes per read at most is remembered while the buffer
    # holds it: a long session keeps none of its past reads (here each read has a
    # reply of its own, and a different number of replies due).
    conn = ready()
    for n in range(100):
        conn.start_transaction(SENDER, [A])
        event: object = None
        for reply in (r(250), r(250), r(354), None, r(250, f"{n}")):  # MAIL, RCPT, DATA
            if reply is None:
                conn.send_body(b"x\r\n")
                conn.end_body()
                continue
            assert conn.next_event() is Signal.NEED_DATA
            conn.data_to_send()
            conn.receive_data(reply)
            event = conn.next_event()
        assert isinstance(event, TransactionResult) and event.all_delivered, event
        assert len(conn._arrivals) <= 1


# ---- what this server cannot take -----------------------------------------------------


@pytest.mark.parametrize("exts", [("PIPELINING",), ()], ids=["pipelined", "lockstep"])
def test_smtputf8_recipient_alone_is_refused_and_the_others_go_ahead(
    exts: tuple[str, ...],
) -> None:
    # The sender is ASCII: only the recipient that needs SMTPUTF8 cannot be carried.
    # SMTPUTF8 is not declared, and the RCPT replies pair with the recipients sent.
    stream = stream_of(exts, [r(250), r(250), r(550, "no c"), r(354)], [r(250, "saved a")])
    run = run_splits(stream, Txn([A, _UTF8_ADDRESS, C]))
    assert outcomes(run.result) == [_D, (PRM, None, LC), (PRM, 550, RC)]
    assert reasons(run.result) == [None, UTF8_RECIPIENT, None]
    assert [x.recipient for x in run.result.recipients] == [A, _UTF8_ADDRESS, C]
    assert run.result.recipients[2].reply == Reply(550, None, "no c")
    assert run.written == LHLO + MAIL + rcpt(A) + rcpt(C) + DATA + BODY + b".\r\n"
    assert _UTF8_ADDRESS.encode() not in run.written


def test_rcpt_replies_pair_with_the_recipients_sent() -> None:
    # Refused here: the second (SMTPUTF8) and the fourth (DSN not offered). The server
    # sees a, c, e; its replies 550, 250, 450 are theirs, and c's final reply is c's.
    recipients = [A, _UTF8_ADDRESS, C, RcptTo("d@example.org", (("NOTIFY", "NEVER"),)), B]
    stream = [hello("PIPELINING"), r(250) + r(550) + r(250) + r(450) + r(354) + r(250, "c")]
    run = run_splits(stream, Txn(recipients))
    assert outcomes(run.result) == [_B, (PRM, None, LC), _D, (PRM, None, LC), (TMP, 450, RC)]
    assert reasons(run.result) == [None, UTF8_RECIPIENT, None, _needs("NOTIFY", "DSN"), None]
    assert run.result.recipients[2].reply == Reply(250, None, "c")
    assert run.written == LHLO + MAIL + rcpt(A) + rcpt(C) + rcpt(B) + DATA + BODY + b".\r\n"


def test_every_recipient_refused_here_gives_the_result_at_once() -> None:
    recipients = [_UTF8_ADDRESS, RcptTo(A, (("ORCPT", "rfc822;a@example.org"),))]
    run = run_splits([hello("PIPELINING")], Txn(recipients), Txn([B]))
    first, second = run.results
    assert outcomes(first) == [(PRM, None, LC)] * 2
    assert reasons(first) == [UTF8_RECIPIENT, _needs("ORCPT", "DSN")]
    assert run.written == LHLO + MAIL + rcpt(B) + DATA  # nothing for the first
    assert outcomes(second) == [_TR]  # the server closed before answering B


_NUL_BODY = [b"hello\r\n", b"\x00.\r\nMAIL FROM:<x@y>\r\n"]  # \r\n\x00.\r\n across pieces


@pytest.mark.parametrize(
    "body", [_NUL_BODY, [b"hello\r\n\x00.\r\nMAIL FROM:<x@y>\r\n"], [b"hello\r\n\x00", b".\r\n"]]
)
def test_nul_before_a_dot_never_goes_out_under_8bitmime(body: list[bytes]) -> None:
    # Issue 14, case 4: a receiver that strips NUL would see CRLF.CRLF. Under
    # BODY=8BITMIME the piece with the NUL is refused: PERMANENT here, closed, and
    # nothing of it (nor anything after it) is written.
    stream = [hello("PIPELINING", "8BITMIME"), r(250) * 2 + r(354)]
    run = run_splits(stream, Txn([A], body=body))
    assert outcomes(run.result) == [(PRM, None, LC)]
    assert reasons(run.result) == [NUL_REFUSED]
    assert run.closed.reason == f"message refused locally: {NUL_REFUSED}"
    assert run.closed.error is None
    sent = body[0] if b"\x00" not in body[0] else b""  # what went out before the NUL
    assert run.written == LHLO + MAIL[:-2] + b" BODY=8BITMIME\r\n" + rcpt(A) + DATA + sent
    assert b"\x00" not in run.written and not run.written.endswith(b".\r\n")


def test_nul_in_the_first_bdat_chunk_writes_nothing_at_all() -> None:
    # Pipelined BDAT holds the envelope for the first chunk: refused before any of it.
    stream = [hello("PIPELINING", "CHUNKING", "8BITMIME")]
    run = run_splits(stream, Txn([A, B], body=[b"a\r\n\x00.\r\n"]))
    assert outcomes(run.result) == [(PRM, None, LC)] * 2
    assert reasons(run.result) == [NUL_REFUSED] * 2
    assert run.written == LHLO


def test_nul_declared_is_refused_before_anything_is_written() -> None:
    _refused_here(("8BITMIME",), SENDER, [A, B], NUL_REFUSED, nul=True)
    _refused_here(("8BITMIME", "CHUNKING", "BINARYMIME"), SENDER, [A], NUL_REFUSED, nul=True)
    mail = MailFrom(SENDER, (("BODY", "8BITMIME"),))
    _refused_here(("8BITMIME", "CHUNKING", "BINARYMIME"), mail, [A], NUL_REFUSED, nul=True)


@pytest.mark.parametrize("nul", [None, True])
@pytest.mark.parametrize(
    "exts",
    [("PIPELINING", "CHUNKING", "BINARYMIME"), ("CHUNKING", "BINARYMIME")],
    ids=["pipelined", "lockstep"],
)
def test_nul_goes_through_as_binarymime_bdat(exts: tuple[str, ...], nul: bool | None) -> None:
    # Declared BODY=BINARYMIME to a server that offers it (and CHUNKING): the bytes go
    # in a BDAT chunk untouched, NUL and bare line ends included.
    body = b"hello\r\n\x00.\r\nMAIL FROM:<x@y>\r\n\x00\n"
    mail = MailFrom(SENDER, (("BODY", "BINARYMIME"),))
    stream = stream_of(exts, [r(250), r(250)], [r(250, "saved")])
    run = run_splits(stream, Txn([A], body=[body[:9], body[9:]], sender=mail, nul=nul))
    assert outcomes(run.result) == [_D]
    line = MAIL[:-2] + b" BODY=BINARYMIME\r\n"
    assert run.written == LHLO + line + rcpt(A) + bdat(body)
    server = FakeServer(*exts)
    drive(server, Txn([A], body=[body], sender=mail, nul=nul))
    assert server.message == body


# ---- transcript and reuse ------------------------------------------------------------


def test_trace_records_commands_and_replies_never_body_bytes() -> None:
    secret = b"SECRET-BODY-LINE"
    stream = [
        hello("PIPELINING"),
        r(250) * 3 + r(354),
        r(250) + b"550-5.2.2 full\r\n550 5.2.2 x\r\n",
        r(221, "bye"),
    ]
    run = drive(stream, Txn([A, B], body=[secret + b"\n"]), then_quit=True, trace=True)
    assert run.conn.take_trace() == [
        ("S", "220 mx.example.org LMTP ready"),
        ("C", "LHLO client.example"),
        ("S", "250 mx.example.org / PIPELINING"),
        ("C", "MAIL FROM:<sender@example.org>"),
        ("C", "RCPT TO:<a@example.org>"),
        ("C", "RCPT TO:<b@example.org>"),
        ("C", "DATA"),
        ("S", "250 ok"),
        ("S", "250 ok"),
        ("S", "250 ok"),
        ("S", "354 ok"),
        ("S", "250 ok"),
        ("S", "550 5.2.2 full / x"),
        ("C", "QUIT"),
        ("S", "221 bye"),
    ]
    assert secret + b"\r\n" in run.written  # sent, yet absent from the exact transcript
    assert run.conn.take_trace() == []  # taken


def test_trace_with_bdat_and_a_local_quit() -> None:
    stream = [hello("PIPELINING", "CHUNKING"), r(250) * 2 + r(250, "saved")]
    run = drive(stream, Txn([A], body=[b"body bytes\n"]), trace=True)
    trace = run.conn.take_trace()
    assert trace[3:6] == [
        ("C", "MAIL FROM:<sender@example.org>"),
        ("C", "RCPT TO:<a@example.org>"),
        ("C", "BDAT 12 LAST"),
    ]
    assert trace[6] == ("S", "250 ok")
    assert trace[-1] == ("S", "250 saved")
    assert all("body bytes" not in text for _, text in trace)
    run = drive([hello("PIPELINING")], require_starttls=True, trace=True)
    assert run.conn.take_trace()[-1] == ("C", "QUIT")


def test_no_trace_unless_asked() -> None:
    run = drive(FakeServer("PIPELINING"), Txn([A]))
    assert run.conn.take_trace() == []


def test_reusable_only_when_ready() -> None:
    conn = client()
    assert not conn.reusable
    conn = ready()
    assert conn.reusable
    conn.start_transaction(SENDER, [A])
    assert not conn.reusable
    for reply in [r(250), r(550)]:  # without PIPELINING: MAIL, then RCPT
        assert conn.next_event() is Signal.NEED_DATA
        conn.data_to_send()
        conn.receive_data(reply)
    assert conn.next_event() is Signal.NEED_DATA  # RSET's reply
    conn.data_to_send()
    conn.receive_data(r(250))
    assert isinstance(conn.next_event(), TransactionResult)
    assert conn.reusable
    conn.abort("gone")
    assert not conn.reusable


# ---- phase --------------------------------------------------------------------------


def test_phase_along_a_session_without_pipelining() -> None:
    # A driver writes data_to_send() before it waits: so does this test.
    conn = client()
    assert conn.phase is Phase.GREETING
    conn.receive_data(GREETING)
    assert conn.next_event() is Signal.NEED_DATA
    assert conn.data_to_send() == LHLO
    assert conn.phase is Phase.LHLO
    conn.receive_data(lhlo())
    assert isinstance(conn.next_event(), Ready)
    assert conn.phase is Phase.COMMAND
    conn.start_transaction(SENDER, [A, B])
    assert conn.phase is Phase.MAIL
    assert conn.data_to_send() == MAIL
    steps = [
        (r(250), Phase.RCPT, rcpt(A)),
        (r(250), Phase.RCPT, rcpt(B)),
        (r(250), Phase.DATA_INIT, DATA),
    ]
    for reply, phase, command in steps:
        conn.receive_data(reply)
        assert conn.next_event() is Signal.NEED_DATA
        assert conn.phase is phase
        assert conn.data_to_send() == command
        assert conn.phase is phase
    conn.receive_data(r(354))
    assert conn.next_event() is Signal.NEED_BODY
    assert conn.phase is Phase.DATA_BLOCK
    conn.send_body(BODY)
    assert conn.phase is Phase.DATA_BLOCK
    conn.end_body()
    assert conn.phase is Phase.DATA_END  # queued
    assert conn.data_to_send() == BODY + b".\r\n"
    assert conn.phase is Phase.DATA_END  # handed out
    assert conn.next_event() is Signal.NEED_DATA
    conn.receive_data(r(250))
    assert conn.next_event() is Signal.NEED_DATA
    assert conn.phase is Phase.DATA_END
    conn.receive_data(r(250))
    assert isinstance(conn.next_event(), TransactionResult)
    assert conn.phase is Phase.COMMAND
    conn.start_transaction(SENDER, [A])
    assert conn.phase is Phase.MAIL
    assert conn.data_to_send() == MAIL
    conn.receive_data(r(250))
    assert conn.next_event() is Signal.NEED_DATA
    assert conn.data_to_send() == rcpt(A)
    conn.receive_data(r(550))
    assert conn.next_event() is Signal.NEED_DATA
    assert conn.phase is Phase.COMMAND  # RSET
    assert conn.data_to_send() == RSET
    conn.receive_data(r(250))
    assert isinstance(conn.next_event(), TransactionResult)
    conn.quit()
    assert conn.phase is Phase.COMMAND
    assert conn.data_to_send() == QUIT
    conn.receive_data(r(221))
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert conn.replies_received == 12


def test_phase_is_data_end_once_the_end_of_data_is_queued() -> None:
    conn = ready("PIPELINING", "CHUNKING")
    conn.start_transaction(SENDER, [A, B])
    assert conn.phase is Phase.MAIL
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(BODY)
    conn.end_body()
    assert conn.phase is Phase.MAIL  # the last chunk is not made yet
    assert conn.next_event() is Signal.NEED_DATA
    assert conn.phase is Phase.DATA_END  # BDAT LAST is queued, before the MAIL reply
    assert conn.data_to_send() == MAIL + rcpt(A) + rcpt(B) + bdat(BODY)
    for reply in [r(250), r(250), r(550), r(250)]:  # MAIL, RCPT a, RCPT b, a's final
        assert conn.phase is Phase.DATA_END
        conn.receive_data(reply)
        event = conn.next_event()
    assert isinstance(event, TransactionResult)
    assert outcomes(event) == [(DEL, 250, DT), (PRM, 550, RC)]
    assert conn.phase is Phase.COMMAND
    assert conn.replies_received == 6


def test_phase_along_a_pipelined_bdat_transaction() -> None:
    conn = ready("PIPELINING", "CHUNKING", limits=Limits(bdat_chunk=64))
    conn.start_transaction(SENDER, [A])
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(b"p" * 100)
    assert conn.next_event() is Signal.NEED_BODY  # the first chunk went out with the envelope
    assert conn.data_to_send() == MAIL + rcpt(A) + b"BDAT 64\r\n" + b"p" * 64
    assert conn.phase is Phase.MAIL
    conn.end_body()
    assert conn.next_event() is Signal.NEED_DATA
    assert conn.data_to_send() == b""  # the last chunk waits for the first one's reply
    assert conn.phase is Phase.MAIL
    conn.receive_data(r(250))
    assert conn.next_event() is Signal.NEED_DATA
    assert conn.phase is Phase.RCPT
    conn.receive_data(r(250))
    assert conn.next_event() is Signal.NEED_DATA
    assert conn.phase is Phase.DATA_BLOCK
    conn.receive_data(r(250))
    assert conn.next_event() is Signal.NEED_DATA
    assert conn.phase is Phase.DATA_END
    assert conn.data_to_send() == b"BDAT 38 LAST\r\n" + b"p" * 36 + b"\r\n"
    conn.receive_data(r(250))
    assert isinstance(conn.next_event(), TransactionResult)
    assert conn.phase is Phase.COMMAND


# Two recipients, both delivered: each way, the transaction's replies and the phase
# once the client has read n replies (greeting and LHLO first, QUIT's last).
_G, _L, _M, _R, _I, _E, _K = (
    Phase.GREETING,
    Phase.LHLO,
    Phase.MAIL,
    Phase.RCPT,
    Phase.DATA_INIT,
    Phase.DATA_END,
    Phase.COMMAND,
)
_PHASE_MODES = [
    ((), [r(250)] * 3 + [r(354), r(250), r(250)], [_G, _L, _M, _R, _R, _I, _E, _E, _K]),
    (
        ("PIPELINING",),
        [r(250)] * 3 + [r(354), r(250), r(250)],
        [_G, _L, _M, _R, _R, _I, _E, _E, _K],
    ),
    (("CHUNKING",), [r(250)] * 5, [_G, _L, _M, _R, _R, _E, _E, _K]),
    # The whole message goes out with the envelope: every reply may wait for it.
    (("PIPELINING", "CHUNKING"), [r(250)] * 5, [_G, _L, _E, _E, _E, _E, _E, _K]),
]


def count_replies(data: bytes) -> int:
    """How many complete replies well-formed server bytes hold."""
    return sum(1 for line in data.split(b"\r\n")[:-1] if line[3:4] != b"-")


@pytest.mark.parametrize(
    ("exts", "replies", "phases"),
    _PHASE_MODES,
    ids=["data", "pipelined-data", "bdat", "pipelined-bdat"],
)
def test_phase_and_replies_received_at_every_read(
    exts: tuple[str, ...], replies: list[bytes], phases: list[Phase]
) -> None:
    stream = [*stream_of(exts, replies), r(221, "bye")]
    for chunks in splits(stream):
        run = drive(chunks, Txn([A, B]), then_quit=True)
        assert run.result.all_delivered
        assert run.closed.reason == "quit"
        fed = [count_replies(b"".join(chunks[:i])) for i in range(len(run.received))]
        assert run.received == fed
        assert run.phases == [phases[n] for n in run.received]
        assert run.conn.replies_received == len(phases)


def test_replies_received_counts_every_reply() -> None:
    stream = [
        hello("PIPELINING"),
        r(250) * 3 + r(354) + r(250) + b"550-full\r\n550 really\r\n",  # a, b
        r(250) + r(450) + r(503),  # c refused: then RSET
        r(250, "reset"),
        r(250) * 2 + r(354) + r(250),  # a
        r(221, "bye"),
    ]
    txns = [Txn([A, B]), Txn([C]), Txn([A])]
    total = 2 + 6 + 4 + 4 + 1
    assert count_replies(b"".join(stream)) == total
    for i, chunks in enumerate(splits(stream)):
        run = drive(chunks, *txns, then_quit=True)
        assert run.closed.reason == "quit"
        assert run.received == [count_replies(b"".join(chunks[:k])) for k in range(len(chunks))]
        assert run.conn.replies_received == total
        if i == 0:  # each segment whole: one read gives several replies
            assert run.received == [0, 2, 6, 8, 11, 12, 15, 16]


@pytest.mark.parametrize(
    ("stream", "recipients", "received"),
    [
        ([hello(), r(421, "bye")], [A], 3),  # 421 to MAIL
        ([hello("PIPELINING"), r(250) + r(354, "what?")], [A], 4),  # 354 to RCPT: counted
        (_in_transaction(b"abc\r\n"), [A, B], 6),  # a malformed line is no reply
        (_in_transaction(b"250-a\r\n551 b\r\n"), [A, B], 6),
        ([hello("PIPELINING"), r(250) * 2 + r(354) + r(250) + r(250, "extra")], [A], 6),
    ],
    ids=["421", "354-to-rcpt", "malformed", "mixed-codes", "unsolicited"],
)
def test_replies_received_counts_what_was_read_as_a_reply(
    stream: list[bytes], recipients: list[str], received: int
) -> None:
    for chunks in splits(stream):
        run = drive(chunks, Txn(recipients), end="stop")
        assert isinstance(closed_after(run), ConnectionClosed)
        assert run.conn.state is ClientState.CLOSED
        assert run.conn.replies_received == received


# ---- the state sweep ----------------------------------------------------------------


@dataclass(frozen=True)
class Path:
    name: str
    state: ClientState
    build: Callable[[], ClientConnection]
    recipients: int = 0


def _after(conn: ClientConnection, *steps: bytes | Callable[[ClientConnection], object]) -> None:
    for step in steps:
        if isinstance(step, bytes):
            conn.data_to_send()  # written before any reply is read, as a driver does
            conn.receive_data(step)
            settle(conn)
        else:
            step(conn)
            if conn.state is not ClientState.CLOSED:
                settle(conn)


def _build(
    exts: Sequence[str] | None,
    *steps: bytes | Callable[[ClientConnection], object],
    **options: object,
) -> Callable[[], ClientConnection]:
    def build() -> ClientConnection:
        conn = client(**options) if exts is None else ready(*exts, **options)
        _after(conn, *steps)
        return conn

    return build


def _start(*rcpts: str) -> Callable[[ClientConnection], object]:
    return lambda conn: conn.start_transaction(SENDER, list(rcpts))


def _start_sized(*rcpts: str, size: int) -> Callable[[ClientConnection], object]:
    return lambda conn: conn.start_transaction(SENDER, list(rcpts), size=size)


def _pending_local() -> ClientConnection:
    conn = ready("8BITMIME")
    conn.start_transaction(SENDER, [A], nul=True)  # the result is queued, not taken
    return conn


def _unsolicited_in_buffer() -> ClientConnection:
    conn = ready("PIPELINING")
    conn.receive_data(r(250, "to nothing"))
    return conn


def _body(data: bytes, end: bool = False) -> Callable[[ClientConnection], object]:
    def feed(conn: ClientConnection) -> None:
        conn.send_body(data)
        if end:
            conn.end_body()

    return feed


_CHUNK = Limits(bdat_chunk=64)
_S = ClientState
PATHS = [
    Path("greeting", _S.CONNECTING, _build(None)),
    Path("lhlo", _S.CONNECTING, _build(None, GREETING)),
    Path("starttls", _S.CONNECTING, _build(None, hello("STARTTLS"), require_starttls=True)),
    Path(
        "handshake",
        _S.TLS_HANDSHAKE,
        _build(None, hello("STARTTLS"), r(220), require_starttls=True),
    ),
    Path(
        "lhlo-after-tls",
        _S.CONNECTING,
        _build(
            None,
            hello("STARTTLS"),
            r(220),
            lambda c: c.tls_established(),
            require_starttls=True,
        ),
    ),
    Path("ready", _S.READY, _build(_ALL)),
    Path("ready-plain", _S.READY, _build(())),
    Path("quitting", _S.CLOSING, _build((), lambda c: c.quit())),
    Path("mail", _S.TRANSACTION, _build((), _start(A, B)), 2),
    Path("rcpt", _S.TRANSACTION, _build((), _start(A, B), r(250)), 2),
    Path("data", _S.TRANSACTION, _build(("PIPELINING",), _start(A), r(250) * 2), 1),
    Path("body", _S.TRANSACTION, _build(("PIPELINING",), _start(A), r(250) * 2 + r(354)), 1),
    Path(
        "final",
        _S.TRANSACTION,
        _build(("PIPELINING",), _start(A, B), r(250) * 3 + r(354), _body(BODY, end=True)),
        2,
    ),
    Path("bdat-held", _S.TRANSACTION, _build(("PIPELINING", "CHUNKING"), _start(A)), 1),
    Path(
        "bdat-chunk",
        _S.TRANSACTION,
        _build(("PIPELINING", "CHUNKING"), _start(A), _body(b"c" * 150), limits=_CHUNK),
        1,
    ),
    Path(
        "bdat-next",
        _S.TRANSACTION,
        _build(("PIPELINING", "CHUNKING"), _start(A), _body(b"c" * 100), r(250) * 3, limits=_CHUNK),
        1,
    ),
    Path(
        "bdat-last",
        _S.TRANSACTION,
        _build(("CHUNKING",), _start(A), r(250), r(250), _body(BODY, end=True)),
        1,
    ),
    Path("rset", _S.TRANSACTION, _build((), _start(A), r(250), r(550)), 1),
    Path("closed", _S.CLOSED, _build((), lambda c: c.abort("gone"))),
    Path("closed-early", _S.CLOSED, _build(None, b"554 no\r\n")),
    # READY again after a message this server cannot take (over SIZE, refused here)
    Path("ready-after-local", _S.READY, _build(("SIZE 10",), _start_sized(A, B, size=11))),
    # READY with a refused message's result not yet taken
    Path("local-pending", _S.READY, _pending_local, 1),
    # READY with a reply to nothing in the receive buffer, not yet looked at
    Path("ready-unsolicited", _S.READY, _unsolicited_in_buffer),
    # a body refused as it streamed (8-bit without 8BITMIME): closed, the result and
    # ConnectionClosed not yet taken
    Path(
        "body-refused",
        _S.CLOSED,
        _build(("PIPELINING",), _start(A), r(250) * 2 + r(354), _body(b"\xff")),
        1,
    ),
]


def test_sweep_paths_reach_every_state() -> None:
    for path in PATHS:
        assert path.build().state is path.state, path.name
    assert {path.state for path in PATHS} == set(ClientState)


#: (name, the call, how many recipients it gives if it is start_transaction)
Call = tuple[str, Callable[[ClientConnection], object], int]

_ADDRESSES = [A, B, "", "bad", "ü@example.org", "a\r\n@x.org", "x" * 70 + "@example.org"]
_SENDERS = [
    *_ADDRESSES,
    MailFrom(A, (("SIZE", "10"),)),
    MailFrom(A, (("BODY", "8BITMIME"),)),
    MailFrom(A, (("BODY", "BINARYMIME"),)),
    MailFrom(A, (("XFOO", None),)),
]
_RCPTS = [*_ADDRESSES, RcptTo(A, (("NOTIFY", "NEVER"),)), RcptTo(A, (("X", "a b"),))]
_REPLIES = [
    r(220),
    r(250),
    lhlo("PIPELINING", "CHUNKING", "STARTTLS"),
    r(354),
    r(421),
    r(450),
    r(452),
    r(503),
    r(550),
    r(221),
    b"250-x\r\n",
    b"999 x\r\n",
    b"250 ok",
]


def _call_strategy() -> st.SearchStrategy[Call]:
    def start(
        sender: str | MailFrom,
        rcpts: list[str | RcptTo],
        size: int | None,
        eight: bool | None,
        nul: bool | None,
    ) -> Call:
        return (
            "start_transaction",
            lambda c: c.start_transaction(sender, rcpts, size=size, eight_bit=eight, nul=nul),
            len(rcpts),
        )

    def body(data: bytes) -> Call:
        return ("send_body", lambda c: c.send_body(data), 0)

    def receive(data: bytes) -> Call:
        return ("receive_data", lambda c: c.receive_data(data), 0)

    def abort(reason: str) -> Call:
        return ("abort", lambda c: c.abort(reason), 0)

    def send_failed(reason: str) -> Call:
        return ("send_failed", lambda c: c.send_failed(reason), 0)

    return st.one_of(
        st.builds(
            start,
            st.sampled_from(_SENDERS),
            st.lists(st.sampled_from(_RCPTS), max_size=3),
            st.one_of(st.none(), st.integers(0, 2000)),
            st.one_of(st.none(), st.booleans()),
            st.one_of(st.none(), st.booleans()),
        ),
        st.builds(
            body,
            st.one_of(
                st.binary(max_size=40),
                st.sampled_from(
                    [b".\r\n", b"\xff\n", b"x" * 1200, b"\r", b"\n.\r\n", b"\r\n\x00.\r\n"]
                ),
            ),
        ),
        st.builds(receive, st.one_of(server_bytes, st.sampled_from(_REPLIES))),
        st.builds(abort, st.text(max_size=5)),
        st.builds(send_failed, st.text(max_size=5)),
        st.sampled_from(
            [
                ("end_body", lambda c: c.end_body(), 0),
                ("quit", lambda c: c.quit(), 0),
                ("tls_established", lambda c: c.tls_established(), 0),
                ("receive_eof", lambda c: c.receive_eof(), 0),
                ("next_event", lambda c: c.next_event(), 0),
            ]
        ),
    )


_IDLE = {ClientState.READY, ClientState.TLS_HANDSHAKE, ClientState.CLOSED}


def _apply(
    conn: ClientConnection,
    name: str,
    call: Callable[[ClientConnection], object],
    recipients: list[int] | None = None,
) -> bool:
    """Make `call`; it works (True) or raises LocalProtocolError (False), and then
    nothing was queued and nothing changed (a body the session cannot carry is an
    outcome now, never an exception). A start_transaction() that leaves the client
    READY (refused here) wrote nothing. A result that a next_event() call itself
    returns answers the oldest transaction in ``recipients``, as in _drain()."""
    conn.data_to_send()
    state, phase, received = conn.state, conn.phase, conn.replies_received
    try:
        event = call(conn)
        if isinstance(event, TransactionResult) and recipients is not None:
            assert recipients, "a result for no transaction"
            assert len(event.recipients) == recipients.pop(0)
    except LocalProtocolError:
        assert (conn.state, conn.phase, conn.data_to_send()) == (state, phase, b"")
        if name == "next_event":
            assert state in _IDLE, f"next_event() raised in {state}"
        if name == "receive_data":
            assert state is ClientState.TLS_HANDSHAKE
        return False
    finally:
        assert isinstance(conn.phase, Phase)
        assert conn.replies_received >= received
    if name.startswith("start") and conn.state is ClientState.READY:
        assert conn.data_to_send() == b""
    return True


def _drain(conn: ClientConnection, recipients: list[int]) -> None:
    """next_event() until a Signal: it raises only when nothing is awaited. Each
    TransactionResult answers the oldest transaction started (``recipients``: their
    sizes, oldest first) and obeys _check_outcome()."""
    for _ in range(20):
        state = conn.state
        try:
            event = conn.next_event()
        except LocalProtocolError:
            assert state in _IDLE, f"next_event() raised in {state}"
            return
        if isinstance(event, Signal):
            return
        if isinstance(event, TransactionResult):
            assert recipients, "a result for no transaction"
            assert len(event.recipients) == recipients.pop(0)
            for x in event.recipients:
                _check_outcome(x)
        if isinstance(event, ConnectionClosed):
            assert conn.state is ClientState.CLOSED


def _check_outcome(x: object) -> None:
    """What any outcome obeys: DELIVERED only on a 2xx after the data; a LOCAL decision
    is PERMANENT with a reason and no reply; any other outcome without a reply was
    settled by the connection ending (TEMPORARY or UNKNOWN, with how it ended); an
    outcome with a reply is what its code says, or UNKNOWN (with the reason) after the
    data when more replies came than were due."""
    from lmtp_core import RecipientResult

    assert isinstance(x, RecipientResult)
    assert x.stage in (RC, DT, LC)
    if x.status is DEL:
        assert x.reply is not None and 200 <= x.reply.code < 300 and x.stage is DT
    if x.stage is LC:
        assert x.status is PRM and x.reply is None and x.reason
    elif x.reply is None:
        assert x.status in (TMP, UNK) and x.reason is not None  # "" if abort("") said so
    elif x.status is UNK:
        assert x.stage is DT and x.reason == DISTRUSTED
    else:
        code = x.reply.code // 100
        assert x.status is {2: DEL, 4: TMP, 5: PRM}[code] and x.reason is None


_CANONICAL: list[Call] = [
    ("start_transaction", lambda c: c.start_transaction(SENDER, [A, B]), 2),
    ("start_refused", lambda c: c.start_transaction(SENDER, [A, B], size=10**9, nul=True), 2),
    ("send_body", lambda c: c.send_body(b"hello\r\n"), 0),
    ("end_body", lambda c: c.end_body(), 0),
    ("quit", lambda c: c.quit(), 0),
    ("tls_established", lambda c: c.tls_established(), 0),
    ("receive_data", lambda c: c.receive_data(r(250)), 0),
    ("receive_eof", lambda c: c.receive_eof(), 0),
    ("abort", lambda c: c.abort("deadline"), 0),
    ("send_failed", lambda c: c.send_failed("write failed"), 0),
    ("next_event", lambda c: c.next_event(), 0),
]


def _run_calls(path: Path, calls: Sequence[Call]) -> None:
    conn = path.build()
    recipients = [path.recipients] if path.recipients else []
    for name, make, count in calls:
        if _apply(conn, name, make, recipients) and name.startswith("start"):
            recipients.append(count)  # its result comes, at once or later
        _drain(conn, recipients)


@pytest.mark.parametrize("call", _CANONICAL, ids=[name for name, _, _ in _CANONICAL])
@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_every_call_in_every_state(path: Path, call: Call) -> None:
    _run_calls(path, [call])


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(path=st.sampled_from(PATHS), calls=st.lists(_call_strategy(), min_size=1, max_size=8))
def test_sweep_random_calls(path: Path, calls: list[Call]) -> None:
    _run_calls(path, calls)


def test_check_envelope_refuses_before_any_connection() -> None:
    ClientConnection.check_envelope("", ["a@example.org", RcptTo("b@example.org")])
    ClientConnection.check_envelope(MailFrom("s@example.net"), ["a@example.org"])
    for sender, recipients in [
        (123, ["a@example.org"]),
        ("s@example.net", []),
        ("s@example.net", ["not an address"]),
        ("s@example.net\r\nRCPT TO:<x@y>", ["a@example.org"]),
    ]:
        # compiled, a wrongly typed argument is a TypeError before the method runs
        wrong_type = COMPILED and isinstance(sender, int)
        with pytest.raises(TypeError if wrong_type else LocalProtocolError):
            ClientConnection.check_envelope(sender, recipients)  # type: ignore[arg-type]


def test_smtputf8_parameter_takes_no_value() -> None:
    conn = ClientConnection()
    conn.receive_data(b"220 mx\r\n")
    assert conn.next_event() is Signal.NEED_DATA
    conn.receive_data(b"250-mx\r\n250 SMTPUTF8\r\n")
    assert isinstance(conn.next_event(), Ready)
    conn.data_to_send()
    with pytest.raises(LocalProtocolError, match="takes no value"):
        conn.start_transaction(MailFrom("s@example.net", (("SMTPUTF8", "yes"),)), ["a@x.org"])
    assert conn.data_to_send() == b""
    assert conn.reusable


def test_an_extra_reply_after_lhlo_never_gives_ready() -> None:
    # Found by the fuzzing helper: Ready used to come before the ConnectionClosed.
    conn = ClientConnection()
    conn.receive_data(b"220 mx\r\n")
    assert conn.next_event() is Signal.NEED_DATA
    conn.receive_data(b"250 mx\r\n250 2.0.0 extra\r\n")
    event = conn.next_event()
    assert isinstance(event, ConnectionClosed)
    assert isinstance(event.error, RemoteProtocolError)
    assert not conn.reusable


def test_an_absurd_size_parameter_is_no_limit_not_a_crash() -> None:
    conn = ClientConnection(limits=Limits(reply_line=8192))
    conn.receive_data(b"220 mx\r\n")
    conn.next_event()
    conn.receive_data(b"250-mx\r\n250 SIZE " + b"9" * 5000 + b"\r\n")
    event = conn.next_event()
    assert isinstance(event, Ready)
    assert event.capabilities.size is None
    conn.start_transaction("s@example.net", ["a@example.org"], size=10)  # no ValueError


def test_send_failed_after_a_final_reply_keeps_the_others_unknown() -> None:
    # a's final reply proves the dot arrived: a failed write cannot make b TEMPORARY.
    conn = ready("PIPELINING")
    conn.start_transaction(SENDER, [A, B])
    conn.data_to_send()
    conn.receive_data(r(250) * 3 + r(354))
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(BODY)
    conn.end_body()
    assert conn.data_to_send() == BODY + b".\r\n"
    conn.receive_data(r(250))  # a's final reply
    assert conn.next_event() is Signal.NEED_DATA
    conn.send_failed("write failed")
    result = conn.next_event()
    assert isinstance(result, TransactionResult)
    assert outcomes(result) == [(DEL, 250, DT), _UD]


def test_phase_of_the_rset_after_a_refused_pipelined_bdat_is_command() -> None:
    conn = ready("PIPELINING", "CHUNKING")
    conn.start_transaction(SENDER, [A])
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(BODY)
    conn.end_body()
    assert conn.next_event() is Signal.NEED_DATA
    conn.data_to_send()
    conn.receive_data(r(250) + r(550) + r(554, "no valid recipients"))
    assert conn.next_event() is Signal.NEED_DATA  # RSET is due, then its reply
    assert conn.data_to_send() == b"RSET\r\n"
    assert conn.phase is Phase.COMMAND
    conn.receive_data(r(250))
    result = conn.next_event()
    assert isinstance(result, TransactionResult)
    assert outcomes(result) == [(PRM, 550, RC)]
