"""asyncio driver: lmtp_core over asyncio streams, for the client and the server role.

How it works. The same pump as the blocking driver: after every next_event() write
data_to_send(), then read (with the current phase's deadline), feed the body, or
upgrade to TLS with StreamWriter.start_tls(). asyncio's StreamReader may have read
plaintext that arrived after the STARTTLS exchange but before the upgrade; it would
come back out of the reader after the handshake as if it had been encrypted, so the
client aborts and the server discards it (STARTTLS injection). The server writes its
replies once per read, not once per event, and its handlers may be async.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

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
from ._errors import map_error, session_failed
from ._message import Message
from ._session import Handler, Session

__all__ = ["Client", "Server", "deliver", "serve"]

log = logging.getLogger("transports")


def _buffered(reader: asyncio.StreamReader) -> bytearray:
    """Bytes the reader holds but nobody has read yet (private, but stable since 3.4)."""
    buffer = getattr(reader, "_buffer", None)
    return buffer if isinstance(buffer, bytearray) else bytearray()


class Client(AsyncClient):
    """One LMTP connection, opened on the first deliver() and reused after it."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def _stale(self) -> bool:
        writer, reader = self._writer, self._reader
        if writer is None:
            return False
        sock = writer.get_extra_info("socket")
        return (
            reader is None
            or reader.at_eof()
            or bool(_buffered(reader))
            or writer.is_closing()
            or sock is None
            or not idle_connection_is_clean(sock.fileno())
        )

    async def _connect(self) -> None:
        cfg = self.config
        self._conn = cfg.connection()
        self._failure = None
        tls = cfg.ssl_context if cfg.implicit_tls else None
        # asyncio insists on a name with TLS; "" is its way to say "no name to check".
        name = (cfg.server_hostname or "") if tls else None
        try:
            async with asyncio.timeout(self._deadline.clip(cfg.timeouts.connect)):
                if cfg.socket_path is not None:
                    self._reader, self._writer = await asyncio.open_unix_connection(
                        cfg.socket_path, ssl=tls, server_hostname=name
                    )
                else:
                    self._reader, self._writer = await asyncio.open_connection(
                        cfg.host, cfg.port, ssl=tls, server_hostname=name
                    )
        except OSError as exc:
            raise map_error(exc, where=cfg.endpoint) from exc
        event = await self._pump(None)
        if isinstance(event, ConnectionClosed):
            await self._drop()
            raise session_failed(event, self._failure)
        assert isinstance(event, Ready)

    async def _pump(self, body: Iterator[bytes] | AsyncIterator[bytes] | None) -> object:
        conn, reader, writer = self._conn, self._reader, self._writer
        assert conn is not None and reader is not None and writer is not None
        timeouts = self.config.timeouts
        while True:
            for side, line in conn.take_trace():
                log.debug("%s: %s", side, line)
            try:
                event = conn.next_event()
                data = conn.data_to_send()
                if data:
                    writer.write(data)
                    async with asyncio.timeout(self._deadline.clip(timeouts.data_block)):
                        await writer.drain()
                if event is Signal.NEED_DATA:
                    async with asyncio.timeout(self._deadline.clip(timeouts.for_phase(conn.phase))):
                        data = await reader.read(65536)
                    conn.receive_data(data) if data else conn.receive_eof()
                elif event is Signal.NEED_BODY:
                    if isinstance(body, Iterator):
                        piece = next(body, None)
                    else:
                        assert body is not None
                        piece = await anext(body, None)
                    conn.end_body() if piece is None else conn.send_body(piece)
                elif isinstance(event, StartTls):
                    if _buffered(reader):
                        raise ConnectionError("bytes after the STARTTLS reply (response injection)")
                    assert self.config.ssl_context is not None
                    async with asyncio.timeout(self._deadline.clip(timeouts.starttls)):
                        await writer.start_tls(
                            self.config.ssl_context, server_hostname=self.config.server_hostname
                        )
                    conn.tls_established()
                else:
                    if isinstance(event, ConnectionClosed):
                        log.debug("connection closed: %s", event.reason)
                    return event
            except OSError as exc:  # TimeoutError, ssl.SSLError and resets are OSErrors
                log.info("connection failed: %s", exc)
                self._failure = exc
                conn.abort(f"{type(exc).__name__}: {exc}")

    async def _drop(self) -> None:
        writer, self._writer, self._reader, self._conn = self._writer, None, None, None
        if writer is None:
            return
        if self._failure is not None:  # do not wait to flush into a dead or stuck peer
            writer.transport.abort()
            return
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()


async def deliver(
    message: Message, sender: str, recipients: Sequence[str | RcptTo], **settings: Any
) -> TransactionResult:
    """Connect, deliver one message, QUIT. See Client for the settings."""
    async with Client(**settings) as client:
        return await client.deliver(message, sender, recipients)


class Server:
    """An LMTP server on asyncio: `async with Server(...) as server:` starts it, and
    leaving the block (or close()) stops it."""

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
        self._server: asyncio.base_events.Server | None = None
        self.address: Any = None

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        socket_path, host, port = self._where
        tls = self.config.ssl_context
        if socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)
            self._server = await asyncio.start_unix_server(
                self._serve, socket_path, ssl=tls, backlog=self.config.backlog
            )
        else:
            self._server = await asyncio.start_server(
                self._serve, host, port, ssl=tls, backlog=self.config.backlog
            )
        self.address = self._server.sockets[0].getsockname()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cfg = self.config
        peer = str(writer.get_extra_info("peername") or "unix")
        conn = cfg.connection()
        session = Session(conn, self.handler, tls=cfg.ssl_context is not None, peer=peer)
        try:
            async with asyncio.timeout(cfg.session_timeout):
                while True:
                    event = conn.next_event()
                    if cfg.flushes_on(event) and (data := conn.data_to_send()):
                        writer.write(data)
                        await writer.drain()
                    if event is Signal.NEED_DATA:
                        async with asyncio.timeout(cfg.idle_timeout):
                            data = await reader.read(65536)
                        conn.receive_data(data) if data else conn.receive_eof()
                    elif isinstance(event, StartTls):
                        _buffered(reader).clear()  # plaintext sent before the handshake
                        assert cfg.starttls_context is not None
                        await writer.start_tls(cfg.starttls_context)
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
        except OSError as exc:  # TimeoutError included
            log.info("%s: connection ended: %s", peer, exc)
        finally:
            session.close()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def serve(handler: Handler, **settings: Any) -> None:
    """Run an LMTP server until cancelled. See Server for the settings."""
    async with Server(handler, **settings) as server:
        await server.serve_forever()
