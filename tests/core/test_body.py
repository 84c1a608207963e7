"""Message bodies: the client's BodyEncoder and the server's DataDecoder, LineEndingCheck,
LineLengths and has_bare_line_ending (lmtp_core._body). Covers CR/LF/CRLF normalisation,
dot-stuffing and the terminator, chunk boundaries between CR and LF or before a dot,
chunking invariance, the no-early-CRLF.CRLF and no-bare-line-ending invariants, the
encode/decode round trip in random splits, BDAT and binary modes, the RFC 5321 line-length
limit (including the stride check inside a big chunk), 8-bit refusal, NUL refusal outside
BINARYMIME (RFC 2045 2.7 and 2.8: a receiver that strips NUL would read "\r\n\x00.\r\n"
as the end of the data), and every SMTP smuggling sequence, all checked against small
independent reference implementations.
"""

from __future__ import annotations

import itertools
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmtp_core import BareLineEndings, LocalProtocolError, LongLines
from lmtp_core._body import (
    BodyEncoder,
    DataDecoder,
    LineEndingCheck,
    LineLengths,
    has_bare_line_ending,
)

from .helpers import every_split

BASE = settings(derandomize=True, database=None, deadline=None)

SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r.\n", b"\r.\r"]

# ---- independent reference implementations -------------------------------------------


def ref_normalize(body: bytes) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\r\n", body)


def ref_with_final_crlf(body: bytes) -> bytes:
    text = ref_normalize(body)
    return text + b"\r\n" if text and not text.endswith(b"\r\n") else text


def ref_data(body: bytes) -> bytes:
    """What DATA must put on the wire for ``body``."""
    return re.sub(rb"(?m)^\.", b"..", ref_with_final_crlf(body)) + b".\r\n"


BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def encode(chunks: list[bytes], **kwargs: object) -> bytes:
    encoder = BodyEncoder(**kwargs)  # type: ignore[arg-type]
    return b"".join(encoder.encode(chunk) for chunk in chunks) + encoder.finish()


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def decode(chunks: list[bytes], normalize: bool = False) -> tuple[bytes, bytes, bool, DataDecoder]:
    """Drive a DataDecoder as ServerConnection._read_data does: decode what is buffered,
    drop ``used``, repeat until no progress. Returns (body, bytes left after the end,
    ended, decoder). Also checks that no released piece splits a CRLF."""
    decoder = DataDecoder()
    buffer = bytearray()
    pieces: list[bytes] = []
    done = False
    for chunk in chunks:
        buffer += chunk
        while buffer and not done:
            piece, used, done = decoder.decode(bytes(buffer), normalize)
            if not used:
                assert piece == b"" and not done
                break
            consumed = bytes(buffer[:used])
            del buffer[:used]
            if not done and consumed.endswith(b"\r"):
                # the decoder saw the next byte and it is not the LF of this CR
                assert bytes(buffer[:1]) not in (b"", b"\n")
            pieces.append(piece)
    return b"".join(pieces), bytes(buffer), done, decoder


# ---- strategies ----------------------------------------------------------------------

ATOMS = [b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n.", b"..", b"\x80", b"\r\n.\r\n", b" ", b"\x00"]
bodies = st.one_of(
    st.lists(st.sampled_from(ATOMS), max_size=40).map(b"".join),
    st.binary(max_size=120),
)


@st.composite
def split_bodies(
    draw: st.DrawFn, allow_empty: bool = False, nul: bool = True
) -> tuple[bytes, list[bytes]]:
    """A body and a cut of it; ``nul=False``: without NUL (text the encoder can send
    unless it is binary)."""
    body = draw(bodies)
    if not nul:
        body = body.replace(b"\x00", b"")
    points = draw(st.lists(st.integers(0, len(body)), max_size=12))
    chunks = cut(body, points)
    if not allow_empty:
        chunks = [chunk for chunk in chunks if chunk]
    return body, chunks


def random_cut(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    points = [rng.randint(0, len(data)) for _ in range(rng.randint(0, 12))]
    return [chunk for chunk in cut(data, points) if chunk]


# ---- BodyEncoder: normalisation, stuffing, terminator --------------------------------


@pytest.mark.parametrize(
    ("body", "wire"),
    [
        (b"a\rb", b"a\r\nb\r\n.\r\n"),
        (b"a\nb", b"a\r\nb\r\n.\r\n"),
        (b"a\r\nb", b"a\r\nb\r\n.\r\n"),
        (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
        (b"a\n\rb", b"a\r\n\r\nb\r\n.\r\n"),
        (b"a\n\nb\r\r", b"a\r\n\r\nb\r\n\r\n.\r\n"),
        (b"\r\n", b"\r\n.\r\n"),
        (b"\n", b"\r\n.\r\n"),
        (b"\r", b"\r\n.\r\n"),
    ],
)
def test_line_endings_become_crlf(body: bytes, wire: bytes) -> None:
    for chunks in every_split(body):
        assert encode(chunks, dot_stuff=True) == wire


@pytest.mark.parametrize(
    ("body", "wire"),
    [
        (b".", b"..\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"..x\r\n", b"...x\r\n.\r\n"),
        (b"a\r\n.b\r\n", b"a\r\n..b\r\n.\r\n"),
        (b"a.b\r\n.\r\n", b"a.b\r\n..\r\n.\r\n"),
        (b"a\n.\n", b"a\r\n..\r\n.\r\n"),
        (b"a\r.", b"a\r\n..\r\n.\r\n"),
        (b" .x", b" .x\r\n.\r\n"),
    ],
)
def test_leading_dots_are_doubled(body: bytes, wire: bytes) -> None:
    for chunks in every_split(body):
        assert encode(chunks, dot_stuff=True) == wire


@pytest.mark.parametrize(
    ("body", "wire"),
    [
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"a\r\n\r\n", b"a\r\n\r\n.\r\n"),
    ],
)
def test_terminator_adds_missing_crlf_only(body: bytes, wire: bytes) -> None:
    assert encode([body], dot_stuff=True) == wire


@pytest.mark.parametrize(
    ("chunks", "wire"),
    [
        ([b"a\r", b"\nb"], b"a\r\nb\r\n.\r\n"),
        ([b"a\r", b"\n.b"], b"a\r\n..b\r\n.\r\n"),
        ([b"a\r", b".b"], b"a\r\n..b\r\n.\r\n"),  # a bare CR ends the line too
        ([b"a\r", b"\r", b"\n"], b"a\r\n\r\n.\r\n"),
        ([b"a\r", b"\n"], b"a\r\n.\r\n"),
        ([b"a\r\n", b".b"], b"a\r\n..b\r\n.\r\n"),
        ([b"a\n", b".b"], b"a\r\n..b\r\n.\r\n"),
        ([b"a", b".b"], b"a.b\r\n.\r\n"),
        ([b"a\r\n.", b".b"], b"a\r\n...b\r\n.\r\n"),
    ],
)
def test_chunk_boundaries(chunks: list[bytes], wire: bytes) -> None:
    assert encode(chunks, dot_stuff=True) == wire


@pytest.mark.parametrize("body", [b"a\r\n.b\r\n", b"x\ry\nz"])
@pytest.mark.parametrize("dot_stuff", [True, False])
def test_empty_chunk_anywhere_changes_nothing(body: bytes, dot_stuff: bool) -> None:
    # README: "any number of pieces, of any size"; an empty piece between CR and LF
    # must not make the encoder forget the pending CR (the LF would become a line).
    whole = encode([body], dot_stuff=dot_stuff)
    for at in range(len(body) + 1):
        assert encode([body[:at], b"", body[at:]], dot_stuff=dot_stuff) == whole, at


def test_size_counts_input_octets() -> None:
    encoder = BodyEncoder(dot_stuff=True)
    encoder.encode(b"a\n.")
    encoder.encode(b"\r")
    encoder.encode(b"\n")
    encoder.finish()
    assert encoder.size == 5


@given(split_bodies(allow_empty=True, nul=False))
@settings(BASE, max_examples=300)
def test_chunking_invariance(case: tuple[bytes, list[bytes]]) -> None:
    body, chunks = case
    assert encode(chunks, dot_stuff=True) == encode([body], dot_stuff=True)
    assert encode(chunks, dot_stuff=False) == encode([body], dot_stuff=False)


@given(split_bodies(nul=False))
@settings(BASE, max_examples=300)
def test_data_output_matches_reference_and_invariants(case: tuple[bytes, list[bytes]]) -> None:
    body, chunks = case
    wire = encode(chunks, dot_stuff=True)
    assert wire == ref_data(body)
    assert wire.endswith(b".\r\n")
    if body:
        assert wire.find(b"\r\n.\r\n") == len(wire) - 5
        assert not wire.startswith(b".\r\n")
    else:
        assert wire == b".\r\n"
    assert BARE.search(wire) is None


@given(split_bodies(nul=False), st.integers(0, 2**32 - 1))
@settings(BASE, max_examples=300)
def test_round_trip_through_data_decoder(case: tuple[bytes, list[bytes]], seed: int) -> None:
    body, chunks = case
    wire = encode(chunks, dot_stuff=True)
    decoded, rest, done, decoder = decode(random_cut(wire, seed))
    assert done
    assert rest == b""
    assert decoded == ref_with_final_crlf(body)
    assert decoder.size == len(decoded)
    assert not decoder.bare_line_ending


# ---- BDAT and binary ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "wire"),
    [
        (b"", b""),
        (b".a\rb", b".a\r\nb\r\n"),
        (b"a\n.\n", b"a\r\n.\r\n"),
        (b"x\r\n.\r\n", b"x\r\n.\r\n"),
        (b"x\r\n", b"x\r\n"),
    ],
)
def test_bdat_is_normalised_not_stuffed(body: bytes, wire: bytes) -> None:
    splits: list[list[bytes]] = list(every_split(body)) if body else [[body]]
    for chunks in splits:
        assert encode(chunks, dot_stuff=False) == wire


@given(split_bodies(nul=False))
@settings(BASE, max_examples=200)
def test_bdat_output_matches_reference(case: tuple[bytes, list[bytes]]) -> None:
    body, chunks = case
    wire = encode(chunks, dot_stuff=False)
    assert wire == ref_with_final_crlf(body)
    assert BARE.search(wire) is None


@given(split_bodies())
@settings(BASE, max_examples=100)
def test_binary_passes_bytes_untouched(case: tuple[bytes, list[bytes]]) -> None:
    body, chunks = case
    encoder = BodyEncoder(dot_stuff=False, binary=True, max_line=998)
    assert b"".join(encoder.encode(chunk) for chunk in chunks) == body
    assert encoder.finish() == b""
    assert encoder.size == len(body)


def test_binary_ignores_line_length_and_bare_endings() -> None:
    body = b"\r.\n\x00\xff" + b"x" * 5000 + b"\r"
    encoder = BodyEncoder(dot_stuff=False, binary=True, max_line=998)
    assert encoder.encode(body) == body
    assert encoder.finish() == b""


# ---- line length ----------------------------------------------------------------------


def test_line_of_998_octets_passes() -> None:
    body = b"x" * 998 + b"\r\n" + b"." + b"y" * 997 + b"\r\n" + b"z" * 998
    for chunks in every_split(body):
        wire = encode(chunks, dot_stuff=True, max_line=998)
        assert wire == ref_data(body)  # the stuffed dot does not count (4.5.3.1.6)


@pytest.mark.parametrize(
    "body",
    [
        b"x" * 999 + b"\r\n",
        b"x" * 999,  # unterminated: caught by finish()
        b"a\r\n" + b"x" * 999,
        b"x" * 999 + b"\n",
        b"x" * 999 + b"\r",
        b"a\nb\n" + b"x" * 1500 + b"\nc",
    ],
)
def test_line_of_999_octets_is_refused(body: bytes) -> None:
    for chunks in every_split(body):
        with pytest.raises(LocalProtocolError, match="998"):
            encode(chunks, dot_stuff=True, max_line=998)


def test_long_line_over_many_small_chunks() -> None:
    encoder = BodyEncoder(dot_stuff=True, max_line=998)
    encoder.encode(b"ok\r\n")
    for _ in range(99):
        encoder.encode(b"0123456789")  # 990 octets so far, no error yet
    encoder.encode(b"01234567")  # 998: still allowed
    with pytest.raises(LocalProtocolError):
        encoder.encode(b"8\r\n")  # 999 octets before the CRLF


def test_long_line_in_the_middle_of_a_big_chunk() -> None:
    short = b"short line\r\n" * 200
    body = short + b"x" * 999 + b"\r\n" + short
    with pytest.raises(LocalProtocolError):
        encode([body], dot_stuff=True, max_line=998)
    fine = short + b"x" * 998 + b"\r\n" + short
    assert encode([fine], dot_stuff=True, max_line=998) == ref_data(fine)


@pytest.mark.parametrize("width", [997, 998, 999, 1000, 1996, 1997, 1998, 1999, 2000])
def test_stride_check_every_alignment(width: int) -> None:
    # Lines of every length near the limit and near twice the stride, in one chunk.
    for offset in range(0, 6):
        body = b"ab\r\n" + b"c" * offset + b"\r\n" + b"x" * width + b"\r\nend\r\n"
        if width > 998:
            with pytest.raises(LocalProtocolError):
                encode([body], dot_stuff=True, max_line=998)
        else:
            assert encode([body], dot_stuff=True, max_line=998) == ref_data(body)


def test_long_lines_pass_without_max_line() -> None:
    body = b"x" * 5000 + b"\r\n"
    assert encode([body], dot_stuff=True) == body + b".\r\n"


def test_long_lines_policy_names() -> None:
    assert {member.value for member in LongLines} == {"error", "allow"}
    assert {member.value for member in BareLineEndings} == {"reject", "normalize"}


def well_formed(lengths: list[int], terminated: bool) -> bytes:
    text = b"\r\n".join(b"x" * n for n in lengths)
    return text + b"\r\n" if terminated else text


def too_long_so_far(prefix: bytes, limit: int) -> bool:
    *complete, partial = prefix.split(b"\r\n")
    return any(len(line) > limit for line in complete) or len(partial.rstrip(b"\r")) > limit


@given(
    st.integers(1, 12),
    st.lists(st.integers(0, 30), min_size=1, max_size=12),
    st.booleans(),
    st.lists(st.integers(0, 400), max_size=10),
)
@settings(BASE, max_examples=600)
def test_line_lengths_matches_reference(
    limit: int, lengths: list[int], terminated: bool, points: list[int]
) -> None:
    text = well_formed(lengths, terminated)
    chunks = cut(text, [p % (len(text) + 1) for p in points])
    tracker = LineLengths(limit)
    flagged = False
    fed = b""
    for chunk in chunks:
        fed += chunk
        if tracker.feed(chunk):
            # never early: what was fed so far already holds a line over the limit
            assert too_long_so_far(fed, limit)
            flagged = True
            break
    else:
        flagged = tracker.finish()
    assert flagged == (max(lengths) > limit)


def test_line_lengths_chunk_ending_in_cr() -> None:
    # the server feeds BDAT pieces that may end between CR and LF
    tracker = LineLengths(10)
    assert not tracker.feed(b"x" * 10 + b"\r")
    assert not tracker.feed(b"\nok\r\n")
    assert tracker.feed(b"x" * 11 + b"\r")
    tracker = LineLengths(10)
    assert not tracker.feed(b"x" * 11)
    assert tracker.feed(b"\r\n")
    tracker = LineLengths(10)
    assert not tracker.feed(b"a\r\n" + b"x" * 11)
    assert tracker.finish()


# ---- 8-bit ----------------------------------------------------------------------------


def test_8bit_refused_without_8bitmime() -> None:
    encoder = BodyEncoder(dot_stuff=True, allow_8bit=False)
    assert encoder.encode(b"plain ascii\r\n") == b"plain ascii\r\n"
    with pytest.raises(LocalProtocolError, match="8BITMIME"):
        encoder.encode(b"caf\xc3\xa9\r\n")
    with pytest.raises(LocalProtocolError):
        BodyEncoder(dot_stuff=False, allow_8bit=False).encode(b"\x80")


def test_8bit_passes_by_default() -> None:
    assert encode([b"caf\xc3\xa9"], dot_stuff=True) == b"caf\xc3\xa9\r\n.\r\n"


# ---- NUL ------------------------------------------------------------------------------

NUL_REFUSED = "the message has NUL bytes, which only BODY=BINARYMIME can carry"


def encode_until_refused(chunks: list[bytes], **kwargs: object) -> tuple[bytes, str | None]:
    """What the encoder gave before it refused the body, and the refusal (or None)."""
    encoder = BodyEncoder(**kwargs)  # type: ignore[arg-type]
    out = bytearray()
    try:
        for chunk in chunks:
            out += encoder.encode(chunk)
        out += encoder.finish()
    except LocalProtocolError as exc:
        return bytes(out), str(exc)
    return bytes(out), None


@pytest.mark.parametrize(
    "body",
    [
        b"\x00",
        b"a\r\n\x00.\r\nMAIL FROM:<x@y>\r\n",  # CRLF.CRLF once a receiver strips NUL
        b"a\r\n.\x00\r\n",
        b"\x00.\r\n",
        b"a\n\x00\n",
        b"text\x00",
        b"caf\xc3\xa9\x00",
    ],
)
@pytest.mark.parametrize("dot_stuff", [True, False])
def test_nul_refused_unless_binary(body: bytes, dot_stuff: bool) -> None:
    # RFC 2045 2.7 and 2.8: NUL is not 7bit or 8bit data. Whatever the split, the
    # encoder refuses the chunk that holds the NUL, and nothing it gave holds one.
    nul_at = body.index(b"\x00")
    for chunks in every_split(body):
        given_out, error = encode_until_refused(chunks, dot_stuff=dot_stuff)
        assert error == NUL_REFUSED
        assert b"\x00" not in given_out
        # everything before the chunk with the NUL went through as usual
        fed = 0
        for chunk in chunks:
            if fed + len(chunk) > nul_at:
                break
            fed += len(chunk)
        expected = BodyEncoder(dot_stuff=dot_stuff)
        assert given_out == expected.encode(body[:fed])
    # BODY=BINARYMIME (BDAT only) carries it untouched
    for chunks in every_split(body):
        assert encode(chunks, dot_stuff=False, binary=True) == body


@given(split_bodies(allow_empty=True), st.booleans())
@settings(BASE, max_examples=300)
def test_refused_exactly_when_the_body_has_nul(
    case: tuple[bytes, list[bytes]], dot_stuff: bool
) -> None:
    body, chunks = case
    given_out, error = encode_until_refused(chunks, dot_stuff=dot_stuff)
    assert (error is not None) is (b"\x00" in body)
    assert b"\x00" not in given_out
    if error is not None:
        assert error == NUL_REFUSED
    binary = BodyEncoder(dot_stuff=False, binary=True)
    assert b"".join(binary.encode(chunk) for chunk in chunks) + binary.finish() == body


def test_nul_refused_even_with_8bit_and_long_lines_allowed() -> None:
    encoder = BodyEncoder(dot_stuff=True, allow_8bit=True, max_line=None)
    assert encoder.encode(b"ok\r\n") == b"ok\r\n"
    with pytest.raises(LocalProtocolError, match="NUL"):
        encoder.encode(b"\r\n\x00.\r\n")
    # the 8-bit check comes first when both apply
    with pytest.raises(LocalProtocolError, match="8BITMIME"):
        BodyEncoder(dot_stuff=True, allow_8bit=False).encode(b"\x00\xff")


# ---- SMTP smuggling -------------------------------------------------------------------


@pytest.mark.parametrize("sequence", SMUGGLING)
def test_smuggling_sequences_are_neutralised(sequence: bytes) -> None:
    body = b"Subject: hi\r\n\r\nhello" + sequence + b"MAIL FROM:<x@y>\r\n"
    expected = b"Subject: hi\r\n\r\nhello\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n"
    for chunks in every_split(body):
        wire = encode(chunks, dot_stuff=True, max_line=998)
        assert wire == expected
        assert wire.count(b"\r\n.\r\n") == 1
        assert BARE.search(wire) is None
    decoded, rest, done, _ = decode([expected])
    assert done
    assert rest == b""
    assert decoded == b"Subject: hi\r\n\r\nhello\r\n.\r\nMAIL FROM:<x@y>\r\n"


@pytest.mark.parametrize("sequence", SMUGGLING)
def test_decoder_does_not_end_at_smuggling_sequence(sequence: bytes) -> None:
    raw = b"hello" + sequence + b"MAIL FROM:<x@y>\r\n"
    for chunks in every_split(raw + b"\r\n.\r\nRSET\r\n"):
        decoded, rest, done, decoder = decode(chunks)
        assert done
        assert rest == b"RSET\r\n"
        assert b"MAIL FROM:<x@y>" in decoded
        assert decoder.bare_line_ending
    for chunks in every_split(raw):
        _, _, done, _ = decode(chunks)
        assert not done


# ---- DataDecoder ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "body", "rest", "bare"),
    [
        (b".\r\n", b"", b"", False),
        (b".\r\nNOOP\r\n", b"", b"NOOP\r\n", False),
        (b"\r\n.\r\n", b"\r\n", b"", False),
        (b"a\r\n.\r\nQUIT\r\n", b"a\r\n", b"QUIT\r\n", False),
        (b"..\r\n.\r\n", b".\r\n", b"", False),
        (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n", b"", False),
        (b"a\r\n...b\r\n.\r\n", b"a\r\n..b\r\n", b"", False),
        (b"a.b\r\n.\r\n", b"a.b\r\n", b"", False),
        (b"x\r\n.\r\n.\r\n", b"x\r\n", b".\r\n", False),
        (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n", b"", True),
        (b"a\r.\rb\r\n.\r\n", b"a\r.\rb\r\n", b"", True),
        (b"a\r\r\n.\r\n", b"a\r\r\n", b"", True),
        (b"a\n\r\n.\r\n", b"a\n\r\n", b"", True),
    ],
)
def test_decoder_ends_only_at_crlf_dot_crlf(
    raw: bytes, body: bytes, rest: bytes, bare: bool
) -> None:
    for chunks in every_split(raw):
        decoded, left, done, decoder = decode(chunks)
        assert (decoded, left, done) == (body, rest, True)
        assert decoder.bare_line_ending is bare
        assert decoder.size == len(body)


@pytest.mark.parametrize(
    "raw", [b"a\r\n.\r", b"a\r\n.", b"a\r\n", b"a", b"\r\n.\n", b"x.\r\n", b".\n", b"\r\n..\r\n"]
)
def test_decoder_waits_for_more(raw: bytes) -> None:
    for chunks in every_split(raw):
        _, _, done, _ = decode(chunks)
        assert not done


def test_decoder_holds_back_and_never_splits_crlf() -> None:
    decoder = DataDecoder()
    assert decoder.decode(b"ab\r\n", False) == (b"", 0, False)
    assert decoder.decode(b"abc\r\nxyz", False) == (b"abc", 3, False)
    assert decoder.decode(b"\r\nxyz", False) == (b"", 0, False)
    assert decoder.decode(b"\r\nxyz.\r\n", False) == (b"\r\nxy", 4, False)


def test_decoder_unstuffs_across_piece_boundaries() -> None:
    decoder = DataDecoder()
    piece, used, done = decoder.decode(b"ab\r\n..cdef", False)
    assert (piece, used, done) == (b"ab\r\n.", 6, False)
    piece, used, done = decoder.decode(b"cdef\r\n.\r\n", False)
    assert (piece, used, done) == (b"cdef\r\n", 9, True)


@pytest.mark.parametrize(
    ("raw", "normalized", "plain"),
    [
        (b"a\nb\rc\r\n.\r\n", b"a\r\nb\r\nc\r\n", b"a\nb\rc\r\n"),
        (b"a\n..b\r\n.\r\n", b"a\r\n.b\r\n", b"a\n..b\r\n"),
        (b"a\r\r\r\nb\r\n.\r\n", b"a\r\n\r\n\r\nb\r\n", b"a\r\r\r\nb\r\n"),
        (b"a\n.\nb\r\n.\r\n", b"a\r\n\r\nb\r\n", b"a\n.\nb\r\n"),
    ],
)
def test_decoder_normalize_mode(raw: bytes, normalized: bytes, plain: bytes) -> None:
    for chunks in every_split(raw):
        decoded, _, done, decoder = decode(chunks, normalize=True)
        assert done
        assert decoded == normalized
        assert decoder.bare_line_ending
        decoded, _, done, decoder = decode(chunks, normalize=False)
        assert decoded == plain
        assert decoder.bare_line_ending


@given(bodies, st.integers(0, 2**32 - 1), st.booleans())
@settings(BASE, max_examples=400)
def test_decoder_split_invariance(raw: bytes, seed: int, normalize: bool) -> None:
    raw += b"\r\n.\r\nNEXT"
    whole = decode([raw], normalize)
    for chunks in ([raw[i : i + 1] for i in range(len(raw))], random_cut(raw, seed)):
        again = decode(chunks, normalize)
        assert again[:3] == whole[:3]
        assert again[3].bare_line_ending == whole[3].bare_line_ending
        assert again[3].size == whole[3].size
    body, rest, done, decoder = whole
    assert done
    assert rest.endswith(b"NEXT")
    assert decoder.bare_line_ending == (BARE.search(raw[: len(raw) - len(rest)]) is not None)
    if normalize:
        assert BARE.search(body) is None


# ---- LineEndingCheck and has_bare_line_ending -------------------------------------------


@pytest.mark.parametrize(
    ("chunk", "bare"),
    [
        (b"", False),
        (b"abc", False),
        (b"a\r\nb\r\n", False),
        (b"a\rb", True),
        (b"a\nb", True),
        (b"\r", True),
        (b"\n", True),
        (b"\r\r\n", True),
        (b"\r\n\n", True),
        (b"\n\r", True),
        # CR and LF alternate, but not side by side: every one of them is bare
        (b"a\rb\nc", True),
        (b"\r\na\rb\n", True),
        (b"\r\n\r\n", False),
        (b"\r\r\n\n", True),
    ],
)
def test_has_bare_line_ending(chunk: bytes, bare: bool) -> None:
    assert has_bare_line_ending(chunk) is bare


@given(
    st.binary(max_size=40) | st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"x"])).map(b"".join)
)
@settings(BASE, max_examples=2000)
def test_has_bare_line_ending_matches_a_byte_by_byte_reference(chunk: bytes) -> None:
    bare = any(
        (byte == 13 and chunk[i + 1 : i + 2] != b"\n") or (byte == 10 and chunk[i - 1 : i] != b"\r")
        for i, byte in enumerate(chunk)
    )
    assert has_bare_line_ending(chunk) is bare


@pytest.mark.parametrize(
    ("pieces", "bare"),
    [
        ([b"a\r", b"\nb"], False),
        ([b"a\r", b"", b"\nb"], False),
        ([b"a\r\n", b"b\r\n"], False),
        ([b"a\r", b"b"], True),
        ([b"a\r", b"\r\n"], True),
        ([b"a\r"], True),  # a CR at the very end: bare once finished
        ([b"a\n"], True),
        ([b"\n"], True),
        ([b"a\r", b"\n\n"], True),
    ],
)
def test_line_ending_check_across_pieces(pieces: list[bytes], bare: bool) -> None:
    check = LineEndingCheck()
    for piece in pieces:
        check.feed(piece)
    check.finish()
    assert check.bare is bare


@given(split_bodies(allow_empty=True))
@settings(BASE, max_examples=300)
def test_line_ending_check_matches_whole(case: tuple[bytes, list[bytes]]) -> None:
    body, chunks = case
    check = LineEndingCheck()
    for chunk in chunks:
        check.feed(chunk)
    check.finish()
    assert check.bare is has_bare_line_ending(body)
    assert check.bare is (BARE.search(body) is not None)


@given(body=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=5))
@settings(max_examples=300)
def test_normalized_size_is_what_the_bdat_encoder_sends(body: bytes, cuts: list[int]) -> None:
    from lmtp_core import normalized_size

    body = body.replace(b"\x00", b"")  # NUL is refused: see test_nul_refused_...
    encoder = BodyEncoder(dot_stuff=False)
    bounds = sorted({0, len(body), *(c for c in cuts if c <= len(body))})
    sent = b"".join(encoder.encode(body[a:b]) for a, b in itertools.pairwise(bounds))
    assert normalized_size(body) == len(sent + encoder.finish())
