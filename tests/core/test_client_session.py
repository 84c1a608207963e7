"""The client session (lmtp_core.ClientConnection), through its public API: the greeting
and LHLO (refusals, capability parsing, never HELO/EHLO); many transactions on one
connection, and QUIT; STARTTLS (required, refused, a fresh LHLO after it, response
injection); the transcript (trace=True) and reusable. The scripted server and the other
helpers are in client_harness.py.
"""

from __future__ import annotations

import pytest

from lmtp_core import (
    Capabilities,
    ClientConnection,
    ClientState,
    ConnectionClosed,
    Limits,
    LocalProtocolError,
    Phase,
    Ready,
    RemoteProtocolError,
    Reply,
    Signal,
    StartTls,
    TransactionResult,
)
from tests.core.client_harness import (
    BODY,
    DATA,
    DEL,
    DT,
    GREETING,
    LHLO,
    MAIL,
    PRM,
    QUIT,
    RC,
    RSET,
    SENDER,
    TMP,
    A,
    B,
    C,
    FakeServer,
    Txn,
    client,
    drive,
    hello,
    lhlo,
    outcomes,
    r,
    rcpt,
    ready,
    run_splits,
)
from tests.core.helpers import every_split

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


def test_an_absurd_size_parameter_is_no_limit_not_a_crash() -> None:
    conn = ClientConnection(limits=Limits(reply_line=8192))
    conn.receive_data(b"220 mx\r\n")
    conn.next_event()
    conn.receive_data(b"250-mx\r\n250 SIZE " + b"9" * 5000 + b"\r\n")
    event = conn.next_event()
    assert isinstance(event, Ready)
    assert event.capabilities.size is None
    conn.start_transaction("s@example.net", ["a@example.org"], size=10)  # no ValueError


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
