"""The receive buffer: a bytearray with a resumable CRLF search and hard line limits.

How it works: bytes are appended as they arrive. take_line() looks for CRLF only in
the part it has not searched yet, so feeding a long line one byte at a time stays
linear. A line that reaches its limit without a CRLF is reported as LineTooLong and,
for a server, discard_line() drops bytes until the next CRLF without keeping them, so
memory stays bounded by the limit however long the peer's line is. Deleting from the
front of a bytearray is cheap in CPython (it moves a start offset).
"""

from __future__ import annotations

import enum

__all__ = ["LineTooLong", "ReceiveBuffer"]


class LineTooLong(enum.Enum):
    TOKEN = "line too long"


class ReceiveBuffer:
    """``data``: the bytes received and not taken yet. Read it (its length, whether it
    is empty: cheaper than a method call), never replace or change it."""

    __slots__ = ("data", "_searched", "_discarding")

    def __init__(self) -> None:
        self.data = bytearray()
        self._searched = 0
        self._discarding = False

    def __len__(self) -> int:
        return len(self.data)

    def __bool__(self) -> bool:
        return bool(self.data)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def take_line(self, limit: int) -> bytes | LineTooLong | None:
        """The next line without its CRLF, None if it is not complete yet, or
        LineTooLong if it has ``limit`` octets (CRLF included) and goes on."""
        data = self.data
        if self._discarding:
            self._discard_to_crlf()
            if self._discarding:
                return None
        end = data.find(b"\r\n", self._searched)
        if end < 0 or end + 2 > limit:
            if end >= 0 or len(data) >= limit:
                return LineTooLong.TOKEN
            self._searched = max(0, len(data) - 1)
            return None
        line = bytes(data[:end])
        del data[: end + 2]
        self._searched = 0
        return line

    def discard_line(self) -> None:
        """Drop the current line up to and including its CRLF, now and as more
        bytes arrive; take_line() answers None until the CRLF has passed."""
        self._discarding = True
        self._discard_to_crlf()

    def _discard_to_crlf(self) -> None:
        data = self.data
        end = data.find(b"\r\n")
        if end >= 0:
            del data[: end + 2]
            self._discarding = False
        else:
            keep = 1 if data.endswith(b"\r") else 0
            del data[: len(data) - keep]
        self._searched = 0

    def drop(self, size: int) -> None:
        del self.data[:size]
        self._searched = 0

    def peek(self) -> bytes:
        return bytes(self.data)

    def take(self, size: int) -> bytes:
        """Up to ``size`` bytes from the front."""
        chunk = bytes(self.data[:size])
        del self.data[:size]
        self._searched = 0
        return chunk

    def take_all(self) -> bytes:
        chunk = bytes(self.data)
        self.data.clear()
        self._searched = 0
        return chunk

    def find(self, needle: bytes, start: int = 0) -> int:
        return self.data.find(needle, start)

    def startswith(self, prefix: bytes) -> bool:
        return self.data.startswith(prefix)

    def clear(self) -> None:
        self.data.clear()
        self._searched = 0
        self._discarding = False
