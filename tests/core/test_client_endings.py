"""The connection ending under a transaction (lmtp_core.ClientConnection): end of file,
abort() or a failed write at every point of a transaction, or a 421 from the server,
with the stage each unanswered recipient reached and the reason carried by every
outcome without a reply; and when the end of data counts as written (UNKNOWN) or not
(TEMPORARY). The scripted server and the other helpers are in client_harness.py.
"""

from __future__ import annotations

import pytest

from lmtp_core import (
    ClientState,
    ConnectionClosed,
    Limits,
    LocalProtocolError,
    Phase,
    Ready,
    RemoteProtocolError,
    Reply,
    Signal,
    TransactionResult,
)
from tests.core.client_harness import (
    BODY,
    CLOSING,
    DATA,
    DEL,
    DELIVERED,
    DT,
    ENDS,
    GREETING,
    LHLO,
    MAIL,
    RC,
    REFUSED,
    RSET,
    SENDER,
    TD,
    TMP,
    TR,
    UD,
    UNK,
    UNSOLICITED,
    UR,
    A,
    B,
    C,
    Outcome,
    Txn,
    bdat,
    client,
    closed_after,
    drive,
    hello,
    lhlo,
    outcomes,
    r,
    rcpt,
    ready,
    reasons,
    run_splits,
    splits,
    stream_of,
)

# ---- the connection ending at every point --------------------------------------------

# Recipients a, b, c; RCPT replies 250, 550, 250; after the data 250 (a), 452 (c).
_REPLIES_DATA = [GREETING, lhlo(), r(250), r(250), r(550), r(250), r(354), r(250), r(452)]
_REPLIES_BDAT = [GREETING, lhlo("CHUNKING"), r(250), r(250), r(550), r(250), r(250), r(452)]
_REPLIES_PIPE_BDAT = [GREETING, lhlo("PIPELINING", "CHUNKING"), *_REPLIES_BDAT[2:]]

# Expected outcomes after k transaction replies (MAIL first) then the end.
_CUT_DATA = [[TR, TR, TR], [TR, TR, TR], [TD, TR, TR], [TD, REFUSED, TR]]
_CUT_DATA += [[TD, REFUSED, TD]]
_CUT_DATA += [
    [UD, REFUSED, UD],
    [DELIVERED, REFUSED, UD],
]  # after 354 the whole body and dot went out
_CUT_BDAT = [
    *_CUT_DATA[:4],
    [UD, REFUSED, UD],
    [DELIVERED, REFUSED, UD],
]  # BDAT LAST after the RCPTs
# Pipelined BDAT: the envelope and the whole (small) message went out in one write, so
# a recipient without a reply may have been delivered: UNKNOWN, never TEMPORARY.
_CUT_PIPE_BDAT = [[UR, UR, UR], [UR, UR, UR], [UD, UR, UR], [UD, REFUSED, UR]]
_CUT_PIPE_BDAT += [[UD, REFUSED, UD], [DELIVERED, REFUSED, UD]]


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
    assert outcomes(result) == [TD, REFUSED]
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
    assert outcomes(conn.next_event()) == [TD]  # type: ignore[arg-type]
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
    "data": ((), [*_ENVELOPE, r(354)], [], [UD, REFUSED, UD]),
    "pipelined-data": (("PIPELINING",), [*_ENVELOPE, r(354)], [], [UD, REFUSED, UD]),
    "bdat": (("CHUNKING",), _ENVELOPE, [], [UD, REFUSED, UD]),
    "pipelined-bdat": (("PIPELINING", "CHUNKING"), [], _ENVELOPE[:3], [UD, REFUSED, UR]),
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
    assert outcomes(run.result) == [TD, REFUSED, TD]


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
        assert outcomes(run.result) == [TR] * 3
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
            assert outcomes(result) == [UD if unknown else TD], (end, handed_out)
            assert isinstance(conn.next_event(), ConnectionClosed)


def test_send_failed_after_connection_closed_changes_nothing() -> None:
    stream = [hello("PIPELINING"), r(250) * 2 + r(550) + r(250) + r(354)]
    for chunks in splits(stream):
        run = drive(chunks, Txn([A, B, C]))  # the end of data went out, then end of file
        assert outcomes(run.result) == [UD, REFUSED, UD]
        conn = run.conn
        count = conn.replies_received
        conn.send_failed("too late")
        conn.abort("too late")
        assert conn.state is ClientState.CLOSED
        assert conn.data_to_send() == b""
        assert conn.replies_received == count
        with pytest.raises(LocalProtocolError):
            conn.next_event()
        assert outcomes(run.result) == [UD, REFUSED, UD]


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
    assert outcomes(result) == [TR]


def test_an_end_of_data_answered_before_it_was_written_is_withdrawn_with_the_rset() -> None:
    # A driver that reads before it writes, and a server that answers what it was never
    # sent: nobody accepted, so RSET is queued behind the LAST chunk, which was never
    # handed out. When the connection ends, neither goes out.
    conn = ready("PIPELINING", "CHUNKING")
    conn.start_transaction(SENDER, [A])
    assert conn.next_event() is Signal.NEED_BODY
    conn.end_body()
    assert conn.next_event() is Signal.NEED_DATA  # the envelope and BDAT 0 LAST, queued
    for reply in [r(250), r(550), r(503)]:  # MAIL, RCPT a, the chunk: a read each
        conn.receive_data(reply)
        assert conn.next_event() is Signal.NEED_DATA
    assert conn.phase is Phase.COMMAND  # RSET's reply
    conn.abort("gone")
    result = conn.next_event()
    assert isinstance(result, TransactionResult)
    assert outcomes(result) == [REFUSED]
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert conn.data_to_send() == b""


# ---- a 421 from the server ----------------------------------------------------------

# 421 mid-transaction (no pipelining): (replies before the 421, MAIL's first; outcomes)
_421_CASES = [
    ([], [(TMP, 421, RC)] * 3),  # to MAIL
    ([r(250)], [(TMP, 421, RC), TR, TR]),  # to RCPT a
    ([r(250), r(250)], [TD, (TMP, 421, RC), TR]),  # to RCPT b
    ([r(250), r(250), r(550)], [TD, REFUSED, (TMP, 421, RC)]),  # to RCPT c
    ([r(250), r(250), r(550), r(250)], [(TMP, 421, DT), REFUSED, (TMP, 421, DT)]),  # to DATA
    ([r(250), r(250), r(550), r(250), r(354)], [(TMP, 421, DT), REFUSED, UD]),  # final a
    (
        [r(250), r(250), r(550), r(250), r(354), r(250)],
        [DELIVERED, REFUSED, (TMP, 421, DT)],
    ),  # final c
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
    assert outcomes(run.result) == [REFUSED]
    assert run.closed.reply == Reply(421, None, "bye")
    assert run.written == LHLO + MAIL + rcpt(A) + bdat(BODY)  # no RSET after a 421
    assert run.conn.replies_received == 5


def test_421_to_rset_closes() -> None:
    run = drive([hello(), r(250), r(550), r(421, "bye")], Txn([A]), end="stop")
    assert outcomes(run.result) == [REFUSED]
    assert run.written.endswith(RSET)
    event = closed_after(run)
    assert isinstance(event, ConnectionClosed), event


def test_421_to_rset_with_a_reply_after_it_closes_on_that_reply() -> None:
    # The 421 answers RSET, and the result stands; the reply after it in the same read
    # answers nothing, so the connection closes on that (once: not on the 421 as well).
    run = drive([hello(), r(250), r(550), r(421, "bye") + r(250, "extra")], Txn([A]), end="stop")
    assert outcomes(run.result) == [REFUSED]
    assert run.events[-2:] == [run.result, run.closed]
    assert run.closed.reason == UNSOLICITED
    assert isinstance(run.closed.error, RemoteProtocolError)


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
    assert outcomes(result) == [(DEL, 250, DT), UD]
