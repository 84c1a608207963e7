"""trio driver: lmtp_core over trio streams, for the client and the server role.

How it works. This module is only the runtime's adapter: TrioStream moves bytes over a
trio stream with trio.fail_after() around each wait and turns trio's exceptions into
OSError (TooSlowError into TimeoutError; a broken stream into the OSError or
ssl.SSLError that broke it), and TrioBackend connects and makes locks; the delivery
flow and the per-connection server loop are the shared async ones (_async_client.py,
_async_server.py). trio has no read-ahead buffer of ours, so the core sees every byte
and guards STARTTLS itself. The server runs under a nursery:
`server = await nursery.start(Server(...).serve)`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Unpack

import trio

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


_TRIO_ERRORS = (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError)


def _os_error(exc: BaseException) -> OSError:
    """What every stream adapter raises: OSError (TimeoutError for a deadline)."""
    if isinstance(exc, trio.TooSlowError):
        return TimeoutError("timed out")
    if isinstance(exc.__cause__, OSError):  # ssl.SSLError included
        return exc.__cause__
    return ConnectionResetError(str(exc) or "the connection broke")


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None


class TrioStream:
    """A trio stream (a socket, or TLS over one)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self.tls = isinstance(stream, trio.SSLStream)

    async def send_all(self, data: bytes, timeout: float) -> None:
        try:
            with trio.fail_after(timeout):
                await self._stream.send_all(data)
        except _TRIO_ERRORS as exc:
            raise _os_error(exc) from exc

    def unsent(self) -> bool:
        return True  # send_all() fails only before the kernel took its last byte

    async def receive_some(self, timeout: float) -> bytes:
        try:
            with trio.fail_after(timeout):
                return bytes(await self._stream.receive_some(65536))
        except _TRIO_ERRORS as exc:
            raise _os_error(exc) from exc

    async def start_tls(
        self,
        context: ssl.SSLContext,
        server_hostname: str | None,
        timeout: float,
        server_side: bool = False,
    ) -> TrioStream:
        stream = trio.SSLStream(
            self._stream, context, server_hostname=server_hostname, server_side=server_side
        )
        try:
            with trio.fail_after(timeout):
                await stream.do_handshake()
        except _TRIO_ERRORS as exc:
            raise _os_error(exc) from exc
        return TrioStream(stream)

    def idle_clean(self) -> bool:
        sock = _socket_of(self._stream)
        return sock is not None and idle_clean(sock.fileno())

    def peer(self, listening: str) -> str:
        return peer_name(_socket_of(self._stream), listening)

    async def aclose(self, forceful: bool = False) -> None:
        with contextlib.suppress(Exception):
            await trio.aclose_forcefully(self._stream)


class TrioBackend:
    async def connect(self, config: ClientConfig, timeout: float) -> TrioStream:
        stream: trio.abc.Stream | None = None
        try:
            with trio.fail_after(timeout):
                if config.socket_path is not None:
                    stream = await trio.open_unix_socket(config.socket_path)
                else:
                    stream = await trio.open_tcp_stream(config.host, config.port)
                if config.implicit_tls:
                    assert config.ssl_context is not None
                    stream = trio.SSLStream(
                        stream, config.ssl_context, server_hostname=config.server_hostname
                    )
                    await stream.do_handshake()
        except BaseException as exc:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            if isinstance(exc, _TRIO_ERRORS):
                raise _os_error(exc) from exc
            raise
        return TrioStream(stream)

    def lock(self) -> trio.Lock:
        return trio.Lock()

    def semaphore(self, value: int) -> trio.Semaphore:
        return trio.Semaphore(value)

    def mutex(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()  # one event loop: no two tasks touch it at once

    def every(self, interval: float, function: Callable[[], Awaitable[object]]) -> trio.CancelScope:
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                while True:
                    await trio.sleep(interval)
                    try:
                        await function()
                    except Exception:  # a failing round must not end the loop
                        log.exception("background task failed")

        # A system task needs no nursery from the caller; cancel() ends it.
        trio.lowlevel.spawn_system_task(run)
        return scope

    async def acquire(self, lock: trio.Lock | trio.Semaphore, timeout: float | None) -> None:
        try:
            with trio.fail_after(math.inf if timeout is None else timeout):
                await lock.acquire()
        except trio.TooSlowError:
            raise TimeoutError("timed out") from None

    async def run_handler(self, function: Any, args: tuple[Any, ...]) -> object:
        result = function(*args)
        return await result if inspect.isawaitable(result) else result


class Client(AsyncClient):
    """One LMTP connection, opened on the first deliver() and reused after it.
    Safe to share between tasks: concurrent deliver() calls take turns."""

    _backend = TrioBackend()


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
    settings_error("transports.trio.deliver", settings)
    async with Client(**settings) as client:
        return await client.deliver(message, sender, recipients)


class Server:
    """An LMTP server on trio. `server = await nursery.start(Server(...).serve)` starts
    it (server.address is then set); server.close() stops it."""

    def __init__(self, handler: Handler, **settings: Unpack[ServerSettings]) -> None:
        self.handler = handler
        self.config = ServerConfig.from_settings("transports.trio.Server", settings)
        self._scope: trio.CancelScope | None = None
        self.address: Any = None

    async def _listeners(self) -> list[trio.SocketListener]:
        cfg = self.config
        if cfg.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(cfg.socket_path)
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await sock.bind(cfg.socket_path)
            sock.listen(cfg.backlog)
            listeners = [trio.SocketListener(sock)]
        else:
            listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.host, backlog=cfg.backlog)
        self.address = listeners[0].socket.getsockname()
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

    async def _serve(self, stream: trio.SocketStream) -> None:
        await serve_connection(TrioStream(stream), self.config, self.handler, Client._backend)


async def serve(
    handler: Handler,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    **settings: Unpack[ServerSettings],
) -> None:
    """Run an LMTP server until cancelled. See ServerSettings for the settings."""
    settings_error("transports.trio.serve", settings, server=True)
    await Server(handler, **settings).serve(task_status=task_status)
