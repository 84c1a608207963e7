"""Blocking driver: lmtp_core over stdlib sockets, for the client and the server role.

How it works. The client's pump writes data_to_send(), then acts on next_event():
NEED_DATA reads with the deadline of the core's current phase, NEED_BODY feeds the next
piece of the message, StartTls wraps the socket; anything else goes back to the caller.
A read or write that fails or times out is reported to the core with abort(), which
settles the recipients (never as delivered). Before each delivery on a kept connection
a non-blocking check makes sure the server has not spoken or hung up meanwhile. The
server runs one thread per connection and writes its replies once per read
(ServerConfig.flushes_on); a socketpair wakes the accept loop when shutdown() is called.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from lmtp_core import (
    ClientConnection,
    ConnectionClosed,
    RcptTo,
    Ready,
    Signal,
    StartTls,
    TransactionResult,
)

from ._config import ClientConfig, Deadline, ServerConfig, idle_connection_is_clean
from ._errors import map_error, session_failed
from ._message import Message, prepare
from ._session import Handler, Session

__all__ = ["Client", "Server", "deliver", "serve"]

log = logging.getLogger("transports")


class Client:
    """One LMTP connection, opened on the first deliver() and reused after it."""

    def __init__(self, **settings: Any) -> None:
        self.config = ClientConfig.create(**settings)
        self._sock: socket.socket | None = None
        self._conn: ClientConnection | None = None
        self._failure: BaseException | None = None
        self._deadline = Deadline()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def deliver(
        self, message: Message, sender: str, recipients: Sequence[str | RcptTo]
    ) -> TransactionResult:
        """Deliver one message; one outcome per recipient, in order."""
        ClientConnection.check_envelope(sender, recipients)
        body = prepare(message)
        self._deadline = Deadline(self.config.timeouts.total)
        sock = self._sock
        if sock is not None:
            pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
            if not idle_connection_is_clean(sock.fileno(), pending):
                self._drop()  # the server spoke or hung up while we were idle
        if self._conn is None or not self._conn.reusable:
            self._connect()
        assert self._conn is not None
        self._conn.start_transaction(sender, recipients, size=body.size, eight_bit=body.eight_bit)
        pieces = body.pieces
        assert isinstance(pieces, Iterator)
        try:
            event = self._pump(pieces)
        finally:
            if not self._conn.reusable:
                self._drop()
        assert isinstance(event, TransactionResult)
        return event

    def close(self) -> None:
        """QUIT (if the connection is idle) and close."""
        if self._conn is not None and self._conn.reusable:
            self._conn.quit()
            with contextlib.suppress(Exception):
                self._pump(None)
        self._drop()

    def _connect(self) -> None:
        cfg = self.config
        self._conn = cfg.connection()
        self._failure = None
        sock: socket.socket | None = None
        try:
            if cfg.socket_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self._deadline.clip(cfg.timeouts.connect))
                sock.connect(cfg.socket_path)
            else:
                sock = socket.create_connection(
                    (cfg.host, cfg.port), self._deadline.clip(cfg.timeouts.connect)
                )
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if cfg.implicit_tls:
                assert cfg.ssl_context is not None
                sock = cfg.ssl_context.wrap_socket(sock, server_hostname=cfg.server_hostname)
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise map_error(exc, where=cfg.endpoint) from exc
        self._sock = sock
        event = self._pump(None)
        if isinstance(event, ConnectionClosed):
            self._drop()
            raise session_failed(event, self._failure)
        assert isinstance(event, Ready)

    def _pump(self, body: Iterator[bytes] | None) -> object:
        conn, sock = self._conn, self._sock
        assert conn is not None and sock is not None
        while True:
            for side, line in conn.take_trace():
                log.debug("%s: %s", side, line)
            try:
                event = conn.next_event()
                data = conn.data_to_send()
                if data:
                    sock.settimeout(self._deadline.clip(self.config.timeouts.data_block))
                    sock.sendall(data)
                if event is Signal.NEED_DATA:
                    sock.settimeout(self._deadline.clip(self.config.timeouts.for_phase(conn.phase)))
                    data = sock.recv(65536)
                    conn.receive_data(data) if data else conn.receive_eof()
                elif event is Signal.NEED_BODY:
                    assert body is not None
                    piece = next(body, None)
                    conn.end_body() if piece is None else conn.send_body(piece)
                elif isinstance(event, StartTls):
                    assert isinstance(self.config.ssl_context, ssl.SSLContext)
                    sock.settimeout(self._deadline.clip(self.config.timeouts.starttls))
                    sock = self._sock = self.config.ssl_context.wrap_socket(
                        sock, server_hostname=self.config.server_hostname
                    )
                    conn.tls_established()
                else:
                    if isinstance(event, ConnectionClosed):
                        log.debug("connection closed: %s", event.reason)
                    return event
            except OSError as exc:  # timeouts and TLS errors are OSErrors too
                log.info("connection failed: %s", exc)
                self._failure = exc
                conn.abort(f"{type(exc).__name__}: {exc}")

    def _drop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._conn = None


def deliver(
    message: Message, sender: str, recipients: Sequence[str | RcptTo], **settings: Any
) -> TransactionResult:
    """Connect, deliver one message, QUIT. See Client for the settings."""
    with Client(**settings) as client:
        return client.deliver(message, sender, recipients)


class Server:
    """An LMTP server: one thread per connection. Use as a context manager to run it in
    a background thread, or call serve_forever() and, from elsewhere, shutdown()."""

    def __init__(
        self,
        handler: Handler,
        *,
        socket_path: str | None = None,
        host: str = "127.0.0.1",
        port: int = 2424,
        **settings: Any,
    ) -> None:
        """``settings`` are ServerConfig's: ssl_context, starttls_context, limits,
        hostname, idle_timeout, session_timeout, bare_line_endings."""
        self.handler = handler
        self.config = ServerConfig(**settings)
        if socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(socket_path)
        else:
            self._listener = socket.create_server((host, port))
        self._listener.listen(self.config.backlog)
        self.address: Any = self._listener.getsockname()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._background: threading.Thread | None = None

    def __enter__(self) -> Server:
        self._background = threading.Thread(target=self.serve_forever, daemon=True)
        self._background.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def serve_forever(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self._listener and not self._stopping.is_set():
                        with contextlib.suppress(OSError):
                            sock, peer = self._listener.accept()
                            thread = threading.Thread(
                                target=self._serve, args=(sock, peer), daemon=True
                            )
                            self._threads.add(thread)
                            thread.start()
        self._listener.close()
        self._wake_r.close()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, then wait (up to `timeout`) for open sessions to end."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake_w.send(b"x")
        if self._background is not None:
            self._background.join(timeout)
        else:  # serve_forever() never ran, or runs in a thread we do not own
            self._listener.close()
        self._wake_w.close()
        for thread in list(self._threads):
            thread.join(timeout)

    def _serve(self, sock: socket.socket, peer: Any) -> None:
        cfg = self.config
        end = time.monotonic() + cfg.session_timeout
        session: Session | None = None
        try:
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if cfg.ssl_context is not None:
                sock.settimeout(cfg.idle_timeout)
                sock = cfg.ssl_context.wrap_socket(sock, server_side=True)
            conn = cfg.connection()
            session = Session(conn, self.handler, tls=cfg.ssl_context is not None, peer=str(peer))
            while True:
                sock.settimeout(max(0.001, min(cfg.idle_timeout, end - time.monotonic())))
                event = conn.next_event()
                if cfg.flushes_on(event) and (data := conn.data_to_send()):
                    sock.sendall(data)
                if event is Signal.NEED_DATA:
                    data = sock.recv(65536)
                    conn.receive_data(data) if data else conn.receive_eof()
                elif isinstance(event, StartTls):
                    assert cfg.starttls_context is not None
                    sock = cfg.starttls_context.wrap_socket(sock, server_side=True)
                    conn.tls_established()
                    session.envelope.tls = True
                elif isinstance(event, ConnectionClosed):
                    return
                elif (call := session.handle(event)) is not None:
                    try:
                        result = call.function(*call.args)
                    except Exception as exc:
                        session.failed(call, exc)
                    else:
                        session.complete(call, result)
        except OSError as exc:
            log.info("%s: connection ended: %s", peer, exc)
        finally:
            if session is not None:
                session.close()  # drops a message spooled for a transaction cut short
            sock.close()
            self._threads.discard(threading.current_thread())


def serve(handler: Handler, **settings: Any) -> None:
    """Run an LMTP server in this thread until interrupted. See Server for settings."""
    server = Server(handler, **settings)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()
