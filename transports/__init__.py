"""transports: thin drivers that feed lmtp_core over real connections.

The runtime modules are imported by name (transports.blocking, transports.asyncio,
transports.trio) so that trio stays optional; this package re-exports only what they
share: settings, errors, the network backend protocols a Client or Pool can be given
(backend=), the server's Handler, Envelope and SessionInfo, and what runs
a server as a service: serve_workers() (worker processes, any runtime) and
systemd_socket().
"""

from ._async_client import AsyncBackend, AsyncStream
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
from ._listen import systemd_socket
from ._serve import serve_workers
from ._session import Decision, Envelope, Handler, SessionInfo, Verdicts, inline
from ._sync_client import SyncBackend, SyncStream

__all__ = [
    "AsyncBackend",
    "AsyncStream",
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
    "SessionInfo",
    "SyncBackend",
    "SyncStream",
    "TLSError",
    "Timeout",
    "Timeouts",
    "Verdicts",
    "inline",
    "serve_workers",
    "server_context",
    "systemd_socket",
]
