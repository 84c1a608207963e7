"""Fuzz target: the client's body encoder, lmtp_core._body.BodyEncoder, and the DataDecoder.

Invariant: for any message body cut into any pieces, BodyEncoder(dot_stuff=True) writes
the same bytes, with no bare CR or LF and no CRLF.CRLF (nor a leading ".\\r\\n") before
the final terminator, and DataDecoder turns them back into the body with every line end
made CRLF.

Also checked against independent oracles (a regex, not the core's own helpers): the
output is exactly the normalised body with each leading dot doubled plus ".\\r\\n";
without dot-stuffing (BDAT) it is the normalised body; with a line limit the encoder
refuses the body, for every split alike, exactly when a normalised line is too long,
without 8BITMIME exactly when the body has a byte over 127, and always when it has a NUL
(only BODY=BINARYMIME carries NUL, RFC 2045 2.7 and 2.8; this encoder is never binary);
normalized_size() (the SIZE= value) is the length of the normalised body.

Input flags (tests/fuzz/_input.py): bit 0 turns dot-stuffing off (BDAT), bit 1 sets
max_line to 8 + (bits 2-6) octets (otherwise max_line=None: long lines allowed), bit 7
sets allow_8bit=False.
Run: ``python -m tests.fuzz.fuzz_body_encoder [corpus dir] [libFuzzer flags]``.
"""

from __future__ import annotations

import re
import sys

if __name__ == "__main__":
    import atheris

    atheris.enabled_hooks.add("str")
    with atheris.instrument_imports(include=["lmtp_core"]):
        import lmtp_core  # noqa: F401

from lmtp_core import LocalProtocolError
from lmtp_core._body import BodyEncoder, DataDecoder, normalized_size
from tests.fuzz._input import cut, parse, splits

_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def normalised(body: bytes) -> bytes:
    """The body with every CR, LF and CRLF made CRLF, and a final CRLF if it lacks one."""
    text = _LINE_END.sub(b"\r\n", body)
    return text + b"\r\n" if text and not text.endswith(b"\r\n") else text


def encode(
    chunks: list[bytes], dot_stuff: bool, max_line: int | None, allow_8bit: bool
) -> bytes | None:
    """The encoded body, or None if the encoder refused it (a long line, 8-bit data,
    NUL). Nothing it gave before refusing holds a NUL."""
    encoder = BodyEncoder(dot_stuff=dot_stuff, max_line=max_line, allow_8bit=allow_8bit)
    out = bytearray()
    try:
        for chunk in chunks:
            out += encoder.encode(chunk)
        out += encoder.finish()
    except LocalProtocolError:
        if max_line is None and allow_8bit and b"\x00" not in b"".join(chunks):
            raise
        assert b"\x00" not in out, "a NUL went out before the refusal"
        return None
    assert encoder.size == sum(map(len, chunks))
    return bytes(out)


def decode(chunks: list[bytes]) -> bytes:
    """Run the encoded bytes through a DataDecoder as the server does; the end of the
    data must come exactly with the last byte."""
    decoder = DataDecoder()
    buffer = bytearray()
    body = bytearray()
    done = False
    for chunk in chunks:
        assert not done or not chunk, "the data ended before the last byte"
        buffer += chunk
        while buffer and not done:
            piece, used, done = decoder.decode(bytes(buffer), normalize=False)
            if not used:
                break
            del buffer[:used]
            body += piece
    assert done, "the data never ended"
    assert not buffer, f"{len(buffer)} octets left after the end of the data"
    assert not decoder.bare_line_ending, "bare CR or LF in the encoder's output"
    assert decoder.size == len(body)
    return bytes(body)


def check_output(out: bytes, text: bytes, dot_stuff: bool) -> None:
    """The encoder's output against the oracles; see the module docstring."""
    crs, lfs = out.count(b"\r"), out.count(b"\n")
    assert crs == lfs == out.count(b"\r\n"), "bare CR or LF in the output"
    if not dot_stuff:
        assert out == text, (out, text)
        return
    assert out == _LEADING_DOT.sub(b"..", text) + b".\r\n", out
    if out != b".\r\n":
        assert not out.startswith(b".\r\n"), "the output starts with the end of data"
        assert out.find(b"\r\n.\r\n") == len(out) - 5, "CRLF.CRLF before the end"


def TestOneInput(data: bytes) -> None:
    """Encode the body every way and compare; see the module docstring."""
    fuzz = parse(data)
    dot_stuff = not fuzz.flags & 1
    max_line = 8 + (fuzz.flags >> 2 & 31) if fuzz.flags & 2 else None
    allow_8bit = not fuzz.flags & 128
    text = normalised(fuzz.payload)
    assert normalized_size(fuzz.payload) == len(text), (normalized_size(fuzz.payload), len(text))
    outputs = [encode(chunks, dot_stuff, max_line, allow_8bit) for chunks in splits(fuzz)]
    for other in outputs[1:]:
        assert other == outputs[0], f"{outputs[0]!r:.300} != {other!r:.300}"
    out = outputs[0]
    too_long = max_line is not None and any(len(line) > max_line for line in text.split(b"\r\n"))
    eight_bit = not allow_8bit and not fuzz.payload.isascii()
    nul = b"\x00" in fuzz.payload
    assert (out is None) == (too_long or eight_bit or nul), (out, too_long, eight_bit, nul)
    if out is None:
        return
    check_output(out, text, dot_stuff)
    if dot_stuff:
        variants = [[out], [out[i : i + 1] for i in range(len(out))]]
        if any(fuzz.lengths):
            variants.append(cut(out, fuzz.lengths))
        for chunks in variants:
            assert decode(chunks) == text


def main() -> None:
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
