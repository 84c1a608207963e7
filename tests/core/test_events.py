"""Events and limits (lmtp_core._events, lmtp_core._limits): Reply validation (code range,
enhanced status class matching the code, no CR or control characters (C0, DEL, C1) and no
lone surrogate in the text, which may be any other text and is written as UTF-8, "\\n"
between lines, nothing in a Reply that the writer could turn into a second line), Reply's
lines / is_positive / is_transient / is_permanent / str(); every event class is frozen,
hashable and slotted, and the events the server core produces hold bytes, never
bytearray, even when fed bytearray; MailFrom / RcptTo .param(); Signal; and Limits:
defaults matching the RFC 5321 figures, refusal of non-positive values and tiny line
limits.
"""

from __future__ import annotations

import dataclasses

import pytest

from lmtp_core import (
    COMPILED,
    BareLineEndings,
    ConnectionClosed,
    EndOfData,
    Lhlo,
    Limits,
    LocalProtocolError,
    MailFrom,
    MessageData,
    MessageRefused,
    ProtocolError,
    Quit,
    RcptTo,
    RemoteProtocolError,
    Reply,
    Rset,
    Signal,
    StartTls,
)
from lmtp_core._writers import write_reply

from .helpers import every_split, run_server

# ---- Reply validation ----------------------------------------------------------------------


@pytest.mark.parametrize("code", [200, 250, 354, 421, 550, 559])
def test_reply_codes_in_range(code: int) -> None:
    assert Reply(code).code == code


@pytest.mark.parametrize("code", [0, 199, 600, 1000, -250, 99, 260, 299, 569, 599])
def test_reply_codes_out_of_range(code: int) -> None:
    # RFC 5321 4.2: Reply-code = %x32-35 %x30-35 %x30-39
    with pytest.raises(LocalProtocolError, match="reply code"):
        Reply(code)


@pytest.mark.parametrize("code", [250.5, 250.0, True, "250"])
def test_reply_code_must_be_an_int(code: object) -> None:
    # write_reply would put "250.5 ..." on the wire
    with pytest.raises((LocalProtocolError, TypeError)):
        Reply(code)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "enhanced"),
    [(250, "2.0.0"), (221, "2.0.0"), (451, "4.3.0"), (550, "5.123.999"), (250, None)],
)
def test_enhanced_codes_that_fit(code: int, enhanced: str | None) -> None:
    assert Reply(code, enhanced).enhanced == enhanced


@pytest.mark.parametrize(
    ("code", "enhanced"),
    [
        (250, "5.0.0"),
        (550, "2.0.0"),
        (450, "5.0.0"),
        (550, "4.0.0"),
        (354, "3.0.0"),  # RFC 3463: classes are 2, 4 and 5 only
        (250, "2.0"),
        (250, "2.0.0.0"),
        (250, "2.1234.0"),
        (250, "x"),
        (250, ""),
        (250, "2.0.0\n"),
    ],
)
def test_enhanced_codes_that_do_not_fit(code: int, enhanced: str) -> None:
    with pytest.raises(LocalProtocolError, match="does not fit"):
        Reply(code, enhanced)


@pytest.mark.parametrize(
    "enhanced",
    ["2.0.0 trailing words", "2.0.0 \r\n250 injected"],
    ids=["words", "crlf-injection"],
)
def test_enhanced_must_be_only_a_status_code(enhanced: str) -> None:
    # ENHANCED (the reader's pattern) allows text after the code, CR and LF included
    # (re.DOTALL); Reply must not, or write_reply puts a second reply line on the wire.
    with pytest.raises(LocalProtocolError):
        reply = Reply(250, enhanced, "x")
        wire = write_reply(reply)
        assert wire.count(b"\r\n") == len(reply.lines)


@pytest.mark.parametrize(
    "text",
    [
        "a\rb",
        "a\r\nb",
        "\r",
        "a\x00b",
        "a\x1bb",
        "a\x7fb",
        "a\x0bb",
        "a\x0cb",
        "trailing\r",
        "a\x85b",  # C1 controls, which UTF-8 could carry: NEL, CSI, the first and last
        "a\x9bb",
        "\x80",
        "\x9f",
        "m\u00fcller\x1b[0m",
    ],
)
def test_reply_text_refuses_cr_and_control_characters(text: str) -> None:
    with pytest.raises(LocalProtocolError, match="reply text"):
        Reply(250, None, text)


@pytest.mark.parametrize("text", ["a\ud800b", "\udfff", "m\u00fcller \udc80"])
def test_reply_text_must_be_encodable(text: str) -> None:
    # A lone surrogate must be refused by Reply: write_reply (ServerConnection.send)
    # would raise UnicodeEncodeError, which is not a ProtocolError.
    with pytest.raises(LocalProtocolError, match="reply text"):
        Reply(250, None, text)


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("m\u00fcller", b"250 m\xc3\xbcller\r\n"),
        (
            "\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a",
            "250 \u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a\r\n".encode(),
        ),
        ("caf\ufffd\u00a0\U0001f600", "250 caf\ufffd\u00a0\U0001f600\r\n".encode()),
        ("\u00e9\n\u00e8", b"250-\xc3\xa9\r\n250 \xc3\xa8\r\n"),
    ],
)
def test_reply_text_may_be_any_printable_text_written_as_utf8(text: str, wire: bytes) -> None:
    # RFC 6531 3.7.4: UTF-8 in reply text; the client reads it back (test_readers).
    reply = Reply(250, None, text)
    assert reply.text == text
    assert write_reply(reply) == wire


def test_reply_text_may_hold_tab() -> None:
    assert Reply(250, None, "a\tb").text == "a\tb"  # RFC 5321 4.2 textstring
    assert write_reply(Reply(250, None, "a\tb")) == b"250 a\tb\r\n"


def test_newline_separates_lines() -> None:
    reply = Reply(250, "2.0.0", "first\nsecond\n")
    assert reply.lines == ("first", "second", "")
    assert Reply(250).lines == ("",)
    assert Reply(250, None, "one").lines == ("one",)


@pytest.mark.parametrize(
    ("code", "positive", "transient", "permanent"),
    [
        (200, True, False, False),
        (250, True, False, False),
        (354, True, False, False),
        (359, True, False, False),
        (400, False, True, False),
        (421, False, True, False),
        (459, False, True, False),
        (500, False, False, True),
        (554, False, False, True),
        (559, False, False, True),
    ],
)
def test_reply_classes(code: int, positive: bool, transient: bool, permanent: bool) -> None:
    reply = Reply(code)
    assert (reply.is_positive, reply.is_transient, reply.is_permanent) == (
        positive,
        transient,
        permanent,
    )


@pytest.mark.parametrize(
    ("reply", "text"),
    [
        (Reply(250, "2.0.0", "OK"), "250 2.0.0 OK"),
        (Reply(250, None, "OK"), "250 OK"),
        (Reply(250), "250 "),
        (Reply(550, "5.1.1", "no such\nuser"), "550 5.1.1 no such / user"),
    ],
)
def test_reply_str(reply: Reply, text: str) -> None:
    assert str(reply) == text


def test_reply_equality_and_defaults() -> None:
    assert Reply(250) == Reply(250, None, "")
    assert Reply(250, "2.0.0", "OK") != Reply(250, None, "2.0.0 OK")


# ---- every event: frozen, hashable, slotted --------------------------------------------------

EVENTS = [
    Reply(250, "2.0.0", "OK"),
    Lhlo("client.example"),
    MailFrom("a@example.org", (("SIZE", "10"), ("SMTPUTF8", None))),
    RcptTo("b@example.org", (("NOTIFY", "NEVER"),)),
    MessageData(b"body"),
    EndOfData(),
    MessageRefused(Reply(552, "5.3.4", "Too big")),
    Rset(),
    Quit(),
    StartTls(),
    ConnectionClosed("closed", Reply(421, "4.7.0", "Bye"), RemoteProtocolError("x")),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda event: type(event).__name__)
def test_events_are_frozen_hashable_and_slotted(event: object) -> None:
    assert dataclasses.is_dataclass(event)
    assert not hasattr(event, "__dict__")
    # Pure Python: declared slots. Compiled: a native class, whose attributes are slots.
    assert COMPILED or "__slots__" in type(event).__dict__
    fields = dataclasses.fields(event)
    for field in fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(event, field.name, None)
    # a new attribute: no __dict__ to put it in (CPython raises TypeError here for a
    # frozen slotted dataclass, AttributeError or FrozenInstanceError elsewhere)
    name = "anything"
    with pytest.raises((AttributeError, TypeError)):
        setattr(event, name, None)
    assert hash(event) == hash(dataclasses.replace(event))  # type: ignore[type-var]
    assert event == dataclasses.replace(event)  # type: ignore[type-var]
    assert len({event, dataclasses.replace(event)}) == 1  # type: ignore[type-var]
    for field in fields:
        assert not isinstance(getattr(event, field.name), bytearray | list | dict | set)


SESSION = (
    b"LHLO client.example\r\n"
    b"MAIL FROM:<a@example.org> SIZE=100\r\n"
    b"RCPT TO:<b@example.org>\r\n"
    b"DATA\r\n"
    b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n"
    b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n"
    b"RCPT TO:<c@example.org>\r\n"
    b"BDAT 7\r\nbin\x00ary"
    b"BDAT 0 LAST\r\n"
    b"QUIT\r\n"
)


@pytest.mark.parametrize("bare", list(BareLineEndings))
def test_server_events_hold_bytes_never_bytearray(bare: BareLineEndings) -> None:
    for chunks in every_split(SESSION):
        run = run_server([bytearray(chunk) for chunk in chunks], bare_line_endings=bare)  # type: ignore[misc]
        kinds = [type(event).__name__ for event in run.events]
        assert kinds.count("EndOfData") == 2
        data = b""
        for event in run.events:
            assert dataclasses.is_dataclass(event)
            for field in dataclasses.fields(event):
                assert not isinstance(getattr(event, field.name), bytearray)
            if isinstance(event, MessageData):
                assert type(event.data) is bytes
                data += event.data
            hash(event)
        assert data == b"Subject: hi\r\n\r\n.dot\r\nbody\r\nbin\x00ary"


# ---- MailFrom / RcptTo .param() ----------------------------------------------------------------


def test_param_lookup() -> None:
    mail = MailFrom("a@example.org", (("SIZE", "10"), ("SMTPUTF8", None), ("SIZE", "20")))
    assert mail.param("SIZE") == "10"  # the first one wins
    assert mail.param("size") == "10"
    assert mail.param("SMTPUTF8") is None
    assert mail.param("BODY") is None
    rcpt = RcptTo("b@example.org", (("NOTIFY", "SUCCESS,FAILURE"), ("ORCPT", "rfc822;b@x")))
    assert rcpt.param("notify") == "SUCCESS,FAILURE"
    assert rcpt.param("Orcpt") == "rfc822;b@x"
    assert rcpt.param("RET") is None
    assert MailFrom("").param("SIZE") is None
    assert RcptTo("x@y").params == ()


# ---- Signal and ConnectionClosed ---------------------------------------------------------


def test_signals() -> None:
    assert {signal.name for signal in Signal} == {"NEED_DATA", "NEED_BODY", "PAUSED"}
    assert len({signal.value for signal in Signal}) == 3


def test_connection_closed_defaults() -> None:
    closed = ConnectionClosed("bye")
    assert (closed.reason, closed.reply, closed.error) == ("bye", None, None)
    assert isinstance(RemoteProtocolError("x"), ProtocolError)
    assert isinstance(LocalProtocolError("x"), ProtocolError)


# ---- Limits -----------------------------------------------------------------------------


def test_limit_defaults_match_rfc_5321() -> None:
    limits = Limits()
    assert limits.command_line == 512  # 4.5.3.1.4
    assert limits.reply_line == 512  # 4.5.3.1.5
    assert limits.text_line == 1000  # 4.5.3.1.6, CRLF included
    assert limits.max_recipients >= 100  # 4.5.3.1.8: at least 100
    assert limits.max_recipients == 100
    assert limits.reply_lines == 100
    assert limits.max_message_size == 32 * 1024 * 1024
    assert limits.max_errors == 20
    assert limits.bdat_chunk == 1024 * 1024


FIELDS = [field.name for field in dataclasses.fields(Limits)]


@pytest.mark.parametrize("name", FIELDS)
@pytest.mark.parametrize("value", [0, -1, 1.5, "512", None])
def test_limits_refuse_non_positive_or_non_int(name: str, value: object) -> None:
    if COMPILED and not isinstance(value, int):
        # the compiled class checks argument types before __post_init__ (docs: compiled)
        with pytest.raises(TypeError, match="int"):
            Limits(**{name: value})  # type: ignore[arg-type]
        return
    with pytest.raises(ValueError, match=name):
        Limits(**{name: value})  # type: ignore[arg-type]


def test_limits_refuse_bools() -> None:
    # True is an int in Python; Reply refuses it as a code, Limits should as a limit
    accepted = []
    for name in FIELDS:
        try:
            limits = Limits(**{name: True})
        except ValueError:
            continue
        accepted.append(name)
        # compiled: a native int field stores True as the int 1 before any check sees
        # it (docs: compiled build); what is kept is still a plain int
        assert type(getattr(limits, name)) is int and getattr(limits, name) == 1
    assert accepted == ([] if not COMPILED else [n for n in FIELDS if not n.endswith("line")])


@pytest.mark.parametrize("name", ["command_line", "reply_line", "text_line"])
def test_limits_refuse_tiny_line_limits(name: str) -> None:
    with pytest.raises(ValueError, match="64"):
        Limits(**{name: 63})
    assert getattr(Limits(**{name: 64}), name) == 64


def test_limits_accept_small_positive_counts() -> None:
    limits = Limits(reply_lines=1, max_recipients=1, max_message_size=1, max_errors=1, bdat_chunk=1)
    assert (limits.reply_lines, limits.max_recipients, limits.bdat_chunk) == (1, 1, 1)


def test_limits_are_frozen_and_hashable() -> None:
    limits = Limits()
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.command_line = 1000  # type: ignore[misc]
    assert hash(limits) == hash(Limits())
    assert Limits(max_errors=5) != limits
