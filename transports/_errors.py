"""The exceptions a driver raises, mapped from runtime errors through one table.

How it works: a delivery that reached the transaction stage never raises for what the
server did; it returns a result. These are for the rest: bad configuration (before any
connection), failing to connect, TLS failures, a server that refused the session, and
deadlines that passed before any recipient could be tried.
"""

from __future__ import annotations

import os
import socket
import ssl

from lmtp_core import ConnectionClosed, ProtocolError, Reply

__all__ = [
    "ConfigurationError",
    "ConnectError",
    "LMTPError",
    "SessionError",
    "TLSError",
    "Timeout",
]


class LMTPError(Exception):
    """Base class of every exception the drivers raise."""


class ConfigurationError(LMTPError, ValueError):
    """Invalid settings; raised before any connection is made."""


class ConnectError(LMTPError, OSError):
    """The connection could not be made or broke before the session was open."""


class TLSError(ConnectError):
    """The TLS handshake or certificate verification failed."""


class Timeout(ConnectError, TimeoutError):
    """A deadline passed before the session was open."""


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


# One table from runtime exceptions to ours; the first match wins (subclasses first).
# The async drivers add their own runtime's types in front of it.
ERROR_MAP: tuple[tuple[type[BaseException], type[ConnectError]], ...] = (
    (ssl.SSLError, TLSError),
    (ssl.CertificateError, TLSError),
    (socket.timeout, Timeout),
    (TimeoutError, Timeout),
    (OSError, ConnectError),
)


ErrorTable = tuple[tuple[type[BaseException], type[ConnectError]], ...]


def _reason(exc: BaseException) -> str:
    """The most telling text: the OS's own words when an errno is known."""
    cause = exc.__cause__
    grouped = cause.exceptions if isinstance(cause, BaseExceptionGroup) else ()
    for candidate in (exc, cause, *grouped):  # trio groups one error per address tried
        tls = isinstance(candidate, ssl.SSLError)  # its errno is not the OS's
        if isinstance(candidate, OSError) and candidate.errno and not tls:
            return os.strerror(candidate.errno)
    return str(exc) or type(exc).__name__


def map_error(
    exc: BaseException, table: ErrorTable = ERROR_MAP, where: str | None = None
) -> ConnectError:
    """The library's error for a runtime exception (a wrapped TLS error is a TLSError);
    `where` names the endpoint when the failure was connecting to it."""
    prefix = f"cannot connect to {where}: " if where else ""
    if isinstance(exc.__cause__, ssl.SSLError):  # trio wraps TLS failures
        return TLSError(prefix + str(exc.__cause__))
    for source, target in table:
        if isinstance(exc, source):
            return target(prefix + _reason(exc))
    return ConnectError(prefix + _reason(exc))


def session_failed(
    event: ConnectionClosed, failure: BaseException | None, table: ErrorTable = ERROR_MAP
) -> LMTPError:
    """What to raise when a session ended before it was open: the transport's failure
    if there was one, else the server's refusal or protocol error."""
    if failure is not None:
        error = map_error(failure, table)
        error.__cause__ = failure
        return error
    return SessionError(event.reason, event.reply, event.error)
