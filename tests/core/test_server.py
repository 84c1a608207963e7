"""The server role (lmtp_core.ServerConnection), through its public API only.

Covers: the greeting and LHLO (extensions, STARTTLS advertised only when it can be
used, bad arguments, HELO/EHLO refused, MAIL before LHLO); MAIL (syntax, null sender,
source routes, SIZE/BODY/SMTPUTF8, refused and duplicate parameters, non-ASCII
addresses, nesting, the application's refusal); RCPT (sequence, syntax, parameters,
Limits.max_recipients, duplicates, <Postmaster>); DATA (354, dot-unstuffing, the end
only at CRLF.CRLF, every SMTP smuggling sequence under both bare line end policies,
owed replies and PAUSED, misuse of send(), oversize and over-long lines, refusals that
must not depend on how the input was split); BDAT (exact octet counting, BDAT 0 LAST,
chunk replies, refusals that still consume the chunk, BINARYMIME, bad syntax); LMTP's
one reply per accepted recipient, in order, with everything pipelined; RSET, NOOP,
VRFY, QUIT, unknown commands, over-long and malformed command lines in bounded memory,
the error budget; STARTTLS (offered or not, command injection, the session after the
handshake, misuse during it); EOF at every point; a table of (state, command) outcomes
and a hypothesis sweep over every reachable ServerState with random commands, bytes,
EOF and API misuse (a well-formed reply/event sequence or a documented
LocalProtocolError, nothing else); and a split-invariance property over random
pipelined sessions.

How it works: check() runs one input through tests/core/helpers.run_server whole, byte
by byte and in random splits, and asserts that all runs give the same output bytes and
the same settled events (adjacent MessageData merged; the pieces of a message the core
refused dropped, since how many were released before the refusal depends on the
split, and the application must discard them). replies() reduces output to
"code enhanced" per reply so that sequences read at a glance; exact bytes are checked
where the wording matters.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmtp_core import (
    BareLineEndings,
    ConnectionClosed,
    EndOfData,
    Lhlo,
    Limits,
    LocalProtocolError,
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
from lmtp_core._server import ServerEvent
from tests.core.helpers import (
    OK_MAIL,
    OK_RCPT,
    SAVED,
    ServerRun,
    coalesce,
    default_policy,
    every_split,
    run_server,
)

# When an example fails, hypothesis's pytest plugin imports libcst to suggest a patch,
# and libcst's import warns; with filterwarnings = ["error"] that would abort the
# session instead of reporting the failure. Import it once here, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    with contextlib.suppress(ImportError):
        import hypothesis.extra._patching  # noqa: F401

Policy = Callable[[ServerEvent, ServerConnection], list[Reply]]
BASE = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

HOST = "mx.example.org"
S, A, B, C = "s@example.org", "a@example.org", "b@example.org", "c@example.org"
LHLO = b"LHLO client.example\r\n"
MAIL = b"MAIL FROM:<s@example.org>\r\n"
DATA = b"DATA\r\n"
RSET = b"RSET\r\n"
NOOP = b"NOOP\r\n"
QUIT = b"QUIT\r\n"
NO_USER = Reply(550, "5.1.1", "No such user")
DEFAULT_SIZE = 32 * 1024 * 1024
ANY_SIZE_TEXT = "Message size exceeds fixed maximum message size"
INJECT = b"MAIL FROM:<evil@x>\r\nRCPT TO:<evil@x>\r\nDATA\r\n"


def rcpt(*addresses: str) -> bytes:
    return b"".join(f"RCPT TO:<{a}>\r\n".encode() for a in addresses)


def mail(params: str = "", address: str = S) -> bytes:
    return f"MAIL FROM:<{address}>{params}\r\n".encode()


def bdat(chunk: bytes, *, last: bool = False) -> bytes:
    return f"BDAT {len(chunk)}{' LAST' if last else ''}\r\n".encode() + chunk


def wire(reply: Reply) -> bytes:
    head = f"{reply.code} {reply.enhanced} " if reply.enhanced else f"{reply.code} "
    return (head + reply.text).encode() + b"\r\n"


def lhlo_reply(size: int = DEFAULT_SIZE, *, starttls: bool = False) -> bytes:
    lines = [
        HOST,
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "CHUNKING",
        "BINARYMIME",
        "SMTPUTF8",
        f"SIZE {size}",
    ]
    if starttls:
        lines.append("STARTTLS")
    last = len(lines) - 1
    return "".join(
        f"250{'-' if i < last else ' '}{line}\r\n" for i, line in enumerate(lines)
    ).encode()


_REPLY_LINE = re.compile(rb"([2-5][0-5][0-9])([ \-])([\t\x20-\x7e]*)")
_ENHANCED = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
_WELL_FORMED = re.compile(rb"(?:[2-5][0-5][0-9][ \-][\t\x20-\x7e]*\r\n)*")


def replies(output: bytes) -> list[str]:
    """One "code" or "code enhanced" per complete reply (continuation lines folded)."""
    assert _WELL_FORMED.fullmatch(output), output
    result = []
    for line in output.split(b"\r\n")[:-1]:
        match = _REPLY_LINE.fullmatch(line)
        assert match is not None, line
        if match[2] == b"-":
            continue
        first = match[3].decode().split(" ")[0]
        code = match[1].decode()
        result.append(f"{code} {first}" if _ENHANCED.fullmatch(first) else code)
    return result


def settled(events: list[ServerEvent]) -> list[ServerEvent]:
    """Events that must not depend on the input's split: adjacent MessageData merged,
    and the data of a refused message dropped (the application discards it)."""
    merged = coalesce(events)
    return [
        event
        for i, event in enumerate(merged)
        if not (
            isinstance(event, MessageData)
            and i + 1 < len(merged)
            and isinstance(merged[i + 1], MessageRefused)
        )
    ]


def runs(
    data: bytes,
    policy: Policy = default_policy,
    *,
    eof: bool = False,
    limits: Limits | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> list[ServerRun]:
    """`data` fed whole, byte by byte and in random splits: all runs must agree."""
    results = [
        run_server(chunks, policy, eof=eof, limits=limits, **kwargs)
        for chunks in every_split(data, seed=seed)
    ]
    whole = results[0]
    for i, run in enumerate(results[1:], 1):
        assert run.output == whole.output, f"split #{i} wrote different bytes"
        assert settled(run.events) == settled(whole.events), f"split #{i} gave other events"
    return results


def check(
    data: bytes,
    policy: Policy = default_policy,
    *,
    eof: bool = False,
    limits: Limits | None = None,
    **kwargs: Any,
) -> ServerRun:
    return runs(data, policy, eof=eof, limits=limits, **kwargs)[0]


def refusing(*bad: str) -> Policy:
    """Accept everything except the recipients named."""

    def policy(event: ServerEvent, conn: ServerConnection) -> list[Reply]:
        if isinstance(event, RcptTo) and event.address in bad:
            return [NO_USER]
        return default_policy(event, conn)

    return policy


def final_text(index: int, address: str) -> Reply:
    if address == C:
        return Reply(452, "4.2.2", f"#{index} <{address}> mailbox full")
    return Reply(250, "2.0.0", f"#{index} <{address}> saved")


@dataclass
class PerRecipient:
    """Remembers the accepted recipients of the transaction and answers each after the
    data with a reply naming it, so the order of the final replies can be checked."""

    refuse: tuple[str, ...] = ()
    accepted: list[str] = field(default_factory=list)

    def __call__(self, event: ServerEvent, conn: ServerConnection) -> list[Reply]:
        if isinstance(event, MailFrom):
            self.accepted = []
            return [OK_MAIL]
        if isinstance(event, RcptTo):
            if event.address in self.refuse:
                return [NO_USER]
            self.accepted.append(event.address)
            return [OK_RCPT]
        if isinstance(event, EndOfData):
            assert conn.owed_replies == len(self.accepted)
            return [final_text(i, a) for i, a in enumerate(self.accepted)]
        return []


def server(**kwargs: object) -> ServerConnection:
    conn = ServerConnection(HOST, **kwargs)  # type: ignore[arg-type]
    conn.data_to_send()
    return conn


def pump(
    conn: ServerConnection, data: bytes = b"", policy: Policy = default_policy
) -> tuple[list[ServerEvent], bytes]:
    """Feed `data` and drain: answer with `policy`, stop at NEED_DATA, at StartTls
    (the handshake is the caller's) or at ConnectionClosed."""
    conn.receive_data(data)
    events: list[ServerEvent] = []
    while True:
        event = conn.next_event()
        if event is Signal.NEED_DATA:
            break
        assert event is not Signal.PAUSED, "the policy left a reply owed"
        events.append(event)
        for reply in policy(event, conn):
            conn.send(reply)
        if isinstance(event, StartTls | ConnectionClosed):
            break
    return events, conn.data_to_send()


def state_of(conn: ServerConnection) -> ServerState:
    """conn.state, read through a call so that mypy does not keep an earlier narrowing."""
    return conn.state


def body_of(events: list[ServerEvent]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, MessageData))


# ---- greeting and LHLO ----------------------------------------------------------------


def test_greeting_is_queued_at_construction() -> None:
    conn = ServerConnection(HOST)
    assert conn.state is ServerState.NEED_LHLO
    assert conn.data_to_send() == b"220 mx.example.org LMTP server ready\r\n"
    assert conn.data_to_send() == b""
    assert conn.owed_replies == 0
    assert conn.next_event() is Signal.NEED_DATA


@pytest.mark.parametrize("name", ["", "bad host", "-x.example", "a..b", "x\r\nQUIT"])
def test_hostname_must_be_a_domain(name: str) -> None:
    with pytest.raises(LocalProtocolError):
        ServerConnection(name)


def test_address_literal_hostname() -> None:
    assert ServerConnection("[192.0.2.1]").data_to_send().startswith(b"220 [192.0.2.1] ")


def test_lhlo_lists_the_extensions() -> None:
    run = check(LHLO + b"lhlo [192.0.2.7]\r\n")
    assert run.output == lhlo_reply() * 2
    assert run.events == [Lhlo("client.example"), Lhlo("[192.0.2.7]")]


def test_lhlo_advertises_the_configured_size() -> None:
    assert check(LHLO, limits=Limits(max_message_size=1000)).output == lhlo_reply(1000)


@pytest.mark.parametrize(
    ("available", "active", "offered"),
    [(False, False, False), (True, False, True), (True, True, False), (False, True, False)],
)
def test_starttls_advertised_only_when_usable(available: bool, active: bool, offered: bool) -> None:
    run = check(LHLO, tls_available=available, tls_active=active)
    assert run.output == lhlo_reply(starttls=offered)


@pytest.mark.parametrize(
    "line",
    [b"LHLO", b"LHLO ", b"LHLO a b", b"LHLO -bad", b"LHLO a..b", b"LHLO [1.2.3.4", b"LHLO a_b"],
)
def test_bad_lhlo_argument(line: bytes) -> None:
    run = check(line + b"\r\n" + MAIL)
    assert replies(run.output) == ["501 5.5.4", "503 5.5.1"]
    assert run.events == []


@pytest.mark.parametrize("line", [b"HELO client.example", b"EHLO client.example", b"ehlo x"])
def test_helo_and_ehlo_are_refused(line: bytes) -> None:
    run = check(line + b"\r\n" + MAIL + LHLO)
    assert run.output == (
        b"500 5.5.1 This is an LMTP server: use LHLO\r\n"
        b"503 5.5.1 Send LHLO first\r\n" + lhlo_reply()
    )
    assert run.events == [Lhlo("client.example")]


def test_mail_before_lhlo() -> None:
    run = check(MAIL + rcpt(A) + DATA + NOOP)
    assert replies(run.output) == ["503 5.5.1"] * 3  # the refused DATA closes: no NOOP
    assert run.events == [ConnectionClosed("DATA refused", DATA_NO_MAIL)]


def test_lhlo_mid_transaction_resets_it() -> None:
    run = check(LHLO + MAIL + rcpt(A) + LHLO + rcpt(A) + MAIL)
    assert replies(run.output) == [
        "250",
        "250 2.1.0",
        "250 2.1.5",
        "250",
        "503 5.5.1",
        "250 2.1.0",
    ]
    assert run.events == [
        Lhlo("client.example"),
        MailFrom(S),
        RcptTo(A),
        Lhlo("client.example"),
        MailFrom(S),
    ]


# ---- MAIL -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"MAIL",
        b"MAIL FROM",
        b"MAIL FROM:s@example.org",
        b"MAIL FROM:<s@example.org",
        b"MAIL FROM<s@example.org>",
        b"MAIL TO:<s@example.org>",
        b"MAIL FROM:<s@example.org>junk",
        b"MAIL FROM:  <s@example.org>",
        b"MAIL FROM:<s@example.org><t@example.org>",
    ],
)
def test_mail_syntax_error(line: bytes) -> None:
    run = check(LHLO + line + b"\r\n" + rcpt(A))
    assert replies(run.output)[1:] == ["501 5.5.4", "503 5.5.1"]
    assert run.events == [Lhlo("client.example")]


@pytest.mark.parametrize(
    "address",
    ["no-at-sign", "a b@example.org", "a@", "@example.org", "a@-x.org", "a..b@example.org"],
)
def test_mail_bad_address(address: str) -> None:
    run = check(LHLO + mail(address=address))
    assert replies(run.output)[1:] == ["501 5.1.7"]
    assert run.events == [Lhlo("client.example")]


def test_mail_address_length_limits() -> None:
    long_local = "x" * 65 + "@example.org"
    long_path = "x@" + ".".join(["d" * 60] * 5)
    ok = "x" * 64 + "@example.org"
    run = check(LHLO + mail(address=long_local) + mail(address=long_path) + mail(address=ok))
    assert replies(run.output)[1:] == ["501 5.1.7", "501 5.1.7", "250 2.1.0"]
    assert run.events[1:] == [MailFrom(ok)]


def test_the_memo_of_good_addresses_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import lmtp_core._server as server_module

    memo: set[str] = set()
    monkeypatch.setattr(server_module, "_VALID", memo)
    monkeypatch.setattr(server_module, "_VALID_MAX", 2)
    addresses = [f"user{i}@example.org" for i in range(5)]
    run = check(LHLO + mail() + rcpt(*addresses) + rcpt(*addresses))
    assert replies(run.output)[1:] == ["250 2.1.0"] + ["250 2.1.5"] * 10
    assert len(memo) <= 2  # emptied when full, never larger
    assert run.events[2:] == [RcptTo(a) for a in addresses * 2]


def test_null_sender() -> None:
    run = check(LHLO + b"MAIL FROM:<>\r\n" + rcpt(A))
    assert run.events[1:] == [MailFrom(""), RcptTo(A)]
    assert replies(run.output)[1:] == ["250 2.1.0", "250 2.1.5"]


def test_source_routes_are_accepted_and_stripped() -> None:
    run = check(
        LHLO
        + b"MAIL FROM:<@relay.example,@b.example:s@example.org>\r\n"
        + b"RCPT TO:<@relay.example:a@example.org>\r\n"
    )
    assert run.events[1:] == [MailFrom(S), RcptTo(A)]


def test_one_space_after_colon_and_any_case() -> None:
    run = check(LHLO + b"mail from: <s@example.org>\r\nrcpt to: <a@example.org>\r\n")
    assert run.events[1:] == [MailFrom(S), RcptTo(A)]


def test_mail_parameters() -> None:
    run = check(
        LHLO
        + mail(" SIZE=100 BODY=8bitmime")
        + RSET
        + mail(" body=7BIT  SMTPUTF8")
        + RSET
        + mail(" BODY=BINARYMIME SIZE=0")
    )
    mails = [e for e in run.events if isinstance(e, MailFrom)]
    assert mails == [
        MailFrom(S, (("SIZE", "100"), ("BODY", "8bitmime"))),
        MailFrom(S, (("BODY", "7BIT"), ("SMTPUTF8", None))),
        MailFrom(S, (("BODY", "BINARYMIME"), ("SIZE", "0"))),
    ]
    assert mails[0].param("size") == "100"
    assert mails[1].param("SMTPUTF8") is None


def test_size_over_the_limit_is_refused_without_an_event() -> None:
    limits = Limits(max_message_size=1000)
    run = check(LHLO + mail(" SIZE=1001") + rcpt(A) + mail(" SIZE=1000"), limits=limits)
    assert replies(run.output)[1:] == ["552 5.3.4", "503 5.5.1", "250 2.1.0"]
    assert run.events[1:] == [MailFrom(S, (("SIZE", "1000"),))]


@pytest.mark.parametrize(
    "params",
    [
        " SIZE=abc",
        " SIZE=1234567890123456789",
        " SIZE=-1",
        " SIZE",
        " SIZE=",
        " SIZE=1=2",
        " BODY=9BIT",
        " BODY",
        " SMTPUTF8=yes",
        " -X=1",
        " SIZE=1 SIZE=2",
        " BODY=7BIT body=8BITMIME",
        " SMTPUTF8 SMTPUTF8",
    ],
)
def test_mail_bad_parameter(params: str) -> None:
    run = check(LHLO + mail(params))
    assert replies(run.output)[1:] == ["501 5.5.4"]
    assert run.events == [Lhlo("client.example")]


@pytest.mark.parametrize("digits", ["\u00b2", "\u0661\u0662"])
def test_size_must_be_ascii_digits(digits: str) -> None:
    # CORE BUG: _mail checks SIZE with str.isdigit(), which accepts "²" (and int("²")
    # then raises ValueError out of next_event) and Arabic-Indic digits (accepted as 12).
    run = check(LHLO + mail(f" SIZE={digits}"))
    assert replies(run.output)[1:] == ["501 5.5.4"]
    assert run.events == [Lhlo("client.example")]


@pytest.mark.parametrize(
    "params", [" RET=FULL", " ENVID=abc", " NOTIFY=NEVER", " ORCPT=rfc822;a@b", " XFOO", " AUTH=<>"]
)
def test_mail_unknown_parameter(params: str) -> None:
    run = check(LHLO + mail(params))
    assert replies(run.output)[1:] == ["555 5.5.4"]
    assert run.events == [Lhlo("client.example")]


def test_non_ascii_sender_needs_smtputf8() -> None:
    sender = "用户@例え.jp"
    run = check(LHLO + mail(address=sender) + rcpt(A) + mail(" SMTPUTF8", address=sender))
    assert replies(run.output)[1:] == ["553 5.6.7", "503 5.5.1", "250 2.1.0"]
    assert run.events[1:] == [MailFrom(sender, (("SMTPUTF8", None),))]


def test_nested_mail() -> None:
    run = check(LHLO + MAIL + MAIL)
    assert replies(run.output)[1:] == ["250 2.1.0", "503 5.5.1"]
    assert run.events[1:] == [MailFrom(S)]


@pytest.mark.parametrize("code", [451, 550])
def test_application_refuses_mail(code: int) -> None:
    refusal = Reply(code, f"{code // 100}.7.1", "Sender refused")

    def policy(event: ServerEvent, conn: ServerConnection) -> list[Reply]:
        if isinstance(event, MailFrom):
            return [refusal]
        return default_policy(event, conn)

    run = check(LHLO + MAIL + rcpt(A) + MAIL, policy)
    assert run.output == lhlo_reply() + wire(refusal) + (
        b"503 5.5.1 Send MAIL first\r\n" + wire(refusal)
    )
    assert run.events[1:] == [MailFrom(S), MailFrom(S)]


# ---- RCPT -------------------------------------------------------------------------------


def test_rcpt_before_mail() -> None:
    run = check(rcpt(A) + LHLO + rcpt(A))
    assert replies(run.output) == ["503 5.5.1", "250", "503 5.5.1"]
    assert run.events == [Lhlo("client.example")]


@pytest.mark.parametrize(
    "line",
    [
        b"RCPT TO:a@example.org",
        b"RCPT FROM:<a@example.org>",
        b"RCPT TO <a@example.org>",
        b"RCPT",
        b"RCPT TO:<a@example.org>junk",
    ],
)
def test_rcpt_syntax_error(line: bytes) -> None:
    run = check(LHLO + MAIL + line + b"\r\n" + rcpt(A))
    assert replies(run.output)[2:] == ["501 5.5.4", "250 2.1.5"]
    assert run.events[1:] == [MailFrom(S), RcptTo(A)]


def test_rcpt_empty_parameter_list_is_tolerated() -> None:
    run = check(LHLO + MAIL + b"RCPT TO:<a@example.org> \r\n")
    assert run.events[1:] == [MailFrom(S), RcptTo(A)]


@pytest.mark.parametrize("address", ["", "a b@example.org", "a@", "x" * 65 + "@example.org"])
def test_rcpt_bad_address(address: str) -> None:
    run = check(LHLO + MAIL + rcpt(address))
    assert replies(run.output)[2:] == ["501 5.1.3"]
    assert run.events[1:] == [MailFrom(S)]


@pytest.mark.parametrize("params", [" NOTIFY=NEVER", " ORCPT=rfc822;a@b", " SIZE=1", " XFOO"])
def test_rcpt_parameters_are_refused(params: str) -> None:
    run = check(LHLO + MAIL + f"RCPT TO:<{A}>{params}\r\n".encode())
    assert replies(run.output)[2:] == ["555 5.5.4"]
    assert run.events[1:] == [MailFrom(S)]


def test_non_ascii_recipient_needs_smtputf8() -> None:
    user = "ü@example.org"
    run = check(LHLO + MAIL + rcpt(user) + RSET + mail(" SMTPUTF8") + rcpt(user))
    assert replies(run.output)[2:] == ["553 5.6.7", "250 2.0.0", "250 2.1.0", "250 2.1.5"]
    assert run.events[-1] == RcptTo(user)


@pytest.mark.parametrize("name", ["Postmaster", "postmaster"])
def test_postmaster_without_domain(name: str) -> None:
    # CORE BUG: RFC 5321 4.1.1.3 allows "RCPT TO:<Postmaster>" (no domain), and 4.5.1
    # says it MUST be supported; the core answers 501 5.1.3.
    run = check(LHLO + MAIL + rcpt(name))
    assert run.events[1:] == [MailFrom(S), RcptTo(name)]


def test_max_recipients() -> None:
    limits = Limits(max_recipients=2)
    run = check(LHLO + MAIL + rcpt(A, B, C) + DATA + b"hi\r\n.\r\n", PerRecipient(), limits=limits)
    assert replies(run.output)[1:] == [
        "250 2.1.0",
        "250 2.1.5",
        "250 2.1.5",
        "452 4.5.3",
        "354",
        "250 2.0.0",
        "250 2.0.0",
    ]
    assert [e for e in run.events if isinstance(e, RcptTo)] == [RcptTo(A), RcptTo(B)]


def test_max_recipients_counts_only_accepted_ones() -> None:
    limits = Limits(max_recipients=2)
    run = check(LHLO + MAIL + rcpt(B, A, C, S), PerRecipient(refuse=(B,)), limits=limits)
    assert replies(run.output)[2:] == ["550 5.1.1", "250 2.1.5", "250 2.1.5", "452 4.5.3"]


def test_duplicate_recipients_are_separate_and_count() -> None:
    run = check(LHLO + MAIL + rcpt(A, A, A) + DATA + b"x\r\n.\r\n", PerRecipient())
    assert [e for e in run.events if isinstance(e, RcptTo)] == [RcptTo(A)] * 3
    lines = run.output.split(b"\r\n")
    assert lines[-4:-1] == [wire(final_text(i, A)).rstrip() for i in range(3)]
    limited = check(LHLO + MAIL + rcpt(A, A), limits=Limits(max_recipients=1))
    assert replies(limited.output)[2:] == ["250 2.1.5", "452 4.5.3"]


# ---- DATA -------------------------------------------------------------------------------

TXN = LHLO + MAIL + rcpt(A, B) + DATA


def test_data_needs_accepted_recipients() -> None:
    run = check(LHLO + MAIL + rcpt(A) + DATA + b".\r\n", refusing(A))
    assert replies(run.output)[2:] == ["550 5.1.1", "503 5.5.1"]
    assert run.output.endswith(b"503 5.5.1 No valid recipients; closing the connection\r\n")
    assert run.events[-1] == ConnectionClosed("DATA refused", NO_RECIPIENTS)
    assert not any(isinstance(e, EndOfData) for e in run.events)


DATA_NO_MAIL = Reply(503, "5.5.1", "Send MAIL first; closing the connection")
NO_RECIPIENTS = Reply(503, "5.5.1", "No valid recipients; closing the connection")
DATA_SYNTAX = Reply(501, "5.5.4", "Syntax: DATA; closing the connection")


@pytest.mark.parametrize(
    ("setup", "refusal"),
    [
        (b"", DATA_NO_MAIL),
        (LHLO, DATA_NO_MAIL),
        (LHLO + MAIL, NO_RECIPIENTS),
        (LHLO + MAIL + rcpt(A) + b"DATA now\r\n", DATA_SYNTAX),
    ],
)
def test_data_sequence_and_syntax(setup: bytes, refusal: Reply) -> None:
    line = b"" if setup.endswith(b"now\r\n") else DATA
    run = check(setup + line + NOOP)
    assert run.output.endswith(wire(refusal))  # and nothing after it: NOOP never ran
    assert run.events[-1] == ConnectionClosed("DATA refused", refusal)


# What a client that does not wait for the 354 sends when its recipients were refused
# (issue 13): the body holds commands. None of them may run, however the input is split.
EARLY_BODY = (
    b"Subject: x\r\n\r\nhello\r\n"
    + b"MAIL FROM:<evil@example.net>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
    + b"stored in the victim's mailbox\r\n.\r\nQUIT\r\n"
)


@pytest.mark.parametrize(
    "envelope",
    [
        LHLO + MAIL + rcpt("x@example.org"),  # every recipient refused by the application
        LHLO + rcpt(A),  # no MAIL at all
        LHLO + mail(" BODY=BINARYMIME") + rcpt(A),  # DATA not allowed in this transaction
        LHLO + MAIL + rcpt(A) + b"BDAT 1\r\nx",  # DATA after BDAT
    ],
    ids=["no-recipients", "no-mail", "binarymime", "after-bdat"],
)
def test_body_sent_before_354_never_runs_as_commands(envelope: bytes) -> None:
    for run in runs(envelope + DATA + EARLY_BODY, refusing("x@example.org")):
        assert MailFrom("evil@example.net") not in run.events
        assert RcptTo("victim@example.org") not in run.events
        assert not any(isinstance(e, EndOfData | Quit) for e in run.events)
        last = run.events[-1]
        assert isinstance(last, ConnectionClosed) and last.reason == "DATA refused"
        assert run.output.endswith(b"; closing the connection\r\n")
        assert b"354" not in run.output and b"221" not in run.output


def test_rfc2920_pipelining_still_works_with_the_body_after_354() -> None:
    conn = server()
    events, out = pump(conn, LHLO + MAIL + rcpt(A, B) + DATA)
    assert replies(out)[-4:] == ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354"]
    assert [type(e) for e in events] == [Lhlo, MailFrom, RcptTo, RcptTo]
    events, out = pump(conn, b"hello\r\n.\r\n" + MAIL + rcpt(A) + DATA)
    assert replies(out) == ["250 2.0.0", "250 2.0.0", "250 2.1.0", "250 2.1.5", "354"]
    assert coalesce(events)[:2] == [MessageData(b"hello\r\n"), EndOfData()]
    assert conn.state is ServerState.DATA


def test_data_gives_354_and_the_message() -> None:
    run = check(TXN + b"Subject: hi\r\n\r\nhello\r\n.\r\n" + QUIT)
    assert run.output == lhlo_reply() + (
        b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n250 2.1.5 OK\r\n"
        b"354 End data with <CR><LF>.<CR><LF>\r\n"
        b"250 2.0.0 Saved\r\n250 2.0.0 Saved\r\n221 2.0.0 Bye\r\n"
    )
    assert coalesce(run.events)[3:] == [
        RcptTo(B),
        MessageData(b"Subject: hi\r\n\r\nhello\r\n"),
        EndOfData(),
        Quit(),
        ConnectionClosed("quit"),
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b".\r\n", b""),
        (b"\r\n.\r\n", b"\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"..a\r\nb\r\n...\r\n..\r\n.\r\n", b".a\r\nb\r\n..\r\n.\r\n"),
        (b"a.\r\n.b\r\n.\r\n", b"a.\r\nb\r\n"),
        (b"a\r\n. \r\n.\r\n", b"a\r\n \r\n"),
        (b"a\r\n.x.\r\n.\r\n", b"a\r\nx.\r\n"),
    ],
)
def test_dot_unstuffing(raw: bytes, message: bytes) -> None:
    run = check(TXN + raw + NOOP)
    assert body_of(run.events) == message
    assert coalesce(run.events)[-1] == EndOfData()
    assert replies(run.output)[-3:] == ["250 2.0.0"] * 3


def test_message_ends_only_at_crlf_dot_crlf() -> None:
    raw = b"a\r\n.\rb\r\n. \r\n.x\r\n..\r\n\r\n\r\n.\r\n"
    run = check(TXN + raw, bare_line_endings=BareLineEndings.NORMALIZE)
    assert body_of(run.events) == b"a\r\n\r\nb\r\n \r\nx\r\n.\r\n\r\n\r\n"
    assert [type(e) for e in coalesce(run.events)[-2:]] == [MessageData, EndOfData]


def test_end_of_data_only_after_the_last_byte() -> None:
    conn = server()
    pump(conn, TXN)
    raw = b"one\r\n..\r\n\r\n.x\r\n. \r\n\r\n.\r\n"
    body = b""
    for byte in raw[:-1]:
        events, out = pump(conn, bytes([byte]))
        assert all(isinstance(e, MessageData) for e in events)
        assert out == b""
        body += body_of(events)
    assert conn.state is ServerState.DATA
    conn.receive_data(raw[-1:])
    events = []
    while (event := conn.next_event()) is not Signal.PAUSED:
        events.append(event)
    assert events[-1] == EndOfData()
    assert body + body_of(events) == b"one\r\n.\r\n\r\nx\r\n \r\n\r\n"
    assert conn.owed_replies == 2


SMUGGLING = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\r.\r",
    b"\r\n.\r",
    b"\n.\r",
    b"\r.\n",
]


@pytest.mark.parametrize("seq", SMUGGLING, ids=repr)
def test_smuggling_is_refused_by_default(seq: bytes) -> None:
    raw = b"Subject: x\r\n\r\nhello" + seq + INJECT + b"bye\r\n.\r\n" + QUIT
    all_runs = runs(TXN + raw)
    run = all_runs[0]
    refusal = Reply(550, "5.6.0", "Message contains a bare CR or LF")
    assert settled(run.events) == [
        Lhlo("client.example"),
        MailFrom(S),
        RcptTo(A),
        RcptTo(B),
        MessageRefused(refusal),
        Quit(),
        ConnectionClosed("quit"),
    ]
    assert run.output.endswith(
        b"354 End data with <CR><LF>.<CR><LF>\r\n" + wire(refusal) * 2 + b"221 2.0.0 Bye\r\n"
    )
    for each in all_runs:
        assert not any(isinstance(e, EndOfData) for e in each.events)
        assert [e for e in each.events if isinstance(e, MailFrom | RcptTo)] == [
            MailFrom(S),
            RcptTo(A),
            RcptTo(B),
        ]
        assert b"evil" not in body_of(each.events)
        assert b"Subject: x\r\n\r\nhello\r\n".startswith(body_of(each.events))


@pytest.mark.parametrize("seq", SMUGGLING, ids=repr)
def test_smuggling_is_message_text_when_normalised(seq: bytes) -> None:
    raw = b"Subject: x\r\n\r\nhello" + seq + INJECT + b"bye\r\n.\r\n" + QUIT
    run = check(TXN + raw, bare_line_endings=BareLineEndings.NORMALIZE)
    # Each bare CR or LF becomes CRLF, so the "." after it starts a line and is unstuffed.
    assert coalesce(run.events)[4:] == [
        MessageData(b"Subject: x\r\n\r\nhello\r\n\r\n" + INJECT + b"bye\r\n"),
        EndOfData(),
        Quit(),
        ConnectionClosed("quit"),
    ]
    assert replies(run.output)[-3:] == ["250 2.0.0", "250 2.0.0", "221 2.0.0"]


def test_bare_line_endings_normalised() -> None:
    raw = b"a\nb\rc\r\r\n.d\n..\n\r\n.\r\n"
    run = check(TXN + raw, bare_line_endings=BareLineEndings.NORMALIZE)
    assert body_of(run.events) == b"a\r\nb\r\nc\r\n\r\nd\r\n.\r\n\r\n"
    assert coalesce(run.events)[-1] == EndOfData()


def test_owed_replies_and_paused() -> None:
    conn = server()
    pump(conn, TXN)
    conn.receive_data(b"hello\r\n.\r\n" + NOOP)
    events: list[ServerEvent] = []
    while (event := conn.next_event()) is not Signal.PAUSED:
        events.append(event)
    assert coalesce(events) == [MessageData(b"hello\r\n"), EndOfData()]
    assert conn.owed_replies == 2
    assert conn.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(354, None, "go ahead"))
    assert conn.owed_replies == 2
    assert conn.data_to_send() == b""
    conn.send(Reply(250, "2.0.0", "first"))
    assert conn.next_event() is Signal.PAUSED  # the pipelined NOOP waits
    assert conn.data_to_send() == b"250 2.0.0 first\r\n"
    conn.send(Reply(554, "5.6.0", "second"))
    assert conn.owed_replies == 0
    assert conn.next_event() is Signal.NEED_DATA
    assert conn.data_to_send() == b"554 5.6.0 second\r\n250 2.0.0 OK\r\n"
    with pytest.raises(LocalProtocolError):
        conn.send(SAVED)
    assert conn.data_to_send() == b""
    assert conn.state is ServerState.READY


def test_send_with_nothing_owed() -> None:
    conn = ServerConnection(HOST)
    with pytest.raises(LocalProtocolError):
        conn.send(OK_MAIL)
    pump(conn, LHLO)
    with pytest.raises(LocalProtocolError):
        conn.send(OK_MAIL)
    conn.receive_data(MAIL)
    assert conn.next_event() == MailFrom(S)
    assert conn.next_event() is Signal.PAUSED
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(334, None, "no"))
    assert conn.owed_replies == 1
    conn.send(OK_MAIL)
    assert conn.state is ServerState.MAIL


def test_oversize_message() -> None:
    limits = Limits(max_message_size=64)
    raw = b"x" * 60 + b"\r\n" + b"..y" * 30 + b"\r\n.\r\n" + NOOP
    all_runs = runs(TXN + raw, limits=limits)
    refusal = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
    assert settled(all_runs[0].events)[4:] == [MessageRefused(refusal)]
    assert all_runs[0].output.endswith(wire(refusal) * 2 + b"250 2.0.0 OK\r\n")
    for run in all_runs:
        got = body_of(run.events)
        assert len(got) <= 64
        assert (b"x" * 60 + b"\r\n" + b".y" * 30).startswith(got)


def test_message_of_exactly_the_size_limit() -> None:
    raw = b".." + b"x" * 61 + b"\r\n.\r\n"  # 64 octets once unstuffed
    run = check(TXN + raw, limits=Limits(max_message_size=64))
    assert body_of(run.events) == b"." + b"x" * 61 + b"\r\n"
    assert coalesce(run.events)[-1] == EndOfData()


def test_line_over_text_line_is_refused() -> None:
    raw = b"ok\r\n" + b"a" * 999 + b"\r\nmore\r\n.\r\n"
    all_runs = runs(TXN + raw)
    refusal = Reply(500, "5.5.6", "Message has a line over 1000 octets")
    assert settled(all_runs[0].events)[4:] == [MessageRefused(refusal)]
    assert all_runs[0].output.endswith(wire(refusal) * 2)
    for run in all_runs:
        # Nothing past the line that broke the limit is released.
        assert (b"ok\r\n" + b"a" * 999).startswith(body_of(run.events))


def test_line_of_998_octets_passes_and_stuffed_dot_does_not_count() -> None:
    # RFC 5321 4.5.3.1.6: 1000 octets with CRLF, "not counting the leading dot
    # duplicated for transparency".
    raw = b"a" * 998 + b"\r\n." + b"b" * 998 + b"\r\n.\r\n"
    run = check(TXN + raw)
    assert body_of(run.events) == b"a" * 998 + b"\r\n" + b"b" * 998 + b"\r\n"
    assert coalesce(run.events)[-1] == EndOfData()


def test_text_line_limit_is_configurable() -> None:
    limits = Limits(text_line=100)
    run = check(TXN + b"a" * 98 + b"\r\n" + b"b" * 99 + b"\r\n.\r\n", limits=limits)
    assert run.events[-1] == MessageRefused(
        Reply(500, "5.5.6", "Message has a line over 100 octets")
    )


@pytest.mark.parametrize(
    ("raw", "limits"),
    [
        (b"a\n" + b"b" * 60 + b"\r\n.\r\n", Limits(max_message_size=32)),
        (b"a" * 1200 + b"\r\n" + b"b" * 10 + b"\r\n.\r\n", Limits(max_message_size=1100)),
        (b"a" * 1200 + b"\nb\r\n.\r\n", Limits()),
    ],
    ids=["size-vs-bare", "size-vs-long-line", "long-line-vs-bare"],
)
def test_refusal_does_not_depend_on_the_split(raw: bytes, limits: Limits) -> None:
    # CORE BUG: _body_piece keeps the first refusal it meets per piece, checking size,
    # then bare line ends, then line length; whole input meets all at once (size
    # wins), byte by byte meets them in message order, so the reply differs.
    run = check(TXN + raw, limits=limits)
    assert isinstance(run.events[-1], MessageRefused)


def test_next_transaction_after_a_refusal() -> None:
    run = check(TXN + b"a\nb\r\n.\r\n" + MAIL + rcpt(A) + DATA + b"ok\r\n.\r\n")
    assert replies(run.output)[-6:] == [
        "550 5.6.0",
        "550 5.6.0",
        "250 2.1.0",
        "250 2.1.5",
        "354",
        "250 2.0.0",
    ]
    assert coalesce(run.events)[-2:] == [MessageData(b"ok\r\n"), EndOfData()]


# ---- BDAT -------------------------------------------------------------------------------

ENVELOPE = LHLO + MAIL + rcpt(A, B)


def test_bdat_counts_octets_exactly() -> None:
    chunk = b"a\r\n.\r\nBDAT 5 LAST\r\nQUIT\r\n.\r\n"
    run = check(ENVELOPE + bdat(chunk, last=True) + NOOP)
    assert coalesce(run.events)[4:] == [MessageData(chunk), EndOfData()]
    assert replies(run.output)[-3:] == ["250 2.0.0"] * 3


def test_bdat_zero_last() -> None:
    run = check(ENVELOPE + b"BDAT 0 LAST\r\n")
    assert run.events[4:] == [EndOfData()]
    assert replies(run.output)[-2:] == ["250 2.0.0"] * 2


def test_bdat_chunks_then_last() -> None:
    run = check(
        ENVELOPE + bdat(b"hello\r\n") + b"bdat 8\r\nworld\r\n." + b"BDAT 3 last\r\nend" + QUIT
    )
    assert coalesce(run.events)[4:] == [
        MessageData(b"hello\r\nworld\r\n.end"),
        EndOfData(),
        Quit(),
        ConnectionClosed("quit"),
    ]
    assert run.output.endswith(
        b"250 2.0.0 Chunk received\r\n250 2.0.0 Chunk received\r\n"
        b"250 2.0.0 Saved\r\n250 2.0.0 Saved\r\n221 2.0.0 Bye\r\n"
    )


def test_bdat_zero_chunk_is_answered() -> None:
    run = check(ENVELOPE + b"BDAT 0\r\n" + bdat(b"x", last=True))
    assert replies(run.output)[-3:] == ["250 2.0.0", "250 2.0.0", "250 2.0.0"]
    assert coalesce(run.events)[4:] == [MessageData(b"x"), EndOfData()]


def test_bdat_crlf_split_over_chunks_is_not_bare() -> None:
    run = check(ENVELOPE + bdat(b"a\r") + bdat(b"\nb\r\n", last=True))
    assert coalesce(run.events)[4:] == [MessageData(b"a\r\nb\r\n"), EndOfData()]


@pytest.mark.parametrize(
    "setup", [b"", LHLO, LHLO + MAIL], ids=["need-lhlo", "ready", "no-recipients"]
)
def test_bdat_refused_consumes_its_bytes(setup: bytes) -> None:
    chunk = b"QUIT\r\nRSET\r\n"
    run = check(setup + bdat(chunk) + bdat(chunk, last=True) + NOOP)
    assert replies(run.output)[-3:] == ["503 5.5.1", "503 5.5.1", "250 2.0.0"]
    assert not any(isinstance(e, Quit | Rset | MessageData | EndOfData) for e in run.events)


def test_bdat_refused_when_the_application_refused_everyone() -> None:
    run = check(LHLO + MAIL + rcpt(A) + bdat(b"x", last=True) + rcpt(A), refusing(A))
    assert replies(run.output)[-3:] == ["550 5.1.1", "503 5.5.1", "550 5.1.1"]


def test_data_and_rcpt_after_bdat() -> None:
    run = check(ENVELOPE + bdat(b"x") + rcpt(C) + MAIL + bdat(b"y", last=True))
    assert replies(run.output)[-5:] == [
        "250 2.0.0",
        "503 5.5.1",
        "503 5.5.1",
        "250 2.0.0",
        "250 2.0.0",
    ]
    assert coalesce(run.events)[4:] == [MessageData(b"xy"), EndOfData()]
    closed = check(ENVELOPE + bdat(b"x") + DATA + bdat(b"y", last=True))
    assert replies(closed.output)[-2:] == ["250 2.0.0", "503 5.5.1"]
    assert coalesce(closed.events)[4:] == [
        MessageData(b"x"),
        ConnectionClosed(
            "DATA refused",
            Reply(503, "5.5.1", "BINARYMIME and BDAT exclude DATA; closing the connection"),
        ),
    ]


def test_binarymime_excludes_data() -> None:
    run = check(LHLO + mail(" BODY=BINARYMIME") + rcpt(A) + DATA + b"x\r\n.\r\n")
    assert replies(run.output)[-3:] == ["250 2.1.0", "250 2.1.5", "503 5.5.1"]
    assert isinstance(run.events[-1], ConnectionClosed)


def test_binarymime_bdat_passes_bytes_untouched() -> None:
    chunk = b"\x00\n\r\xff.\r\n" + b"z" * 1500 + b"\r"
    run = check(LHLO + mail(" BODY=BINARYMIME") + rcpt(A) + bdat(chunk, last=True))
    assert coalesce(run.events)[3:] == [MessageData(chunk), EndOfData()]


@pytest.mark.parametrize("policy", list(BareLineEndings))
def test_binarymime_ignores_the_bare_line_policy(policy: BareLineEndings) -> None:
    chunk = b"a\nb\rc"
    run = check(
        LHLO + mail(" BODY=BINARYMIME") + rcpt(A) + bdat(chunk, last=True),
        bare_line_endings=policy,
    )
    assert coalesce(run.events)[3:] == [MessageData(chunk), EndOfData()]


def test_bdat_bare_line_endings() -> None:
    rejected = check(ENVELOPE + bdat(b"a\nb") + bdat(b"c\r\n", last=True))
    assert rejected.events[-1] == MessageRefused(
        Reply(550, "5.6.0", "Message contains a bare CR or LF")
    )
    assert replies(rejected.output)[-3:] == ["250 2.0.0", "550 5.6.0", "550 5.6.0"]
    trailing_cr = check(ENVELOPE + bdat(b"a\r", last=True))
    assert isinstance(trailing_cr.events[-1], MessageRefused)
    normalised = check(
        ENVELOPE + bdat(b"a\nb\r") + bdat(b"c\r", last=True),
        bare_line_endings=BareLineEndings.NORMALIZE,
    )
    assert coalesce(normalised.events)[4:] == [MessageData(b"a\r\nb\r\nc\r\n"), EndOfData()]


def test_bdat_normalize_leaves_a_clean_message_alone() -> None:
    # CORE BUG: with NORMALIZE the BDAT normaliser's finish() appends CRLF to a body
    # that does not end with a line end, so "abc" is stored as "abc\r\n" (REJECT stores
    # "abc"), and a message of exactly max_message_size is refused with 552.
    run = check(ENVELOPE + bdat(b"abc", last=True), bare_line_endings=BareLineEndings.NORMALIZE)
    assert coalesce(run.events)[4:] == [MessageData(b"abc"), EndOfData()]
    exact = check(
        ENVELOPE + bdat(b"abc", last=True),
        limits=Limits(max_message_size=3),
        bare_line_endings=BareLineEndings.NORMALIZE,
    )
    assert exact.events[-1] == EndOfData()


def test_bdat_with_nul_under_normalize_is_stored_not_a_crash() -> None:
    # Found by fuzz_server: the normaliser shared with the client's encoder refused NUL
    # (which a client must never send but as BINARYMIME) by raising out of the server.
    run = check(
        ENVELOPE + bdat(b"a\x00b\r\n", last=True), bare_line_endings=BareLineEndings.NORMALIZE
    )
    assert coalesce(run.events)[4:] == [MessageData(b"a\x00b\r\n"), EndOfData()]


def test_bdat_oversize() -> None:
    limits = Limits(max_message_size=10)
    all_runs = runs(ENVELOPE + bdat(b"x" * 8) + bdat(b"y" * 8) + b"BDAT 0 LAST\r\n", limits=limits)
    refusal = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
    assert all_runs[0].events[-1] == MessageRefused(refusal)
    assert replies(all_runs[0].output)[-4:] == ["250 2.0.0", "250 2.0.0", "552 5.3.4", "552 5.3.4"]
    for run in all_runs:
        assert len(body_of(run.events)) <= 10


@pytest.mark.parametrize(
    ("chunk", "refused"),
    [(b"a" * 998, False), (b"a" * 999, True), (b"a" * 998 + b"\r\n", False), (b"a" * 1500, True)],
    ids=["998", "999", "998-crlf", "1500"],
)
def test_bdat_long_last_line(chunk: bytes, refused: bool) -> None:
    run = check(ENVELOPE + bdat(chunk, last=True))
    assert isinstance(run.events[-1], MessageRefused) is refused
    if refused:
        assert replies(run.output)[-2:] == ["500 5.5.6"] * 2


@pytest.mark.parametrize(
    "line",
    [
        b"BDAT",
        b"BDAT ",
        b"BDAT x",
        b"BDAT -1",
        b"BDAT 1 LASTX",
        b"BDAT 1  LAST",
        b"BDAT 1 FIRST",
        b"BDAT 1234567890123456789",
    ],
)
def test_bdat_syntax_error_closes(line: bytes) -> None:
    run = check(ENVELOPE + line + b"\r\n" + NOOP + QUIT)
    assert replies(run.output)[-1] == "501 5.5.4"
    assert run.events[-1] == ConnectionClosed(
        "BDAT without a valid size", Reply(501, "5.5.4", "Syntax: BDAT size [LAST]")
    )
    assert not any(isinstance(e, Quit) for e in run.events)


def test_bdat_syntax_error_before_lhlo_closes_too() -> None:
    run = check(b"BDAT many\r\n" + NOOP)
    assert replies(run.output) == ["501 5.5.4"]
    assert run.events == [
        ConnectionClosed(
            "BDAT without a valid size", Reply(501, "5.5.4", "Syntax: BDAT size [LAST]")
        )
    ]


# ---- pipelining and LMTP's per-recipient replies ----------------------------------------


def test_whole_transaction_in_one_chunk() -> None:
    data = LHLO + MAIL + rcpt(A, B, C) + DATA + b"Subject: x\r\n\r\nbody\r\n.\r\n" + QUIT
    run = check(data, PerRecipient(refuse=(B,)))
    assert run.output == lhlo_reply() + (
        b"250 2.1.0 OK\r\n"
        b"250 2.1.5 OK\r\n"
        b"550 5.1.1 No such user\r\n"
        b"250 2.1.5 OK\r\n"
        b"354 End data with <CR><LF>.<CR><LF>\r\n"
        b"250 2.0.0 #0 <a@example.org> saved\r\n"
        b"452 4.2.2 #1 <c@example.org> mailbox full\r\n"
        b"221 2.0.0 Bye\r\n"
    )
    assert coalesce(run.events) == [
        Lhlo("client.example"),
        MailFrom(S),
        RcptTo(A),
        RcptTo(B),
        RcptTo(C),
        MessageData(b"Subject: x\r\n\r\nbody\r\n"),
        EndOfData(),
        Quit(),
        ConnectionClosed("quit"),
    ]


@pytest.mark.parametrize("use_bdat", [False, True])
def test_one_reply_per_accepted_recipient_in_rcpt_order(use_bdat: bool) -> None:
    recipients = [A, B, A, C, "d@example.org", B, C]
    body = bdat(b"msg\r\n", last=True) if use_bdat else DATA + b"msg\r\n.\r\n"
    data = LHLO + MAIL + rcpt(*recipients) + body + MAIL + rcpt(C) + body
    run = check(data, PerRecipient(refuse=("d@example.org",)))
    accepted = [r for r in recipients if r != "d@example.org"]
    lines = run.output.split(b"\r\n")[:-1]
    first = lines.index(b"250 2.1.0 OK")
    finals = lines[first + 1 + len(recipients) + (0 if use_bdat else 1) :][: len(accepted)]
    assert finals == [wire(final_text(i, r)).rstrip(b"\r\n") for i, r in enumerate(accepted)]
    assert lines[-1] == wire(final_text(0, C)).rstrip(b"\r\n")
    assert sum(isinstance(e, EndOfData) for e in run.events) == 2


# ---- RSET, NOOP, VRFY, QUIT, bad commands --------------------------------------------------


def test_rset_mid_transaction() -> None:
    run = check(LHLO + MAIL + rcpt(A) + RSET + rcpt(A) + MAIL)
    assert replies(run.output)[1:] == [
        "250 2.1.0",
        "250 2.1.5",
        "250 2.0.0",
        "503 5.5.1",
        "250 2.1.0",
    ]
    assert run.events[1:] == [MailFrom(S), RcptTo(A), Rset(), MailFrom(S)]


def test_rset_mid_bdat_transaction() -> None:
    run = check(ENVELOPE + bdat(b"x") + RSET + MAIL + rcpt(A) + DATA + b"y\r\n.\r\n")
    assert coalesce(run.events)[4:] == [
        MessageData(b"x"),
        Rset(),
        MailFrom(S),
        RcptTo(A),
        MessageData(b"y\r\n"),
        EndOfData(),
    ]


def test_rset_before_lhlo_and_with_argument() -> None:
    run = check(RSET + MAIL + b"RSET now\r\n")
    assert replies(run.output) == ["250 2.0.0", "503 5.5.1", "501 5.5.4"]
    assert run.events == [Rset()]


def test_noop_and_vrfy() -> None:
    run = check(NOOP + b"noop whatever\r\nVRFY a@example.org\r\nvrfy\r\n" + LHLO + NOOP)
    assert run.output == (
        b"250 2.0.0 OK\r\n250 2.0.0 OK\r\n"
        + b"252 2.5.0 Cannot VRFY user, but will accept message\r\n"
        + b"501 5.5.4 Syntax: VRFY address\r\n"  # VRFY needs an argument
        + lhlo_reply()
        + b"250 2.0.0 OK\r\n"
    )
    assert run.events == [Lhlo("client.example")]


def test_quit_closes_and_ignores_what_follows() -> None:
    conn = server()
    events, out = pump(conn, LHLO + QUIT + MAIL + NOOP)
    assert events == [Lhlo("client.example"), Quit(), ConnectionClosed("quit")]
    assert out == lhlo_reply() + b"221 2.0.0 Bye\r\n"
    assert conn.state is ServerState.CLOSED
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    conn.receive_data(NOOP)  # ignored: the session is over
    conn.receive_eof()
    assert conn.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        conn.next_event()


@pytest.mark.parametrize(
    "line",
    [b"XYZZY", b"", b" NOOP", b"MAILFROM:<a@b>", b"ma\xc4\xb1l FROM:<a@b>", b"\xc5\xbfTARTTLS"],
)
def test_unknown_command(line: bytes) -> None:
    run = check(LHLO + line + b"\r\n" + NOOP)
    assert replies(run.output)[1:] == ["500 5.5.1", "250 2.0.0"]
    assert run.events == [Lhlo("client.example")]


@pytest.mark.parametrize(
    "line",
    [
        b"NOOP\x00",
        b"NO\x00OP",
        b"NOOP\x01",
        b"NO\tOP",
        b"NOOP\x7f",
        b"\x1b[31mNOOP",
        b"NOOP\rQUIT",
        b"NOOP\nMAIL FROM:<a@b>",
        b"NOOP \xff",
        b"VRFY \xc0\x80",
        b"VRFY \xed\xa0\x80",
        b"MAIL FROM:<\xe4@b>",
    ],
)
def test_bad_bytes_in_a_command(line: bytes) -> None:
    run = check(LHLO + line + b"\r\n" + NOOP)
    assert replies(run.output)[1:] == ["500 5.5.2", "250 2.0.0"]
    assert run.events == [Lhlo("client.example")]


def test_command_line_limit() -> None:
    exact = b"NOOP " + b"x" * 505 + b"\r\n"  # 512 octets with CRLF
    over = b"NOOP " + b"x" * 506 + b"\r\n"
    way_over = b"MAIL FROM:<a@b> " + b"y" * 3000 + b"\r\n"
    run = check(LHLO + exact + over + way_over + NOOP)
    assert replies(run.output)[1:] == ["250 2.0.0", "500 5.5.2", "500 5.5.2", "250 2.0.0"]
    assert run.events == [Lhlo("client.example")]


def test_command_line_limit_is_configurable() -> None:
    run = check(b"NOOP " + b"x" * 60 + b"\r\n" + NOOP, limits=Limits(command_line=64))
    assert replies(run.output) == ["500 5.5.2", "250 2.0.0"]


def test_endless_line_keeps_memory_bounded() -> None:
    conn = server()
    piece = b"A" * 65536
    for _ in range(64):  # 4 MiB without a CRLF
        conn.receive_data(piece)
        assert conn.next_event() is Signal.NEED_DATA
        assert len(conn._buffer) <= 512
    conn.receive_data(b"\r")
    assert conn.next_event() is Signal.NEED_DATA
    conn.receive_data(b"\n" + NOOP)
    assert conn.next_event() is Signal.NEED_DATA
    assert conn.data_to_send() == b"500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n"


def test_endless_message_keeps_memory_bounded() -> None:
    conn = server(limits=Limits(max_message_size=1024))
    pump(conn, TXN)
    piece = (b"y" * 78 + b"\r\n") * 800
    released = b""
    for _ in range(64):  # 4 MiB of message
        events, out = pump(conn, piece)
        released += body_of(events)
        assert out == b""
        assert len(conn._buffer) <= 4
    assert len(released) <= 1024
    events, out = pump(conn, b".\r\n")
    assert events == [MessageRefused(Reply(552, "5.3.4", ANY_SIZE_TEXT))]
    assert replies(out) == ["552 5.3.4"] * 2


def test_endless_bdat_chunk_keeps_memory_bounded() -> None:
    conn = server(limits=Limits(max_message_size=1024))
    pump(conn, ENVELOPE + f"BDAT {64 * 65536} LAST\r\n".encode())
    released = b""
    for _ in range(64):
        events, out = pump(conn, b"z" * 65536)
        released += body_of(events)
        assert len(conn._buffer) == 0
    assert len(released) <= 1024
    assert events == [MessageRefused(Reply(552, "5.3.4", ANY_SIZE_TEXT))]
    assert replies(out) == ["552 5.3.4"] * 2


def test_error_budget() -> None:
    limits = Limits(max_errors=3)
    data = b"XYZZY\r\n" + b"HELO x\r\n" + MAIL + NOOP + b"\x00\r\n" + NOOP + QUIT
    run = check(data, limits=limits)
    assert replies(run.output) == ["500 5.5.1", "500 5.5.1", "503 5.5.1", "250 2.0.0", "421 4.7.0"]
    assert run.events == [
        ConnectionClosed(
            "too many errors", Reply(421, "4.7.0", "Too many errors, closing the connection")
        )
    ]


def test_error_budget_counts_refused_bdat_and_parameters() -> None:
    limits = Limits(max_errors=2)
    run = check(LHLO + mail(" XFOO") + bdat(b"abc") + bdat(b"QUIT\r\n"), limits=limits)
    assert replies(run.output)[1:] == ["555 5.5.4", "503 5.5.1", "421 4.7.0"]
    assert run.events[-1] == ConnectionClosed(
        "too many errors", Reply(421, "4.7.0", "Too many errors, closing the connection")
    )


# ---- STARTTLS -----------------------------------------------------------------------------


def test_starttls_not_offered() -> None:
    run = check(LHLO + b"STARTTLS\r\n" + NOOP)
    assert replies(run.output)[1:] == ["502 5.5.1", "250 2.0.0"]
    assert run.events == [Lhlo("client.example")]


def test_starttls_with_argument() -> None:
    run = check(LHLO + b"STARTTLS now\r\n", tls_available=True)
    assert replies(run.output)[1:] == ["501 5.5.4"]


def test_starttls_handshake_and_new_session() -> None:
    conn = server(tls_available=True)
    events, out = pump(conn, LHLO + b"starttls\r\n")
    assert events == [Lhlo("client.example"), StartTls()]
    assert out == lhlo_reply(starttls=True) + b"220 2.0.0 Ready to start TLS\r\n"
    assert conn.state is ServerState.TLS_HANDSHAKE
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"\x16\x03\x01")
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(OK_MAIL)
    conn.tls_established()
    assert state_of(conn) is ServerState.NEED_LHLO
    with pytest.raises(LocalProtocolError):
        conn.tls_established()
    events, out = pump(conn, MAIL + LHLO + b"STARTTLS\r\n" + MAIL)
    assert out == b"503 5.5.1 Send LHLO first\r\n" + lhlo_reply() + (
        b"503 5.5.1 TLS is already active\r\n250 2.1.0 OK\r\n"
    )
    assert events == [Lhlo("client.example"), MailFrom(S)]


def test_starttls_discards_pipelined_commands() -> None:
    conn = server(tls_available=True)
    events, out = pump(conn, LHLO + b"STARTTLS\r\n" + INJECT + b"hello\r\n.\r\n" + QUIT)
    assert events == [Lhlo("client.example"), StartTls()]
    conn.tls_established()
    assert conn.next_event() is Signal.NEED_DATA
    assert conn.data_to_send() == b""
    events, out = pump(conn, LHLO)
    assert events == [Lhlo("client.example")]
    assert out == lhlo_reply()


@pytest.mark.parametrize("seed", range(3))
def test_starttls_injection_after_any_split_of_the_prefix(seed: int) -> None:
    for chunks in every_split(LHLO + b"NOOP\r\nSTART", seed=seed):
        conn = server(tls_available=True)
        events: list[ServerEvent] = []
        for chunk in chunks:
            events += pump(conn, chunk)[0]
        events += pump(conn, b"TLS\r\n" + INJECT)[0]
        assert events == [Lhlo("client.example"), StartTls()]
        conn.tls_established()
        assert pump(conn)[0] == []
        assert conn.data_to_send() == b""


def test_starttls_resets_the_transaction() -> None:
    conn = server(tls_available=True)
    pump(conn, LHLO + MAIL + rcpt(A) + b"STARTTLS\r\n")
    conn.tls_established()
    events, out = pump(conn, LHLO + rcpt(A) + DATA)
    assert replies(out) == ["250", "503 5.5.1", "503 5.5.1"]
    assert events == [Lhlo("client.example"), ConnectionClosed("DATA refused", DATA_NO_MAIL)]


def test_implicit_tls_refuses_starttls() -> None:
    run = check(LHLO + b"STARTTLS\r\n", tls_available=True, tls_active=True)
    assert run.output == lhlo_reply() + b"503 5.5.1 TLS is already active\r\n"


def test_tls_established_without_starttls() -> None:
    with pytest.raises(LocalProtocolError):
        server(tls_available=True).tls_established()


# ---- EOF ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        LHLO,
        LHLO + b"NOO",
        LHLO + MAIL + rcpt(A),
        TXN,
        TXN + b"partial\r\n",
        TXN + b"partial\r\n.",
        TXN + b"partial\r\n.\r",
        ENVELOPE + b"BDAT 10\r\nabc",
        ENVELOPE + b"BDAT 10 LAST\r\n",
        ENVELOPE + bdat(b"abc") + b"BDAT 3 LA",
        LHLO + b"NOOP " + b"x" * 600,
    ],
    ids=lambda data: repr(data[-24:]),
)
def test_eof_never_gives_end_of_data(data: bytes) -> None:
    if data:
        run = check(data, eof=True)
    else:  # helpers.every_split() cannot split empty input
        run = run_server([], eof=True)
    assert run.events[-1] == ConnectionClosed("the client closed the connection")
    assert not any(isinstance(e, EndOfData | MessageRefused) for e in run.events)


def test_eof_after_complete_commands_answers_them_first() -> None:
    conn = server()
    conn.receive_data(LHLO + MAIL + NOOP)
    conn.receive_eof()
    assert conn.next_event() == Lhlo("client.example")
    assert conn.next_event() == MailFrom(S)
    assert conn.next_event() is Signal.PAUSED
    conn.send(OK_MAIL)
    assert conn.next_event() == ConnectionClosed("the client closed the connection")
    assert replies(conn.data_to_send()) == ["250", "250 2.1.0", "250 2.0.0"]
    with pytest.raises(LocalProtocolError):
        conn.next_event()


def test_eof_while_replies_are_owed() -> None:
    conn = server()
    conn.receive_data(TXN + b"x\r\n.\r\n")
    conn.receive_eof()
    while (event := conn.next_event()) != EndOfData():
        assert not isinstance(event, ConnectionClosed)
        if event is Signal.PAUSED:
            conn.send(OK_RCPT)
    assert conn.next_event() is Signal.PAUSED
    conn.send(SAVED)
    assert conn.next_event() is Signal.PAUSED
    conn.send(SAVED)
    assert conn.next_event() == ConnectionClosed("the client closed the connection")
    assert conn.data_to_send().endswith(wire(SAVED) * 2)


def test_data_after_eof_is_ignored() -> None:
    conn = server()
    conn.receive_eof()
    conn.receive_data(NOOP)
    assert conn.next_event() == ConnectionClosed("the client closed the connection")
    assert conn.data_to_send() == b""


# ---- require_tls, a full server, shutting down ---------------------------------------------

MUST_TLS = "530 5.7.0"


def test_require_tls_refuses_mail_until_starttls() -> None:
    run = check(LHLO + MAIL + rcpt(A) + b"STARTTLS\r\n", require_tls=True, tls_available=True)
    assert replies(run.output) == ["250", MUST_TLS, "503 5.5.1", "220 2.0.0"]
    assert b"STARTTLS" in run.output.split(b"530")[0]  # still offered
    conn = server(require_tls=True, tls_available=True)
    pump(conn, LHLO + b"STARTTLS\r\n")
    conn.tls_established()
    events, out = pump(conn, LHLO + MAIL)
    assert replies(out) == ["250", "250 2.1.0"]
    assert events == [Lhlo("client.example"), MailFrom(S)]


def test_require_tls_is_met_by_implicit_tls() -> None:
    run = check(LHLO + MAIL, require_tls=True, tls_active=True)
    assert replies(run.output) == ["250", "250 2.1.0"]


def test_require_tls_refusals_count_toward_the_error_budget() -> None:
    run = check(LHLO + MAIL * 3, require_tls=True, tls_available=True, limits=Limits(max_errors=2))
    assert replies(run.output) == ["250", MUST_TLS, MUST_TLS, "421 4.7.0"]
    assert isinstance(run.events[-1], ConnectionClosed)


def test_require_tls_needs_a_way_to_tls() -> None:
    with pytest.raises(LocalProtocolError, match="require_tls"):
        ServerConnection(HOST, require_tls=True)


def test_busy_greeting_is_421_and_the_session_ends() -> None:
    conn = ServerConnection(HOST, busy=True)
    refusal = Reply(421, "4.3.2", f"{HOST} Too many connections, try again later")
    assert conn.data_to_send() == wire(refusal)
    conn.receive_data(LHLO)  # ignored: the session is over
    assert conn.next_event() == ConnectionClosed("too many connections", refusal)
    assert conn.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        conn.next_event()


SHUTTING_DOWN = Reply(421, "4.3.2", f"{HOST} Server shutting down")


def test_close_when_idle_closes_an_idle_session_at_once() -> None:
    conn = server()
    pump(conn, LHLO)
    assert conn.idle
    conn.close_when_idle()
    assert conn.next_event() == ConnectionClosed("the server is shutting down", SHUTTING_DOWN)
    assert conn.data_to_send() == wire(SHUTTING_DOWN)


def test_close_when_idle_before_lhlo_and_with_a_command_already_buffered() -> None:
    for setup in (b"", LHLO):
        conn = server()
        pump(conn, setup)
        conn.receive_data(MAIL + NOOP)  # arrived, not yet read: never run
        conn.close_when_idle()
        assert conn.next_event() == ConnectionClosed("the server is shutting down", SHUTTING_DOWN)
        assert conn.data_to_send() == wire(SHUTTING_DOWN)


def shut_down_at_mail(event: ServerEvent, conn: ServerConnection) -> list[Reply]:
    if isinstance(event, MailFrom):
        conn.close_when_idle()  # the server begins to stop while this transaction runs
    return default_policy(event, conn)


@pytest.mark.parametrize(
    "body", [DATA + b"hello\r\n.\r\n", b"BDAT 3\r\nabcBDAT 2 LAST\r\nde"], ids=["data", "bdat"]
)
def test_close_when_idle_lets_the_transaction_in_flight_finish(body: bytes) -> None:
    run = check(LHLO + MAIL + rcpt(A, B) + body + MAIL + rcpt(A) + QUIT, shut_down_at_mail)
    assert replies(run.output)[-3:] == ["250 2.0.0", "250 2.0.0", "421 4.3.2"]
    assert run.output.endswith(wire(SHUTTING_DOWN))
    assert [type(e) for e in coalesce(run.events)][1:] == [
        MailFrom,
        RcptTo,
        RcptTo,
        MessageData,
        EndOfData,
        ConnectionClosed,
    ]  # the second MAIL and the QUIT never ran


def test_idle_is_true_only_outside_a_transaction() -> None:
    conn = server()
    assert conn.idle
    conn.receive_data(LHLO + MAIL)
    assert isinstance(conn.next_event(), Lhlo)
    assert conn.idle
    assert isinstance(conn.next_event(), MailFrom)
    assert not conn.idle  # the MAIL reply is owed
    conn.send(OK_MAIL)
    assert not conn.idle  # MAIL accepted: a transaction is in progress
    pump(conn, rcpt(A) + DATA + b"x")
    assert conn.state is ServerState.DATA and not conn.idle
    pump(conn, b"\r\n.\r\n")
    assert conn.idle
    pump(conn, MAIL + rcpt(A) + b"BDAT 5\r\nab")
    assert conn.state is ServerState.BDAT and not conn.idle
    pump(conn, b"cde" + RSET)
    assert conn.idle


# ---- every (state, command) pair -----------------------------------------------------------

SETUPS = {
    "need_lhlo": b"",
    "ready": LHLO,
    "mail": LHLO + MAIL,
    "mail_rcpt": LHLO + MAIL + rcpt(A),
    "data": LHLO + MAIL + rcpt(A) + DATA,
    "bdat": LHLO + MAIL + rcpt(A) + b"BDAT 1000\r\n",
    "tls_handshake": b"STARTTLS\r\n",
    "closed": QUIT,
}
STATE_OF = {
    "need_lhlo": ServerState.NEED_LHLO,
    "ready": ServerState.READY,
    "mail": ServerState.MAIL,
    "mail_rcpt": ServerState.MAIL,
    "data": ServerState.DATA,
    "bdat": ServerState.BDAT,
    "tls_handshake": ServerState.TLS_HANDSHAKE,
    "closed": ServerState.CLOSED,
}
VERBS = {
    "LHLO": LHLO,
    "HELO": b"HELO client.example\r\n",
    "EHLO": b"EHLO client.example\r\n",
    "MAIL": MAIL,
    "RCPT": rcpt(B),
    "DATA": DATA,
    "BDAT": b"BDAT 0\r\n",
    "RSET": RSET,
    "NOOP": NOOP,
    "VRFY": b"VRFY b\r\n",
    "QUIT": QUIT,
    "STARTTLS": b"STARTTLS\r\n",
    "XYZZY": b"XYZZY\r\n",
}
_SAME = None  # the state does not change
# (state, verb) -> (replies, event types, state after); missing pairs use DEFAULT.
EXPECTED: dict[tuple[str, str], tuple[list[str], list[type], str | None]] = {
    **{
        (s, "LHLO"): (["250"], [Lhlo], "ready") for s in ("need_lhlo", "ready", "mail", "mail_rcpt")
    },
    **{(s, "RSET"): (["250 2.0.0"], [Rset], "ready") for s in ("ready", "mail", "mail_rcpt")},
    ("need_lhlo", "RSET"): (["250 2.0.0"], [Rset], _SAME),
    ("ready", "MAIL"): (["250 2.1.0"], [MailFrom], "mail"),
    ("mail", "RCPT"): (["250 2.1.5"], [RcptTo], "mail"),
    ("mail_rcpt", "RCPT"): (["250 2.1.5"], [RcptTo], "mail"),
    ("mail_rcpt", "DATA"): (["354"], [], "data"),
    ("mail_rcpt", "BDAT"): (["250 2.0.0"], [], "mail"),
}
DEFAULT = {
    "HELO": (["500 5.5.1"], [], _SAME),
    "EHLO": (["500 5.5.1"], [], _SAME),
    "MAIL": (["503 5.5.1"], [], _SAME),
    "RCPT": (["503 5.5.1"], [], _SAME),
    "DATA": (["503 5.5.1"], [ConnectionClosed], "closed"),
    "BDAT": (["503 5.5.1"], [], _SAME),
    "NOOP": (["250 2.0.0"], [], _SAME),
    "VRFY": (["252 2.5.0"], [], _SAME),
    "QUIT": (["221 2.0.0"], [Quit, ConnectionClosed], "closed"),
    "STARTTLS": (["220 2.0.0"], [StartTls], "tls_handshake"),
    "XYZZY": (["500 5.5.1"], [], _SAME),
}


def at(name: str) -> ServerConnection:
    conn = server(tls_available=True)
    pump(conn, SETUPS[name])
    assert conn.state is STATE_OF[name]
    return conn


@pytest.mark.parametrize("verb", list(VERBS))
@pytest.mark.parametrize("state", list(SETUPS))
def test_state_command_table(state: str, verb: str) -> None:
    conn = at(state)
    line = VERBS[verb]
    if state == "tls_handshake":
        with pytest.raises(LocalProtocolError):
            conn.receive_data(line)
        assert conn.state is ServerState.TLS_HANDSHAKE
        return
    if state == "closed":
        conn.receive_data(line)
        with pytest.raises(LocalProtocolError):
            conn.next_event()
        assert conn.data_to_send() == b""
        return
    events, out = pump(conn, line)
    if state in ("data", "bdat"):  # message text, never a command
        assert out == b""
        assert all(isinstance(e, MessageData) for e in events)
        assert conn.state is STATE_OF[state]
        return
    want_replies, want_events, after = EXPECTED.get((state, verb)) or DEFAULT[verb]
    assert replies(out) == want_replies
    assert [type(e) for e in events] == want_events
    assert conn.state is STATE_OF[after or state]


# ---- hypothesis: random sessions from every reachable state --------------------------------

LINES = [
    *VERBS.values(),
    b"BDAT 3 LAST\r\n",
    b"BDAT 2\r\n",
    b"BDAT x\r\n",
    mail(" BODY=BINARYMIME"),
    mail(" SMTPUTF8", "ü@example.org"),
    mail(" SIZE=99999999999"),
    rcpt("ü@example.org"),
    b".\r\n",
    b"\r\n.\r\n",
    b"..x\r\n",
    b"\n.\n",
    b"\r",
    b"\n",
    b"x" * 600,
    b"\x00\r\n",
]
FINAL_REPLIES = [SAVED, Reply(452, "4.2.2", "full"), Reply(554, "5.6.0", "no")]
ENVELOPE_REPLIES = [OK_RCPT, Reply(450, "4.2.1", "busy"), Reply(550, "5.1.1", "no")]


@dataclass
class Model:
    """Drives one connection like a careful driver and application, and checks what
    the core does against what the model knows: replies owed, recipients accepted."""

    conn: ServerConnection
    draw: Callable[[st.SearchStrategy[object]], object]
    output: bytearray = field(default_factory=bytearray)
    accepted: int = 0
    closed: bool = False
    accept_all: bool = False

    def take_output(self) -> bytes:
        out = self.conn.data_to_send()
        self.output += out
        return out

    def answer(self, kind: type) -> Reply:
        choices = FINAL_REPLIES if kind is EndOfData else ENVELOPE_REPLIES
        reply = choices[0] if self.accept_all else self.draw(st.sampled_from(choices))
        assert isinstance(reply, Reply)
        self.conn.send(reply)
        return reply

    def drain(self) -> None:
        conn = self.conn
        while True:
            if self.closed or conn.state is ServerState.TLS_HANDSHAKE:
                with pytest.raises(LocalProtocolError):
                    conn.next_event()
                return
            event = conn.next_event()
            out = self.take_output()
            if event is Signal.NEED_DATA:
                assert conn.owed_replies == 0
                return
            assert event is not Signal.PAUSED, "PAUSED with nothing to answer"
            if isinstance(event, MailFrom):
                assert conn.owed_replies == 1
                assert conn.next_event() is Signal.PAUSED
                if self.answer(MailFrom).is_positive:
                    assert conn.state is ServerState.MAIL
                    self.accepted = 0
            elif isinstance(event, RcptTo):
                assert conn.owed_replies == 1
                assert conn.next_event() is Signal.PAUSED
                if self.answer(RcptTo).is_positive:
                    self.accepted += 1
            elif isinstance(event, EndOfData):
                assert self.accepted > 0
                assert conn.owed_replies == self.accepted
                for _ in range(self.accepted):
                    assert conn.next_event() is Signal.PAUSED
                    self.answer(EndOfData)
                self.accepted = 0
            elif isinstance(event, MessageRefused):
                assert self.accepted > 0
                assert out.endswith(wire(event.reply) * self.accepted)
                self.accepted = 0
            elif isinstance(event, Lhlo | Rset | StartTls):
                self.accepted = 0
            elif isinstance(event, ConnectionClosed):
                assert conn.state is ServerState.CLOSED
                assert conn.owed_replies == 0
                self.closed = True
            else:
                assert isinstance(event, MessageData | Quit), event
            self.take_output()

    def feed(self, data: bytes) -> None:
        if self.conn.state is ServerState.TLS_HANDSHAKE and data:
            with pytest.raises(LocalProtocolError):
                self.conn.receive_data(data)
            return
        self.conn.receive_data(data)
        self.drain()

    def misuse(self) -> None:
        conn = self.conn
        state = conn.state
        with pytest.raises(LocalProtocolError):
            conn.send(SAVED)
        if state is not ServerState.TLS_HANDSHAKE:
            with pytest.raises(LocalProtocolError):
                conn.tls_established()
        assert conn.state is state
        assert self.take_output() == b""


@settings(BASE, max_examples=1500)
@given(start=st.sampled_from(list(SETUPS)), data=st.data())
def test_sweep_from_every_state(start: str, data: st.DataObject) -> None:
    conn = server(tls_available=True)
    model = Model(conn, data.draw, accept_all=True)
    model.feed(SETUPS[start])
    model.accept_all = False
    assert conn.state is STATE_OF[start] or start == "closed"
    actions = data.draw(
        st.lists(
            st.one_of(
                st.lists(st.sampled_from(LINES), min_size=1, max_size=4).map(b"".join),
                st.binary(max_size=24),
                st.sampled_from([b"<eof>", b"<misuse>", b"<tls>"]),
            ),
            max_size=6,
        )
    )
    for action in actions:
        if action == b"<eof>":
            conn.receive_eof()
            model.drain()
            assert model.closed or conn.state is ServerState.TLS_HANDSHAKE
        elif action == b"<misuse>":
            model.misuse()
        elif action == b"<tls>":
            if conn.state is ServerState.TLS_HANDSHAKE:
                conn.tls_established()
                assert state_of(conn) is ServerState.NEED_LHLO
                model.drain()
            else:
                model.misuse()
        else:
            model.feed(action)
    greeting = b"220 mx.example.org LMTP server ready\r\n"
    assert _WELL_FORMED.fullmatch(greeting + bytes(model.output))


# A small pipelined-session grammar: everything the core might see, short enough that
# no line reaches 1000 octets (so the split-dependent refusal bug above cannot fire).
TOKENS = [
    LHLO,
    MAIL,
    mail(" BODY=BINARYMIME"),
    rcpt(A),
    rcpt("x@example.org"),
    DATA,
    RSET,
    NOOP,
    b"STARTTLS\r\n",
    b"BDAT 4\r\n",
    b"BDAT 3 LAST\r\n",
    b"BDAT 0 LAST\r\n",
    b"abc\r\n",
    b".\r\n",
    b"..\r\n",
    b"\r\n.\r\n",
    b"\n",
    b"\r",
    b".",
    b"\x00",
    b"XYZZY\r\n",
    QUIT,
]


def split_policy(event: ServerEvent, conn: ServerConnection) -> list[Reply]:
    if isinstance(event, RcptTo) and event.address.startswith("x"):
        return [NO_USER]
    return default_policy(event, conn)


@settings(BASE, max_examples=600)
@given(
    tokens=st.lists(st.sampled_from(TOKENS), max_size=30),
    seed=st.integers(0, 2**16),
    normalize=st.booleans(),
    eof=st.booleans(),
)
def test_any_split_gives_the_same_session(
    tokens: list[bytes], seed: int, normalize: bool, eof: bool
) -> None:
    policy = BareLineEndings.NORMALIZE if normalize else BareLineEndings.REJECT
    data = LHLO + b"".join(tokens)
    results = runs(data, split_policy, eof=eof, seed=seed, bare_line_endings=policy)
    assert _WELL_FORMED.fullmatch(results[0].output)
