"""Fuzz target: the client's reply reader, lmtp_core._readers.ReplyReader.

Invariant: whatever bytes a server sends, fed whole, byte by byte or in pieces the fuzzer
chooses, the reader returns the same replies and stops with the same RemoteProtocolError
at the same point (no other exception), and its buffer holds fewer than Limits.reply_line
octets whenever read() returns None.

Also checked: every reply read survives the round trip write_reply -> ReplyReader.

Input (tests/fuzz/_input.py): flag bit 0 picks small limits (64-octet lines, at most
3 lines a reply) so the limits are reached often. Run it from the repository root:
``python -m tests.fuzz.fuzz_reply_reader [corpus dir] [libFuzzer flags]``.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    import atheris

    atheris.enabled_hooks.add("RegEx")
    atheris.enabled_hooks.add("str")
    with atheris.instrument_imports(include=["lmtp_core"]):
        import lmtp_core  # noqa: F401

from lmtp_core import Limits, RemoteProtocolError, Reply
from lmtp_core._buffer import ReceiveBuffer
from lmtp_core._readers import ReplyReader
from lmtp_core._writers import write_reply
from tests.fuzz._input import parse, splits

SMALL = Limits(reply_line=64, reply_lines=3)

#: What one way of feeding gave: the replies, and the error that stopped it (or None).
Outcome = tuple[list[Reply], str | None]


def read_all(chunks: list[bytes], limits: Limits) -> Outcome:
    """Feed ``chunks`` one at a time, reading every complete reply after each."""
    buffer = ReceiveBuffer()
    reader = ReplyReader(limits)
    replies: list[Reply] = []
    try:
        for chunk in chunks:
            buffer.feed(chunk)
            while (reply := reader.read(buffer)) is not None:
                replies.append(reply)
            assert len(buffer) < limits.reply_line, (
                f"{len(buffer)} octets buffered with no reply line complete"
            )
            assert b"\r\n" not in buffer.peek(), "read() returned None with a line complete"
    except RemoteProtocolError as exc:
        return replies, str(exc)
    return replies, None


def check_round_trip(reply: Reply, limits: Limits) -> None:
    """A reply the reader accepted, written back out, reads as the same reply."""
    buffer = ReceiveBuffer()
    buffer.feed(write_reply(reply))
    # Room for the enhanced code repeated on every line, and for U+FFFD (3 octets) where
    # the server sent one invalid octet.
    again = ReplyReader(Limits(reply_line=3 * limits.reply_line + 16)).read(buffer)
    assert again == reply, (reply, again)
    assert not buffer


def TestOneInput(data: bytes) -> None:
    """Read the payload every way and compare; see the module docstring."""
    fuzz = parse(data)
    limits = SMALL if fuzz.flags & 1 else Limits()
    outcomes = [read_all(chunks, limits) for chunks in splits(fuzz)]
    for outcome in outcomes[1:]:
        assert outcome == outcomes[0], (outcomes[0], outcome)
    for reply in outcomes[0][0]:
        check_round_trip(reply, limits)


def main() -> None:
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
