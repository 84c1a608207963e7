"""asyncio driver: lmtp_core over asyncio streams, for the client and the server role.

How it works. This module is only the runtime's adapter: StreamPair moves bytes over an
asyncio StreamReader/StreamWriter with asyncio.timeout() around each wait, and
AsyncioBackend connects and makes locks; the delivery flow and the per-connection
server loop are the shared async ones (_async_client.py, _async_server.py). Writes wait
until the transport's buffer is empty (write buffer limit 0); after a failed write only
bytes still in that buffer are known not to have left (drain() also fails when the peer
went away after taking everything), so a failure with an empty buffer is reported as
"cannot tell". asyncio's StreamReader may have read
plaintext that arrived after the STARTTLS exchange but before the upgrade; it would
come back out of the reader after the handshake as if it had been encrypted, so the
client refuses it and the server discards it (STARTTLS injection).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Unpack

from lmtp_core import MailFrom, RcptTo, TransactionResult

from ._async_client import AsyncClient
from ._async_pool import AsyncPool
from ._async_server import serve_connection
from ._config import ClientConfig, ClientSettings, ServerConfig, ServerSettings, settings_error
from ._message import Message
from ._net import idle_clean, peer_name
from ._session import Handler

__all__ = ["Client", "Pool", "Server", "deliver", "serve"]

log = logging.getLogger("transports")


def _buffered(reader: asyncio.StreamReader) -> bytearray:
    """Bytes the reader holds but nobody has read yet (private, but stable since 3.4)."""
    buffer = getattr(reader, "_buffer", None)
    return buffer if isinstance(buffer, bytearray) else bytearray()


class StreamPair:
    """An asyncio reader and writer as one stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self.tls = writer.get_extra_info("sslcontext") is not None
        self._refused = False
        writer.transport.set_write_buffer_limits(high=0)

    async def send_all(self, data: bytes, timeout: float) -> None:
        writer = self._writer
        writer.write(data)
        transport = writer.transport
        # Closing already, with no turn of the loop since write(): its send() failed
        # (or the connection was gone before), so none of these bytes left.
        self._refused = transport.is_closing()
        if transport.get_write_buffer_size() or self._refused:
            async with asyncio.timeout(timeout):  # wait for the rest, or learn the error
                await writer.drain()

    def unsent(self) -> bool:
        # Bytes still in the buffer never left; but a transport that lost its
        # connection drops its buffer, so an empty one proves nothing either way.
        return self._refused or self._writer.transport.get_write_buffer_size() > 0

    async def receive_some(self, timeout: float) -> bytes:
        async with asyncio.timeout(timeout):
            return await self._reader.read(65536)

    async def start_tls(
        self,
        context: ssl.SSLContext,
        server_hostname: str | None,
        timeout: float,
        server_side: bool = False,
    ) -> StreamPair:
        if _buffered(self._reader):
            if not server_side:
                raise ConnectionError("bytes after the STARTTLS reply (response injection)")
            _buffered(self._reader).clear()  # plaintext pipelined before the handshake
        async with asyncio.timeout(timeout):
            await self._writer.start_tls(context, server_hostname=server_hostname)
        return StreamPair(self._reader, self._writer)

    def idle_clean(self) -> bool:
        reader, writer = self._reader, self._writer
        sock = writer.get_extra_info("socket")
        return not (
            reader.at_eof()
            or _buffered(reader)
            or writer.is_closing()
            or sock is None
            or not idle_clean(sock.fileno())
        )

    def peer(self, listening: str) -> str:
        return peer_name(self._writer.get_extra_info("socket"), listening)

    async def aclose(self, forceful: bool = False) -> None:
        if forceful:
            self._writer.transport.abort()
            return
        self._writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()


async def _tcp_socket(host: str, port: int) -> socket.socket:
    """A socket connected to the first address of `host` that answers. Address by
    address, as trio does, so that a refusal on every address reads like one refusal
    (asyncio's own loop gives 'Multiple exceptions: ...' without an errno)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    errors: list[OSError] = []
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    first = errors[0] if errors else OSError(f"no address for {host}")
    raise OSError(first.errno, first.strerror) from ExceptionGroup("every address", errors)


class AsyncioBackend:
    async def connect(self, config: ClientConfig, timeout: float) -> StreamPair:
        tls = config.ssl_context if config.implicit_tls else None
        # asyncio insists on a name with TLS; "" is its way to say "no name to check".
        name = (config.server_hostname or "") if tls else None
        async with asyncio.timeout(timeout):
            if config.socket_path is not None:
                reader, writer = await asyncio.open_unix_connection(
                    config.socket_path, ssl=tls, server_hostname=name
                )
            else:
                sock = await _tcp_socket(config.host, config.port)
                reader, writer = await asyncio.open_connection(
                    sock=sock, ssl=tls, server_hostname=name
                )
        return StreamPair(reader, writer)

    def lock(self) -> asyncio.Lock:
        return asyncio.Lock()

    def semaphore(self, value: int) -> asyncio.Semaphore:
        return asyncio.Semaphore(value)

    def mutex(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()  # one event loop: no two tasks touch it at once

    def every(
        self, interval: float, function: Callable[[], Awaitable[object]]
    ) -> asyncio.Task[None]:
        async def run() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await function()
                except Exception:  # a failing round must not end the loop
                    log.exception("background task failed")

        return asyncio.get_running_loop().create_task(run())

    async def acquire(self, lock: asyncio.Lock | asyncio.Semaphore, timeout: float | None) -> None:
        if timeout is None:  # no total deadline: no timer to arm
            await lock.acquire()
            return
        async with asyncio.timeout(timeout):
            await lock.acquire()

    async def run_handler(self, function: Any, args: tuple[Any, ...]) -> object:
        result = function(*args)
        return await result if inspect.isawaitable(result) else result


class Client(AsyncClient):
    """One LMTP connection, opened on the first deliver() and reused after it.
    Safe to share between tasks: concurrent deliver() calls take turns."""

    _backend = AsyncioBackend()


class Pool(AsyncPool):
    """Up to max_connections connections to one server, shared by concurrent
    deliveries; `async with Pool(...) as pool:` QUITs them on leaving. Task-safe."""

    _backend = Client._backend


async def deliver(
    message: Message,
    sender: str | MailFrom,
    recipients: Sequence[str | RcptTo],
    **settings: Unpack[ClientSettings],
) -> TransactionResult:
    """Connect, deliver one message, QUIT. See ClientSettings for the settings."""
    settings_error("transports.asyncio.deliver", settings)
    async with Client(**settings) as client:
        return await client.deliver(message, sender, recipients)


class Server:
    """An LMTP server on asyncio: `async with Server(...) as server:` starts it, and
    leaving the block (or close()) stops it."""

    def __init__(self, handler: Handler, **settings: Unpack[ServerSettings]) -> None:
        self.handler = handler
        self.config = ServerConfig.from_settings("transports.asyncio.Server", settings)
        self._server: asyncio.Server | None = None
        self.address: Any = None

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        cfg = self.config
        if cfg.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(cfg.socket_path)
            self._server = await asyncio.start_unix_server(
                self._serve, cfg.socket_path, ssl=cfg.ssl_context, backlog=cfg.backlog
            )
        else:
            self._server = await asyncio.start_server(
                self._serve, cfg.host, cfg.port, ssl=cfg.ssl_context, backlog=cfg.backlog
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
        await serve_connection(
            StreamPair(reader, writer), self.config, self.handler, Client._backend
        )


async def serve(handler: Handler, **settings: Unpack[ServerSettings]) -> None:
    """Run an LMTP server until cancelled. See ServerSettings for the settings."""
    settings_error("transports.asyncio.serve", settings, server=True)
    async with Server(handler, **settings) as server:
        await server.serve_forever()
