"""Transactions (lmtp_core.ClientConnection), through its public API: what goes out in one
write with and without PIPELINING and CHUNKING, the body only after 354, BDAT chunking
and BDAT 0 LAST; LMTP's per-recipient outcomes paired by position (mixed replies after
the data, refusals at MAIL and RCPT, duplicates, nobody accepted, DATA or a chunk
refused). The scripted server and the other helpers are in client_harness.py.
"""

from __future__ import annotations

import pytest

from lmtp_core import (
    ClientState,
    Limits,
    MailFrom,
    Phase,
    Reply,
    Signal,
    TransactionResult,
)
from tests.core.client_harness import (
    BODY,
    DATA,
    DEL,
    DT,
    LHLO,
    MAIL,
    PRM,
    RC,
    RSET,
    SENDER,
    TMP,
    A,
    B,
    C,
    FakeServer,
    Txn,
    bdat,
    drive,
    hello,
    outcomes,
    r,
    rcpt,
    ready,
    reasons,
    run_splits,
    stream_of,
)

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


def test_no_recipient_accepted_bdat_chunk_taken() -> None:
    # A server that takes the first chunk (250) though it refused every recipient: with
    # nobody to deliver to, no more chunks go out, and RSET ends the transaction.
    stream = [hello("PIPELINING", "CHUNKING"), r(250) + r(550) + r(250, "chunk"), r(250)]
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
