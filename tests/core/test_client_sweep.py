"""A sweep over the client's reachable states (lmtp_core.ClientConnection): every API call
in every state works or raises LocalProtocolError and then changed nothing, and random
call sequences keep every outcome sound. The scripted server and the other helpers are
in client_harness.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmtp_core import (
    ClientConnection,
    ClientState,
    ConnectionClosed,
    Limits,
    LocalProtocolError,
    MailFrom,
    Phase,
    RcptTo,
    RemoteProtocolError,
    Signal,
    TransactionResult,
)
from tests.core.client_harness import (
    ALL_EXTENSIONS,
    BODY,
    GREETING,
    SENDER,
    A,
    B,
    check_outcome,
    client,
    hello,
    lhlo,
    r,
    ready,
    server_bytes,
    settle,
)

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
    Path("ready", _S.READY, _build(ALL_EXTENSIONS)),
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


# Which codes each command may get, kept apart from the client's own table
# (lmtp_core._client._REPLIES) to hold it against. The classes RFC 5321 4.3.2 lists for
# MAIL, RCPT and the replies after the data (RFC 2033 4.2, RFC 3030 2 for BDAT): 2xx, 4xx
# and 5xx; for DATA, 354 and its failures. Any other code closes the connection with a
# RemoteProtocolError. The greeting, LHLO and STARTTLS take any code (but the one that
# goes ahead, a refusal ends the session), and so do RSET and QUIT.
_CODES = frozenset({220, 250, 251, 334, 354, 421, 450, 452, 503, 550, 554})
_ENVELOPE = _CODES - {334, 354}
_LEGAL = {
    "greeting": _CODES,
    "lhlo": _CODES,
    "starttls": _CODES,
    "lhlo-after-tls": _CODES,
    "quitting": _CODES,  # QUIT
    "rset": _CODES,
    "mail": _ENVELOPE,
    "rcpt": _ENVELOPE,
    "bdat-chunk": _ENVELOPE,  # MAIL, the first chunk written with it
    "data": _CODES - {220, 250, 251, 334},
    "bdat-last": _ENVELOPE,
    "final": _ENVELOPE,
}


@pytest.mark.parametrize("code", sorted(_CODES))
@pytest.mark.parametrize(
    "path", [p for p in PATHS if p.name in _LEGAL], ids=[p.name for p in PATHS if p.name in _LEGAL]
)
def test_each_reply_code_to_each_command(path: Path, code: int) -> None:
    conn = path.build()
    conn.data_to_send()  # what the reply answers is written first, as a driver does
    conn.receive_data(r(code))
    events = settle(conn)
    errors = [e.error for e in events if isinstance(e, ConnectionClosed) and e.error]
    if code in _LEGAL[path.name]:
        assert not errors, events
    else:
        assert [type(error) for error in errors] == [RemoteProtocolError], events
        assert conn.state is ClientState.CLOSED


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
    sizes, oldest first) and obeys check_outcome()."""
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
                check_outcome(x)
        if isinstance(event, ConnectionClosed):
            assert conn.state is ClientState.CLOSED


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
