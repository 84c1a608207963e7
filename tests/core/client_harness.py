"""The client's test harness: a scripted server, and the constants and helpers the
tests/core/test_client_*.py modules share.

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
FakeServer is a server as a function of what the client wrote.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from hypothesis import strategies as st

from lmtp_core import (
    ClientConnection,
    ClientState,
    ConnectionClosed,
    MailFrom,
    Phase,
    RcptTo,
    Ready,
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

# Without a reply the stage is where the recipient got to: DATA once its RCPT was
# accepted, else RCPT (its RCPT reply, or MAIL's, never came).
TR: Outcome = (TMP, None, RC)
TD: Outcome = (TMP, None, DT)
UR: Outcome = (UNK, None, RC)
UD: Outcome = (UNK, None, DT)
# With a reply: refused at RCPT (b, in most tests), and delivered.
REFUSED: Outcome = (PRM, 550, RC)
DELIVERED: Outcome = (DEL, 250, DT)

#: A server that offers every extension the client uses.
ALL_EXTENSIONS = (
    "PIPELINING",
    "SIZE 1000",
    "8BITMIME",
    "SMTPUTF8",
    "DSN",
    "CHUNKING",
    "BINARYMIME",
)
#: An address that needs SMTPUTF8.
UTF8_ADDRESS = "用户@例子.广告"


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


def in_transaction(final: bytes) -> list[bytes]:
    """Pipelined DATA to a (accepted), b (refused); `final` comes after the data."""
    return [hello("PIPELINING"), r(250) + r(250) + r(550) + r(354), final]


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


def check_outcome(x: object) -> None:
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
