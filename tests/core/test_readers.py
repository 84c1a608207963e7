"""The client's reply reader (lmtp_core._readers.ReplyReader) and the writers
(lmtp_core._writers): single- and multi-line replies, enhanced status codes parsed from
the first line and stripped from every line, codes that disagree across lines, invalid
codes, missing separators, NUL / 8-bit / control bytes, a reply line that never ends
(bounded memory), endless "250-" continuations (Limits.reply_lines), and the round trip
write_reply -> ReplyReader (UTF-8 text included). Reply text may be UTF-8: it is decoded,
what is not valid UTF-8 becomes U+FFFD, and a C1 control character is refused like a C0
one. Every reader case runs whole, byte by byte and in random splits and must give the
same replies and the same error; nothing but a Reply, None or RemoteProtocolError may
come out of the reader, whatever the server sends.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmtp_core import Limits, LocalProtocolError, RemoteProtocolError, Reply
from lmtp_core._buffer import ReceiveBuffer
from lmtp_core._grammar import ENHANCED
from lmtp_core._readers import ReplyReader
from lmtp_core._writers import write_params, write_reply

from .helpers import every_split

BASE = settings(derandomize=True, database=None, deadline=None)
LIMITS = Limits()

Result = tuple[list[Reply], str | None, bool]


def read_all(chunks: list[bytes], limits: Limits = LIMITS) -> Result:
    """(replies, RemoteProtocolError text or None, reader still inside a reply)."""
    buffer = ReceiveBuffer()
    reader = ReplyReader(limits)
    replies: list[Reply] = []
    try:
        for chunk in chunks:
            buffer.feed(chunk)
            while (reply := reader.read(buffer)) is not None:
                replies.append(reply)
    except RemoteProtocolError as exc:
        return replies, str(exc), reader.partial
    return replies, None, reader.partial


def read_three_ways(data: bytes, limits: Limits = LIMITS) -> Result:
    results = [read_all(chunks, limits) for chunks in every_split(data)]
    for result in results[1:]:
        assert result == results[0]
    return results[0]


def read_one(data: bytes) -> Reply:
    replies, error, partial = read_three_ways(data)
    assert error is None
    assert not partial
    assert len(replies) == 1
    return replies[0]


# ---- well-formed replies -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"250 OK\r\n", Reply(250, None, "OK")),
        (b"250\r\n", Reply(250, None, "")),
        (b"250 \r\n", Reply(250, None, "")),
        (b"221 2.0.0 Bye\r\n", Reply(221, "2.0.0", "Bye")),
        (b"250 2.1.5\r\n", Reply(250, "2.1.5", "")),
        (b"250 2.1.5 \r\n", Reply(250, "2.1.5", "")),
        (b"452 4.5.3 Too many\r\n", Reply(452, "4.5.3", "Too many")),
        (b"550 5.1.1 <a@b>: unknown\r\n", Reply(550, "5.1.1", "<a@b>: unknown")),
        (b"554 5.123.456 x\r\n", Reply(554, "5.123.456", "x")),
        (b"354 Go ahead\r\n", Reply(354, None, "Go ahead")),
        (b'554 ~!@#$%^&*()_+{}|:"<>?\r\n', Reply(554, None, '~!@#$%^&*()_+{}|:"<>?')),
        # an enhanced code of another class is text, not a status code
        (b"250 5.0.0 x\r\n", Reply(250, None, "5.0.0 x")),
        # not an enhanced code at all
        (b"250 2.0 x\r\n", Reply(250, None, "2.0 x")),
        (b"250 2.0.0x\r\n", Reply(250, None, "2.0.0x")),
        (b"250 2.0.1234 x\r\n", Reply(250, None, "2.0.1234 x")),
        (b"250 x 2.0.0\r\n", Reply(250, None, "x 2.0.0")),
        (b"250  2.0.0 x\r\n", Reply(250, None, " 2.0.0 x")),
    ],
)
def test_single_line_reply(data: bytes, reply: Reply) -> None:
    assert read_one(data) == reply


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (
            b"250-mx.example.org\r\n250-PIPELINING\r\n250 SIZE 100\r\n",
            Reply(250, None, "mx.example.org\nPIPELINING\nSIZE 100"),
        ),
        (b"550-5.1.1 No such\r\n550 5.1.1 user\r\n", Reply(550, "5.1.1", "No such\nuser")),
        # lines that do not repeat the code keep their text as it is
        (b"250-2.0.0 a\r\n250 b\r\n", Reply(250, "2.0.0", "a\nb")),
        (b"250-2.0.0 a\r\n250 2.1.0 b\r\n", Reply(250, "2.0.0", "a\n2.1.0 b")),
        (b"250-2.0.0\r\n250 2.0.0 x\r\n", Reply(250, "2.0.0", "\nx")),
        (b"250-2.0.0 a\r\n250 2.0.0\r\n", Reply(250, "2.0.0", "a\n")),
        (b"250-2.0.0 a\r\n250 2.0.0x\r\n", Reply(250, "2.0.0", "a\n2.0.0x")),
        # only the first line decides
        (b"250-a\r\n250 2.0.0 b\r\n", Reply(250, None, "a\n2.0.0 b")),
        (b"250-\r\n250\r\n", Reply(250, None, "\n")),
        (b"250-\r\n250-\r\n250 \r\n", Reply(250, None, "\n\n")),
    ],
)
def test_multi_line_reply(data: bytes, reply: Reply) -> None:
    assert read_one(data) == reply


def test_pipelined_replies_come_out_in_order() -> None:
    data = (
        b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n550 5.1.1 Unknown\r\n354 Go\r\n"
        b"250-2.0.0 Saved\r\n250 2.0.0 Saved\r\n452 4.2.2 Full\r\n"
    )
    replies, error, partial = read_three_ways(data)
    assert error is None
    assert not partial
    assert replies == [
        Reply(250, "2.1.0", "OK"),
        Reply(250, "2.1.5", "OK"),
        Reply(550, "5.1.1", "Unknown"),
        Reply(354, None, "Go"),
        Reply(250, "2.0.0", "Saved\nSaved"),
        Reply(452, "4.2.2", "Full"),
    ]


def test_partial_while_inside_a_multi_line_reply() -> None:
    def partial(reader: ReplyReader) -> bool:
        return reader.partial

    buffer = ReceiveBuffer()
    reader = ReplyReader(LIMITS)
    assert not partial(reader)
    buffer.feed(b"250-a\r\n250-b")
    assert reader.read(buffer) is None
    assert partial(reader)
    buffer.feed(b"\r\n250 c\r\n250 d\r\n")
    assert reader.read(buffer) == Reply(250, None, "a\nb\nc")
    assert not partial(reader)
    assert reader.read(buffer) == Reply(250, None, "d")
    assert reader.read(buffer) is None
    assert not buffer


def test_reply_text_is_str_never_bytes() -> None:
    reply = read_one(b"250-2.0.0 a\r\n250 2.0.0 b\r\n")
    assert type(reply.text) is str
    assert type(reply.enhanced) is str


# ---- malformed replies -------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"199 x",
        b"600 x",
        b"100 x",
        b"099 x",
        b"2x0 x",
        b"25",
        b"25 x",
        b"2500 x",
        b"260 x",  # RFC 5321 4.2: the second digit is 0-5
        b"abc x",
        b"",
        b" 250 x",
        b"250x",
        b"250OK",
        b"250_x",
        b"250\tx",
        b"250 a\x00b",
        b"250 caf\xc3\xa9\x00",
        b"250 a\x1bb",
        b"250 a\x7f",
        b"250 a\rb",
        b"250 a\nb",
        b"250-a\x00",
    ],
)
def test_malformed_line_is_a_remote_protocol_error(line: bytes) -> None:
    replies, error, _ = read_three_ways(b"250 first\r\n" + line + b"\r\n250 after\r\n")
    assert replies == [Reply(250, None, "first")]
    assert error is not None
    assert "malformed reply line" in error


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        # RFC 6531 3.7.4, and servers that echo a UTF-8 address in any reply
        (b"250 2.1.5 caf\xc3\xa9\r\n", Reply(250, "2.1.5", "caf\u00e9")),
        (
            "550 5.1.1 <\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a> unknown\r\n".encode(),
            Reply(550, "5.1.1", "<\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a> unknown"),
        ),
        (
            "250-2.0.0 m\u00fcller\r\n250 2.0.0 \U0001f600\r\n".encode(),
            Reply(250, "2.0.0", "m\u00fcller\n\U0001f600"),
        ),
        # what is not valid UTF-8 becomes U+FFFD, one per maximal bad sequence
        (b"250 caf\xe9\r\n", Reply(250, None, "caf\ufffd")),
        (b"250 \xff\xfe ok\r\n", Reply(250, None, "\ufffd\ufffd ok")),
        (b"250 \xc3\r\n", Reply(250, None, "\ufffd")),  # cut short by the line end
        (b"250 \xed\xa0\x80\r\n", Reply(250, None, "\ufffd\ufffd\ufffd")),  # a surrogate
        (b"250 \xc0\x8a\r\n", Reply(250, None, "\ufffd\ufffd")),  # overlong LF
        (b"250 \xc2\xa0\r\n", Reply(250, None, "\u00a0")),  # NBSP is not C1
        (b"250 \x80\r\n", Reply(250, None, "\ufffd")),
        # an enhanced code is still read before 8-bit text
        (b"452 4.2.2 Postfach voll: \xc3\xbc\r\n", Reply(452, "4.2.2", "Postfach voll: \u00fc")),
    ],
)
def test_utf8_reply_text_is_decoded(data: bytes, reply: Reply) -> None:
    assert read_one(data) == reply


@pytest.mark.parametrize(
    "line",
    [
        b"250 a\xc2\x85b",  # NEL
        b"250 \xc2\x9b31m",  # CSI
        b"250 \xc2\x80",
        b"250 \xc2\x9f",
        b"250-ok \xc3\xa9\xc2\x8d",
    ],
)
def test_c1_control_in_reply_text_is_a_remote_protocol_error(line: bytes) -> None:
    # A C1 control character is one only once the text is decoded: refused like C0.
    replies, error, _ = read_three_ways(b"250 first\r\n" + line + b"\r\n250 after\r\n")
    assert replies == [Reply(250, None, "first")]
    assert error == f"control character in reply line {line!r}"


def test_tab_in_reply_text() -> None:
    # RFC 5321 4.2: textstring = 1*(%d09 / %d32-126), so a tab is legal reply text
    # (and Reply() raising LocalProtocolError inside the reader would escape the client).
    assert read_one(b"250-2.0.0 a\tb\r\n250 2.0.0 \t\r\n") == Reply(250, "2.0.0", "a\tb\n\t")


@pytest.mark.parametrize(
    "data",
    [
        b"250-a\r\n251 b\r\n",
        b"250-a\r\n550 b\r\n",
        b"550-5.1.1 a\r\n450 4.1.1 b\r\n",
        b"250-a\r\n250-b\r\n220 c\r\n",
    ],
)
def test_codes_that_disagree_across_lines(data: bytes) -> None:
    replies, error, _ = read_three_ways(data)
    assert replies == []
    assert error is not None
    assert "inside a" in error


# ---- limits ---------------------------------------------------------------------------------


def test_reply_line_of_exactly_the_limit_passes() -> None:
    line = b"250 " + b"x" * (512 - 6) + b"\r\n"
    assert len(line) == 512
    assert read_one(line) == Reply(250, None, "x" * 506)


def test_reply_line_over_the_limit_is_refused() -> None:
    replies, error, _ = read_three_ways(b"250 " + b"x" * (512 - 5) + b"\r\n")
    assert replies == []
    assert error == "reply line longer than 512 octets"


def test_line_without_crlf_keeps_memory_bounded() -> None:
    buffer = ReceiveBuffer()
    reader = ReplyReader(LIMITS)
    piece = b"250-" + b"x" * 996
    fed = 0
    with pytest.raises(RemoteProtocolError, match="longer than 512"):
        for _ in range(100):  # 100 KB, never a CRLF
            buffer.feed(piece)
            fed += len(piece)
            assert reader.read(buffer) is None
    assert fed == 1000  # refused at the first read that saw 512 octets
    assert len(buffer) <= 512 + len(piece)


def test_line_without_crlf_byte_by_byte() -> None:
    data = b"250 " + b"y" * 100_000
    replies, error, _ = read_three_ways(data[:2000])
    assert (replies, error) == ([], "reply line longer than 512 octets")
    buffer = ReceiveBuffer()
    reader = ReplyReader(LIMITS)
    with pytest.raises(RemoteProtocolError):
        for index in range(len(data)):
            buffer.feed(data[index : index + 1])
            reader.read(buffer)
    assert len(buffer) == 512


def test_reply_of_exactly_reply_lines_lines_passes() -> None:
    data = b"250-x\r\n" * 99 + b"250 x\r\n"
    assert read_one(data) == Reply(250, None, "\n".join(["x"] * 100))


def test_endless_continuation_lines_are_refused() -> None:
    data = b"250-x\r\n" * 100 + b"250 x\r\n"
    replies, error, _ = read_three_ways(data)
    assert (replies, error) == ([], "reply of more than 100 lines")
    # fed as a stream: refused at line 101, whatever follows
    buffer = ReceiveBuffer()
    reader = ReplyReader(LIMITS)
    lines = 0
    with pytest.raises(RemoteProtocolError, match="more than 100 lines"):
        for lines in itertools.count(1):  # noqa: B007
            buffer.feed(b"250-x\r\n")
            assert reader.read(buffer) is None
    assert lines == 101
    assert len(buffer) == 0


def test_reply_lines_limit_is_configurable() -> None:
    limits = Limits(reply_lines=2)
    assert read_three_ways(b"250-a\r\n250 b\r\n", limits)[:2] == ([Reply(250, None, "a\nb")], None)
    replies, error, _ = read_three_ways(b"250-a\r\n250-b\r\n250 c\r\n", limits)
    assert (replies, error) == ([], "reply of more than 2 lines")
    limits = Limits(reply_line=64)
    replies, error, _ = read_three_ways(b"250 " + b"z" * 59 + b"\r\n", limits)
    assert error == "reply line longer than 64 octets"


# ---- whatever the server sends: Reply, None or RemoteProtocolError ------------------------

reply_ish_lines = st.tuples(
    st.sampled_from([b"250", b"550", b"354", b"199", b"2x0", b"25", b"600", b"260", b""]),
    st.sampled_from([b" ", b"-", b"", b"x"]),
    st.sampled_from([b"", b"2.0.0 ", b"5.1.1 ", b"2.0.0", b"4.0"]),
    st.binary(max_size=20) | st.sampled_from([b"\t", b"a\tb", b"\x00", b"\x80"]),
    st.sampled_from([b"\r\n", b"\n", b"\r", b""]),
).map(b"".join)


@given(st.lists(reply_ish_lines, max_size=8).map(b"".join), st.integers(0, 2**32 - 1))
@settings(BASE, max_examples=400)
def test_reader_only_ever_raises_remote_protocol_error(data: bytes, seed: int) -> None:
    if not data:
        return
    results = [read_all(chunks) for chunks in every_split(data, seed=seed, random_splits=2)]
    for result in results[1:]:
        assert result == results[0]
    for reply in results[0][0]:
        assert 200 <= reply.code <= 599


# ---- round trip: write_reply -> ReplyReader --------------------------------------------------

printable_line = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
#: Any text Reply() takes: no C0 but tab, no DEL, no C1, no lone surrogate.
unicode_line = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n").filter(
        lambda c: c == "\t" or not (c < " " or "\x7f" <= c <= "\x9f")
    ),
    max_size=40,
)


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    code = draw(st.integers(2, 5)) * 100 + draw(st.integers(0, 5)) * 10 + draw(st.integers(0, 9))
    enhanced = None
    if code // 100 != 3 and draw(st.booleans()):
        subject, detail = draw(st.integers(0, 999)), draw(st.integers(0, 999))
        enhanced = f"{code // 100}.{subject}.{detail}"
    lines = draw(st.lists(printable_line | unicode_line, min_size=1, max_size=5))
    first = ENHANCED.match(lines[0])
    if enhanced is None and first is not None and lines[0][0] == str(code)[0]:
        # "250 2.0.0 x" is read as enhanced 2.0.0: see test_enhanced_looking_text_...
        lines[0] = "x" + lines[0]
    return Reply(code, enhanced, "\n".join(lines))


@given(st.lists(replies(), min_size=1, max_size=4), st.integers(0, 2**32 - 1))
@settings(BASE, max_examples=300)
def test_write_then_read_round_trip(sent: list[Reply], seed: int) -> None:
    data = b"".join(write_reply(reply) for reply in sent)
    for chunks in every_split(data, seed=seed, random_splits=2):
        assert read_all(chunks) == (sent, None, False)


@pytest.mark.parametrize(
    ("code", "enhanced", "text"),
    [
        (260, None, "x"),  # RFC 5321 Reply-code: second digit %x30-35
        (599, "5.0.0", "x"),
        (550, "5.1.1", "Benutzer unbekannt: m\u00fcller"),
        (250, None, "\u7528\u6237 \ufffd \U0001f600"),
        (250, "2.0.0", "a\x85b"),  # C1: Reply refuses it, as the reader does
    ],
)
def test_every_reply_that_can_be_built_reads_back(
    code: int, enhanced: str | None, text: str
) -> None:
    # Either Reply() refuses it, or what write_reply puts on the wire reads back equal:
    # our server must never send what our client calls a protocol error.
    try:
        reply = Reply(code, enhanced, text)
    except LocalProtocolError:
        return
    assert read_all([write_reply(reply)]) == ([reply], None, False)


def test_enhanced_looking_text_reads_back_as_enhanced() -> None:
    # The wire cannot tell these apart; documented here so a change is deliberate.
    reply = Reply(250, None, "2.0.0 OK")
    assert write_reply(reply) == write_reply(Reply(250, "2.0.0", "OK"))
    assert read_one(write_reply(reply)) == Reply(250, "2.0.0", "OK")


# ---- writers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "wire"),
    [
        (Reply(250, "2.1.5", "OK"), b"250 2.1.5 OK\r\n"),
        (Reply(250), b"250 \r\n"),
        (Reply(250, "2.0.0"), b"250 2.0.0 \r\n"),
        (Reply(221, None, "Bye"), b"221 Bye\r\n"),
        (Reply(250, None, "a\nb\nc"), b"250-a\r\n250-b\r\n250 c\r\n"),
        (Reply(550, "5.1.1", "a\nb"), b"550-5.1.1 a\r\n550 5.1.1 b\r\n"),
        (Reply(250, None, "a\n"), b"250-a\r\n250 \r\n"),
        (Reply(550, "5.1.1", "m\u00fcller"), b"550 5.1.1 m\xc3\xbcller\r\n"),  # UTF-8
        (Reply(250, None, "\u7528\n\u6237"), b"250-\xe7\x94\xa8\r\n250 \xe6\x88\xb7\r\n"),
    ],
)
def test_write_reply(reply: Reply, wire: bytes) -> None:
    assert write_reply(reply) == wire
    assert type(write_reply(reply)) is bytes


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ((), ""),
        ((("SIZE", "100"),), " SIZE=100"),
        ((("BODY", "8BITMIME"), ("SMTPUTF8", None)), " BODY=8BITMIME SMTPUTF8"),
        (
            (("NOTIFY", "SUCCESS,FAILURE"), ("ORCPT", "rfc822;a@b")),
            " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@b",
        ),
        ((("X", ""),), " X="),
    ],
)
def test_write_params(params: tuple[tuple[str, str | None], ...], text: str) -> None:
    assert write_params(params) == text
