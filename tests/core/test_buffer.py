"""The receive buffer (lmtp_core._buffer.ReceiveBuffer): take_line() returns lines without
their CRLF, None while a line is incomplete and LineTooLong at the limit (CRLF included);
a bare CR or LF never ends a line; the CRLF search resumes where it stopped, so a long
line fed one byte at a time costs linear work and is refused as soon as the limit is
reached; discard_line() drops an over-long line up to its CRLF while memory stays bounded;
and the small helpers (take, drop, peek, find, clear, ...) keep the search state right.
Every parsing case runs whole, byte by byte and in random splits.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmtp_core._buffer import LineTooLong, ReceiveBuffer

from .helpers import every_split

BASE = settings(derandomize=True, database=None, deadline=None)
TOO_LONG = LineTooLong.TOKEN

Outcome = bytes | LineTooLong


def take_lines(buffer: ReceiveBuffer, limit: int) -> list[Outcome]:
    """Every line available now, stopping after LineTooLong."""
    out: list[Outcome] = []
    while True:
        line = buffer.take_line(limit)
        if line is None:
            return out
        out.append(line)
        if line is TOO_LONG:
            return out


def feed_all(chunks: list[bytes], limit: int) -> tuple[list[Outcome], bytes]:
    buffer = ReceiveBuffer()
    out: list[Outcome] = []
    for chunk in chunks:
        buffer.feed(chunk)
        out += take_lines(buffer, limit)
        if out and out[-1] is TOO_LONG:
            break
    return out, buffer.peek()


def reference(data: bytes, limit: int) -> list[Outcome]:
    out: list[Outcome] = []
    while True:
        end = data.find(b"\r\n")
        if end < 0:
            if len(data) >= limit:
                out.append(TOO_LONG)
            return out
        if end + 2 > limit:
            out.append(TOO_LONG)
            return out
        out.append(data[:end])
        data = data[end + 2 :]


class CountingBytearray(bytearray):
    """A bytearray that counts the octets its find() calls have to scan."""

    scanned = 0

    def find(self, sub, start=None, end=None, /):  # type: ignore[no-untyped-def]
        begin = 0 if start is None else start
        stop = len(self) if end is None else end
        self.scanned += max(0, stop - begin)
        return super().find(sub, begin, stop)


def counting_buffer() -> tuple[ReceiveBuffer, CountingBytearray]:
    buffer = ReceiveBuffer()
    data = CountingBytearray()
    buffer.data = data
    return buffer, data


# ---- take_line ----------------------------------------------------------------------


def test_lines_come_out_without_crlf() -> None:
    data = b"LHLO a\r\nMAIL FROM:<x@y>\r\n\r\nbare\nlf\r\ncr\rin\r\n\n\r\r\n"
    expected: list[Outcome] = [b"LHLO a", b"MAIL FROM:<x@y>", b"", b"bare\nlf", b"cr\rin", b"\n\r"]
    for chunks in every_split(data):
        assert feed_all(chunks, 512) == (expected, b"")


def test_incomplete_line_is_none_until_its_crlf() -> None:
    buffer = ReceiveBuffer()
    assert buffer.take_line(512) is None
    buffer.feed(b"NOOP")
    assert buffer.take_line(512) is None
    buffer.feed(b"\r")
    assert buffer.take_line(512) is None
    buffer.feed(b"\nRS")
    assert buffer.take_line(512) == b"NOOP"
    assert buffer.take_line(512) is None
    assert buffer.peek() == b"RS"


@pytest.mark.parametrize("bare", [b"\n", b"\r", b"\n\r", b"\r\r"])
def test_bare_line_ending_never_ends_a_line(bare: bytes) -> None:
    data = b"one" + bare + b"two\r\n"
    for chunks in every_split(data):
        assert feed_all(chunks, 512) == ([b"one" + bare + b"two"], b"")


@pytest.mark.parametrize(
    ("data", "expected", "rest"),
    [
        (b"12345678\r\n", [b"12345678"], b""),  # exactly 10 octets with CRLF
        (b"123456789\r\n", [TOO_LONG], b"123456789\r\n"),
        (b"12345678\r", [], b"12345678\r"),  # 9 octets: the LF may still come
        (b"123456789\r", [TOO_LONG], b"123456789\r"),
        (b"1234567890", [TOO_LONG], b"1234567890"),
        (b"123456789", [], b"123456789"),
        (b"ok\r\n1234567890", [b"ok", TOO_LONG], b"1234567890"),
    ],
)
def test_line_limit_includes_crlf(data: bytes, expected: list[Outcome], rest: bytes) -> None:
    for chunks in every_split(data):
        out, left = feed_all(chunks, 10)
        assert out == expected
        if out[-1:] == [TOO_LONG]:
            # reported once 10 octets are in, before the rest is even fed; nothing
            # of the long line is consumed: the caller decides what to do with it
            assert rest.startswith(left)
            assert len(left) >= 10
        else:
            assert left == rest


def test_line_too_long_is_reported_again() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"x" * 20)
    assert buffer.take_line(10) is TOO_LONG
    assert buffer.take_line(10) is TOO_LONG
    assert len(buffer) == 20


@given(
    st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"xyz", b"0123456789"]), max_size=60),
    st.integers(3, 30),
    st.lists(st.integers(0, 400), max_size=12),
)
@settings(BASE, max_examples=400)
def test_take_line_matches_reference_in_any_split(
    atoms: list[bytes], limit: int, points: list[int]
) -> None:
    data = b"".join(atoms)
    bounds = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    out, _ = feed_all(chunks, limit)
    assert out == reference(data, limit)


# ---- resumable search: linear work, early refusal ---------------------------------------


def test_long_line_byte_by_byte_is_refused_at_the_limit() -> None:
    buffer = ReceiveBuffer()
    payload = b"x" * 100_000
    for count in range(1, len(payload) + 1):
        buffer.feed(payload[count - 1 : count])
        line = buffer.take_line(512)
        if line is not None:
            break
    assert line is TOO_LONG
    assert count == 512
    assert len(buffer) == 512


def test_search_resumes_where_it_stopped() -> None:
    buffer, data = counting_buffer()
    size = 100_000
    for _ in range(size):
        buffer.feed(b"x")
        assert buffer.take_line(1_000_000) is None
    # each byte is scanned about once (plus one for a CR that may end the data),
    # not ~size**2 / 2 as a search from the start each time would
    assert data.scanned <= 2 * size
    buffer.feed(b"\r\n")
    line = buffer.take_line(1_000_000)
    assert line == b"x" * size
    assert data.scanned <= 2 * size + 10


def test_search_resumes_across_a_split_crlf() -> None:
    buffer, data = counting_buffer()
    buffer.feed(b"abc\r")
    assert buffer.take_line(512) is None
    buffer.feed(b"\n")
    assert buffer.take_line(512) == b"abc"
    assert data.scanned <= 4 + 2


# ---- discard_line -------------------------------------------------------------------------


def test_discard_line_keeps_memory_bounded() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"x" * 600)
    assert buffer.take_line(512) is TOO_LONG
    buffer.discard_line()
    assert len(buffer) == 0
    # 4 MiB with CR and LF in it, but never CR directly before LF; each piece ends in CR
    piece = (b"ab\n\rcd" * 700)[:4095] + b"\r"
    peak = 0
    for _ in range(1024):
        buffer.feed(piece)
        assert buffer.take_line(512) is None
        peak = max(peak, len(buffer))
    assert peak <= 1  # at most the CR whose LF may come next
    buffer.feed(b"\nNEXT\r\n")
    assert buffer.take_line(512) == b"NEXT"
    assert not buffer


def test_discard_line_when_crlf_is_already_buffered() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"x" * 600 + b"\r\nok\r\n")
    assert buffer.take_line(512) is TOO_LONG
    buffer.discard_line()
    assert buffer.peek() == b"ok\r\n"
    assert buffer.take_line(512) == b"ok"


def test_discarding_answers_none_until_the_crlf_has_passed() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"y" * 600)
    assert buffer.take_line(512) is TOO_LONG
    buffer.discard_line()
    buffer.feed(b"more\rof it\n")
    assert buffer.take_line(512) is None
    buffer.feed(b"\r")
    assert buffer.take_line(512) is None
    assert len(buffer) == 1
    buffer.feed(b"\nz\r\nw")
    assert buffer.take_line(512) == b"z"
    assert buffer.take_line(512) is None
    assert buffer.peek() == b"w"


# ---- the other helpers --------------------------------------------------------------------


def test_len_bool_peek_find_startswith() -> None:
    buffer = ReceiveBuffer()
    assert len(buffer) == 0
    assert not buffer
    buffer.feed(b"BDAT 5\r\n")
    buffer.feed(b"")
    assert len(buffer) == 8
    assert buffer
    assert buffer.peek() == b"BDAT 5\r\n"
    assert isinstance(buffer.peek(), bytes)
    assert buffer.find(b"\r\n") == 6
    assert buffer.find(b"B", 1) == -1
    assert buffer.startswith(b"BDAT")
    assert not buffer.startswith(b"DATA")


def test_take_and_drop_and_take_all_reset_the_search() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"abc")
    assert buffer.take_line(512) is None  # searched up to "c"
    chunk = buffer.take(2)
    assert chunk == b"ab"
    assert type(chunk) is bytes
    buffer.feed(b"\r\n")
    assert buffer.take_line(512) == b"c"

    buffer.feed(b"abcd")
    assert buffer.take_line(512) is None
    buffer.drop(3)
    buffer.feed(b"\r\n")
    assert buffer.take_line(512) == b"d"

    buffer.feed(b"abcd")
    assert buffer.take_line(512) is None
    assert buffer.take_all() == b"abcd"
    assert not buffer
    buffer.feed(b"x\r\n")
    assert buffer.take_line(512) == b"x"


def test_take_more_than_buffered() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"abc")
    assert buffer.take(10) == b"abc"
    assert buffer.take(10) == b""


def test_clear_forgets_data_search_and_discarding() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"x" * 600)
    assert buffer.take_line(512) is TOO_LONG
    buffer.discard_line()
    buffer.feed(b"abc")
    buffer.clear()
    assert not buffer
    buffer.feed(b"a\r\n")
    assert buffer.take_line(512) == b"a"
    buffer.feed(b"abc")
    assert buffer.take_line(512) is None
    buffer.clear()
    buffer.feed(b"q\r\n")
    assert buffer.take_line(512) == b"q"
