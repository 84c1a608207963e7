"""What the client decides alone (lmtp_core.ClientConnection): misuse that raises
LocalProtocolError and queues nothing (addresses, lengths, parameter syntax, BODY values,
the wrong state); what this server cannot take, which is an outcome instead (PERMANENT at
Stage.LOCAL with a reason, nothing written, the connection reusable: SIZE, 8BITMIME,
BINARYMIME and CHUNKING, NUL, SMTPUTF8, parameters not offered; one recipient alone when
only it needs what is missing; a body found uncarriable while it streams settles and
closes). The scripted server and the other helpers are in client_harness.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from lmtp_core import (
    COMPILED,
    ClientConnection,
    ClientState,
    ConnectionClosed,
    Limits,
    LocalProtocolError,
    LongLines,
    MailFrom,
    Phase,
    RcptTo,
    Ready,
    Reply,
    Signal,
    TransactionResult,
)
from tests.core.client_harness import (
    ALL_EXTENSIONS,
    BODY,
    DATA,
    DEL,
    DELIVERED,
    DT,
    EIGHT_BIT_REFUSED,
    EIGHT_BIT_STREAMED,
    LC,
    LHLO,
    MAIL,
    NUL_REFUSED,
    PRM,
    RC,
    REFUSED,
    SENDER,
    TMP,
    TR,
    UTF8_ADDRESS,
    UTF8_RECIPIENT,
    UTF8_SENDER,
    A,
    B,
    C,
    FakeServer,
    Txn,
    bdat,
    client,
    drive,
    event_or_error,
    hello,
    outcomes,
    r,
    rcpt,
    ready,
    reasons,
    run_splits,
    stream_of,
)

# ---- local validation ---------------------------------------------------------------

_LOCAL_64 = "l" * 64
_DOMAIN_189 = "d" * 63 + "." + "d" * 63 + "." + "d" * 61  # 64 + 1 + 189 = 254 octets


def _refused(exts: Sequence[str], call: Callable[[ClientConnection], None]) -> None:
    """Misuse: `call` raises LocalProtocolError, queues nothing (no event either) and
    leaves the client READY and usable."""
    conn = ready(*exts, "PIPELINING")
    with pytest.raises(LocalProtocolError):
        call(conn)
    assert conn.data_to_send() == b""
    assert conn.state is ClientState.READY
    assert conn.phase is Phase.COMMAND
    conn.start_transaction(SENDER, [A], eight_bit=False)
    assert conn.state is ClientState.TRANSACTION
    assert conn.phase is Phase.MAIL


def _refused_here(
    exts: Sequence[str],
    sender: str | MailFrom,
    recipients: Sequence[str | RcptTo],
    reason: str,
    **kwargs: object,
) -> TransactionResult:
    """What this server cannot take: start_transaction() does not raise, writes
    nothing, and the next event is the TransactionResult, every recipient PERMANENT at
    Stage.LOCAL with no reply and `reason`; the connection stays READY and the next
    transaction goes out as usual."""
    conn = ready(*exts, "PIPELINING")
    received = conn.replies_received
    conn.start_transaction(sender, recipients, **kwargs)  # type: ignore[arg-type]
    assert conn.data_to_send() == b""
    assert conn.state is ClientState.READY and conn.reusable
    assert conn.phase is Phase.COMMAND
    result = conn.next_event()
    assert isinstance(result, TransactionResult), result
    assert outcomes(result) == [(PRM, None, LC)] * len(recipients)
    assert reasons(result) == [reason] * len(recipients)
    addresses = [x.address if isinstance(x, RcptTo) else x for x in recipients]
    assert [x.recipient for x in result.recipients] == addresses
    assert result.failed == result.recipients and not result.retry
    assert conn.data_to_send() == b""
    assert conn.state is ClientState.READY and conn.replies_received == received
    with pytest.raises(LocalProtocolError):
        conn.next_event()  # nothing else is pending
    conn.start_transaction(SENDER, [A], eight_bit=False)
    assert conn.state is ClientState.TRANSACTION
    assert conn.phase is Phase.MAIL
    if "CHUNKING" not in exts:
        assert conn.data_to_send() == MAIL + rcpt(A) + DATA
    return result


@pytest.mark.parametrize(
    "address",
    [
        "a\r\n@example.org",
        "a@example.org\r\nRSET",
        "a\n@example.org",
        "a\r@example.org",
        "a\x00@example.org",
        "a b@example.org",
        "a@exa mple.org",
        "<a@example.org>",
        "a@example.org>",
        "a>@example.org",
        "a@example.org> SIZE=1",
        "a<@example.org",
        "example.org",
        "",
        "a@",
        "@example.org",
        "a@@example.org",
        "a@example..org",
        "a@-example.org",
        "a\t@example.org",
        "l" * 65 + "@example.org",
        _LOCAL_64 + "@" + _DOMAIN_189 + "d",
        "a@" + ("d" * 63 + ".") * 4 + "org",  # domain over 255
    ],
)
def test_invalid_recipient_or_sender_address_is_refused(address: str) -> None:
    _refused(ALL_EXTENSIONS, lambda conn: conn.start_transaction(SENDER, [A, address]))
    if address:  # "" is the null sender
        _refused(ALL_EXTENSIONS, lambda conn: conn.start_transaction(address, [A]))


def test_address_length_limits_are_inclusive() -> None:
    longest = _LOCAL_64 + "@" + _DOMAIN_189
    assert len(longest) == 254  # + "<>" = 256, RFC 5321 4.5.3.1.3
    conn = ready("PIPELINING")
    conn.start_transaction(longest, [longest, '"quoted local"@[192.0.2.1]'])
    lines = conn.data_to_send().split(b"\r\n")
    assert lines[0] == f"MAIL FROM:<{longest}>".encode()
    assert lines[2] == b'RCPT TO:<"quoted local"@[192.0.2.1]>'


def test_null_sender() -> None:
    conn = ready("PIPELINING")
    conn.start_transaction("", [A])
    assert conn.data_to_send() == b"MAIL FROM:<>\r\n" + rcpt(A) + DATA


def test_non_ascii_address_needs_smtputf8() -> None:
    # A sender that needs SMTPUTF8 makes the whole message uncarriable to this server;
    # a recipient that needs it is refused alone (here the only one: nothing to send).
    _refused_here(("8BITMIME",), "ü@example.org", [A, B], UTF8_SENDER)
    _refused_here(("8BITMIME",), SENDER, ["用户@例子.广告"], UTF8_RECIPIENT)
    _refused_here(("8BITMIME",), SENDER, ["用户@例子.广告", "ü@example.org"], UTF8_RECIPIENT)
    conn = ready("PIPELINING", "SMTPUTF8")
    conn.start_transaction(SENDER, [A, "用户@例子.广告"])
    expected = MAIL[:-2] + b" SMTPUTF8\r\n" + rcpt(A) + "RCPT TO:<用户@例子.广告>\r\n".encode()
    assert conn.data_to_send() == expected + DATA


@pytest.mark.parametrize("address", ["\ud800@example.org", "a@\udfff.example"])
def test_lone_surrogate_in_address_is_a_local_protocol_error(address: str) -> None:
    _refused(("SMTPUTF8",), lambda conn: conn.start_transaction(address, [A]))
    _refused(("SMTPUTF8",), lambda conn: conn.start_transaction(SENDER, [address]))


def test_lone_surrogate_in_parameter_value_is_a_local_protocol_error() -> None:
    mail = MailFrom(SENDER, (("ENVID", "\ud800"),))
    _refused(("DSN", "SMTPUTF8"), lambda conn: conn.start_transaction(mail, [A]))


def _needs(key: str, extension: str) -> str:
    return f"parameter {key} needs {extension}, which the server did not offer"


@pytest.mark.parametrize(
    ("sender", "recipient", "reason"),
    [
        (MailFrom(SENDER, (("SIZE", "100"),)), A, _needs("SIZE", "SIZE")),
        (MailFrom(SENDER, (("BODY", "8BITMIME"),)), A, _needs("BODY", "8BITMIME")),
        (MailFrom(SENDER, (("BODY", "BINARYMIME"),)), A, _needs("BODY", "BINARYMIME")),
        (MailFrom(SENDER, (("RET", "HDRS"),)), A, _needs("RET", "DSN")),
        (MailFrom(SENDER, (("ENVID", "abc"),)), A, _needs("ENVID", "DSN")),
        (MailFrom(SENDER, (("SMTPUTF8", None),)), A, _needs("SMTPUTF8", "SMTPUTF8")),
        (MailFrom(SENDER, (("XFOO", None),)), A, _needs("XFOO", "XFOO")),
        (MailFrom(SENDER, (("xfoo", None),)), A, _needs("xfoo", "XFOO")),
        (SENDER, RcptTo(A, (("NOTIFY", "NEVER"),)), _needs("NOTIFY", "DSN")),
        (SENDER, RcptTo(A, (("ORCPT", "rfc822;a@example.org"),)), _needs("ORCPT", "DSN")),
        (SENDER, RcptTo(A, (("XFOO", "1"),)), _needs("XFOO", "XFOO")),
    ],
)
def test_parameters_not_advertised_are_refused(
    sender: str | MailFrom, recipient: str | RcptTo, reason: str
) -> None:
    # Not offered: this server cannot take it. A MAIL parameter refuses the message
    # (every recipient), a RCPT parameter only its recipient.
    _refused_here(("ENHANCEDSTATUSCODES",), sender, [recipient], reason)
    if isinstance(sender, MailFrom):
        _refused_here(("ENHANCEDSTATUSCODES",), sender, [recipient, B, C], reason)


@pytest.mark.parametrize("exts", [("PIPELINING",), ()], ids=["pipelined", "lockstep"])
def test_a_recipient_with_a_parameter_not_offered_is_refused_alone(exts: tuple[str, ...]) -> None:
    notify = RcptTo(B, (("NOTIFY", "NEVER"),))
    stream = stream_of(exts, [r(250), r(250), r(450), r(354)], [r(250, "saved")])
    run = run_splits(stream, Txn([A, notify, C]))
    assert outcomes(run.result) == [(DEL, 250, DT), (PRM, None, LC), (TMP, 450, RC)]
    assert reasons(run.result) == [None, _needs("NOTIFY", "DSN"), None]
    assert run.written == LHLO + MAIL + rcpt(A) + rcpt(C) + DATA + BODY + b".\r\n"


def test_advertised_parameters_are_sent() -> None:
    conn = ready("PIPELINING", "DSN", "XFOO")
    mail = MailFrom(SENDER, (("RET", "HDRS"), ("envid", "QQ314159"), ("XFOO", None)))
    notify = RcptTo(A, (("NOTIFY", "SUCCESS,FAILURE"), ("ORCPT", "rfc822;a@example.org")))
    conn.start_transaction(mail, [notify, RcptTo(B, (("xfoo", "1"),))])
    assert conn.data_to_send() == (
        b"MAIL FROM:<sender@example.org> RET=HDRS ENVID=QQ314159 XFOO\r\n"
        + rcpt(A, " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@example.org")
        + rcpt(B, " xfoo=1")
        + DATA
    )


@pytest.mark.parametrize(
    "param",
    [
        ("ENVID", "a b"),
        ("ENVID", "a=b"),
        ("ENVID", "a\r\nRSET"),
        ("ENVID", "a\nb"),
        ("ENVID", "a\x00"),
        ("ENVID", ""),
        ("X FOO", None),
        ("-XFOO", None),
        ("X=Y", None),
        ("X\r\nRSET", None),
        ("", None),
    ],
)
def test_malformed_parameters_are_refused(param: tuple[str, str | None]) -> None:
    mail = MailFrom(SENDER, (param,))
    _refused(("DSN", "XFOO"), lambda conn: conn.start_transaction(mail, [A]))
    rcpt_to = RcptTo(A, (param,))
    _refused(("DSN", "XFOO"), lambda conn: conn.start_transaction(SENDER, [rcpt_to]))


@pytest.mark.parametrize("keyword", ["BODY", "SIZE"])
def test_parameter_that_needs_a_value_is_refused_without_one(keyword: str) -> None:
    # RFC 1870 and 6152: SIZE=n and BODY=7BIT|8BITMIME; a bare "BODY" or "SIZE" is a
    # syntax error the server would refuse.
    mail = MailFrom(SENDER, ((keyword, None),))
    _refused(("8BITMIME", "SIZE"), lambda conn: conn.start_transaction(mail, [A]))


def test_unknown_body_type_is_refused() -> None:
    mail = MailFrom(SENDER, (("BODY", "9BITMIME"),))
    _refused(("8BITMIME",), lambda conn: conn.start_transaction(mail, [A]))


def test_binarymime_needs_chunking() -> None:
    mail = MailFrom(SENDER, (("BODY", "BINARYMIME"),))
    reason = "BODY=BINARYMIME needs CHUNKING, which the server did not offer"
    _refused_here(("BINARYMIME",), mail, [A, B], reason)
    _refused_here(("BINARYMIME",), mail, [A], reason, nul=True, eight_bit=True)


@pytest.mark.parametrize(
    ("exts", "size", "suffix"),
    [
        (("SIZE 1000",), 1000, b" SIZE=1000"),
        (("SIZE",), 10**9, b" SIZE=1000000000"),
        (("SIZE 0",), 10**9, b" SIZE=1000000000"),
        (("SIZE 1000",), None, b""),
        ((), 1000, b""),
        (("8BITMIME",), None, b" BODY=8BITMIME"),
        (("8BITMIME", "SIZE 50"), 20, b" BODY=8BITMIME SIZE=20"),
        (("8BITMIME", "SIZE 50"), 50, b" BODY=8BITMIME SIZE=50"),  # the limit is inclusive
    ],
)
def test_size_and_body_parameters(exts: tuple[str, ...], size: int | None, suffix: bytes) -> None:
    conn = ready("PIPELINING", *exts)
    conn.start_transaction(SENDER, [A], size=size)
    assert conn.data_to_send() == MAIL[:-2] + suffix + b"\r\n" + rcpt(A) + DATA


def test_size_over_the_server_limit_is_refused() -> None:
    reason = "the message (1001 octets) is over the server's SIZE limit (1000)"
    _refused_here(("SIZE 1000",), SENDER, [A, B, C], reason, size=1001)
    _refused_here(("SIZE 1000", "SMTPUTF8"), SENDER, ["ü@example.org"], reason, size=1001)


@pytest.mark.parametrize(
    "exts", [("PIPELINING",), (), ("PIPELINING", "CHUNKING")], ids=["pipelined", "lockstep", "bdat"]
)
def test_over_size_writes_nothing_and_the_connection_carries_the_next_message(
    exts: tuple[str, ...],
) -> None:
    # The first message is over the server's SIZE: its result comes at once, nothing
    # is written for it, and the same connection delivers the next one.
    data = [] if "CHUNKING" in exts else [r(354)]
    stream = stream_of((*exts, "SIZE 1000"), [r(250), r(250), *data], [r(250, "saved")])
    run = run_splits(stream, Txn([A, B], size=1001), Txn([C], size=1000))
    first, second = run.results
    assert outcomes(first) == [(PRM, None, LC)] * 2
    assert (
        reasons(first) == ["the message (1001 octets) is over the server's SIZE limit (1000)"] * 2
    )
    assert outcomes(second) == [(DEL, 250, DT)]
    assert isinstance(run.events[0], Ready) and run.events[1:] == [first, second]
    envelope = MAIL[:-2] + b" SIZE=1000\r\n" + rcpt(C)
    body = bdat(BODY) if "CHUNKING" in exts else DATA + BODY + b".\r\n"
    assert run.written == LHLO + envelope + body
    assert run.conn.state is ClientState.READY


def test_eight_bit_flag() -> None:
    _refused_here((), SENDER, [A, B], EIGHT_BIT_REFUSED, eight_bit=True)
    _refused_here(("SIZE 10",), SENDER, [A], EIGHT_BIT_REFUSED, eight_bit=True, size=5)
    conn = ready("PIPELINING", "8BITMIME")
    conn.start_transaction(SENDER, [A], eight_bit=True)
    assert conn.data_to_send().startswith(MAIL[:-2] + b" BODY=8BITMIME\r\n")
    conn = ready("PIPELINING", "8BITMIME")
    conn.start_transaction(SENDER, [A], eight_bit=False)
    assert conn.data_to_send().startswith(MAIL)
    conn.receive_data(r(250) * 2 + r(354))
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(b"caf\xc3\xa9\r\n")  # no longer raises: an outcome
    assert conn.data_to_send() == b""
    result = conn.next_event()
    assert isinstance(result, TransactionResult)
    assert outcomes(result) == [(PRM, None, LC)]
    assert reasons(result) == [EIGHT_BIT_STREAMED]


def test_eight_bit_body_declared_7bit_is_refused() -> None:
    # 8BITMIME is offered, but BODY=7BIT was declared for a body with 8-bit bytes.
    mail = MailFrom(SENDER, (("BODY", "7BIT"),))
    reason = "the message has 8-bit bytes but BODY=7BIT was declared"
    _refused_here(("8BITMIME",), mail, [A, B], reason, eight_bit=True)


def _refused_while_streaming(
    conn: ClientConnection, result: object, reason: str, replies_received: int
) -> None:
    """A body refused as it streamed: the result, every undecided recipient PERMANENT
    at Stage.LOCAL with `reason`, then ConnectionClosed; nothing more is written."""
    assert isinstance(result, TransactionResult), result
    assert outcomes(result) == [(PRM, None, LC)] * len(result.recipients)
    assert reasons(result) == [reason] * len(result.recipients)
    assert conn.replies_received == replies_received
    closed = conn.next_event()
    assert isinstance(closed, ConnectionClosed)
    assert closed.reason == f"message refused locally: {reason}"
    assert closed.error is None and closed.reply is None
    assert conn.data_to_send() == b""
    assert conn.state is ClientState.CLOSED and not conn.reusable


# With DATA, a was accepted before the body; with pipelined BDAT the envelope waits for
# the first chunk, so the client never read those replies. Either way a cannot be
# carried to this server: PERMANENT, decided here.
@pytest.mark.parametrize("exts", [("PIPELINING",), ("PIPELINING", "CHUNKING")])
def test_eight_bit_body_without_8bitmime_is_refused_and_settles(exts: tuple[str, ...]) -> None:
    conn = ready(*exts)
    conn.start_transaction(SENDER, [A])
    before = conn.data_to_send()
    conn.receive_data(r(250) * 2 + (b"" if "CHUNKING" in exts else r(354)))
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(b"plain\r\n")
    conn.send_body(b"caf\xc3\xa9\r\n")  # no exception: the outcome says it
    # the plain line, not yet handed out, is dropped with the rest: nothing more goes out
    assert conn.data_to_send() == b""
    assert before == (b"" if "CHUNKING" in exts else MAIL + rcpt(A) + DATA)
    # greeting and LHLO, then MAIL, RCPT and 354 unless the replies were never read
    received = 2 if "CHUNKING" in exts else 5
    _refused_while_streaming(conn, conn.next_event(), EIGHT_BIT_STREAMED, received)


def test_a_body_refused_while_streaming_keeps_the_outcomes_already_decided() -> None:
    # b was refused at RCPT before the body: its outcome stands; a (accepted) becomes
    # PERMANENT here.
    conn = ready("PIPELINING")
    conn.start_transaction(SENDER, [A, B])
    conn.data_to_send()
    conn.receive_data(r(250) * 2 + r(550) + r(354))
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(b"\xff")
    result = conn.next_event()
    assert isinstance(result, TransactionResult)
    assert outcomes(result) == [(PRM, None, LC), REFUSED]
    assert reasons(result) == [EIGHT_BIT_STREAMED, None]
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_long_body_line_is_refused_by_default() -> None:
    conn = ready("PIPELINING")
    conn.start_transaction(SENDER, [A])
    conn.data_to_send()
    conn.receive_data(r(250) * 2 + r(354))
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(b"x" * 998 + b"\r\n")  # 1000 octets with CRLF: the limit
    assert conn.data_to_send() == b"x" * 998 + b"\r\n"
    conn.send_body(b"y" * 999 + b"\r\n")
    reason = "the message has a line of more than 998 octets (RFC 5321 4.5.3.1.6)"
    _refused_while_streaming(conn, conn.next_event(), reason, 5)


def test_long_last_line_is_refused_at_end_body_and_settles_like_send_body() -> None:
    # send_body() settles the transaction and closes when it refuses the body; a last
    # line (no final CRLF) over the limit is found only by end_body(), which does the
    # same rather than leave the client asking for the body forever.
    conn = ready("PIPELINING")
    conn.start_transaction(SENDER, [A])
    conn.data_to_send()
    conn.receive_data(r(250) * 2 + r(354))
    assert conn.next_event() is Signal.NEED_BODY
    conn.send_body(b"z" * 999)
    conn.end_body()  # no exception, and no final dot
    event = event_or_error(conn)
    reason = "the message has a line of more than 998 octets"
    _refused_while_streaming(conn, event, reason, 5)
    with pytest.raises(LocalProtocolError):
        conn.end_body()


def test_long_lines_allowed() -> None:
    line = b"q" * 5000 + b"\r\n"
    run = drive(FakeServer("PIPELINING"), Txn([A], body=[line]), long_lines=LongLines.ALLOW)
    assert run.result.all_delivered
    assert line + b".\r\n" in run.written


def test_command_longer_than_the_limit_is_refused() -> None:
    limits = Limits(command_line=64)
    ok = "r" * 40 + "@example.org"  # RCPT TO:<...> + CRLF = 64 octets
    too_long = "r" * 41 + "@example.org"

    conn = ready("PIPELINING", limits=limits)
    conn.start_transaction(SENDER, [ok])
    assert conn.data_to_send() == MAIL + rcpt(ok) + DATA
    conn = ready("PIPELINING", limits=limits)
    with pytest.raises(LocalProtocolError):
        conn.start_transaction(SENDER, [A, too_long])
    assert conn.data_to_send() == b""
    assert conn.state is ClientState.READY


def test_empty_recipient_list_is_refused() -> None:
    _refused((), lambda conn: conn.start_transaction(SENDER, []))


def test_start_transaction_outside_ready_is_refused() -> None:
    conn = client()
    with pytest.raises(LocalProtocolError):
        conn.start_transaction(SENDER, [A])
    assert conn.data_to_send() == b"" and conn.state is ClientState.CONNECTING
    conn = ready()
    conn.start_transaction(SENDER, [A])
    conn.data_to_send()
    with pytest.raises(LocalProtocolError):
        conn.start_transaction(SENDER, [B])
    assert conn.data_to_send() == b""
    assert conn.state is ClientState.TRANSACTION and conn.phase is Phase.MAIL
    conn.abort("done")
    with pytest.raises(LocalProtocolError):
        conn.start_transaction(SENDER, [A])


def test_body_calls_when_not_asked_for_are_refused() -> None:
    conn = ready("PIPELINING")
    for call in (lambda: conn.send_body(b"x"), conn.end_body):
        with pytest.raises(LocalProtocolError):
            call()
    conn.start_transaction(SENDER, [A])
    conn.data_to_send()
    with pytest.raises(LocalProtocolError):
        conn.send_body(b"too early")  # before 354
    assert conn.state is ClientState.TRANSACTION
    conn.receive_data(r(250) * 2 + r(354))
    assert conn.next_event() is Signal.NEED_BODY
    conn.end_body()
    with pytest.raises(LocalProtocolError):
        conn.end_body()
    with pytest.raises(LocalProtocolError):
        conn.send_body(b"after the end")
    assert conn.data_to_send() == b".\r\n"


# ---- what this server cannot take -----------------------------------------------------


@pytest.mark.parametrize("exts", [("PIPELINING",), ()], ids=["pipelined", "lockstep"])
def test_smtputf8_recipient_alone_is_refused_and_the_others_go_ahead(
    exts: tuple[str, ...],
) -> None:
    # The sender is ASCII: only the recipient that needs SMTPUTF8 cannot be carried.
    # SMTPUTF8 is not declared, and the RCPT replies pair with the recipients sent.
    stream = stream_of(exts, [r(250), r(250), r(550, "no c"), r(354)], [r(250, "saved a")])
    run = run_splits(stream, Txn([A, UTF8_ADDRESS, C]))
    assert outcomes(run.result) == [DELIVERED, (PRM, None, LC), (PRM, 550, RC)]
    assert reasons(run.result) == [None, UTF8_RECIPIENT, None]
    assert [x.recipient for x in run.result.recipients] == [A, UTF8_ADDRESS, C]
    assert run.result.recipients[2].reply == Reply(550, None, "no c")
    assert run.written == LHLO + MAIL + rcpt(A) + rcpt(C) + DATA + BODY + b".\r\n"
    assert UTF8_ADDRESS.encode() not in run.written


def test_rcpt_replies_pair_with_the_recipients_sent() -> None:
    # Refused here: the second (SMTPUTF8) and the fourth (DSN not offered). The server
    # sees a, c, e; its replies 550, 250, 450 are theirs, and c's final reply is c's.
    recipients = [A, UTF8_ADDRESS, C, RcptTo("d@example.org", (("NOTIFY", "NEVER"),)), B]
    stream = [hello("PIPELINING"), r(250) + r(550) + r(250) + r(450) + r(354) + r(250, "c")]
    run = run_splits(stream, Txn(recipients))
    assert outcomes(run.result) == [
        REFUSED,
        (PRM, None, LC),
        DELIVERED,
        (PRM, None, LC),
        (TMP, 450, RC),
    ]
    assert reasons(run.result) == [None, UTF8_RECIPIENT, None, _needs("NOTIFY", "DSN"), None]
    assert run.result.recipients[2].reply == Reply(250, None, "c")
    assert run.written == LHLO + MAIL + rcpt(A) + rcpt(C) + rcpt(B) + DATA + BODY + b".\r\n"


def test_every_recipient_refused_here_gives_the_result_at_once() -> None:
    recipients = [UTF8_ADDRESS, RcptTo(A, (("ORCPT", "rfc822;a@example.org"),))]
    run = run_splits([hello("PIPELINING")], Txn(recipients), Txn([B]))
    first, second = run.results
    assert outcomes(first) == [(PRM, None, LC)] * 2
    assert reasons(first) == [UTF8_RECIPIENT, _needs("ORCPT", "DSN")]
    assert run.written == LHLO + MAIL + rcpt(B) + DATA  # nothing for the first
    assert outcomes(second) == [TR]  # the server closed before answering B


_NUL_BODY = [b"hello\r\n", b"\x00.\r\nMAIL FROM:<x@y>\r\n"]  # \r\n\x00.\r\n across pieces


@pytest.mark.parametrize(
    "body", [_NUL_BODY, [b"hello\r\n\x00.\r\nMAIL FROM:<x@y>\r\n"], [b"hello\r\n\x00", b".\r\n"]]
)
def test_nul_before_a_dot_never_goes_out_under_8bitmime(body: list[bytes]) -> None:
    # Issue 14, case 4: a receiver that strips NUL would see CRLF.CRLF. Under
    # BODY=8BITMIME the piece with the NUL is refused: PERMANENT here, closed, and
    # nothing of it (nor anything after it) is written.
    stream = [hello("PIPELINING", "8BITMIME"), r(250) * 2 + r(354)]
    run = run_splits(stream, Txn([A], body=body))
    assert outcomes(run.result) == [(PRM, None, LC)]
    assert reasons(run.result) == [NUL_REFUSED]
    assert run.closed.reason == f"message refused locally: {NUL_REFUSED}"
    assert run.closed.error is None
    sent = body[0] if b"\x00" not in body[0] else b""  # what went out before the NUL
    assert run.written == LHLO + MAIL[:-2] + b" BODY=8BITMIME\r\n" + rcpt(A) + DATA + sent
    assert b"\x00" not in run.written and not run.written.endswith(b".\r\n")


def test_nul_in_the_first_bdat_chunk_writes_nothing_at_all() -> None:
    # Pipelined BDAT holds the envelope for the first chunk: refused before any of it.
    stream = [hello("PIPELINING", "CHUNKING", "8BITMIME")]
    run = run_splits(stream, Txn([A, B], body=[b"a\r\n\x00.\r\n"]))
    assert outcomes(run.result) == [(PRM, None, LC)] * 2
    assert reasons(run.result) == [NUL_REFUSED] * 2
    assert run.written == LHLO


def test_nul_declared_is_refused_before_anything_is_written() -> None:
    _refused_here(("8BITMIME",), SENDER, [A, B], NUL_REFUSED, nul=True)
    _refused_here(("8BITMIME", "CHUNKING", "BINARYMIME"), SENDER, [A], NUL_REFUSED, nul=True)
    mail = MailFrom(SENDER, (("BODY", "8BITMIME"),))
    _refused_here(("8BITMIME", "CHUNKING", "BINARYMIME"), mail, [A], NUL_REFUSED, nul=True)


@pytest.mark.parametrize("nul", [None, True])
@pytest.mark.parametrize(
    "exts",
    [("PIPELINING", "CHUNKING", "BINARYMIME"), ("CHUNKING", "BINARYMIME")],
    ids=["pipelined", "lockstep"],
)
def test_nul_goes_through_as_binarymime_bdat(exts: tuple[str, ...], nul: bool | None) -> None:
    # Declared BODY=BINARYMIME to a server that offers it (and CHUNKING): the bytes go
    # in a BDAT chunk untouched, NUL and bare line ends included.
    body = b"hello\r\n\x00.\r\nMAIL FROM:<x@y>\r\n\x00\n"
    mail = MailFrom(SENDER, (("BODY", "BINARYMIME"),))
    stream = stream_of(exts, [r(250), r(250)], [r(250, "saved")])
    run = run_splits(stream, Txn([A], body=[body[:9], body[9:]], sender=mail, nul=nul))
    assert outcomes(run.result) == [DELIVERED]
    line = MAIL[:-2] + b" BODY=BINARYMIME\r\n"
    assert run.written == LHLO + line + rcpt(A) + bdat(body)
    server = FakeServer(*exts)
    drive(server, Txn([A], body=[body], sender=mail, nul=nul))
    assert server.message == body


def test_check_envelope_refuses_before_any_connection() -> None:
    ClientConnection.check_envelope("", ["a@example.org", RcptTo("b@example.org")])
    ClientConnection.check_envelope(MailFrom("s@example.net"), ["a@example.org"])
    for sender, recipients in [
        (123, ["a@example.org"]),
        ("s@example.net", []),
        ("s@example.net", ["not an address"]),
        ("s@example.net\r\nRCPT TO:<x@y>", ["a@example.org"]),
    ]:
        # compiled, a wrongly typed argument is a TypeError before the method runs
        wrong_type = COMPILED and isinstance(sender, int)
        with pytest.raises(TypeError if wrong_type else LocalProtocolError):
            ClientConnection.check_envelope(sender, recipients)  # type: ignore[arg-type]


def test_smtputf8_parameter_takes_no_value() -> None:
    conn = ClientConnection()
    conn.receive_data(b"220 mx\r\n")
    assert conn.next_event() is Signal.NEED_DATA
    conn.receive_data(b"250-mx\r\n250 SMTPUTF8\r\n")
    assert isinstance(conn.next_event(), Ready)
    conn.data_to_send()
    with pytest.raises(LocalProtocolError, match="takes no value"):
        conn.start_transaction(MailFrom("s@example.net", (("SMTPUTF8", "yes"),)), ["a@x.org"])
    assert conn.data_to_send() == b""
    assert conn.reusable
