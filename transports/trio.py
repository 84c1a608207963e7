"""trio driver: lmtp_core over trio streams, for the client and the server role.

How it works. The same pump as the other drivers: after every next_event() write
data_to_send(), then read with the current phase's deadline (trio.fail_after), feed
the body, or wrap the stream in trio.SSLStream when the core says StartTls. trio has no
read-ahead buffer of ours, so the core sees every byte and guards STARTTLS itself.
trio's own exceptions are mapped through TRIO_ERRORS in front of the shared table.
The server runs under a nursery: `server = await nursery.start(Server(...).serve)`,
and writes its replies once per read, not once per event.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import trio

from lmtp_core import (
    ConnectionClosed,
    RcptTo,
    Ready,
    Signal,
    StartTls,
    TransactionResult,
)

from ._async_client import AsyncClient
from ._config import ServerConfig, idle_connection_is_clean
from ._errors import ERROR_MAP, ConnectError, Timeout, map_error, session_failed
from ._message import Message
from ._session import Handler, Session

__all__ = ["Client", "Server", "deliver", "serve"]

log = logging.getLogger("transports")

TRIO_ERRORS: tuple[tuple[type[BaseException], type[ConnectError]], ...] = (
    (trio.TooSlowError, Timeout),
    (trio.BrokenResourceError, ConnectError),
    (trio.ClosedResourceError, ConnectError),
    *ERROR_MAP,
)
_FAILURES = (OSError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError)


def _fileno(stream: trio.abc.Stream) -> int:
    """The socket under a (possibly TLS-wrapped) trio stream."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1


class Client(AsyncClient):
    """One LMTP connection, opened on the first deliver() and reused after it."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._stream: trio.abc.Stream | None = None

    def _stale(self) -> bool:
        stream = self._stream
        return stream is not None and not idle_connection_is_clean(_fileno(stream))

    async def _connect(self) -> None:
        cfg = self.config
        self._conn = cfg.connection()
        self._failure = None
        stream: trio.abc.Stream | None = None
        try:
            with trio.fail_after(self._deadline.clip(cfg.timeouts.connect)):
                if cfg.socket_path is not None:
                    stream = await trio.open_unix_socket(cfg.socket_path)
                else:
                    stream = await trio.open_tcp_stream(cfg.host, cfg.port)
                if cfg.implicit_tls:
                    assert cfg.ssl_context is not None
                    stream = trio.SSLStream(
                        stream, cfg.ssl_context, server_hostname=cfg.server_hostname
                    )
                    await stream.do_handshake()
        except _FAILURES as exc:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            raise map_error(exc, TRIO_ERRORS, cfg.endpoint) from exc
        assert stream is not None
        self._stream = stream
        event = await self._pump(None)
        if isinstance(event, ConnectionClosed):
            await self._drop()
            raise session_failed(event, self._failure, TRIO_ERRORS)
        assert isinstance(event, Ready)

    async def _pump(self, body: Iterator[bytes] | AsyncIterator[bytes] | None) -> object:
        conn, stream = self._conn, self._stream
        assert conn is not None and stream is not None
        timeouts = self.config.timeouts
        while True:
            for side, line in conn.take_trace():
                log.debug("%s: %s", side, line)
            try:
                event = conn.next_event()
                data = conn.data_to_send()
                if data:
                    with trio.fail_after(self._deadline.clip(timeouts.data_block)):
                        await stream.send_all(data)
                if event is Signal.NEED_DATA:
                    with trio.fail_after(self._deadline.clip(timeouts.for_phase(conn.phase))):
                        data = bytes(await stream.receive_some(65536))
                    conn.receive_data(data) if data else conn.receive_eof()
                elif event is Signal.NEED_BODY:
                    if isinstance(body, Iterator):
                        piece = next(body, None)
                    else:
                        assert body is not None
                        piece = await anext(body, None)
                    conn.end_body() if piece is None else conn.send_body(piece)
                elif isinstance(event, StartTls):
                    assert self.config.ssl_context is not None
                    stream = self._stream = trio.SSLStream(
                        stream, self.config.ssl_context, server_hostname=self.config.server_hostname
                    )
                    with trio.fail_after(self._deadline.clip(timeouts.starttls)):
                        await stream.do_handshake()
                    conn.tls_established()
                else:
                    if isinstance(event, ConnectionClosed):
                        log.debug("connection closed: %s", event.reason)
                    return event
            except _FAILURES as exc:
                log.info("connection failed: %s", exc)
                self._failure = exc
                conn.abort(f"{type(exc).__name__}: {exc}")

    async def _drop(self) -> None:
        stream, self._stream, self._conn = self._stream, None, None
        if stream is not None:
            with contextlib.suppress(Exception):
                await trio.aclose_forcefully(stream)


async def deliver(
    message: Message, sender: str, recipients: Sequence[str | RcptTo], **settings: Any
) -> TransactionResult:
    """Connect, deliver one message, QUIT. See Client for the settings."""
    async with Client(**settings) as client:
        return await client.deliver(message, sender, recipients)


class Server:
    """An LMTP server on trio. `server = await nursery.start(Server(...).serve)` starts
    it (server.address is then set); server.close() stops it."""

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
        self._where = (socket_path, host, port)
        self._scope: trio.CancelScope | None = None
        self.address: Any = None

    async def _listeners(self) -> list[trio.abc.Listener[Any]]:
        socket_path, host, port = self._where
        listeners: list[trio.abc.Listener[Any]]
        if socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await sock.bind(socket_path)
            sock.listen(self.config.backlog)
            listeners = [trio.SocketListener(sock)]
        else:
            listeners = list(
                await trio.open_tcp_listeners(port, host=host, backlog=self.config.backlog)
            )
        self.address = listeners[0].socket.getsockname()  # type: ignore[attr-defined]
        if self.config.ssl_context is not None:
            listeners = [trio.SSLListener(ln, self.config.ssl_context) for ln in listeners]
        return listeners

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await self._listeners()
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._serve, listeners)
                task_status.started(self)

    def close(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def _serve(self, stream: trio.abc.Stream) -> None:
        cfg = self.config
        conn = cfg.connection()
        session = Session(conn, self.handler, tls=cfg.ssl_context is not None)
        try:
            with trio.fail_after(cfg.session_timeout):
                while True:
                    event = conn.next_event()
                    if cfg.flushes_on(event) and (data := conn.data_to_send()):
                        await stream.send_all(data)
                    if event is Signal.NEED_DATA:
                        with trio.fail_after(cfg.idle_timeout):
                            data = bytes(await stream.receive_some(65536))
                        conn.receive_data(data) if data else conn.receive_eof()
                    elif isinstance(event, StartTls):
                        assert cfg.starttls_context is not None
                        stream = trio.SSLStream(stream, cfg.starttls_context, server_side=True)
                        await stream.do_handshake()
                        conn.tls_established()
                        session.envelope.tls = True
                    elif isinstance(event, ConnectionClosed):
                        return
                    elif (call := session.handle(event)) is not None:
                        try:
                            result = call.function(*call.args)
                            if inspect.isawaitable(result):
                                result = await result
                        except Exception as exc:
                            session.failed(call, exc)
                        else:
                            session.complete(call, result)
        except _FAILURES as exc:
            log.info("connection ended: %s", exc)
        finally:
            session.close()
            await trio.aclose_forcefully(stream)


async def serve(
    handler: Handler, *, task_status: Any = trio.TASK_STATUS_IGNORED, **settings: Any
) -> None:
    """Run an LMTP server until cancelled. See Server for the settings."""
    await Server(handler, **settings).serve(task_status=task_status)
