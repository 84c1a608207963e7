"""Generated from _async_server.py by tools/unasync.py; do not edit. The blocking twin of:

The server's one per-connection loop, for every runtime. Edit this file, not its twin.

How it works: serve_connection() runs one session on an accepted AsyncStream. It
starts implicit TLS first if the stream is not encrypted yet, then loops on the
server core: replies are written once per read, not once per event (before waiting,
upgrading or closing: ServerConfig.flushes_on), NEED_DATA reads, StartTls upgrades the
stream, and the events the application must decide on go through Session to the
handler. The runtime's Server lends each session an AsyncSessions: run_handler() runs
a handler call (inline when it cannot block, else in a bounded pool of worker
threads, awaited if it is async), sleep() waits out the delay Session asks for after
too many refused recipients, and `stopping` with receive_idle() tells of a shutdown:
a read outside a transaction is interrupted by it, and the core is then told to
close_when_idle(), which answers 421 now or once the transaction in flight is done.
Every wait (TLS handshakes, each read and each write, the delay) is bounded by the
idle timeout and by what is left of the session timeout; a stream failure or a
deadline ends the session, logged once, and the stream is always closed. Plaintext a
client pipelined after STARTTLS is dropped by the stream adapter. The Session is told
who the peer is and of TLS (implicit, or after STARTTLS), for the handler methods that
ask for the session (SessionInfo).

_sync_server.py is generated from this file by tools/unasync.py.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from lmtp_core import ConnectionClosed, Signal, StartTls

from ._sync_client import SyncStream
from ._config import ServerConfig
from ._net import new_id
from ._session import Call, Handler, Session

__all__ = ["SyncSessions", "serve_connection"]

log = logging.getLogger("transports.server")


class SyncSessions(Protocol):
    """What a runtime's Server lends the sessions it serves."""

    @property
    def stopping(self) -> bool:
        """The server is shutting down: close idle sessions, finish busy ones."""
        ...

    def run_handler(self, call: Call) -> object:
        """The call's result: inline if call.inline, else in a worker thread (the
        blocking server: in the connection's own thread); awaited if awaitable."""
        ...

    def sleep(self, seconds: float) -> None: ...

    def receive_idle(self, stream: Any, timeout: float) -> bytes | None:
        """stream.receive_some(timeout) between transactions; None if the server
        began to stop meanwhile (`stopping` is then true)."""
        ...


def serve_connection(
    stream: SyncStream, config: ServerConfig, handler: Handler, sessions: SyncSessions
) -> None:
    """Serve one client until it quits, fails or runs out of time; closes the stream."""
    end = time.monotonic() + config.session_timeout
    conn = config.connection()
    session = Session(
        conn,
        handler,
        session_id=new_id("s"),
        peer=stream.peer(config.endpoint),
        tls=config.ssl_context is not None,
        refusal_soft_limit=config.refusal_soft_limit,
        refusal_delay=config.refusal_delay,
    )
    name = session.name
    log.debug("%s: connected", name)
    clean = stop_seen = False
    try:
        if config.ssl_context is not None and not stream.tls:
            stream = stream.start_tls(
                config.ssl_context, None, _wait(config, end), server_side=True
            )
        while True:
            event = conn.next_event()
            if config.flushes_on(event) and (data := conn.data_to_send()):
                stream.send_all(data, _wait(config, end))
            if event is Signal.NEED_DATA:
                if sessions.stopping and not stop_seen:
                    stop_seen = True
                    conn.close_when_idle()  # 421 now if idle, else once the transaction ends
                    continue
                if conn.idle:
                    received = sessions.receive_idle(stream, _wait(config, end))
                    if received is None:  # the server began to stop
                        continue
                else:
                    received = stream.receive_some(_wait(config, end))
                conn.receive_data(received) if received else conn.receive_eof()
            elif isinstance(event, StartTls):
                assert config.starttls_context is not None
                stream = stream.start_tls(
                    config.starttls_context, None, _wait(config, end), server_side=True
                )
                conn.tls_established()
                session.tls_established()
            elif isinstance(event, ConnectionClosed):
                log.debug("%s: closed: %s", name, event.reason)
                clean = True
                return
            elif (call := session.handle(event)) is not None:
                try:
                    result = sessions.run_handler(call)
                except Exception as exc:
                    session.failed(call, exc)
                else:
                    session.complete(call, result)
                if delay := session.take_delay():  # too many refused recipients
                    sessions.sleep(min(delay, _wait(config, end)))
    except OSError as exc:  # TimeoutError and ssl.SSLError included
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        log.info("%s: connection ended: %s", name, reason)  # the same in every runtime
    finally:
        session.close()  # drops a message spooled for a transaction cut short
        stream.close(forceful=not clean)


def _wait(config: ServerConfig, end: float) -> float:
    """How long the next wait may take: the idle timeout, within the session's (0 once
    the session is over: every runtime then times out at once)."""
    return max(0.0, min(config.idle_timeout, end - time.monotonic()))
