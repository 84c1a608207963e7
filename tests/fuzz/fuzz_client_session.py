"""Fuzz target: the client core, lmtp_core.ClientConnection, fed arbitrary server bytes.

Invariant: whatever a server sends, in whatever pieces, the client never raises and ends
with one ConnectionClosed, after exactly one TransactionResult if a transaction started
(none if the session never became usable), holding one outcome per recipient, and a
recipient is DELIVERED only if the server's MAIL reply, that recipient's RCPT reply and
its reply after the data were all 2xx, at the positions where the client pairs them, none
of that last reply had come before the end of the data went out, and no byte beyond the
last reply due had come in the read that brought that reply.

The oracle reads the server's bytes with its own loose line splitter (never the core's
reader), finds the nth complete reply by position (greeting, LHLO, [STARTTLS, LHLO],
MAIL, three RCPT, DATA or every BDAT chunk but the last, then one reply per accepted
recipient) and checks every outcome that carries a reply against it. An outcome
without a reply is UNKNOWN if data_to_send() handed out the end of the data (the final
dot, or the BDAT ... LAST chunk) before the transaction was settled, else TEMPORARY; its
stage is DATA if the client had read a 2xx reply to MAIL and to that recipient's RCPT
(replies_received says how many replies it read), else RCPT, and its reason is set (how
the connection ended). replies_received never exceeds the number of complete replies
the oracle finds.

Messages this server cannot take: with size= given and the server's SIZE below the
body's, start_transaction() gives the result at once, every recipient PERMANENT at
Stage.LOCAL with no reply and a reason, and no MAIL is ever written (the body needs
nothing else: it is ASCII, short-lined, without NUL). Surplus replies: when the
transaction ended normally (the client was READY with the result, or closed at once for
a reply that answers no command) and the read that brought its last reply due held more
bytes, every DATA-stage outcome is UNKNOWN with its reply kept and the reason, the
connection closes for the unsolicited reply, and nothing more is written; otherwise no
outcome is UNKNOWN with a reply.

The session: greeting, LHLO, one transaction from sender@example.net to alice, bob and
alice again (duplicates are legal), then QUIT, then end of file after the last byte.
Input flags (tests/fuzz/_input.py): bit 0 require_starttls (TLS completes at once),
bit 1 chunking off (DATA), bit 2 the body in 7-octet pieces, bit 3 size= given, bit 4
trace on, bit 5 16-octet BDAT chunks, bit 6 one body piece per NEED_BODY (streaming),
bit 7 small reply limits (64-octet lines, 3 lines a reply).
Run: ``python -m tests.fuzz.fuzz_client_session [corpus dir] [libFuzzer flags]``.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    import atheris

    atheris.enabled_hooks.add("RegEx")
    atheris.enabled_hooks.add("str")
    with atheris.instrument_imports(include=["lmtp_core"]):
        import lmtp_core  # noqa: F401

from dataclasses import dataclass, field

from lmtp_core import (
    ClientConnection,
    ConnectionClosed,
    Limits,
    Ready,
    RecipientResult,
    RemoteProtocolError,
    Signal,
    Stage,
    StartTls,
    Status,
    TransactionResult,
)
from tests.fuzz._input import parse, splits

SENDER = "sender@example.net"
DEFAULTS = Limits()
RECIPIENTS = ("alice@example.org", "bob@example.org", "alice@example.org")
BODY = (
    b"From: <sender@example.net>\r\nTo: <alice@example.org>\r\nSubject: fuzz\r\n\r\n"
    b"Hello.\r\n.a line with a leading dot\r\n..\r\n.\r\nlast line without CRLF"
)


@dataclass(frozen=True, slots=True)
class Options:
    require_starttls: bool
    chunking: bool
    body_piece: int
    size: bool
    trace: bool
    limits: Limits
    stream: bool

    @classmethod
    def from_flags(cls, flags: int) -> Options:
        return cls(
            require_starttls=bool(flags & 1),
            chunking=not flags & 2,
            body_piece=7 if flags & 4 else len(BODY),
            size=bool(flags & 8),
            trace=bool(flags & 16),
            limits=Limits(
                bdat_chunk=16 if flags & 32 else DEFAULTS.bdat_chunk,
                reply_line=64 if flags & 128 else DEFAULTS.reply_line,
                reply_lines=3 if flags & 128 else DEFAULTS.reply_lines,
            ),
            stream=bool(flags & 64),
        )


@dataclass
class Session:
    """What the client did with one way of feeding."""

    events: list[object] = field(default_factory=list)
    sent: bytearray = field(default_factory=bytearray)  # every byte the client wrote
    started: bool = False  # start_transaction() was called
    local: bool = False  # ... for a message over the server's SIZE: refused here
    ended: bool = False  # end_body() was called
    end_sent: bool = False  # data_to_send() handed out the end while the transaction was open
    fed: int = 0  # server bytes given to receive_data() so far
    fed_at_end: int = 0  # ... when the end of data was handed out
    results: int = 0  # TransactionResults returned so far
    received_at_result: int = 0  # conn.replies_received when the result came
    ready_at_result: bool = False  # conn.reusable then
    sent_at_result: int = 0  # len(sent) once the result's turn was written
    received: int = 0  # conn.replies_received at the end
    tls: bool = False
    bdat: bool = False


def drive(chunks: list[bytes], options: Options) -> Session:
    """Run one client session over ``chunks``, then end of file."""
    conn = ClientConnection(
        lhlo_name="client.example",
        require_starttls=options.require_starttls,
        chunking=options.chunking,
        limits=options.limits,
        trace=options.trace,
    )
    session = Session()
    pending = iter(chunks)
    eof = False
    body_offset = 0
    while True:
        event = conn.next_event()
        if isinstance(event, TransactionResult):
            session.results += 1
            session.received_at_result = conn.replies_received
            session.ready_at_result = conn.reusable
        sent = conn.data_to_send()
        session.sent += sent
        if isinstance(event, TransactionResult):
            session.sent_at_result = len(session.sent)
        if sent and session.ended and not session.results and not session.end_sent:
            # The first write after end_body() holds the final dot; with BDAT the end
            # is the LAST chunk, which may come a few chunks later.
            session.end_sent = not session.bdat or b" LAST\r\n" in sent
            session.fed_at_end = session.fed
        for _side, line in conn.take_trace():
            assert "\r" not in line and "\n" not in line, f"line break in the trace: {line!r}"
        if event is Signal.NEED_DATA:
            assert not eof, "NEED_DATA after end of file"
            chunk = next(pending, None)
            if chunk is None:
                eof = True
                conn.receive_eof()
            else:
                conn.receive_data(chunk)
                session.fed += len(chunk)
        elif event is Signal.NEED_BODY:
            # Either one piece per NEED_BODY (as the drivers stream a file) or all at once.
            while body_offset < len(BODY):
                conn.send_body(BODY[body_offset : body_offset + options.body_piece])
                body_offset += options.body_piece
                if options.stream:
                    break
            else:
                conn.end_body()
                session.ended = True
        elif isinstance(event, Ready):
            session.events.append(event)
            # The core can queue ConnectionClosed right behind Ready (extra bytes after
            # the LHLO reply); start_transaction() would then raise, so look first.
            if not conn.reusable:
                continue
            caps = event.capabilities
            # Never raises here: the envelope is valid, and what this server cannot
            # take (a message over its SIZE) is an outcome, given at once.
            conn.start_transaction(SENDER, RECIPIENTS, size=len(BODY) if options.size else None)
            session.started = True
            session.local = options.size and caps.size is not None and caps.size < len(BODY)
            session.bdat = options.chunking and "CHUNKING" in caps
            assert conn.reusable is session.local, "READY after start_transaction()"
        elif isinstance(event, TransactionResult):
            session.events.append(event)
            if conn.reusable:
                conn.quit()
        elif isinstance(event, StartTls):
            session.events.append(event)
            session.tls = True
            conn.tls_established()
        elif isinstance(event, ConnectionClosed):
            session.events.append(event)
            session.sent += conn.data_to_send()
            session.received = conn.replies_received
            return session
        else:
            raise AssertionError(f"unexpected event {event!r}")


def reply_codes(stream: bytes) -> list[int]:
    """The code of each complete reply in ``stream``, read loosely: CRLF-ended lines of
    three digits, "-" after them continuing the reply; stops at the first other line."""
    return [code for code, _ in replies(stream)]


def replies(stream: bytes) -> list[tuple[int, int]]:
    """(code, offset just past its last CRLF) of each complete reply, read as
    reply_codes() says."""
    found: list[tuple[int, int]] = []
    first: int | None = None
    offset = 0
    for line in stream.split(b"\r\n")[:-1]:
        if len(line) < 3 or not line[:3].isdigit():
            break
        offset += len(line) + 2
        if first is None:
            first = int(line[:3])
        if line[3:4] != b"-":
            found.append((first, offset))
            first = None
    return found


def same_read(chunks: list[bytes], end: int) -> bool:
    """Whether the byte at offset ``end`` came in the read that brought the one before."""
    offset = 0
    for chunk in chunks:
        offset += len(chunk)
        if offset >= end:
            return offset > end
    return False


def _tail(chunks: list[bytes], end: int) -> bytes:
    """What the read holding offset ``end`` brought from there on: the bytes the client
    had at hand after the last reply due (a 421 among them is no surplus: the server
    says it is closing, which it may at any time)."""
    offset = 0
    for chunk in chunks:
        if offset + len(chunk) > end:
            return chunk[end - offset :]
        offset += len(chunk)
    return b""


UNSOLICITED = "reply from the server that answers no command"
DISTRUSTED = "more replies came than were due: the pairing cannot be trusted"


def check_outcome(
    index: int, outcome: RecipientResult, found: list[tuple[int, int]], session: Session
) -> None:
    """One recipient's outcome against the replies (``found``: code, end offset) at the
    positions it pairs with."""
    codes = [code for code, _ in found]
    assert outcome.recipient == RECIPIENTS[index], outcome
    reply = outcome.reply
    if session.local:  # over the server's SIZE: decided here, nothing asked
        assert (outcome.status, reply, outcome.stage) == (Status.PERMANENT, None, Stage.LOCAL)
        assert outcome.reason and "SIZE" in outcome.reason, outcome
        return
    assert outcome.stage is not Stage.LOCAL, outcome
    mail = 4 if session.tls else 2  # position of the MAIL reply
    rcpt = mail + 1
    if reply is None:
        status = Status.UNKNOWN if session.end_sent else Status.TEMPORARY
        assert outcome.status is status, (outcome, session.end_sent)
        read = codes[: session.received]  # the replies the client read
        accepted = rcpt + index < len(read) and read[mail] < 300 and read[rcpt + index] < 300
        assert outcome.stage is (Stage.DATA if accepted else Stage.RCPT), (outcome, read)
        assert outcome.reason is not None, outcome  # how the connection ended
        return
    if outcome.status is Status.UNKNOWN:  # surplus replies: checked in check()
        assert outcome.stage is Stage.DATA and outcome.reason == DISTRUSTED, outcome
    else:
        expected = {2: Status.DELIVERED, 4: Status.TEMPORARY, 5: Status.PERMANENT}
        assert outcome.status is expected[reply.code // 100], outcome
        assert outcome.reason is None, outcome
    data = rcpt + len(RECIPIENTS)  # the reply to DATA, or to the first BDAT chunk
    chunks = session.sent.count(b"BDAT ")
    finals = data + (max(chunks - 1, 0) if session.bdat else 1)

    def code(position: int) -> int:
        assert position < len(codes), f"no reply #{position} in the stream: {codes}"
        return codes[position]

    if outcome.stage is Stage.RCPT:
        source = mail if code(mail) >= 300 else rcpt + index
        assert reply.code == code(source), (outcome, source, codes)
        return
    assert outcome.stage is Stage.DATA, outcome
    assert code(mail) < 300 and code(rcpt + index) < 300, (outcome, codes)
    rank = sum(code(rcpt + k) < 300 for k in range(index))  # its place among the accepted
    own = finals + rank  # this recipient's reply after the data
    # A refusal may also be the reply to DATA or to any BDAT chunk (the last one sent
    # stands at ``finals`` when it was refused before the end).
    sources = [own, *range(data, finals + 1)]
    assert reply.code in {codes[p] for p in sources if p < len(codes)}, (outcome, codes)
    if outcome.status is Status.DELIVERED:
        assert reply.code == code(own), (outcome, own, codes)
        assert all(code(p) < 300 or code(p) == 354 for p in range(data, finals)), codes
        # Its reply answers the end of data, so none of it came before the end went out
        # (the core closes on a reply ahead of what it would answer).
        start = found[own - 1][1]  # where the reply before it ends
        assert start >= session.fed_at_end, (outcome, start, session.fed_at_end)


def check(session: Session, stream: bytes, chunks: list[bytes]) -> None:
    """The invariants of the module docstring, for one way of feeding (``chunks``)."""
    events = session.events
    closed = events[-1]
    assert isinstance(closed, ConnectionClosed)
    found = replies(stream)
    codes = [code for code, _ in found]
    assert session.received <= len(codes), (session.received, codes)
    assert sum(isinstance(e, ConnectionClosed) for e in events) == 1, events
    assert sum(isinstance(e, Ready) for e in events) <= 1, events
    results = [e for e in events if isinstance(e, TransactionResult)]
    assert len(results) == (1 if session.started else 0), events
    if not results:
        return
    outcomes = results[0].recipients
    assert len(outcomes) == len(RECIPIENTS), outcomes
    for index, outcome in enumerate(outcomes):
        check_outcome(index, outcome, found, session)
    if session.local:
        assert b"MAIL" not in session.sent, session.sent
        return
    # Surplus: the transaction ended normally (READY with its result, or closed at once
    # for the reply that answers nothing) with more bytes in the read of its last reply.
    # A transaction with an outcome after the data ends normally only once the end of
    # data or the RSET went out: closed for a reply that answers nothing before that,
    # it was cut short by a reply ahead of what it would answer.
    after = events[events.index(results[0]) + 1]
    normal = session.ready_at_result or (
        isinstance(after, ConnectionClosed)
        and after.reason == UNSOLICITED
        and (session.end_sent or b"RSET\r\n" in session.sent)
    )
    last = session.received_at_result
    end = found[last - 1][1]
    surplus = normal and same_read(chunks, end) and not _tail(chunks, end).startswith(b"421")
    distrusted = [x for x in outcomes if x.status is Status.UNKNOWN and x.reply is not None]
    if not surplus:
        assert not distrusted, outcomes
        return
    assert all(x in distrusted for x in outcomes if x.stage is Stage.DATA), outcomes
    assert after is closed and closed.reason == UNSOLICITED, events
    assert isinstance(closed.error, RemoteProtocolError), closed
    assert len(session.sent) == session.sent_at_result, "written after a surplus reply"


def TestOneInput(data: bytes) -> None:
    """Run the session every way and check each; see the module docstring."""
    fuzz = parse(data)
    options = Options.from_flags(fuzz.flags)
    for chunks in splits(fuzz):
        check(drive(chunks, options), fuzz.payload, chunks)


def main() -> None:
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
