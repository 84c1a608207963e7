"""transports: thin drivers that feed lmtp_core over real connections.

The runtime modules are imported by name (transports.blocking, transports.asyncio,
transports.trio) so that trio stays optional; this package re-exports only what they
share: settings, errors, and the server's Handler and Envelope.
"""

from ._config import ClientSettings, PoolSettings, ServerSettings, Timeouts, server_context
from ._errors import (
    ConfigurationError,
    ConnectError,
    LMTPError,
    PoolTimeout,
    SessionError,
    Timeout,
    TLSError,
)
from ._session import Decision, Envelope, Handler, Verdicts, inline

__all__ = [
    "ClientSettings",
    "ConfigurationError",
    "ConnectError",
    "Decision",
    "Envelope",
    "Handler",
    "LMTPError",
    "PoolSettings",
    "PoolTimeout",
    "ServerSettings",
    "SessionError",
    "TLSError",
    "Timeout",
    "Timeouts",
    "Verdicts",
    "inline",
    "server_context",
]
