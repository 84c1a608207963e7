"""Phase and replies_received (lmtp_core.ClientConnection), what a driver's deadlines are
built on: the phase along every kind of transaction, DATA_END once the end of data is
queued, and replies_received counting every reply read. The scripted server and the
other helpers are in client_harness.py.
"""

from __future__ import annotations

import pytest

from lmtp_core import (
    ClientState,
    ConnectionClosed,
    Limits,
    Phase,
    Ready,
    Signal,
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
    A,
    B,
    C,
    Txn,
    bdat,
    client,
    closed_after,
    drive,
    hello,
    in_transaction,
    lhlo,
    outcomes,
    r,
    rcpt,
    ready,
    splits,
    stream_of,
)

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
        (in_transaction(b"abc\r\n"), [A, B], 6),  # a malformed line is no reply
        (in_transaction(b"250-a\r\n551 b\r\n"), [A, B], 6),
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
