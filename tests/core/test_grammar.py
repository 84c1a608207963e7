"""RFC 5321 / 2033 / 6531 syntax (lmtp_core._grammar): mailboxes (dot-string and quoted
local parts, domains and address literals, UTF-8 only in MAILBOX_UTF8; CR, LF, NUL, space,
angle brackets and doubled @ rejected), LHLO domains, ESMTP keywords and values, the MAIL
FROM / RCPT TO command patterns with parameters and source routes, BDAT, reply lines and
enhanced status codes, and the byte / text filters the connections use against injection.
Each pattern is checked with fullmatch, as the connections use it, against accepted and
refused examples and a few hypothesis properties.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmtp_core._grammar import (
    BDAT,
    COMMAND_BYTES_OK,
    ENHANCED,
    ENHANCED_CODE,
    ESMTP_KEYWORD,
    ESMTP_VALUE,
    LHLO_DOMAIN,
    MAIL_FROM,
    MAILBOX,
    MAILBOX_UTF8,
    MAX_LOCAL_PART,
    MAX_PATH,
    RCPT_TO,
    REPLY_LINE,
    REPLY_TEXT,
)

BASE = settings(derandomize=True, database=None, deadline=None)

# ---- mailboxes ---------------------------------------------------------------------------

VALID_ASCII = [
    ("user@example.org", "user", "example.org"),
    ("first.last@sub.example.org", "first.last", "sub.example.org"),
    ("a+tag@x.y", "a+tag", "x.y"),
    ("!#$%&'*+/=?^_`{|}~-@example.org", "!#$%&'*+/=?^_`{|}~-", "example.org"),
    ("u@localhost", "u", "localhost"),
    ("u@a-b.c1", "u", "a-b.c1"),
    ("u@1.2.3.4", "u", "1.2.3.4"),
    ("U@EXAMPLE.ORG", "U", "EXAMPLE.ORG"),
    ('"quoted local"@example.org', '"quoted local"', "example.org"),
    ('""@example.org', '""', "example.org"),
    ('"a\\"b"@example.org', '"a\\"b"', "example.org"),
    ('"a\\\\b"@example.org', '"a\\\\b"', "example.org"),
    ('"a@b"@example.org', '"a@b"', "example.org"),
    ('"a.b..c."@example.org', '"a.b..c."', "example.org"),
    ("user@[192.0.2.1]", "user", "[192.0.2.1]"),
    ("user@[IPv6:2001:db8::1]", "user", "[IPv6:2001:db8::1]"),
    ("user@[tag:general-literal]", "user", "[tag:general-literal]"),
]

INVALID_ANYWHERE = [
    "",
    "user",
    "@example.org",
    "user@",
    ".user@example.org",
    "user.@example.org",
    "us..er@example.org",
    "user@-x.org",
    "user@x-.org",
    "user@x..org",
    "user@.x.org",
    "user@x.org.",
    "user@x_y.org",
    "a b@example.org",
    "a@exa mple.org",
    " a@example.org",
    "a@example.org ",
    "a@@example.org",
    "a@b@example.org",
    "<a@example.org>",
    "a@example.org>",
    "a>@example.org",
    "a<@example.org",
    "a\r@example.org",
    "a\n@example.org",
    "a@example.org\r\n",
    "a@example.org\n",
    "a@example.org\r\nRSET",
    "a\x00@example.org",
    "a@example\x00.org",
    "a\t@example.org",
    "a\x7f@example.org",
    '"a"b"@example.org',
    '"a\r\n"@example.org',
    '"a\\\r"@example.org',
    '"a\x00"@example.org',
    '"a\\\x01"@example.org',
    '"a\x7f"@example.org',
    '"a@example.org',
    "a@[192.0.2.1",
    "a@192.0.2.1]",
    "a@[]",
    "a@[a[b]",
    "a@[a\\b]",
    "a@[a b]",
    "a@[a\r\n]",
]


@pytest.mark.parametrize(("address", "local", "domain"), VALID_ASCII)
def test_valid_ascii_mailboxes(address: str, local: str, domain: str) -> None:
    for pattern in (MAILBOX, MAILBOX_UTF8):
        match = pattern.fullmatch(address)
        assert match is not None
        assert (match["local"], match["domain"]) == (local, domain)


@pytest.mark.parametrize("address", INVALID_ANYWHERE)
def test_invalid_mailboxes(address: str) -> None:
    assert MAILBOX.fullmatch(address) is None
    assert MAILBOX_UTF8.fullmatch(address) is None


@pytest.mark.parametrize(
    "address",
    [
        "\u00fc@example.org",
        "j\u00f6rg@b\u00fccher.example",
        "\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a",
        '"\u00fc ber"@example.org',
        "u@ex\u00e4mple.org",
        "\U0001f600@example.org",
    ],
)
def test_utf8_mailboxes_only_in_mailbox_utf8(address: str) -> None:
    assert MAILBOX.fullmatch(address) is None
    assert MAILBOX_UTF8.fullmatch(address) is not None


@pytest.mark.parametrize(
    "address",
    [
        "\ud800@example.org",
        "u@ex\ud83dmple.org",
    ],
)
def test_lone_surrogates_are_not_utf8(address: str) -> None:
    # A lone surrogate cannot be encoded as UTF-8; accepting it would let a
    # UnicodeEncodeError escape from the connection's length check.
    assert MAILBOX_UTF8.fullmatch(address) is None


def test_mailbox_utf8_keeps_ascii_rules() -> None:
    assert MAILBOX_UTF8.fullmatch("\u00fc\u00fc@-b\u00fc.org") is None
    assert MAILBOX_UTF8.fullmatch("\u00fc..\u00fc@example.org") is None
    assert MAILBOX_UTF8.fullmatch("\u00fc\r\n@example.org") is None
    assert MAILBOX_UTF8.fullmatch("\u00fc@[\u00fc]") is None  # literals stay ASCII


def test_length_limits() -> None:
    # RFC 5321 4.5.3.1.1-3; the patterns do not count, the connections do
    assert (MAX_LOCAL_PART, MAX_PATH) == (64, 256)


atext = st.sampled_from(list("abcXYZ019!#$%&'*+/=?^_`{|}~-"))
atom = st.lists(atext, min_size=1, max_size=6).map("".join)
dot_string = st.lists(atom, min_size=1, max_size=4).map(".".join)
label = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,8}[A-Za-z0-9])?", fullmatch=True)
domain = st.lists(label, min_size=1, max_size=4).map(".".join)


@given(dot_string, domain)
@settings(BASE, max_examples=300)
def test_generated_dot_string_addresses_match(local: str, host: str) -> None:
    match = MAILBOX.fullmatch(f"{local}@{host}")
    assert match is not None
    assert (match["local"], match["domain"]) == (local, host)


@given(st.text(st.characters(codec="utf-8"), max_size=30))
@settings(BASE, max_examples=500)
def test_no_accepted_mailbox_can_break_a_command_line(address: str) -> None:
    for pattern in (MAILBOX, MAILBOX_UTF8):
        match = pattern.fullmatch(address)
        if match is None:
            continue
        assert not re.search(r"[\x00-\x1f\x7f]", address)
        local, host = match["local"], match["domain"]
        if not local.startswith('"'):
            assert not re.search(r"[<>@ ]", local)
        if not host.startswith("["):
            assert not re.search(r"[<>@ \[\]]", host)


@pytest.mark.parametrize(
    "address",
    [
        "user@example.org",
        '"a b"@example.org',
        "user@[IPv6:2001:db8::1]",
        '"a>b"@example.org',
        '"a> SIZE=1"@example.org',
        "a@[<x>]",
    ],
)
def test_command_patterns_carry_every_accepted_mailbox(address: str) -> None:
    # What MAILBOX accepts, the client sends as MAIL FROM:<address>; the server's
    # MAIL_FROM / RCPT_TO must give it back whole. RFC 5321 allows "<" and ">" in quoted
    # local parts and address literals; the command patterns' path is [^<>]*, and a peer
    # that ends the path at the first ">" would read the rest as parameters, so either
    # MAILBOX refuses them or the command patterns carry them.
    if MAILBOX.fullmatch(address) is None:
        return  # refusing such addresses outright is also a fix
    for pattern, verb in ((MAIL_FROM, "MAIL FROM:"), (RCPT_TO, "RCPT TO:")):
        match = pattern.fullmatch(f"{verb}<{address}>")
        assert match is not None
        assert match["path"] == address
        assert match["params"] is None


# ---- LHLO, ESMTP keywords and values --------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "client.example",
        "localhost",
        "a",
        "a-b.c1",
        "1.2.3.4",
        "xn--bcher-kva.example",
        "[127.0.0.1]",
        "[IPv6:::1]",
    ],
)
def test_valid_lhlo_domains(name: str) -> None:
    assert LHLO_DOMAIN.fullmatch(name) is not None


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-a",
        "a-",
        "a..b",
        ".a",
        "a.",
        "a b",
        "a_b",
        "a@b",
        "[",
        "[]",
        "[a]b",
        "a\r\n",
        "a\x00",
        "b\u00fccher.example",
        "client.example\r\nMAIL FROM:<x@y>",
    ],
)
def test_invalid_lhlo_domains(name: str) -> None:
    assert LHLO_DOMAIN.fullmatch(name) is None


@pytest.mark.parametrize(
    ("keyword", "ok"),
    [
        ("SIZE", True),
        ("8BITMIME", True),
        ("X-FOO", True),
        ("a", True),
        ("AUTH", True),
        ("", False),
        ("-X", False),
        ("A_B", False),
        ("A=B", False),
        ("A B", False),
        ("\u00fc", False),
        ("SIZE\r\n", False),
    ],
)
def test_esmtp_keyword(keyword: str, ok: bool) -> None:
    assert (ESMTP_KEYWORD.fullmatch(keyword) is not None) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("123", True),
        ("8BITMIME", True),
        ("rfc822;a@b", True),
        ("SUCCESS,FAILURE", True),
        ("xtext+2B", True),
        ("<>", True),
        ("\u00fc", True),
        ("", False),
        ("a=b", False),
        ("a b", False),
        ("a\x00", False),
        ("a\r", False),
        ("a\n", False),
        ("a\t", False),
        ("a\x7f", False),
        ("\ud800", False),  # a lone surrogate is not UTF-8
    ],
)
def test_esmtp_value(value: str, ok: bool) -> None:
    assert (ESMTP_VALUE.fullmatch(value) is not None) is ok


# ---- MAIL FROM / RCPT TO / BDAT ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "path", "params"),
    [
        ("MAIL FROM:<a@b.c>", "a@b.c", None),
        ("mail from:<a@b.c>", "a@b.c", None),
        ("Mail From:<a@b.c>", "a@b.c", None),
        ("MAIL FROM: <a@b.c>", "a@b.c", None),
        ("MAIL FROM:<>", "", None),
        ("MAIL FROM:<a@b.c> SIZE=10", "a@b.c", "SIZE=10"),
        (
            "MAIL FROM:<a@b.c> SIZE=10 BODY=8BITMIME SMTPUTF8",
            "a@b.c",
            "SIZE=10 BODY=8BITMIME SMTPUTF8",
        ),
        ("MAIL FROM:<> BODY=BINARYMIME", "", "BODY=BINARYMIME"),
        ("MAIL FROM:<@r1.example:a@b.c>", "a@b.c", None),
        ("MAIL FROM:<@r1.example,@r2.example:a@b.c> SIZE=1", "a@b.c", "SIZE=1"),
        ("MAIL FROM:<\u00fc@b.c> SMTPUTF8", "\u00fc@b.c", "SMTPUTF8"),
        ("MAIL FROM:<a@[IPv6:::1]>", "a@[IPv6:::1]", None),
        # quoted strings and address literals may hold "<" and ">"
        ('MAIL FROM:<"a>b"@x.org> SIZE=1', '"a>b"@x.org', "SIZE=1"),
        ('MAIL FROM:<"a\\"> b"@x.org>', '"a\\"> b"@x.org', None),
        ("MAIL FROM:<a@[<x>]>", "a@[<x>]", None),
        ('MAIL FROM:<@r.example:"a>b"@x.org>', '"a>b"@x.org', None),
    ],
)
def test_mail_from(line: str, path: str, params: str | None) -> None:
    match = MAIL_FROM.fullmatch(line)
    assert match is not None
    assert (match["path"], match["params"]) == (path, params)


@pytest.mark.parametrize(
    ("line", "path", "params"),
    [
        ("RCPT TO:<a@b.c>", "a@b.c", None),
        ("rcpt to:<a@b.c>", "a@b.c", None),
        ("RCPT TO: <a@b.c>", "a@b.c", None),
        (
            "RCPT TO:<a@b.c> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@b.c",
            "a@b.c",
            "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@b.c",
        ),
        ("RCPT TO:<@hosta.int,@jkl.org:userc@d.bar.org>", "userc@d.bar.org", None),
        ("RCPT TO:<postmaster>", "postmaster", None),  # the connection checks the address
    ],
)
def test_rcpt_to(line: str, path: str, params: str | None) -> None:
    match = RCPT_TO.fullmatch(line)
    assert match is not None
    assert (match["path"], match["params"]) == (path, params)


@pytest.mark.parametrize(
    "line",
    [
        "MAIL FROM:a@b.c",
        "MAIL FROM:<a@b.c",
        "MAIL FROM:a@b.c>",
        "MAIL FROM:<a<b@c.d>",
        "MAIL FROM:<a@b.c>>",
        "MAIL FROM:<<a@b.c>>",
        "MAIL FROM:<a@b.c>SIZE=1",
        "MAIL FROM:  <a@b.c>",
        "MAIL FROM <a@b.c>",
        "MAIL  FROM:<a@b.c>",
        "MAIL FROM:<a@b.c>\n",
        "MAIL FROM:<a@b.c> SIZE=1\nRSET",
        " MAIL FROM:<a@b.c>",
        "MAIL FROM:",
        "MAILFROM:<a@b.c>",
        "RCPT TO:<a@b.c>",
        'MAIL FROM:<"a@b.c>',  # a quote that never closes
        'MAIL FROM:<"a>"b"@c.d>',
        "MAIL FROM:<a@[b.c>",  # a literal that never closes
        "MAIL FROM:<a]@b.c>",
        "MAIL FROM:<" + '"a>' * 2000,  # long and hopeless: must fail fast
        "MAIL FROM:<" + "[" * 2000,
        "MAIL FROM:<" + '"\\' * 2000,
    ],
)
def test_mail_from_refused(line: str) -> None:
    assert MAIL_FROM.fullmatch(line) is None


@pytest.mark.parametrize(
    "line",
    [
        "RCPT TO:a@b.c",
        "RCPT TO:<a@b.c",
        "RCPT TO:<a@b.c>x",
        "RCPT  TO:<a@b.c>",
        "MAIL FROM:<a@b.c>",
    ],
)
def test_rcpt_to_refused(line: str) -> None:
    assert RCPT_TO.fullmatch(line) is None


@pytest.mark.parametrize(
    ("line", "size", "last"),
    [
        ("BDAT 0", "0", False),
        ("BDAT 0 LAST", "0", True),
        ("BDAT 100 LAST", "100", True),
        ("bdat 5 last", "5", True),
        ("BDAT 123456789012345678", "123456789012345678", False),
        ("BDAT 007", "007", False),
    ],
)
def test_bdat(line: str, size: str, last: bool) -> None:
    match = BDAT.fullmatch(line)
    assert match is not None
    assert match["size"] == size
    assert (match["last"] is not None) is last


@pytest.mark.parametrize(
    "line",
    [
        "BDAT",
        "BDAT ",
        "BDAT -1",
        "BDAT +1",
        "BDAT 1.5",
        "BDAT 1234567890123456789",  # 19 digits: more than any int64 byte count
        "BDAT 5  LAST",
        "BDAT 5 LASTX",
        "BDAT 5 FIRST",
        "BDAT  5",
        "BDAT 5 ",
        "BDAT \u0665",  # an Arabic-Indic digit is not a DIGIT
        "BDAT 5\r\n",
    ],
)
def test_bdat_refused(line: str) -> None:
    assert BDAT.fullmatch(line) is None


@pytest.mark.parametrize(
    ("pattern", "line"),
    [
        (MAIL_FROM, "MAIL FROM:<a@b.c>"),
        (MAIL_FROM, "MA\u0131L FROM:<a@b.c>"),  # dotless i folds to I
        (RCPT_TO, "rcpt to:<a@b.c>"),
        (BDAT, "BDAT 5 LAST"),
        (BDAT, "BDAT 5 LA\u017fT"),  # long s folds to S
    ],
    ids=["mail", "mail-dotless-i", "rcpt", "bdat", "bdat-long-s"],
)
def test_command_words_match_ascii_only(pattern: re.Pattern[str], line: str) -> None:
    # RFC 5321 2.4: verbs are case-insensitive in ASCII only. re.IGNORECASE without
    # re.ASCII folds Unicode too ("MA\u0131L", "LA\u017fT"): a parser differential with
    # every other server.
    if line.isascii():
        assert pattern.fullmatch(line) is not None
    else:
        assert pattern.fullmatch(line) is None


# ---- replies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code", "sep", "text"),
    [
        (b"250 OK", b"250", b" ", b"OK"),
        (b"250-OK", b"250", b"-", b"OK"),
        (b"250", b"250", None, None),
        (b"250 ", b"250", b" ", b""),
        (b"550 a\tb", b"550", b" ", b"a\tb"),
        (b"200 ~", b"200", b" ", b"~"),
        (b"559 x", b"559", b" ", b"x"),
        # 8-bit text (UTF-8 or not): the reader decodes it (RFC 6531 3.7.4)
        (b"250 \x80", b"250", b" ", b"\x80"),
        (b"550 caf\xc3\xa9", b"550", b" ", b"caf\xc3\xa9"),
        (b"250-\xe7\x94\xa8\xe6\x88\xb7 \xff", b"250", b"-", b"\xe7\x94\xa8\xe6\x88\xb7 \xff"),
        (b"250 a\xc2\x85b", b"250", b" ", b"a\xc2\x85b"),  # C1: refused after decoding
    ],
)
def test_reply_line(line: bytes, code: bytes, sep: bytes | None, text: bytes | None) -> None:
    match = REPLY_LINE.fullmatch(line)
    assert match is not None
    assert (match["code"], match["sep"], match["text"]) == (code, sep, text)


@pytest.mark.parametrize(
    "line",
    [
        b"199 x",
        b"600 x",
        b"260 x",
        b"25 x",
        b"2500",
        b"250x",
        b"250 \x00",
        b"250 \r",
        b"250 \n",
        b"250 \x1b[31m",
        b"250 \x7f",
        b"250 caf\xc3\xa9\x01",
        b"250\xc3\xa9",
    ],
)
def test_reply_line_refused(line: bytes) -> None:
    assert REPLY_LINE.fullmatch(line) is None


@pytest.mark.parametrize(
    ("text", "code", "rest"),
    [
        ("2.1.5 OK", "2.1.5", "OK"),
        ("2.1.5", "2.1.5", None),
        ("5.123.456 x y", "5.123.456", "x y"),
        ("4.0.0 ", "4.0.0", ""),
    ],
)
def test_enhanced_status_code(text: str, code: str, rest: str | None) -> None:
    match = ENHANCED.match(text)
    assert match is not None
    assert (match["code"], match["rest"]) == (code, rest)


@pytest.mark.parametrize(
    "text", ["3.0.0 x", "2.0 x", "2.0.0x", "2.1234.5 x", "2.1.5000", "x 2.0.0", "", "2..0 x"]
)
def test_not_an_enhanced_status_code(text: str) -> None:
    assert ENHANCED.match(text) is None


@pytest.mark.parametrize(
    ("code", "ok"),
    [
        ("2.0.0", True),
        ("5.123.999", True),
        ("4.7.0", True),
        ("3.0.0", False),
        ("2.0.0 ", False),
        ("2.0.0 x", False),
        ("2.0.0\n", False),
        ("2.0.0\r\n250 x", False),
        ("2.0", False),
        ("2.1000.0", False),
        ("", False),
    ],
)
def test_enhanced_code_alone(code: str, ok: bool) -> None:
    assert (ENHANCED_CODE.fullmatch(code) is not None) is ok


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("Hello world", True),
        ("", True),
        ("a\tb", True),
        ("~!@#$%^&*()", True),
        ("\u00fcber", True),  # UTF-8 on the wire (RFC 6531 3.7.4)
        ("\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a", True),
        ("caf\ufffd", True),  # what the reader makes of invalid UTF-8
        ("\u00a0", True),
        ("\U0001f600", True),
        ("a\rb", False),
        ("a\nb", False),
        ("a\x00b", False),
        ("a\x7fb", False),
        ("a\x1bb", False),
        ("a\x85b", False),  # C1 controls: NEL, CSI, the last one
        ("a\x9bb", False),
        ("a\x80b", False),
        ("a\x9fb", False),
        ("a\ud800b", False),  # a lone surrogate cannot be written as UTF-8
        ("a\udfffb", False),
    ],
)
def test_reply_text(text: str, ok: bool) -> None:
    assert (REPLY_TEXT.fullmatch(text) is not None) is ok


# ---- injection filters --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "ok"),
    [
        (b"MAIL FROM:<a@b.c>", True),
        (b"RCPT TO:<\xc3\xbc@b.c>", True),
        (b"", True),
        (b"NOOP\x00", False),
        (b"NOOP\r", False),
        (b"NO\nOP", False),
        (b"NOOP\t", False),
        (b"NOOP\x7f", False),
        (b"\x1b[31m", False),
    ],
)
def test_command_bytes_ok(line: bytes, ok: bool) -> None:
    assert (COMMAND_BYTES_OK.fullmatch(line) is not None) is ok
