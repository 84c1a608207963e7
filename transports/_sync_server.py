"""Generated from _async_server.py by tools/unasync.py; do not edit. The blocking twin of:

The server's one per-connection loop, for every runtime. Edit this file, not its twin.

How it works: serve_connection() runs one session on an accepted AsyncStream. It
starts implicit TLS first if the stream is not encrypted yet, then loops on the
server core: replies are written once per read, not once per event (before waiting,
upgrading or closing: ServerConfig.flushes_on), NEED_DATA reads, StartTls upgrades the
stream, and the events the application must decide on go through Session to the
handler, run by the runtime's backend (awaited if the handler is asynchronous). Every
wait is bounded by the idle timeout and by what is left of the session timeout; a
stream failure or a deadline ends the session, logged once, and the stream is always
closed. Plaintext a client pipelined after STARTTLS is dropped by the stream adapter.

_sync_server.py is generated from this file by tools/unasync.py.
"""

from __future__ import annotations

import logging
import time

from lmtp_core import ConnectionClosed, Signal, StartTls

from ._sync_client import SyncBackend, SyncStream
from ._config import ServerConfig
from ._net import new_id
from ._session import Handler, Session

__all__ = ["serve_connection"]

log = logging.getLogger("transports.server")


def serve_connection(
    stream: SyncStream, config: ServerConfig, handler: Handler, backend: SyncBackend
) -> None:
    """Serve one client until it quits, fails or runs out of time; closes the stream."""
    name = f"[{new_id('s')}] {stream.peer(config.endpoint)}"
    end = time.monotonic() + config.session_timeout
    conn = config.connection()
    session = Session(conn, handler, tls=config.ssl_context is not None, peer=name)
    log.debug("%s: connected", name)
    clean = False
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
                data = stream.receive_some(_wait(config, end))
                conn.receive_data(data) if data else conn.receive_eof()
            elif isinstance(event, StartTls):
                assert config.starttls_context is not None
                stream = stream.start_tls(
                    config.starttls_context, None, _wait(config, end), server_side=True
                )
                conn.tls_established()
                session.envelope.tls = True
            elif isinstance(event, ConnectionClosed):
                log.debug("%s: closed: %s", name, event.reason)
                clean = True
                return
            elif (call := session.handle(event)) is not None:
                try:
                    result = backend.run_handler(call.function, call.args)
                except Exception as exc:
                    session.failed(call, exc)
                else:
                    session.complete(call, result)
    except OSError as exc:  # TimeoutError and ssl.SSLError included
        log.info("%s: connection ended: %s", name, type(exc).__name__ if not str(exc) else exc)
    finally:
        session.close()  # drops a message spooled for a transaction cut short
        stream.close(forceful=not clean)


def _wait(config: ServerConfig, end: float) -> float:
    """How long the next wait may take: the idle timeout, within the session's."""
    return min(config.idle_timeout, end - time.monotonic())
