"""The exceptions a driver raises, built from runtime errors in one place.

How it works: a delivery that reached the transaction stage never raises for what the
server did; it returns a result. These are for the rest: bad configuration (before any
connection), failing to connect, TLS failures, a server that refused the session, and
deadlines that passed before any recipient could be tried. Each runtime's stream adapter
turns its own exceptions into OSError (TimeoutError for a deadline, ssl.SSLError for
TLS), and stream_error() turns an OSError into ours, with a message that names what was
being done and the endpoint: the same words in every runtime. try_again_later() tells
the failures to open a session that may pass (the server full, stopping or restarting)
from those that will not, for the Pool's retries.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl

from lmtp_core import ConnectionClosed, Phase, ProtocolError, Reply

__all__ = [
    "ConfigurationError",
    "ConnectError",
    "LMTPError",
    "PoolTimeout",
    "SessionError",
    "TLSError",
    "Timeout",
]


class LMTPError(Exception):
    """Base class of every exception the drivers raise for the peer, the network or a
    setting's value. (Misuse of the API raises lmtp_core.LocalProtocolError or
    TypeError, as in h11.)"""


class ConfigurationError(LMTPError, ValueError):
    """Invalid settings; raised before any connection is made."""


class ConnectError(LMTPError, OSError):
    """The connection could not be made or broke before the session was open."""


class TLSError(ConnectError):
    """The TLS handshake or certificate verification failed."""


class Timeout(ConnectError, TimeoutError):
    """A deadline passed before the session was open."""


class PoolTimeout(Timeout):
    """No pooled connection became free in time."""


class SessionError(LMTPError):
    """The server refused the session (greeting, LHLO or STARTTLS), or broke the
    protocol before any recipient was tried."""

    def __init__(
        self, reason: str, reply: Reply | None = None, error: ProtocolError | None = None
    ) -> None:
        super().__init__(f"{reason}: {reply}" if reply else reason)
        self.reason = reason
        self.reply = reply
        self.error = error


#: What the client waits for in each phase, for messages ("waiting for ... from X").
WAITING_FOR = {
    Phase.GREETING: "the greeting",
    Phase.LHLO: "the reply to LHLO",
    Phase.STARTTLS: "the reply to STARTTLS",
    Phase.MAIL: "the reply to MAIL",
    Phase.RCPT: "the replies to RCPT",
    Phase.DATA_INIT: "the reply to DATA",
    Phase.DATA_BLOCK: "the reply to a BDAT chunk",
    Phase.DATA_END: "the replies after the end of the data",
    Phase.COMMAND: "the reply to a command",
}


def _reason(exc: BaseException) -> str:
    """The most telling text: the OS's own words when there are any."""
    cause = exc.__cause__
    grouped = cause.exceptions if isinstance(cause, BaseExceptionGroup) else ()
    for candidate in (exc, cause, *grouped):  # a group holds one error per address tried
        if isinstance(candidate, ssl.SSLError):  # .reason: only the C module's have one
            return str(getattr(candidate, "reason", None) or candidate)
        if isinstance(candidate, OSError) and candidate.errno and candidate.errno > 0:
            return os.strerror(candidate.errno)  # asyncio's own strerror is less plain
        if isinstance(candidate, OSError) and candidate.strerror:
            return candidate.strerror  # getaddrinfo's words (its errno is negative)
    return str(exc) or type(exc).__name__


def stream_error(exc: OSError, doing: str, endpoint: str, timed: str = "") -> ConnectError:
    """Our error for a stream failure while `doing` ("connecting to", "waiting for the
    greeting from", ...) with `endpoint`; `timed` says which limit passed, for timeouts."""
    if isinstance(exc, Timeout):
        return Timeout(f"{exc} {doing} {endpoint}")
    if isinstance(exc, TimeoutError):
        return Timeout(f"{timed or 'timed out'} {doing} {endpoint}")
    if isinstance(exc, socket.gaierror):
        host = endpoint.rpartition(":")[0].strip("[]")
        return ConnectError(f"cannot resolve {host}: {_reason(exc)}")
    if isinstance(exc, ssl.SSLError | ssl.CertificateError) or isinstance(
        exc.__cause__, ssl.SSLError
    ):
        return TLSError(f"TLS failed {doing} {endpoint}: {_reason(exc.__cause__ or exc)}")
    if doing == "connecting to":
        return ConnectError(f"cannot connect to {endpoint}: {_reason(exc)}")
    return ConnectError(f"connection failed {doing} {endpoint}: {_reason(exc)}")


#: What a server that is not taking connections for now looks like at the socket: none
#: listening (refused; a UNIX path gone), a listen queue full (EAGAIN), or a connection
#: dropped before the session opened (reset, aborted, a broken pipe).
_NOT_NOW = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ENOENT,
        errno.EAGAIN,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
    }
)


def try_again_later(exc: LMTPError) -> bool:
    """The session could not be opened for a reason that may pass: a 421 (the server
    is full or stopping), a session that ended without a refusal (the server hung up,
    or broke the protocol: the core cannot tell a 421 right behind the reply to LHLO, a
    server stopping, from any other reply too many), a timeout, or a socket error in
    _NOT_NOW. Not a TLS failure, a name that does not resolve, nor a refusal other than
    421 (the server said no)."""
    if isinstance(exc, SessionError):
        return exc.reply is None or exc.reply.code == 421
    if isinstance(exc, TLSError) or not isinstance(exc, ConnectError):
        return False
    if isinstance(exc, Timeout):
        return True
    cause, seen = exc.__cause__, 0
    while cause is not None and seen < 4:  # trio's OSError holds a group of its own
        grouped = cause.exceptions if isinstance(cause, BaseExceptionGroup) else ()
        for candidate in (cause, *grouped):
            if isinstance(candidate, OSError) and candidate.errno in _NOT_NOW:
                return True
        cause, seen = cause.__cause__, seen + 1
    return False


def session_failed(event: ConnectionClosed, failure: LMTPError | None, endpoint: str) -> LMTPError:
    """What to raise when a session ended before it was open: the transport's failure
    if there was one, else the server's refusal or protocol error."""
    if failure is not None:
        return failure
    return SessionError(f"{event.reason} ({endpoint})", event.reply, event.error)
