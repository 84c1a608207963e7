"""Fuzz target: the server core, lmtp_core.ServerConnection, fed an arbitrary client session.

Invariant: whatever a client sends, no exception escapes the server core, it writes the same
bytes and returns the same events (adjacent MessageData merged, a refused message's
dropped) however the input is split,
its receive buffer stays bounded whenever it asks for more data, and at EndOfData it owes
exactly one reply per RCPT it accepted in that transaction.

Also checked: everything the server writes parses as replies with the client's reader,
next_event() never returns NEED_DATA while a complete command (or the end of the data)
is buffered, and a message the core refuses is answered once per accepted recipient.

How it is driven: like tests/core/helpers.run_server, answering every MailFrom, RcptTo
and EndOfData at once and completing STARTTLS at once. STARTTLS discards what the client
pipelined behind it (by design, so the result depends on where a read ends); the split
variants are therefore also cut where the handshake happens (found with the byte-by-byte
run), as a real client's bytes are, and one extra run without those cuts is checked for
everything but equality.

Input flags (tests/fuzz/_input.py): bit 0 STARTTLS offered, bit 1 BareLineEndings.NORMALIZE,
bit 2 small limits, bit 3 end of file after the input, bit 4 a picky policy (refuses
addresses starting with "n", 452 for every second recipient after the data), bit 5 TLS
already active. Run: ``python -m tests.fuzz.fuzz_server [corpus dir] [libFuzzer flags]``.
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
    BareLineEndings,
    ConnectionClosed,
    EndOfData,
    Lhlo,
    Limits,
    MailFrom,
    MessageData,
    MessageRefused,
    Quit,
    RcptTo,
    Reply,
    Rset,
    ServerConnection,
    ServerState,
    Signal,
    StartTls,
)
from lmtp_core._buffer import ReceiveBuffer
from lmtp_core._readers import ReplyReader
from lmtp_core._server import ServerEvent
from lmtp_core._writers import write_reply
from tests.fuzz._input import FuzzInput, parse, splits

SMALL = Limits(command_line=64, text_line=80, max_recipients=3, max_message_size=300, max_errors=5)
OK_MAIL = Reply(250, "2.1.0", "OK")
OK_RCPT = Reply(250, "2.1.5", "OK")
SAVED = Reply(250, "2.0.0", "Saved")
NO_SENDER = Reply(550, "5.7.1", "Sender refused")
NO_USER = Reply(550, "5.1.1", "No such user")
FULL = Reply(452, "4.2.2", "Mailbox full")
COMMAND_STATES = (ServerState.NEED_LHLO, ServerState.READY, ServerState.MAIL)
#: The most a DATA body may leave buffered: a possible "\r\n.\r" and a CR it won't split.
DATA_HOLD = 5


@dataclass(frozen=True, slots=True)
class Options:
    tls_available: bool
    normalize: bool
    limits: Limits
    eof: bool
    picky: bool
    tls_active: bool

    @classmethod
    def from_flags(cls, flags: int) -> Options:
        return cls(
            tls_available=bool(flags & 1),
            normalize=bool(flags & 2),
            limits=SMALL if flags & 4 else Limits(),
            eof=bool(flags & 8),
            picky=bool(flags & 16),
            tls_active=bool(flags & 32),
        )


@dataclass
class Run:
    """What one way of feeding gave."""

    events: list[ServerEvent] = field(default_factory=list)
    output: bytearray = field(default_factory=bytearray)
    #: Input offsets at which StartTls came (exact in the byte-by-byte run).
    tls_offsets: list[int] = field(default_factory=list)


def check_buffer(conn: ServerConnection, limits: Limits) -> None:
    """After NEED_DATA: the buffer is bounded and holds nothing the core could act on."""
    held = conn._buffer.peek()
    if conn.state in COMMAND_STATES:
        assert len(held) < limits.command_line, (conn.state, len(held))
        assert b"\r\n" not in held, f"NEED_DATA with a command line buffered: {held[:80]!r}"
    elif conn.state is ServerState.DATA:
        assert len(held) <= DATA_HOLD, (conn.state, len(held))
        assert b"\r\n.\r\n" not in held, "NEED_DATA with the end of the data buffered"
    else:
        assert conn.state is ServerState.BDAT, conn.state
        assert not held, f"NEED_DATA in BDAT with {len(held)} octets buffered"


def run(chunks: list[bytes], options: Options) -> Run:
    """Feed ``chunks`` to a fresh ServerConnection, answering every event at once."""
    conn = ServerConnection(
        "mx.example.org",
        limits=options.limits,
        tls_available=options.tls_available,
        tls_active=options.tls_active,
        bare_line_endings=(
            BareLineEndings.NORMALIZE if options.normalize else BareLineEndings.REJECT
        ),
    )
    result = Run()
    out = result.output
    out += conn.data_to_send()
    accepted = 0  # RCPTs accepted in the transaction in progress, as we answered them
    fed = 0

    def drain() -> bool:
        """Take events until NEED_DATA (False) or ConnectionClosed (True)."""
        nonlocal accepted
        while True:
            event = conn.next_event()
            out.extend(conn.data_to_send())
            if event is Signal.NEED_DATA:
                check_buffer(conn, options.limits)
                return False
            assert event is not Signal.PAUSED, "PAUSED though every reply was given"
            result.events.append(event)
            if isinstance(event, MailFrom):
                accepted = 0
                picky = options.picky and event.address.startswith("n")
                conn.send(NO_SENDER if picky else OK_MAIL)
            elif isinstance(event, RcptTo):
                if options.picky and event.address.lower().startswith("n"):
                    conn.send(NO_USER)
                else:
                    conn.send(OK_RCPT)
                    accepted += 1
            elif isinstance(event, EndOfData):
                assert accepted >= 1, "EndOfData with no recipient accepted"
                assert conn.owed_replies == accepted, (conn.owed_replies, accepted)
                for index in range(accepted):
                    conn.send(FULL if options.picky and index % 2 else SAVED)
                assert conn.owed_replies == 0
                accepted = 0
            elif isinstance(event, MessageRefused):
                assert accepted >= 1, "MessageRefused with no recipient accepted"
                assert conn.owed_replies == 0
                refusals = write_reply(event.reply) * accepted  # the last bytes queued
                assert out.endswith(refusals), bytes(out[-200:])
                accepted = 0
            elif isinstance(event, Lhlo | Rset):
                accepted = 0
            elif isinstance(event, StartTls):
                accepted = 0
                result.tls_offsets.append(fed)
                conn.tls_established()
            elif isinstance(event, ConnectionClosed):
                return True
            else:
                assert isinstance(event, MessageData | Quit), event
            out.extend(conn.data_to_send())

    for chunk in chunks:
        conn.receive_data(chunk)
        fed += len(chunk)
        if drain():
            return result
    if options.eof:
        conn.receive_eof()
        closed = drain()
        assert closed, "no ConnectionClosed after the end of file"
    return result


def check_output(output: bytes) -> None:
    """The client's reader accepts every byte the server wrote, as whole replies."""
    buffer = ReceiveBuffer()
    buffer.feed(output)
    reader = ReplyReader(Limits())
    while reader.read(buffer) is not None:
        pass
    assert not buffer and not reader.partial, f"unfinished reply at the end: {buffer.peek()!r}"


def merge(events: list[ServerEvent]) -> list[ServerEvent]:
    """Merge adjacent MessageData and drop empty ones (their boundaries follow the
    input's), and drop those of a message that did not end in EndOfData (refused, or
    cut short): how much of it was released before the core saw a reason to refuse it
    depends on the split, and the application drops it all anyway."""
    merged: list[ServerEvent] = []
    for event in [*events, None]:
        if isinstance(event, MessageData):
            if merged and isinstance(merged[-1], MessageData):
                merged[-1] = MessageData(merged[-1].data + event.data)
            elif event.data:
                merged.append(event)
            continue
        if not isinstance(event, EndOfData):
            while merged and isinstance(merged[-1], MessageData):
                merged.pop()
        if event is not None:
            merged.append(event)
    return merged


def difference(
    left: tuple[list[ServerEvent], bytes], right: tuple[list[ServerEvent], bytes]
) -> str:
    """Where two runs first differ, briefly (the full reprs can be megabytes)."""
    for index, (a, b) in enumerate(zip(left[0], right[0], strict=False)):
        if a != b:
            return f"event {index}: {a!r:.200} != {b!r:.200}"
    if len(left[0]) != len(right[0]):
        return f"{len(left[0])} events != {len(right[0])} events"
    out_a, out_b = left[1], right[1]
    pairs = enumerate(zip(out_a, out_b, strict=False))
    at = next((i for i, (a, b) in pairs if a != b), min(len(out_a), len(out_b)))
    return f"output differs at {at}: {out_a[at : at + 80]!r} != {out_b[at : at + 80]!r}"


def TestOneInput(data: bytes) -> None:
    """Run the session every way and compare; see the module docstring."""
    fuzz: FuzzInput = parse(data)
    options = Options.from_flags(fuzz.flags)
    whole, by_byte, *fuzzed = splits(fuzz)
    reference = run(by_byte, options)
    check_output(bytes(reference.output))
    expected = (merge(reference.events), bytes(reference.output))
    whole_cut, _, *fuzzed_cut = splits(fuzz, at=reference.tls_offsets)
    for chunks in [whole_cut, *fuzzed_cut]:
        other = run(chunks, options)
        got = (merge(other.events), bytes(other.output))
        assert got == expected, f"byte by byte vs {len(chunks)} pieces: " + difference(
            expected, got
        )
    if reference.tls_offsets:  # pipelined behind STARTTLS: safe, not equal
        for chunks in [whole, *fuzzed]:
            check_output(bytes(run(chunks, options).output))


def main() -> None:
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
