"""The server's (stage, verb) table, held against a copy written here.

How it works. EXPECTED is this file's own table of which command is legal when and
the reply that refuses it everywhere else, written from the RFCs (RFC 5321 4.1.4 and
4.3.2: sequence errors are 503; RFC 2033 4.2: DATA without an accepted recipient is
503; RFC 3030: BINARYMIME excludes DATA, and a message begun with BDAT goes on with
BDAT only) and never read from lmtp_core. Each stage is reached through the public
API (STAGES: the bytes that lead there, and the ServerState it shows); every verb is
then sent in every stage, and what comes back must be what EXPECTED says, to the
byte: a legal command gets its own handler's first reply (LEGAL_REPLY); a refused
one gets the cell's reply, and then what its verb's refusal does (DATA: the session
ends; BDAT: its chunk is read and dropped first; the others: the session goes on, the
refusal counted against Limits.max_errors). Last, the code's table
(lmtp_core._server._TABLE) must equal this one cell by cell.
"""

from __future__ import annotations

import pytest

from lmtp_core import (
    ConnectionClosed,
    Limits,
    MessageData,
    Reply,
    ServerConnection,
    ServerState,
    Signal,
    StartTls,
)
from lmtp_core._server import _TABLE, ServerEvent, _Stage
from tests.core.helpers import default_policy

LHLO = b"LHLO client.example\r\n"
MAIL = b"MAIL FROM:<s@example.org>\r\n"
RCPT = b"RCPT TO:<a@example.org>\r\n"
NOOP = b"NOOP\r\n"

# name: (what leads there from the greeting, the ServerState it shows)
STAGES: dict[str, tuple[bytes, ServerState]] = {
    "need_lhlo": (b"", ServerState.NEED_LHLO),
    "ready": (LHLO, ServerState.READY),
    "mail": (LHLO + MAIL, ServerState.MAIL),
    "rcpt": (LHLO + MAIL + RCPT, ServerState.MAIL),
    "binary": (LHLO + b"MAIL FROM:<s@example.org> BODY=BINARYMIME\r\n" + RCPT, ServerState.MAIL),
    "chunks": (LHLO + MAIL + RCPT + b"BDAT 1\r\nx", ServerState.MAIL),
}
IN_TRANSACTION = ("mail", "rcpt", "binary", "chunks")

# One line per verb. The BDAT chunk holds a command, which must never run as one.
LINES = {
    "LHLO": LHLO,
    "MAIL": MAIL,
    "RCPT": b"RCPT TO:<b@example.org>\r\n",
    "DATA": b"DATA\r\n",
    "BDAT": b"BDAT 6\r\nNOOP\r\n",
    "RSET": b"RSET\r\n",
    "NOOP": NOOP,
    "VRFY": b"VRFY b\r\n",
    "QUIT": b"QUIT\r\n",
    "STARTTLS": b"STARTTLS\r\n",
    "HELO": b"HELO client.example\r\n",
    "EHLO": b"EHLO client.example\r\n",
}
# What a legal command answers first (the application accepts MAIL and RCPT).
LEGAL_REPLY = {
    "LHLO": b"250-mx.example.org\r\n",
    "MAIL": b"250 2.1.0 OK\r\n",
    "RCPT": b"250 2.1.5 OK\r\n",
    "DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    "BDAT": b"250 2.0.0 Chunk received\r\n",
    "RSET": b"250 2.0.0 OK\r\n",
    "NOOP": b"250 2.0.0 OK\r\n",
    "VRFY": b"252 2.5.0 Cannot VRFY user, but will accept message\r\n",
    "QUIT": b"221 2.0.0 Bye\r\n",
    "STARTTLS": b"220 2.0.0 Ready to start TLS\r\n",
}

LEGAL = None
SEND_LHLO = "503 5.5.1 Send LHLO first"
NESTED = "503 5.5.1 Nested MAIL command"
SEND_MAIL = "503 5.5.1 Send MAIL first"
NO_RECIPIENTS = "503 5.5.1 No valid recipients"
NO_DATA = "503 5.5.1 BINARYMIME and BDAT exclude DATA"
NOT_LMTP = "500 5.5.1 This is an LMTP server: use LHLO"

EXPECTED: dict[str, dict[str, str | None]] = {
    "LHLO": dict.fromkeys(STAGES, LEGAL),
    "MAIL": {"need_lhlo": SEND_LHLO, "ready": LEGAL, **dict.fromkeys(IN_TRANSACTION, NESTED)},
    "RCPT": {
        "need_lhlo": SEND_MAIL,
        "ready": SEND_MAIL,
        "mail": LEGAL,
        "rcpt": LEGAL,
        "binary": LEGAL,
        "chunks": SEND_MAIL,
    },
    "DATA": {
        "need_lhlo": SEND_MAIL,
        "ready": SEND_MAIL,
        "mail": NO_RECIPIENTS,
        "rcpt": LEGAL,
        "binary": NO_DATA,
        "chunks": NO_DATA,
    },
    "BDAT": {
        "need_lhlo": SEND_MAIL,
        "ready": SEND_MAIL,
        "mail": NO_RECIPIENTS,
        "rcpt": LEGAL,
        "binary": LEGAL,
        "chunks": LEGAL,
    },
    **{verb: dict.fromkeys(STAGES, LEGAL) for verb in ("RSET", "NOOP", "VRFY", "QUIT", "STARTTLS")},
    "HELO": dict.fromkeys(STAGES, NOT_LMTP),
    "EHLO": dict.fromkeys(STAGES, NOT_LMTP),
}
LEGAL_PAIRS = [(s, v) for v, row in EXPECTED.items() for s, cell in row.items() if cell is LEGAL]
REFUSED_PAIRS = [(s, v) for v, row in EXPECTED.items() for s, cell in row.items() if cell]
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing the connection")


def wire(reply: str) -> bytes:
    return reply.encode() + b"\r\n"


def parse(reply: str) -> Reply:
    code, enhanced, text = reply.split(" ", 2)
    return Reply(int(code), enhanced, text)


def at(stage: str, limits: Limits | None = None) -> ServerConnection:
    conn = ServerConnection("mx.example.org", limits=limits, tls_available=True)
    setup, state = STAGES[stage]
    events, _ = pump(conn, setup)
    assert conn.state is state
    assert not any(isinstance(e, ConnectionClosed) for e in events)
    return conn


def pump(conn: ServerConnection, data: bytes) -> tuple[list[ServerEvent], bytes]:
    """Feed `data`, answer with the default policy, and drain until NEED_DATA, a
    StartTls (its handshake is not run) or ConnectionClosed."""
    conn.receive_data(data)
    events: list[ServerEvent] = []
    while (event := conn.next_event()) is not Signal.NEED_DATA:
        events.append(event)
        for reply in default_policy(event, conn):
            conn.send(reply)
        if isinstance(event, StartTls | ConnectionClosed):
            break
    return events, conn.data_to_send()


def test_the_table_covers_every_stage_and_verb() -> None:
    assert set(EXPECTED) == set(LINES)
    assert all(set(row) == set(STAGES) for row in EXPECTED.values())
    assert {v for _, v in LEGAL_PAIRS} == set(LEGAL_REPLY)


@pytest.mark.parametrize(("stage", "verb"), LEGAL_PAIRS)
def test_a_legal_command_runs_its_handler(stage: str, verb: str) -> None:
    conn = at(stage)
    events, out = pump(conn, LINES[verb])
    assert out.startswith(LEGAL_REPLY[verb])
    if verb == "BDAT":
        assert events == [MessageData(b"NOOP\r\n")]


@pytest.mark.parametrize(("stage", "verb"), REFUSED_PAIRS)
def test_a_refused_command_gets_the_tables_reply(stage: str, verb: str) -> None:
    refusal = EXPECTED[verb][stage]
    assert refusal is not None
    conn = at(stage)
    events, out = pump(conn, LINES[verb] + NOOP)
    if verb == "DATA":  # the session ends: the NOOP after it never runs
        closing = f"{refusal}; closing the connection"
        assert out == wire(closing)
        assert events == [ConnectionClosed("DATA refused", parse(closing))]
        assert conn.state is ServerState.CLOSED
        return
    # The refusal (after the BDAT chunk, whose NOOP is message text and never runs),
    # the NOOP's own 250, no event, and the stage as it was.
    assert out == wire(refusal) + b"250 2.0.0 OK\r\n"
    assert events == []
    assert conn.state is STAGES[stage][1]


@pytest.mark.parametrize(("stage", "verb"), [p for p in REFUSED_PAIRS if p[1] != "DATA"])
def test_a_refusal_counts_against_the_error_budget(stage: str, verb: str) -> None:
    refusal = EXPECTED[verb][stage]
    assert refusal is not None
    conn = at(stage, Limits(max_errors=1))
    events, out = pump(conn, LINES[verb] * 2)
    assert out == wire(refusal) + b"421 4.7.0 Too many errors, closing the connection\r\n"
    assert events == [ConnectionClosed("too many errors", TOO_MANY_ERRORS)]


@pytest.mark.parametrize("stage", list(STAGES))
def test_data_with_an_argument_is_refused_first_in_every_stage(stage: str) -> None:
    conn = at(stage)
    events, out = pump(conn, b"DATA now\r\n" + NOOP)
    closing = "501 5.5.4 Syntax: DATA; closing the connection"
    assert out == wire(closing)
    assert events == [ConnectionClosed("DATA refused", parse(closing))]


@pytest.mark.parametrize("stage", list(STAGES))
def test_bdat_without_a_size_ends_the_session_in_every_stage(stage: str) -> None:
    conn = at(stage)
    events, out = pump(conn, b"BDAT six\r\nNOOP\r\n")
    assert out == b"501 5.5.4 Syntax: BDAT size [LAST]\r\n"
    assert events == [
        ConnectionClosed("BDAT without a valid size", parse("501 5.5.4 Syntax: BDAT size [LAST]"))
    ]


@pytest.mark.parametrize("line", [b"XYZZY\r\n", b"MAILX FROM:<s@example.org>\r\n", b"\xc4\xb1\r\n"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_a_verb_outside_the_table_is_unknown_in_every_stage(stage: str, line: bytes) -> None:
    conn = at(stage)
    events, out = pump(conn, line + NOOP)
    assert out == b"500 5.5.1 Unknown command\r\n250 2.0.0 OK\r\n"
    assert events == []
    assert conn.state is STAGES[stage][1]


def test_the_codes_table_is_this_table() -> None:
    assert [stage.name.lower() for stage in _Stage] == list(STAGES)
    assert set(_TABLE) == set(EXPECTED)
    for verb, row in EXPECTED.items():
        for stage, cell in row.items():
            code = _TABLE[verb][_Stage[stage.upper()]]
            assert code == (None if cell is None else parse(cell)), (verb, stage)
