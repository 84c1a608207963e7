"""A hostile or broken server (lmtp_core.ClientConnection): malformed replies and
over-long lines or replies, arbitrary bytes (never an exception), UTF-8 reply text
(decoded, invalid UTF-8 replaced, C1 controls refused), and surplus replies (in the read
that brought the last reply due: no DATA outcome of that transaction stands; in a later
read: the result stands, and the next start_transaction() settles TEMPORARY and closes
without writing; a reply ahead of what it would answer closes before that is written).
The scripted server and the other helpers are in client_harness.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmtp_core import (
    ClientConnection,
    ClientState,
    ConnectionClosed,
    Limits,
    LocalProtocolError,
    Ready,
    RemoteProtocolError,
    Reply,
    Signal,
    Status,
    TransactionResult,
)
from tests.core.client_harness import (
    BODY,
    DATA,
    DEL,
    DELIVERED,
    DISTRUSTED,
    DT,
    GREETING,
    LC,
    LHLO,
    MAIL,
    PRM,
    RC,
    REFUSED,
    RSET,
    SENDER,
    TMP,
    TR,
    UD,
    UNK,
    UNSOLICITED,
    UTF8_ADDRESS,
    A,
    B,
    C,
    Outcome,
    Txn,
    bdat,
    check_outcome,
    closed_after,
    drive,
    hello,
    in_transaction,
    lhlo,
    outcomes,
    r,
    rcpt,
    ready,
    reasons,
    run_splits,
    same_read,
    server_bytes,
    splits,
    stream_of,
)

# ---- hostile replies ----------------------------------------------------------------


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
    run = run_splits(in_transaction(bad), Txn([A, B]))
    assert outcomes(run.result) == [UD, REFUSED]
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
    run = drive(in_transaction(b"250 2.0.0 saved\tas 12\r\n"), Txn([A, B]))
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
    run = drive(in_transaction(b"250 " + b"z" * 100_000), Txn([A, B]))
    assert outcomes(run.result) == [UD, REFUSED]
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
    run = drive(in_transaction(b"250-more\r\n" * 200), Txn([A, B]))
    assert outcomes(run.result) == [UD, REFUSED]
    assert isinstance(run.closed.error, RemoteProtocolError)


def test_reply_lines_limit_counts_lines_of_one_reply() -> None:
    limits = Limits(reply_lines=3)
    assert isinstance(drive([GREETING, lhlo("A", "B")], limits=limits).events[0], Ready)
    run = drive([GREETING, lhlo("A", "B", "C")], limits=limits)
    assert isinstance(run.closed.error, RemoteProtocolError)


def test_reply_line_limit() -> None:
    limits = Limits(reply_line=64)
    fits = b"250 " + b"x" * 58 + b"\r\n"  # 64 octets with CRLF
    run = drive(in_transaction(fits), Txn([A, B]), limits=limits)
    assert outcomes(run.result)[0][0] is DEL
    run = drive(in_transaction(b"250 " + b"x" * 59 + b"\r\n"), Txn([A, B]), limits=limits)
    assert outcomes(run.result) == [UD, REFUSED]
    assert isinstance(run.closed.error, RemoteProtocolError)


def test_fewer_final_replies_then_eof() -> None:
    stream = [hello("PIPELINING"), r(250) + r(250) * 3 + r(354) + r(250) + r(451)]
    run = run_splits(stream, Txn([A, B, C]))
    assert outcomes(run.result) == [DELIVERED, (TMP, 451, DT), UD]
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
            assert outcomes(run.result) == [DELIVERED]
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
            assert outcomes(run.results[0]) == [DELIVERED]
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
        assert outcomes(run.result) == [DELIVERED]
        for chunk in run.leftover:
            run.conn.receive_data(chunk)
        conn = run.conn
        assert conn.reusable  # it cannot know before it looks
        conn.start_transaction(SENDER, [B, C], size=10)
        assert conn.data_to_send() == b""
        result = conn.next_event()
        assert isinstance(result, TransactionResult)
        assert outcomes(result) == [TR, TR]
        assert reasons(result) == [UNSOLICITED] * 2
        closed = conn.next_event()
        assert isinstance(closed, ConnectionClosed)
        assert isinstance(closed.error, RemoteProtocolError)
        assert closed.reason == UNSOLICITED
        assert conn.data_to_send() == b"" and conn.state is ClientState.CLOSED


def test_354_when_no_recipient_was_accepted_closes_as_a_protocol_error() -> None:
    stream = [hello("PIPELINING"), r(250) + r(550) + r(354)]
    run = run_splits(stream, Txn([A]))
    assert outcomes(run.result) == [REFUSED]
    assert b"hello" not in run.written
    assert isinstance(run.closed.error, RemoteProtocolError)


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
            check_outcome(x)
            assert x.stage is not LC  # these messages can be carried to any server


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


# ---- UTF-8 in reply text --------------------------------------------------------------

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
    echo = f"{code} {text} <{UTF8_ADDRESS}> ✓ geprüft\r\n".encode()
    accepted = code == 250
    data = [] if "CHUNKING" in exts else [r(354)]
    finals = [f"250 2.0.0 <{UTF8_ADDRESS}> gespeichert\r\n".encode()] if accepted else []
    finals.append(r(250, "saved"))  # B's
    stream = stream_of((*exts, "SMTPUTF8"), [r(250), echo, r(250), *data], finals)
    run = run_splits(stream, Txn([UTF8_ADDRESS, B]))
    first, second = run.result.recipients
    reply = Reply(code, text, f"<{UTF8_ADDRESS}> ✓ geprüft")
    if accepted:
        assert (first.status, first.stage) == (DEL, DT)
        assert first.reply == Reply(250, "2.0.0", f"<{UTF8_ADDRESS}> gespeichert")
    else:
        assert (first.status, first.reply, first.stage) == (
            TMP if code == 450 else PRM,
            reply,
            RC,
        )
    assert first.reason is None
    assert outcomes(run.result)[1] == DELIVERED
    assert second.reply == Reply(250, None, "saved")
    line = f"RCPT TO:<{UTF8_ADDRESS}>\r\n".encode()
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
            f"250-2.0.0 <{UTF8_ADDRESS}>\r\n250 2.0.0 已送达\r\n".encode(),
            (DEL, Reply(250, "2.0.0", f"<{UTF8_ADDRESS}>\n已送达")),
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
    run = run_splits(in_transaction(b"250 2.0.0 saved" + c1 + b"\r\n"), Txn([A, B]))
    assert outcomes(run.result) == [UD, REFUSED]
    error = run.closed.error
    assert isinstance(error, RemoteProtocolError)
    assert str(error).startswith("control character in reply line")
    assert reasons(run.result) == [str(error), None]
    # In a RCPT reply (pipelined DATA: no body went out): TEMPORARY.
    run = run_splits([hello("PIPELINING"), r(250) + b"250 ok" + c1 + b"\r\n"], Txn([A]))
    assert outcomes(run.result) == [TR]
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
            assert outcomes(run.result) == [REFUSED, (UNK, 250, DT), (UNK, 250, DT)]
            assert reasons(run.result) == [None, DISTRUSTED, DISTRUSTED]
            assert [x.reply for x in run.result.recipients][1:] == [
                Reply(250, None, "for a"),
                Reply(250, None, "for b"),
            ]
            assert not run.result.delivered
            assert [x.recipient for x in run.result.retry] == [B, C]
            closed = run.closed
        else:  # c's reply ended a read: the result was out before the 452 came
            assert outcomes(run.results[0]) == [REFUSED, DELIVERED, DELIVERED]
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
    assert outcomes(run.result) == [REFUSED, (UNK, 250, DT), (UNK, 250, DT)]
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
        assert outcomes(run.result) == [REFUSED, DELIVERED, DELIVERED]
        assert run.written == _issue_written(exts)
        conn = run.conn
        for chunk in run.leftover:  # the 452
            conn.receive_data(chunk)
        conn.start_transaction(SENDER, [A, B])
        assert conn.data_to_send() == b""
        result = conn.next_event()
        assert isinstance(result, TransactionResult)
        assert outcomes(result) == [TR, TR]
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
            (REFUSED, None),
            (REFUSED, None),
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
    assert outcomes(run.result) == [(TMP, 450, RC), TR]
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
