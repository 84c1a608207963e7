"""asyncio driver: lmtp_core over asyncio streams, for the client and the server role.

How it works. This module is only the runtime's adapter: a client's plain connection is
a SocketStream, tried first (_plain.py: each send and receive at once, through the event
loop only when it would block, a yield every FAST_TURNS calls in a row); when it must
wait it keeps a reader registered that reads for itself (see the class). STARTTLS and
implicit TLS (and every server session) use StreamPair, which moves bytes over an
asyncio StreamReader/StreamWriter (over asyncio's own StreamReaderProtocol, which
counts what it hands the reader) with asyncio.timeout() around each wait.
AsyncioBackend connects and makes locks (_slots.Slots: a timed wait without a timer of
its own); the delivery flow and the per-connection server loop are the shared async ones
(_async_client.py, _async_server.py). StreamPair's writes wait until the transport's
buffer is empty (write buffer limit 0); after a failed write only bytes still in that
buffer are known not to have left (drain() also fails when the peer went away after
taking everything), so a failure with an empty buffer is reported as "cannot tell".
asyncio's StreamReader may have read plaintext that arrived after the STARTTLS exchange
but before the upgrade; it would come back out of the reader after the handshake as if
it had been encrypted, so the TLS layer gets a new reader: the client refuses bytes left
unread in the old one (fed minus taken) and the server drops them with it (STARTTLS
injection). No private attribute of asyncio is read.
The Server accepts in a reader callback on its listening sockets (_listen.py makes
them and sets the rules; one connection per wake-up, and a worker busier
than another leaves a connection to it, so that processes sharing a socket share its
connections), runs each session as a task, and lends the sessions a pool of daemon
threads for synchronous handler methods (a call abandoned after the grace period must
not keep the process alive) and a way to interrupt idle reads at shutdown (_Sessions).
serve() stops it on SIGTERM and SIGINT (_serve.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import select
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, Future
from typing import Any, Unpack

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
from ._slots import Slots

__all__ = ["Client", "Pool", "Server", "deliver", "serve"]

log = logging.getLogger("transports")


class _Counting(asyncio.StreamReaderProtocol):
    """asyncio's own stream protocol, counting the bytes it hands its reader: with
    what StreamPair took out, that says how many wait unread in the reader, without
    a look at the reader's private buffer."""

    fed = 0

    def data_received(self, data: bytes) -> None:
        self.fed += len(data)
        super().data_received(data)


async def _pair(
    connect: Callable[[Callable[[], _Counting]], Awaitable[tuple[asyncio.BaseTransport, Any]]],
) -> StreamPair:
    """A StreamPair over the transport that `connect(protocol_factory)` makes."""
    reader = asyncio.StreamReader(limit=_READ_LIMIT)
    protocol = _Counting(reader)
    transport, _ = await connect(lambda: protocol)
    assert isinstance(transport, asyncio.WriteTransport)
    writer = asyncio.StreamWriter(transport, protocol, reader, asyncio.get_running_loop())
    return StreamPair(reader, writer, protocol)


class StreamPair:
    """An asyncio reader and writer as one stream (made by _pair())."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: _Counting
    ) -> None:
        self._reader, self._writer, self._protocol = reader, writer, protocol
        self.tls = writer.get_extra_info("sslcontext") is not None
        self._refused = False
        self._taken = 0  # bytes read out of the reader
        self._readable: Poller | None = None  # made on first use
        writer.transport.set_write_buffer_limits(high=0)

    def _unread(self) -> bool:
        return self._protocol.fed > self._taken

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
            data = await self._reader.read(65536)
        self._taken += len(data)
        return data

    async def start_tls(
        self,
        context: ssl.SSLContext,
        server_hostname: str | None,
        timeout: float,
        server_side: bool = False,
    ) -> StreamPair:
        # The TLS layer gets a reader of its own. Plaintext the old one holds arrived
        # after the STARTTLS exchange: a client refuses it, a server drops it with the
        # old reader (it was pipelined before the handshake); never is it read out as
        # if it had come encrypted (STARTTLS injection).
        if self._unread() and not server_side:
            raise ConnectionError("bytes after the STARTTLS reply (response injection)")
        loop, transport = asyncio.get_running_loop(), self._writer.transport

        async def upgrade(factory: Callable[[], _Counting]) -> tuple[asyncio.BaseTransport, Any]:
            protocol = factory()
            tls = await loop.start_tls(
                transport,
                protocol,
                context,
                server_side=server_side,
                server_hostname=None if server_side else server_hostname or "",
            )
            assert tls is not None
            return tls, protocol

        async with asyncio.timeout(timeout):
            return await _pair(upgrade)

    def idle_clean(self) -> bool:
        reader, writer = self._reader, self._writer
        if reader.at_eof() or self._unread() or writer.is_closing():
            return False
        if self._readable is None:
            sock = writer.get_extra_info("socket")
            if sock is None:
                return False
            self._readable = Poller(sock.fileno(), select.POLLIN | select.POLLPRI)
        return not self._readable.ready(0)

    def peer(self, listening: str) -> str:
        return peer_name(self._writer.get_extra_info("socket"), listening)

    async def aclose(self, forceful: bool = False) -> None:
        if forceful:
            self._writer.transport.abort()
            return
        self._writer.close()
        try:
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()
        except Exception:  # the peer did not finish TLS's closing exchange in time
            self._writer.transport.abort()
        except BaseException:  # cancelled: nothing is left closing in the background
            self._writer.transport.abort()
            raise


class SocketStream(PlainStream):
    """A client's plain (not TLS) connection, tried first (_plain.py). Measured against
    asyncio's own streams (StreamPair over a plain socket) it saves nothing (within
    2.3 % of the client's CPU either way; benchmarks/bench_primitives.py, RESULTS.md
    2026-12-08), under the 5 % a hand-made piece must pay: it is to be replaced by
    StreamPair. Its reader does pay against loop.sock_recv() (20 to 28 %). When it must wait
    for bytes it registers a reader with the loop that reads for itself, as asyncio's
    own transports do, and keeps it: registering and removing a reader for every wait
    cost about a fifth of the client's CPU per delivery. What the reader read waits in
    _received until read_ahead() gives it out. The reader stops (is removed) when bytes
    come while nobody waits (a level-triggered reader would fire every turn, and the
    bytes are kept for idle_clean() to see), at end of file or an error, and before
    the socket is closed or handed to TLS. Writes that must wait use a writer per wait
    (rare: the kernel's buffer is larger than a transaction)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self._loop = asyncio.get_running_loop()
        self._fd = sock.fileno()
        self._received: list[bytes | OSError] = []  # read by the reader, not yet taken
        self._waiter: asyncio.Future[None] | None = None
        self._watching = False

    async def yield_now(self) -> None:
        await asyncio.sleep(0)

    def read_ahead(self) -> bytes | None:
        if not self._received:
            return None
        received = self._received.pop(0)
        if isinstance(received, OSError):
            raise received
        return received

    async def receive_waiting(self, timeout: float) -> bytes:
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        if not self._watching:
            loop.add_reader(self._fd, self._on_readable)
            self._watching = True
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter  # woken only once the reader added to _received
        finally:
            timer.cancel()
            self._waiter = None
        received = self.read_ahead()
        assert received is not None
        return received

    def _on_readable(self) -> None:
        try:
            data: bytes | OSError = self._sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return  # woken for bytes already taken by a receive tried at once
        except OSError as exc:
            data = exc
        self._received.append(data)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
            if isinstance(data, bytes) and data:
                return  # keep reading: the next wait needs no new reader
        self._stop_watching()

    def _stop_watching(self) -> None:
        if self._watching:
            self._watching = False
            self._loop.remove_reader(self._fd)

    async def writable(self, timeout: float) -> None:
        # Cheaper than sock_sendall() under asyncio.timeout(), which makes a Timeout
        # object each time.
        fd, loop = self._fd, self._loop
        waiter = loop.create_future()
        loop.add_writer(fd, _wake, waiter)
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            loop.remove_writer(fd)

    def idle_clean(self) -> bool:
        return not self._received and super().idle_clean()

    async def aclose(self, forceful: bool = False) -> None:
        self._stop_watching()
        await super().aclose(forceful)

    async def start_tls(
        self,
        context: ssl.SSLContext,
        server_hostname: str | None,
        timeout: float,
        server_side: bool = False,
    ) -> StreamPair:
        # The core has every byte received so far (and refuses any after the STARTTLS
        # reply in the same read); bytes the reader took in later are refused here. So
        # the asyncio streams made here start empty.
        self._stop_watching()
        if self._received:
            raise ConnectionError(
                "bytes after the 220 reply to STARTTLS (STARTTLS response injection)"
            )
        async with asyncio.timeout(timeout):
            return await _tls_pair(self._sock, context, server_hostname)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("timed out"))


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


async def _tls_pair(
    sock: socket.socket, context: ssl.SSLContext, server_hostname: str | None
) -> StreamPair:
    """A client's TLS connection over `sock`, handshake done. asyncio closes the
    transport when the handshake fails or is cancelled; the socket is closed here too
    in case the transport was never made."""
    loop = asyncio.get_running_loop()
    try:
        # asyncio insists on a name with TLS; "" is its way to say "no name to check".
        return await _pair(
            lambda factory: loop.create_connection(
                factory, sock=sock, ssl=context, server_hostname=server_hostname or ""
            )
        )
    except BaseException:
        sock.close()
        raise


class AsyncioBackend:
    async def connect(self, config: ClientConfig, timeout: float) -> SocketStream | StreamPair:
        tls = config.ssl_context if config.implicit_tls else None
        async with asyncio.timeout(timeout):
            if config.socket_path is not None:
                sock = await unix_socket(config.socket_path, asyncio.sleep)
            else:
                sock = await _tcp_socket(config.host, config.port)
            if tls is None:
                return SocketStream(sock)
            return await _tls_pair(sock, tls, config.server_hostname)

    def lock(self) -> Slots:
        return Slots(1)

    def semaphore(self, value: int) -> Slots:
        return Slots(value)

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

    async def acquire(self, lock: Slots, timeout: float | None) -> None:
        await lock.acquire(timeout)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Client(AsyncClient):
    """One LMTP connection, opened on the first deliver() and reused after it.
    Safe to share between tasks: concurrent deliver() calls take turns."""

    default_backend = AsyncioBackend()


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
    settings_error("transports.asyncio.deliver", settings)
    async with Client(**settings) as client:
        return await client.deliver(message, sender, recipients)


class _HandlerThreads(Executor):
    """Up to `limit` daemon threads for synchronous handler calls, started as needed
    and kept. Not ThreadPoolExecutor: it joins its threads at interpreter exit, so a
    handler call still running after the grace period (abandoned, as trio abandons
    one) would keep a stopped server's process from exiting."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        # One token per thread that finished a call and waits for the next: submit()
        # takes one or starts a thread (as ThreadPoolExecutor counts its idle ones).
        self._idle = threading.Semaphore(0)
        self._started = 0

    def submit(  # type: ignore[override]  # positional only, as the callers use it
        self, fn: Callable[..., Any], /, *args: Any
    ) -> Future[Any]:
        future: Future[Any] = Future()
        self._calls.put((functools.partial(fn, *args), future))
        if not self._idle.acquire(blocking=False) and self._started < self._limit:
            threading.Thread(target=self._work, name="lmtp-handler", daemon=True).start()
            self._started += 1  # only the event loop's thread submits
        return future

    def _work(self) -> None:
        while (item := self._calls.get()) is not None:
            call, future = item
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as exc:  # the session sees it, as from any executor
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Cancel the calls not begun and end the threads once they are free (the
        calls still running are left to finish on their own; never waits)."""
        with contextlib.suppress(queue.Empty):
            while (item := self._calls.get_nowait()) is not None:
                item[1].cancel()
        for _ in range(self._started):
            self._calls.put(None)


class _Sessions:
    """What the asyncio Server lends its sessions (_async_server.AsyncSessions): a
    pool of handler threads (_HandlerThreads), and word of a shutdown that cancels the
    reads of idle sessions (a cancelled StreamReader.read() loses no data)."""

    def __init__(self, threads: int) -> None:
        self.stopping = False
        self._threads = threads
        self._executor: _HandlerThreads | None = None
        self._idle: set[asyncio.Task[Any]] = set()
        self._interrupted: set[asyncio.Task[Any]] = set()

    async def run_handler(self, call: Call) -> object:
        if call.inline:
            result = call.function(*call.args)
        else:
            if self._executor is None:
                self._executor = _HandlerThreads(self._threads)
            result = await asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(call.function, *call.args)
            )
        return await result if awaitable(result) else result

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def receive_idle(self, stream: StreamPair, timeout: float) -> bytes | None:
        task = asyncio.current_task()
        assert task is not None
        self._idle.add(task)
        try:
            return await stream.receive_some(timeout)
        except asyncio.CancelledError:
            if task not in self._interrupted:
                raise
            task.uncancel()  # our own cancellation: the server is stopping
            return None
        finally:
            self._idle.discard(task)
            self._interrupted.discard(task)

    def stop(self) -> None:
        self.stopping = True
        for task in self._idle:
            self._interrupted.add(task)
            task.cancel()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


class Server:
    """An LMTP server on asyncio: `async with Server(...) as server:` starts it, and
    leaving the block (or close()) stops it.

    It accepts in a reader callback on each listening socket (one per
    wake-up, so that processes sharing the socket share the connections),
    admits at most max_connections sessions (one task each; past that 421 4.3.2) and
    pauses accepting after a failure (Gate). close() stops accepting and removes the
    socket, answers idle sessions 421 at once, gives transactions in flight `grace`
    seconds, then cancels what is left."""

    def __init__(self, handler: Handler, **settings: Unpack[ServerSettings]) -> None:
        self.handler = handler
        self.config = ServerConfig.from_settings("transports.asyncio.Server", settings)
        self.address: Any = None
        self._gate = Gate(self.config, log)
        self._sessions = _Sessions(self.config.handler_threads)
        self._listening: Listening | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused: dict[int, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False
        self._closed = asyncio.Event()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._listening = Listening(self.config)
        self.address = self._listening.address
        for sock in self._listening.sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)

    async def serve_forever(self) -> None:
        """Wait until the server has been closed."""
        await self._closed.wait()

    async def close(self, grace: float | None = None) -> None:
        """Stop accepting and remove the socket file; idle sessions get 421 at once,
        transactions in flight `grace` seconds (the setting by default) to finish;
        the sessions still open then are cut off."""
        if self._stopped:
            await self._closed.wait()
            return
        self._stopped = True
        try:
            if self._listening is not None:
                assert self._loop is not None
                for sock in self._listening.sockets:
                    self._loop.remove_reader(sock.fileno())
                for handle in self._paused.values():
                    handle.cancel()
                self._listening.close()
            self._sessions.stop()
            if self._tasks:
                limit = self.config.grace if grace is None else grace
                await asyncio.wait(self._tasks, timeout=limit)
        finally:
            left = set(self._tasks)
            for task in left:
                task.cancel()
            if left:
                await asyncio.wait(left, timeout=5.0)  # only closing is left to do
            self._sessions.close()
            self._closed.set()

    def _accept(self, listener: socket.socket) -> None:
        # One connection per wake-up: other processes may share the socket (_listen.py).
        if wait := self._gate.defer():  # a worker less busy may take it
            self._pause(listener, wait)
            return
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            if pause := self._gate.failed(exc):
                self._pause(listener, pause)
            return
        self._gate.accepted()
        if len(self._tasks) >= self._gate.limit:
            self._gate.refuse(sock)
            return
        sock.setblocking(False)
        assert self._loop is not None
        task = self._loop.create_task(self._connection(sock))
        self._tasks.add(task)
        self._gate.load(len(self._tasks))
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._gate.load(len(self._tasks))

    def _pause(self, listener: socket.socket, seconds: float) -> None:
        assert self._loop is not None
        fd = listener.fileno()
        self._loop.remove_reader(fd)

        def resume() -> None:
            del self._paused[fd]
            if not self._stopped:
                assert self._loop is not None
                self._loop.add_reader(fd, self._accept, listener)

        self._paused[fd] = self._loop.call_later(seconds, resume)

    async def _connection(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            stream = await _pair(lambda factory: loop.connect_accepted_socket(factory, sock))
        except BaseException:
            sock.close()
            raise
        try:
            await serve_connection(stream, self.config, self.handler, self._sessions)
        except Exception:  # a bug: the task's exception would otherwise go unseen
            log.exception("the session failed")


_READ_LIMIT = 64 * 1024  # the StreamReader pauses reading past twice this


async def serve(
    handler: Handler, *, handle_signals: bool = True, **settings: Unpack[ServerSettings]
) -> None:
    """Run an LMTP server until cancelled (then it stops gracefully too).

    Until SIGTERM or SIGINT too, when it runs in the main thread and handle_signals
    is true (the default): the server then stops gracefully (no new connections, the
    socket file removed, 421 to idle sessions, `grace` seconds for transactions in
    flight) and serve() returns. Pass handle_signals=False when the application
    takes those signals itself. See ServerSettings for the settings."""
    settings_error("transports.asyncio.serve", settings, server=True)
    await _serve.serve_asyncio(Server(handler, **settings), handle_signals)
