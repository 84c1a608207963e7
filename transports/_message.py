"""Message sources: whatever the caller gave, as an iterator of bytes pieces.

How it works: bytes are cut into 1 MiB memoryview slices (no copy until the core
encodes a piece); binary files are read 64 KiB at a time and never whole; iterables
of bytes pass through; an email.message.Message is serialised with the SMTP policy
(CRLF line ends). The size, sent as SIZE= when the server offers it, is exact for
bytes (after line-end normalisation) and an estimate for regular files (their length;
RFC 1870 calls SIZE the client's estimate); whether the body is 8-bit is known only for
bytes, and the core works out the rest. prepare() gives an iterator for the blocking
driver; prepare_async() gives the same for the async drivers, or an async iterator for
an async iterable, which only they accept. A delivery split into several transactions
sends the message again: replay() starts bytes over, seeks a seekable file back to where
it started, and for a one-shot iterable works only after keep() spooled it (memory up
to 1 MiB, then a temporary file) while it was first read.
"""

from __future__ import annotations

import email.message
import email.policy
import io
import os
import stat
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, TypeAlias

from lmtp_core import normalized_size

__all__ = ["AsyncBody", "Body", "Message", "Spool", "prepare", "prepare_async"]

PIECE = 1024 * 1024
READ_SIZE = 64 * 1024

#: One piece of a message as the drivers hand it to the core: bytes, or a memoryview
#: slice of a buffer the caller gave (no copy until the core encodes it).
Piece: TypeAlias = bytes | memoryview

Message: TypeAlias = (
    bytes
    | bytearray
    | memoryview
    | IO[bytes]
    | Iterable[bytes]
    | AsyncIterable[bytes]
    | email.message.Message
)


@dataclass(slots=True)
class Body:
    pieces: Iterator[Piece]
    size: int | None
    eight_bit: bool | None
    #: The pieces once more from the start, for a further transaction; None: one-shot.
    again: Callable[[], Iterator[Piece]] | None = None
    nul: bool | None = None  # the message has NUL bytes (None: not known)
    spool: Spool | None = None

    def next_piece(self) -> Piece | None:
        return next(self.pieces, None)

    def replay(self) -> Body | None:
        """The same message from its start, or None if it cannot be read again."""
        if self.spool is not None:
            pieces = self.spool.pieces()
        elif self.again is not None:
            pieces = self.again()
        else:
            return None
        return Body(pieces, self.size, self.eight_bit, self.again, self.nul, self.spool)

    def keep(self) -> None:
        """Spool a one-shot message as it is read, so that replay() works."""
        if self.again is None and self.spool is None:
            self.spool = Spool(self.pieces)
            self.pieces = self.spool.pieces()

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


@dataclass(slots=True)
class AsyncBody:
    pieces: Iterator[Piece] | AsyncIterator[Piece]  # a plain one is not wrapped: speed
    size: int | None
    eight_bit: bool | None
    again: Callable[[], Iterator[Piece]] | None = None
    nul: bool | None = None
    spool: Spool | None = None

    async def next_piece(self) -> Piece | None:
        pieces = self.pieces
        if hasattr(pieces, "__next__"):  # not isinstance(): an ABC check costs more
            return next(pieces, None)  # type: ignore[arg-type]
        return await anext(pieces, None)

    def replay(self) -> AsyncBody | None:
        pieces: Iterator[Piece] | AsyncIterator[Piece]
        if self.spool is not None:
            pieces = self.spool.async_pieces()
        elif self.again is not None:
            pieces = self.again()
        else:
            return None
        return AsyncBody(pieces, self.size, self.eight_bit, self.again, self.nul, self.spool)

    def keep(self) -> None:
        if self.again is None and self.spool is None:
            self.spool = Spool(self.pieces)
            self.pieces = self.spool.async_pieces()

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


class Spool:
    """A one-shot source copied to a temporary file (memory up to 1 MiB) as it is read.
    Each reading yields what is stored, then goes on with the source where any earlier
    reading stopped (a transaction cut short, or one that never asked for the body),
    so every reading is the whole message."""

    def __init__(self, source: Iterator[Piece] | AsyncIterator[Piece]) -> None:
        self._source = source
        self._file = tempfile.SpooledTemporaryFile(max_size=PIECE)  # noqa: SIM115

    def _stored(self) -> Iterator[bytes]:
        file = self._file
        end = file.seek(0, os.SEEK_END)
        position = 0
        while position < end:
            file.seek(position)
            piece = file.read(min(READ_SIZE, end - position))
            position += len(piece)
            yield piece

    def _store(self, piece: Piece) -> Piece:
        self._file.seek(0, os.SEEK_END)
        self._file.write(piece)
        return piece

    def pieces(self) -> Iterator[Piece]:
        yield from self._stored()
        assert isinstance(self._source, Iterator)
        for piece in self._source:
            yield self._store(piece)

    async def async_pieces(self) -> AsyncIterator[Piece]:
        for stored in self._stored():
            yield stored
        if isinstance(self._source, Iterator):
            for piece in self._source:
                yield self._store(piece)
        else:
            async for piece in self._source:
                yield self._store(piece)

    def close(self) -> None:
        self._file.close()


def _rewound(file: IO[bytes]) -> Callable[[], Iterator[bytes]] | None:
    try:
        if not file.seekable():
            return None
        start = file.tell()
    except (AttributeError, OSError, ValueError):
        return None

    def again() -> Iterator[bytes]:
        file.seek(start)
        return _read(file)

    return again


def _slices(data: bytes | bytearray | memoryview) -> Iterator[Piece]:
    view = memoryview(data).cast("B")
    for start in range(0, len(view), PIECE):
        yield view[start : start + PIECE]


def _read(file: IO[bytes]) -> Iterator[bytes]:
    # A BufferedReader reads until it has the size asked for or its raw stream says end
    # of file, so a short piece is the last one. Reading again would block on a
    # terminal, whose end of file (Ctrl-D) is not sticky.
    buffered = isinstance(file, io.BufferedReader)
    while True:
        piece = file.read(READ_SIZE)
        if not isinstance(piece, bytes | bytearray):
            raise TypeError("the message file must be opened in binary mode")
        if not piece:
            return
        yield bytes(piece)
        if buffered and len(piece) < READ_SIZE:
            return


def _checked(pieces: Iterable[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        if not isinstance(piece, bytes | bytearray | memoryview):
            raise TypeError(f"message pieces must be bytes, not {type(piece).__name__}")
        yield bytes(piece)


async def _checked_async(pieces: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    async for piece in pieces:
        if not isinstance(piece, bytes | bytearray | memoryview):
            raise TypeError(f"message pieces must be bytes, not {type(piece).__name__}")
        yield bytes(piece)


def _file_size(file: Any) -> int | None:
    try:
        info = os.fstat(file.fileno())
        if stat.S_ISREG(info.st_mode) and file.seekable():
            return max(0, info.st_size - int(file.tell()))
    except (AttributeError, OSError, ValueError):
        pass
    return None


def prepare_async(message: Message) -> AsyncBody:
    """As prepare(), for the async drivers: async iterables are welcome too."""
    if not isinstance(message, bytes) and isinstance(message, AsyncIterable):
        return AsyncBody(_checked_async(message), None, None)
    body = prepare(message)
    return AsyncBody(body.pieces, body.size, body.eight_bit, body.again, body.nul)


def prepare(message: Message) -> Body:
    """The message as pieces, with its size and 8-bitness when they are known cheaply."""
    if isinstance(message, email.message.Message):
        message = message.as_bytes(policy=email.policy.SMTP)
    if isinstance(message, memoryview):
        message = message.tobytes()
    if isinstance(message, bytes | bytearray):
        data = message
        return Body(
            _slices(data),
            normalized_size(bytes(data)),
            not data.isascii(),
            lambda: _slices(data),
            b"\x00" in data,
        )
    if isinstance(message, str):
        raise TypeError("the message must be bytes (encode it first), not str")
    if hasattr(message, "read"):
        file: IO[bytes] = message  # type: ignore[assignment]
        return Body(_read(file), _file_size(file), None, _rewound(file))
    if isinstance(message, AsyncIterable):
        raise TypeError("async iterables need the asyncio or trio driver")
    if isinstance(message, Iterable):
        return Body(_checked(message), None, None)
    raise TypeError(f"cannot send a message of type {type(message).__name__}")
