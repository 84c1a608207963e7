"""Endpoint, TLS and deadline settings, validated before any connection is made.

How it works: the public entry points take their settings as keyword arguments typed by
ClientSettings and ServerSettings (TypedDicts, so mypy checks every name and type at the
caller's line). settings_error() gives Python's own TypeError, naming the public
function, for a name that is not a setting. ClientConfig.from_settings() takes the
keyword arguments of the delivery adapter our users know (socket_path, host, port, ssl,
ssl_opts) plus ssl_context, starttls and timeouts, checks every combination, and builds
the ssl.SSLContext once. TLS verifies
certificates and host names unless ssl_opts says verify=False (logged as a warning).
Over a UNIX socket there is no host name to check, so server_hostname must be given or
hostname checking explicitly turned off. Timeouts maps each lmtp_core.Phase to a
number of seconds (RFC 5321 4.5.3.2 defaults), so drivers look deadlines up by phase;
a Deadline turns the seconds of one wait and the delivery's total into one bound.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl as _ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypedDict

from lmtp_core import (
    BareLineEndings,
    ClientConnection,
    ConnectionClosed,
    Limits,
    LocalProtocolError,
    Phase,
    ServerConnection,
    Signal,
    StartTls,
)

from ._errors import ConfigurationError, Timeout

__all__ = [
    "ClientConfig",
    "ClientSettings",
    "Deadline",
    "PoolConfig",
    "PoolSettings",
    "ServerConfig",
    "ServerSettings",
    "Timeouts",
    "server_context",
    "settings_error",
]

log = logging.getLogger("transports")

SSL_OPTS = frozenset(
    {
        "cafile",
        "capath",
        "cadata",
        "verify",
        "check_hostname",
        "server_hostname",
        "certfile",
        "keyfile",
        "minimum_version",
        "ciphers",
    }
)
_VERSIONS = {"TLSv1.2": _ssl.TLSVersion.TLSv1_2, "TLSv1.3": _ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to wait in each phase (RFC 5321 4.5.3.2), plus connect and total."""

    #: Connecting (and an implicit TLS handshake).
    connect: float = 30.0
    #: The 220 greeting ("Initial 220 Message: 5 minutes").
    greeting: float = 300.0
    #: The reply to LHLO.
    lhlo: float = 300.0
    #: The reply to STARTTLS and the handshake.
    starttls: float = 300.0
    #: The reply to MAIL ("MAIL Command: 5 minutes").
    mail: float = 300.0
    #: Each reply to RCPT ("RCPT Command: 5 minutes").
    rcpt: float = 300.0
    #: The reply to DATA ("DATA Initiation: 2 minutes").
    data_init: float = 120.0
    #: Each write, and each BDAT chunk's reply ("Data Block: 3 minutes").
    data_block: float = 180.0
    #: Every reply due once the end of data is out, each within this of the previous
    #: one ("DATA Termination: 10 minutes").
    data_end: float = 600.0
    #: The replies to RSET and QUIT.
    command: float = 300.0
    #: A deadline for a whole delivery (connecting included), or None.
    total: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and 0 < value < math.inf
            ):
                raise ConfigurationError(f"timeout {f.name} must be a positive, finite number")

    @classmethod
    def of(cls, timeout: float | Timeouts | None) -> Timeouts:
        """A Timeouts from a number (every phase the same), a Timeouts, or None."""
        if timeout is None:
            return cls()
        if isinstance(timeout, Timeouts):
            return timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise ConfigurationError(f"timeout must be a number or a Timeouts, not {timeout!r}")
        return cls(*([float(timeout)] * 10))

    def for_phase(self, phase: Phase) -> float:
        return float(getattr(self, phase.value))


class Deadline:
    """The overall deadline of one delivery (or none). clip() bounds one wait of
    `seconds` by it; until() bounds a wait that must end at a monotonic time. Either
    raises Timeout once the total has passed; `binding` then tells which limit bit."""

    __slots__ = ("_end", "_total", "binding")

    def __init__(self, total: float | None = None) -> None:
        self._total = total
        self._end = time.monotonic() + total if total else math.inf
        self.binding = False  # the total, not the wait's own limit, bounds the last wait

    def clip(self, seconds: float) -> float:
        return self.until(time.monotonic() + seconds) if self._end < math.inf else seconds

    def until(self, end: float) -> float:
        now = time.monotonic()
        self.binding = self._end < end
        remaining = min(end, self._end) - now
        if remaining <= 0 and self.binding:
            raise Timeout(f"the total deadline of {self._total:g} s passed")
        return max(remaining, 0.0)

    def remaining(self) -> float | None:
        """Seconds left (never below 0), or None without a total."""
        if self._end == math.inf:
            return None
        self.binding = True
        return max(self._end - time.monotonic(), 0.0)

    def describe(self, seconds: float) -> str:
        """How long the last wait was allowed: its own limit, or the total's."""
        if self.binding:
            return f"the total deadline of {self._total:g} s passed"
        return f"timed out after {seconds:g} s"


class ClientSettings(TypedDict, total=False):
    """The settings of a client (Client, Pool, deliver()), all keyword-only.

    socket_path: a UNIX socket; takes precedence over host and port.
    host, port: TCP endpoint ("127.0.0.1", 2424).
    ssl: implicit TLS from the first byte. starttls: require STARTTLS.
    ssl_opts: cafile, capath, cadata, verify, check_hostname, server_hostname, certfile,
    keyfile, minimum_version, ciphers. ssl_context: a ready client context instead.
    timeout: seconds for every phase, or a Timeouts. lhlo_name: the name we give.
    chunking: use BDAT when offered. limits: the core's Limits.
    recipients_per_transaction: the most RCPTs this client puts in one transaction
    (None: as many as the server takes); more recipients make more transactions.
    """

    socket_path: str | None
    host: str
    port: int
    ssl: bool
    ssl_opts: Mapping[str, object] | None
    ssl_context: _ssl.SSLContext | None
    starttls: bool
    timeout: float | Timeouts | None
    lhlo_name: str
    chunking: bool
    limits: Limits | None
    recipients_per_transaction: int | None


class PoolSettings(ClientSettings, total=False):
    """A Pool's settings: a client's, plus how many connections and for how long.

    max_connections: connections open at once (8). idle_timeout: seconds an idle
    connection is kept (2, Postfix's smtp_connection_cache_time_limit). max_lifetime:
    seconds a connection is reused at most (300, Postfix's
    smtp_connection_reuse_time_limit). wait_timeout: seconds a delivery waits for a
    free connection before PoolTimeout (30; the total deadline applies too), and,
    without a total, keeps trying a server that turns connections away.
    """

    max_connections: int
    idle_timeout: float
    max_lifetime: float
    wait_timeout: float


class ServerSettings(TypedDict, total=False):
    """The settings of a server (Server, serve()), all keyword-only.

    socket_path, or host and port ("127.0.0.1", 2424; port 0 picks a free one).
    ssl_context: implicit TLS; starttls_context: offer STARTTLS (not both).
    limits: the core's Limits. hostname: the name in the greeting.
    idle_timeout: seconds a client may stay silent; session_timeout: the most one
    session may last. bare_line_endings: the core's policy. backlog: listen() queue.
    max_connections: sessions served at once (1000); past it 421 4.3.2.
    handler_threads: threads for synchronous handler methods (asyncio, trio; 4).
    grace: seconds a shutdown gives transactions in flight (30).
    require_tls: refuse MAIL (530 5.7.0) until TLS is active.
    refusal_soft_limit, refusal_delay: after this many refused recipients in a
    session (10), each further refusal waits this many seconds (1).
    sock: an already listening socket to serve (it is closed, never unlinked).
    """

    socket_path: str | None
    host: str
    port: int
    ssl_context: _ssl.SSLContext | None
    starttls_context: _ssl.SSLContext | None
    limits: Limits | None
    hostname: str
    idle_timeout: float
    session_timeout: float
    bare_line_endings: BareLineEndings
    backlog: int
    max_connections: int
    handler_threads: int
    grace: float
    require_tls: bool
    refusal_soft_limit: int
    refusal_delay: float
    sock: socket.socket | None


_CLIENT_KEYS = frozenset(ClientSettings.__annotations__)
_POOL_KEYS = frozenset(PoolSettings.__annotations__) - _CLIENT_KEYS
_SERVER_KEYS = frozenset(ServerSettings.__annotations__)


def settings_error(
    function: str, settings: Mapping[str, Any], server: bool = False, pool: bool = False
) -> None:
    """Raise the TypeError Python gives for an unknown keyword argument, naming the
    public function the caller called (a programming error, found by mypy too)."""
    known = _SERVER_KEYS if server else _CLIENT_KEYS | _POOL_KEYS if pool else _CLIENT_KEYS
    unknown = sorted(settings.keys() - known)
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}")


def endpoint_name(socket_path: str | None, host: str, port: int) -> str:
    """How messages name an endpoint: unix:/path, host:port or [v6]:port."""
    if socket_path is not None:
        return f"unix:{socket_path}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    socket_path: str | None
    host: str
    port: int
    ssl_context: _ssl.SSLContext | None  # None: plain text
    implicit_tls: bool
    server_hostname: str | None
    starttls: bool
    timeouts: Timeouts
    lhlo_name: str
    chunking: bool
    limits: Limits | None
    recipients_per_transaction: int | None

    @property
    def endpoint(self) -> str:
        return endpoint_name(self.socket_path, self.host, self.port)

    def connection(self) -> ClientConnection:
        """A new client core for one connection, tracing when DEBUG logging is on."""
        return ClientConnection(
            lhlo_name=self.lhlo_name,
            require_starttls=self.starttls,
            chunking=self.chunking,
            limits=self.limits,
            trace=log.isEnabledFor(logging.DEBUG),
        )

    @classmethod
    def from_settings(cls, function: str, settings: ClientSettings) -> ClientConfig:
        """Check the settings given to `function` (the public name) and build them."""
        settings_error(function, settings)
        return cls._create(**settings)

    @classmethod
    def _create(
        cls,
        *,
        socket_path: str | None = None,
        host: str = "127.0.0.1",
        port: int = 2424,
        ssl: bool = False,
        ssl_opts: Mapping[str, object] | None = None,
        ssl_context: _ssl.SSLContext | None = None,
        starttls: bool = False,
        timeout: float | Timeouts | None = None,
        lhlo_name: str = "localhost",
        chunking: bool = True,
        limits: Limits | None = None,
        recipients_per_transaction: int | None = None,
    ) -> ClientConfig:
        if ssl and starttls:
            raise ConfigurationError("ssl (implicit TLS) and starttls exclude each other")
        if recipients_per_transaction is not None and not _positive_int(recipients_per_transaction):
            raise ConfigurationError(
                "recipients_per_transaction must be a positive int or None, not "
                f"{recipients_per_transaction!r}"
            )
        try:
            ClientConnection(lhlo_name=lhlo_name)
        except (LocalProtocolError, TypeError) as exc:
            raise ConfigurationError(f"lhlo_name: {exc}") from None
        if socket_path is None:
            if not host or not isinstance(host, str):
                raise ConfigurationError("host must be a non-empty string")
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ConfigurationError(f"port must be an int from 1 to 65535, not {port!r}")
        elif not isinstance(socket_path, str) or not socket_path:
            raise ConfigurationError("socket_path must be a non-empty string")
        opts = dict(ssl_opts or {})
        unknown = set(opts) - SSL_OPTS
        if unknown:
            raise ConfigurationError(f"unknown ssl_opts keys: {', '.join(sorted(unknown))}")
        if (opts or ssl_context is not None) and not (ssl or starttls):
            what = "ssl_opts" if opts else "ssl_context"
            raise ConfigurationError(f"{what} given, but neither ssl nor starttls is on")
        if ssl_context is not None and opts.keys() - {"server_hostname"}:
            raise ConfigurationError(
                "give ssl_context or ssl_opts (beyond server_hostname), not both"
            )
        context = None
        server_hostname = opts.get("server_hostname")
        if server_hostname is not None and not isinstance(server_hostname, str):
            raise ConfigurationError("ssl_opts server_hostname must be a string")
        if server_hostname is not None and not _hostname_ok(server_hostname):
            raise ConfigurationError(
                f"ssl_opts server_hostname {server_hostname!r} is not a host name"
            )
        if ssl or starttls:
            context = ssl_context or _client_context(opts)
            if server_hostname is None and socket_path is None:
                server_hostname = host
            if server_hostname is None and context.check_hostname:
                raise ConfigurationError(
                    "TLS over a UNIX socket needs ssl_opts server_hostname (the name in the "
                    "server's certificate), or check_hostname=False to skip the name check"
                )
        return cls(
            socket_path,
            host,
            port,
            context,
            ssl,
            server_hostname,
            starttls,
            Timeouts.of(timeout),
            lhlo_name,
            chunking,
            limits,
            recipients_per_transaction,
        )


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """A pool's own settings (PoolSettings beyond a client's), checked."""

    max_connections: int = 8
    idle_timeout: float = 2.0
    max_lifetime: float = 300.0
    wait_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not _positive_int(self.max_connections):
            raise ConfigurationError(
                f"max_connections must be a positive int, not {self.max_connections!r}"
            )
        for name in ("idle_timeout", "max_lifetime", "wait_timeout"):
            if not _positive(getattr(self, name)):
                raise ConfigurationError(
                    f"{name} must be a positive, finite number, not {getattr(self, name)!r}"
                )

    @classmethod
    def split(cls, function: str, settings: PoolSettings) -> tuple[PoolConfig, ClientConfig]:
        """The pool's settings and the client's, from what `function` was given."""
        settings_error(function, settings, pool=True)
        given: dict[str, Any] = dict(settings)
        own = {key: given.pop(key) for key in _POOL_KEYS & given.keys()}
        return cls(**own), ClientConfig._create(**given)


def _client_context(opts: Mapping[str, object]) -> _ssl.SSLContext:
    verify = opts.get("verify", True)
    check_hostname = opts.get("check_hostname", verify)
    if not isinstance(verify, bool) or not isinstance(check_hostname, bool):
        raise ConfigurationError("ssl_opts verify and check_hostname must be booleans")
    if check_hostname and not verify:
        raise ConfigurationError("check_hostname=True needs verify=True")
    try:
        context = _ssl.create_default_context(
            cafile=_opt_str(opts, "cafile"),
            capath=_opt_str(opts, "capath"),
            cadata=_opt_str(opts, "cadata"),
        )
        context.check_hostname = check_hostname
        if not verify:
            context.verify_mode = _ssl.CERT_NONE
            log.warning("TLS certificate verification is OFF (ssl_opts verify=False)")
        certfile = _opt_str(opts, "certfile")
        if certfile:
            context.load_cert_chain(certfile, _opt_str(opts, "keyfile"))
        _apply_common(context, opts)
    except (OSError, _ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot set up TLS: {exc}") from exc
    return context


def _apply_common(context: _ssl.SSLContext, opts: Mapping[str, object]) -> None:
    version = opts.get("minimum_version", "TLSv1.2")
    if isinstance(version, str):
        if version not in _VERSIONS:
            raise ConfigurationError(f"minimum_version must be one of {sorted(_VERSIONS)}")
        version = _VERSIONS[version]
    if not isinstance(version, _ssl.TLSVersion):
        raise ConfigurationError("minimum_version must be 'TLSv1.2', 'TLSv1.3' or a TLSVersion")
    context.minimum_version = version
    ciphers = _opt_str(opts, "ciphers")
    if ciphers:
        context.set_ciphers(ciphers)


def _opt_str(opts: Mapping[str, object], key: str) -> str | None:
    value = opts.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigurationError(f"ssl_opts {key} must be a string")
    return value


def _hostname_ok(name: str) -> bool:
    """What ssl itself accepts as server_hostname (not empty, no leading dot, IDNA),
    checked here: ssl finds out only while it sets TLS up, and the blocking driver's
    socket was by then in an SSLSocket that no one could close."""
    if not name or name.startswith("."):
        return False
    try:
        name.encode("idna")
    except UnicodeError:
        return False
    return True


def server_context(certfile: str, keyfile: str | None = None) -> _ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or newer) from a certificate chain and key."""
    context = _ssl.create_default_context(_ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = _ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, _ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the TLS certificate: {exc}") from exc
    return context


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Settings of a server driver; connection() makes the core for one session."""

    socket_path: str | None = None
    host: str = "127.0.0.1"
    port: int = 2424
    ssl_context: _ssl.SSLContext | None = None  # implicit TLS on every connection
    starttls_context: _ssl.SSLContext | None = None  # offer STARTTLS with this
    limits: Limits | None = None
    hostname: str = "localhost"
    #: Seconds a client may stay silent, and the most one session may last.
    idle_timeout: float = 300.0
    session_timeout: float = 3600.0
    bare_line_endings: BareLineEndings = BareLineEndings.REJECT
    #: Connections the kernel queues before accept(); asyncio's default of 100 makes a
    #: burst of 1,000 clients fail. Linux caps it at net.core.somaxconn (4096).
    backlog: int = 1024
    #: Sessions served at once, per process; past it a connection gets 421 4.3.2. Each
    #: takes a file descriptor (the blocking server: a thread), so keep it under
    #: `ulimit -n`.
    max_connections: int = 1000
    #: Worker threads for the application's synchronous handler methods (asyncio and
    #: trio; the blocking server runs them in the connection's own thread). More threads
    #: let more slow calls (fsync, the network) overlap but fight over the GIL for the
    #: rest; MaildirHandler stored about as fast with 1 to 16 (benchmarks/RESULTS.md).
    #: Raise it for handlers that wait on the network.
    handler_threads: int = 4
    #: Seconds a shutdown lets transactions in flight finish before closing them.
    grace: float = 30.0
    #: MAIL gets 530 5.7.0 until the session is encrypted (Postfix's
    #: smtpd_tls_security_level = encrypt).
    require_tls: bool = False
    #: Refused recipients a session may have before each further refusal waits
    #: refusal_delay seconds (Postfix: smtpd_soft_error_limit 10, smtpd_error_sleep_time
    #: 1 s): a reject list cannot be harvested fast, a real delivery is only slowed.
    refusal_soft_limit: int = 10
    refusal_delay: float = 1.0
    #: A socket already bound and listening (a pre-forked worker's, systemd's): served
    #: instead of binding one; closed on shutdown, its path never removed.
    sock: socket.socket | None = None

    def __post_init__(self) -> None:
        if self.ssl_context is not None and self.starttls_context is not None:
            raise ConfigurationError(
                "ssl_context (implicit TLS) and starttls_context exclude each other"
            )
        if isinstance(self.backlog, bool) or not isinstance(self.backlog, int) or self.backlog < 1:
            raise ConfigurationError("backlog must be a positive int")
        for name in ("max_connections", "handler_threads"):
            if not _positive_int(getattr(self, name)):
                raise ConfigurationError(
                    f"{name} must be a positive int, not {getattr(self, name)!r}"
                )
        if not _positive_int(self.refusal_soft_limit + 1):  # 0 delays every refusal
            raise ConfigurationError("refusal_soft_limit must be an int of 0 or more")
        for name in ("grace", "refusal_delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ConfigurationError(f"{name} must be a number of 0 or more, not {value!r}")
        if self.require_tls and self.ssl_context is None and self.starttls_context is None:
            raise ConfigurationError("require_tls needs ssl_context or starttls_context")
        if self.sock is not None and (
            not isinstance(self.sock, socket.socket) or self.sock.type != socket.SOCK_STREAM
        ):
            raise ConfigurationError("sock must be a listening SOCK_STREAM socket")
        if self.sock is not None and self.socket_path is not None:
            raise ConfigurationError("give sock or socket_path, not both")
        for name in ("idle_timeout", "session_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigurationError(f"{name} must be a positive number, not {value!r}")
        if self.socket_path is None and (
            isinstance(self.port, bool)
            or not isinstance(self.port, int)
            or not 0 <= self.port < 65536
        ):
            raise ConfigurationError(f"port must be an int from 0 to 65535, not {self.port!r}")

    @classmethod
    def from_settings(cls, function: str, settings: ServerSettings) -> ServerConfig:
        """Check the settings given to `function` (the public name) and build them."""
        settings_error(function, settings, server=True)
        return cls(**settings)

    @property
    def endpoint(self) -> str:
        if self.sock is not None:
            name = self.sock.getsockname()
            if self.sock.family == socket.AF_UNIX:
                return f"unix:{name if isinstance(name, str) else repr(name)}"
            return endpoint_name(None, name[0], name[1])
        return endpoint_name(self.socket_path, self.host, self.port)

    def flushes_on(self, event: object) -> bool:
        """Whether a server driver writes data_to_send() before acting on this event:
        before it waits, upgrades or closes. Replies to pipelined commands then leave in
        one write instead of one per command."""
        return event is Signal.NEED_DATA or isinstance(event, StartTls | ConnectionClosed)

    def connection(self, busy: bool = False) -> ServerConnection:
        """The core for one session; busy=True: one past max_connections (421 4.3.2)."""
        return ServerConnection(
            self.hostname,
            limits=self.limits,
            tls_available=self.starttls_context is not None,
            tls_active=self.ssl_context is not None,
            bare_line_endings=self.bare_line_endings,
            require_tls=self.require_tls,
            busy=busy,
        )
