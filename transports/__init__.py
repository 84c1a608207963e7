"""transports: thin drivers that feed lmtp_core over real connections.

The runtime modules are imported by name (transports.blocking, transports.asyncio,
transports.trio) so that trio stays optional; this package re-exports only what they
share: settings, errors, and the server's Handler and Envelope.
"""

from ._config import Timeouts, server_context
from ._errors import ConfigurationError, ConnectError, LMTPError, SessionError, Timeout, TLSError
from ._session import Envelope, Handler

__all__ = [
    "ConfigurationError",
    "ConnectError",
    "Envelope",
    "Handler",
    "LMTPError",
    "SessionError",
    "TLSError",
    "Timeout",
    "Timeouts",
    "server_context",
]
