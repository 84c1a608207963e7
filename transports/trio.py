"""trio driver: lmtp_core over trio streams, for the client and the server role.

How it works. This module is only the runtime's adapter. A client's plain connection is
a SocketStream, tried first (_plain.py: each send and receive at once, through trio
only when it would block, with trio.lowlevel.wait_readable/wait_writable under
trio.fail_after(); a checkpoint every FAST_TURNS calls in a row), and deliver() always
passes one checkpoint (taking its turn on the connection or a pool slot), so
cancellation and fairness hold as trio expects. TLS connections and every server
session use TrioStream, which moves bytes over a trio stream with trio.fail_after()
around each wait. Both turn trio's exceptions into OSError (TooSlowError into
TimeoutError; a broken stream into the OSError or ssl.SSLError that broke it), and
TrioBackend connects and makes locks; the delivery
flow and the per-connection server loop are the shared async ones (_async_client.py,
_async_server.py). trio has no read-ahead buffer of ours, so the core sees every byte
and guards STARTTLS itself. The server runs under a nursery:
`server = await nursery.start(Server(...).serve)`; one task accepts on each listening
socket (_listen.py makes them and sets the rules): it waits for readiness, then
accept()s once, so that processes sharing the socket share its connections, and the
sessions run synchronous handler methods in trio.to_thread under a CapacityLimiter,
their idle reads in a CancelScope that a shutdown cancels (_Sessions). serve() stops
the server on SIGTERM and SIGINT (_serve.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import select
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Unpack

import trio

from lmtp_core import MailFrom, RcptTo, TransactionResult

from . import _serve
from ._async_client import AsyncClient
from ._async_pool import AsyncPool
from ._async_server import serve_connection
from ._config import ClientConfig, ClientSettings, ServerConfig, ServerSettings, settings_error
from ._listen import Gate, Listening
from ._message import Message
from ._net import Poller, peer_name
from ._plain import PlainStream, unix_socket
from ._session import Call, Handler, awaitable

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
        self._readable: Poller | None = None  # made on first use

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
        if self._readable is None:
            sock = _socket_of(self._stream)
            if sock is None:
                return False
            self._readable = Poller(sock.fileno(), select.POLLIN | select.POLLPRI)
        return not self._readable.ready(0)

    def peer(self, listening: str) -> str:
        return peer_name(_socket_of(self._stream), listening)

    async def aclose(self, forceful: bool = False) -> None:
        with contextlib.suppress(Exception):
            await trio.aclose_forcefully(self._stream)


class SocketStream(PlainStream):
    """A client's plain (not TLS) connection, tried first (_plain.py); it goes through
    trio with wait_readable/wait_writable under trio.fail_after(). Against
    trio.SocketStream it saves 15 % of the client's CPU per pooled delivery and 23 %
    sequentially (benchmarks/bench_primitives.py, RESULTS.md 2026-12-08)."""

    async def yield_now(self) -> None:
        await trio.lowlevel.checkpoint()

    async def readable(self, timeout: float) -> None:
        await self._ready(trio.lowlevel.wait_readable, timeout)

    async def writable(self, timeout: float) -> None:
        await self._ready(trio.lowlevel.wait_writable, timeout)

    async def _ready(self, wait: Callable[[Any], Awaitable[None]], timeout: float) -> None:
        try:
            with trio.fail_after(timeout):
                await wait(self._sock)
        except trio.TooSlowError as exc:
            raise _os_error(exc) from exc

    async def start_tls(
        self,
        context: ssl.SSLContext,
        server_hostname: str | None,
        timeout: float,
        server_side: bool = False,
    ) -> TrioStream:
        plain = TrioStream(trio.SocketStream(trio.socket.from_stdlib_socket(self._sock)))
        return await plain.start_tls(context, server_hostname, timeout, server_side)


async def _tcp_socket(host: str, port: int) -> socket.socket:
    """trio's connect (address by address, happy eyeballs), as a stdlib socket."""
    tsock = (await trio.open_tcp_stream(host, port)).socket  # TCP_NODELAY is set
    return socket.socket(tsock.family, tsock.type, tsock.proto, fileno=tsock.detach())


class TrioBackend:
    async def connect(self, config: ClientConfig, timeout: float) -> SocketStream | TrioStream:
        sock: socket.socket | None = None
        stream: trio.abc.Stream | None = None
        try:
            with trio.fail_after(timeout):
                if config.socket_path is not None:
                    sock = await unix_socket(config.socket_path, trio.sleep)
                else:
                    sock = await _tcp_socket(config.host, config.port)
                if not config.implicit_tls:
                    return SocketStream(sock)
                assert config.ssl_context is not None
                stream = trio.SSLStream(
                    trio.SocketStream(trio.socket.from_stdlib_socket(sock)),
                    config.ssl_context,
                    server_hostname=config.server_hostname,
                )
                await stream.do_handshake()
        except BaseException as exc:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            elif sock is not None:
                sock.close()
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

    def every(self, interval: float, function: Callable[[], Awaitable[object]]) -> None:
        # No background task: trio runs none outside the caller's nursery (a system task
        # would defer Ctrl-C and miss the caller's context). The Pool reaps at the start
        # of a delivery instead.
        return None

    async def acquire(self, lock: trio.Lock | trio.Semaphore, timeout: float | None) -> None:
        # No cancel scope to make for a free slot (trio hands a released one to the
        # first waiter, so taking it here never jumps the queue) or without a limit.
        try:
            lock.acquire_nowait()
            return
        except trio.WouldBlock:
            pass
        if timeout is None:
            await lock.acquire()
            return
        try:
            with trio.fail_after(timeout):
                await lock.acquire()
        except trio.TooSlowError:
            raise TimeoutError("timed out") from None

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


class Client(AsyncClient):
    """One LMTP connection, opened on the first deliver() and reused after it.
    Safe to share between tasks: concurrent deliver() calls take turns."""

    default_backend = TrioBackend()


class Pool(AsyncPool):
    """Up to max_connections connections to one server, shared by concurrent
    deliveries; `async with Pool(...) as pool:` QUITs them on leaving. Task-safe."""

    default_backend = Client.default_backend


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


class _Sessions:
    """What the trio Server lends its sessions (_async_server.AsyncSessions): a
    CapacityLimiter of handler threads, and word of a shutdown that cancels the reads
    of idle sessions (a cancelled receive_some() loses no data)."""

    def __init__(self, threads: int) -> None:
        self.stopping = False
        self._limiter = trio.CapacityLimiter(threads)
        self._idle: set[trio.CancelScope] = set()

    async def run_handler(self, call: Call) -> object:
        if call.inline:
            result = call.function(*call.args)
        else:
            # Cut off at the end of the grace period, a handler thread is abandoned:
            # it finishes on its own, and its answer is never sent.
            result = await trio.to_thread.run_sync(
                functools.partial(call.function, *call.args),
                limiter=self._limiter,
                abandon_on_cancel=True,
            )
        return await result if awaitable(result) else result

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    async def receive_idle(self, stream: TrioStream, timeout: float) -> bytes | None:
        with trio.CancelScope() as scope:
            self._idle.add(scope)
            try:
                return await stream.receive_some(timeout)
            finally:
                self._idle.discard(scope)
        return None  # cancelled by stop()

    def stop(self) -> None:
        self.stopping = True
        for scope in self._idle:
            scope.cancel()


class Server:
    """An LMTP server on trio. `server = await nursery.start(Server(...).serve)` starts
    it (server.address is then set); server.close() stops it, and serve() returns
    once the sessions have ended.

    One task accepts on each listening socket, one connection per wake-up (see
    _listen.py: a worker process leaves one to a less busy worker for a moment),
    admits at most max_connections sessions (past that 421 4.3.2) and pauses after a
    failure (Gate). Stopping closes
    the listening sockets and removes the socket file, answers idle sessions 421 at
    once, gives transactions in flight `grace` seconds, then cancels what is left."""

    def __init__(self, handler: Handler, **settings: Unpack[ServerSettings]) -> None:
        self.handler = handler
        self.config = ServerConfig.from_settings("transports.trio.Server", settings)
        self.address: Any = None
        self._gate = Gate(self.config, log)
        self._sessions: _Sessions | None = None
        self._stop: trio.Event | None = None
        self._stop_early = False
        self._grace = self.config.grace
        self._active = 0

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        listening = Listening(cfg)
        self.address = listening.address
        self._sessions = sessions = _Sessions(cfg.handler_threads)
        self._stop = trio.Event()
        if self._stop_early:
            self._stop.set()
        try:
            async with trio.open_nursery() as running:
                async with trio.open_nursery() as accepting:
                    for sock in listening.sockets:
                        accepting.start_soon(self._accept, sock, running)
                    task_status.started(self)
                    await self._stop.wait()
                    accepting.cancel_scope.cancel()
                listening.close()
                sessions.stop()
                running.cancel_scope.deadline = trio.current_time() + self._grace
        finally:
            listening.close()

    def close(self, grace: float | None = None) -> None:
        """Begin to stop (see the class), giving transactions in flight `grace`
        seconds (the setting by default); call from the server's trio thread."""
        if grace is not None:
            self._grace = grace
        if self._stop is None:
            self._stop_early = True
        else:
            self._stop.set()

    async def _accept(self, listener: socket.socket, running: trio.Nursery) -> None:
        # One connection per wake-up: wait for readiness, then accept() once (the
        # listening socket is non-blocking; another process may have taken it).
        while True:
            await trio.lowlevel.wait_readable(listener)
            if wait := self._gate.defer():  # a worker process less busy may take it
                await trio.sleep(wait)
                continue
            try:
                sock, _ = listener.accept()
            except OSError as exc:  # BlockingIOError: taken; no pause
                if pause := self._gate.failed(exc):
                    await trio.sleep(pause)
                continue
            self._gate.accepted()
            if self._active >= self._gate.limit:
                self._gate.refuse(sock)
                continue
            self._active += 1
            self._gate.load(self._active)
            running.start_soon(self._connection, sock)

    async def _connection(self, sock: socket.socket) -> None:
        assert self._sessions is not None
        try:
            stream = TrioStream(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
            await serve_connection(stream, self.config, self.handler, self._sessions)
        except Exception:  # a bug: it must not take the other sessions down
            log.exception("the session failed")
        finally:
            self._active -= 1
            self._gate.load(self._active)


async def serve(
    handler: Handler,
    *,
    handle_signals: bool = True,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    **settings: Unpack[ServerSettings],
) -> None:
    """Run an LMTP server until cancelled (`await nursery.start(serve, handler)`
    returns the Server once it listens).

    Until SIGTERM or SIGINT too, when it runs in the main thread and handle_signals
    is true (the default): the server then stops gracefully (no new connections, the
    socket file removed, 421 to idle sessions, `grace` seconds for transactions in
    flight) and serve() returns. Pass handle_signals=False when the application
    takes those signals itself. See ServerSettings for the settings."""
    settings_error("transports.trio.serve", settings, server=True)
    await _serve.serve_trio(Server(handler, **settings), handle_signals, task_status)
