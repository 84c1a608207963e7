"""Small I/O helpers every runtime's stream adapter shares.

How it works: idle_clean() asks poll() (never select(), which fails for descriptors
above 1023) whether an idle connection became readable: any byte or an end of file
there means the server spoke or hung up between deliveries, so the connection must not
be reused. peer_name() spells a socket's peer the way log lines and errors spell
endpoints, and new_id() numbers connections so that concurrent transcripts can be told
apart in the log ("c12" is a client connection, "s7" a server session). escape() makes
peer-controlled text safe for one log line.
"""

from __future__ import annotations

import itertools
import math
import select
import socket
from typing import Any

from ._config import endpoint_name

__all__ = [
    "UNIX_RETRY",
    "Poller",
    "escape",
    "idle_clean",
    "new_id",
    "peer_name",
    "unix_connect",
]

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


def idle_clean(fileno: int) -> bool:
    """True when nothing (no byte, no end of file, no error) arrived on the descriptor."""
    return fileno >= 0 and Poller(fileno, select.POLLIN | select.POLLPRI).ready(0) is False


class Poller:
    """poll() on one descriptor for some events, registered once (a stream asks before
    every delivery, and the blocking one before every read)."""

    __slots__ = ("_poll",)

    def __init__(self, fileno: int, events: int) -> None:
        self._poll = select.poll()
        self._poll.register(fileno, events)

    def ready(self, timeout: float) -> bool:
        """Whether the events (or an error, or a hang-up) came within `timeout` seconds."""
        return bool(self._poll.poll(math.ceil(timeout * 1000) if timeout > 0 else 0))


def unix_connect(path: str) -> socket.socket | None:
    """A non-blocking UNIX socket connected to `path`, or None when the server's listen
    queue is full (try again soon). A UNIX connect never waits half-done: it succeeds
    or fails at once, and EAGAIN means "full", which asyncio and trio both take for
    "in progress" and then report as connected a socket that is not (its first read
    fails with EINVAL)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.connect(path)
    except BlockingIOError:
        sock.close()
        return None
    except BaseException:
        sock.close()
        raise
    return sock


#: Seconds between tries while a UNIX listener's queue is full: the first, the most.
UNIX_RETRY = (0.001, 0.05)


def peer_name(sock: Any, listening: str = "") -> str:
    """unix:PATH (the listening path: a UNIX client has no name of its own),
    host:port or [v6]:port. `sock` is a socket or anything with its methods."""
    if sock is None:
        return listening or "unknown"
    try:
        if sock.family == socket.AF_UNIX:
            return f"unix:{sock.getsockname() or listening}"
        host, port = sock.getpeername()[:2]
    except OSError:
        return listening or "unknown"
    return endpoint_name(None, host, port)


def escape(text: str) -> str:
    """Text from the peer for a log line: control and bidi characters escaped."""
    if text.isprintable() and text.isascii():
        return text
    return "".join(
        ch if ch.isprintable() and ch not in _BIDI else ch.encode("unicode_escape").decode()
        for ch in text
    )


_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
