"""Blocking driver: lmtp_core over stdlib sockets, for the client and the server role.

How it works. This module is only the runtime's adapter: SocketStream moves bytes with
one socket timeout per wait, SocketBackend connects (UNIX, TCP, implicit TLS) and makes
threading locks, and the delivery flow and per-connection server loop are the shared
ones (_sync_client.py and _sync_server.py, generated from the async flows). Client is
SyncClient on sockets, thread-safe: concurrent deliver() calls take turns. The server
accepts in one thread, one connection per wake-up (a selector, so that a stop request
can wake it through a socketpair; a request is a flag and a byte, safe to make from a
signal handler) and serves each connection in a worker thread of a pool bounded by
max_connections, where the handler runs too (see Server). serve() stops it on SIGTERM
and SIGINT (_serve.py).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import queue
import select
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Unpack

from lmtp_core import MailFrom, RcptTo, TransactionResult

from . import _serve
from ._config import ClientConfig, ClientSettings, ServerConfig, ServerSettings, settings_error
from ._listen import Gate, Listening
from ._message import Message
from ._net import UNIX_RETRY, Poller, peer_name, unix_connect
from ._session import Call, Handler
from ._sync_client import SyncClient
from ._sync_pool import SyncPool
from ._sync_server import serve_connection

__all__ = ["Client", "Pool", "Server", "deliver", "serve"]

log = logging.getLogger("transports")


class SocketStream:
    """A connected socket. A plain one stays non-blocking and waits with poll(): a
    write goes straight to the kernel and polls only for what did not fit; a read
    tries at once and polls for its deadline only when nothing is there yet. (A
    socket timeout set for each wait costs a system call each time, and then a poll()
    before every call anyway.) A TLS socket, which cannot be driven that way simply,
    sets its timeout for each wait."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.tls = isinstance(sock, ssl.SSLSocket)
        self._readable = Poller(sock.fileno(), select.POLLIN | select.POLLPRI)
        if not self.tls:
            sock.setblocking(False)

    def _timeout(self, seconds: float) -> socket.socket:
        if seconds <= 0:
            raise TimeoutError("timed out")
        self._sock.settimeout(seconds)
        return self._sock

    def send_all(self, data: bytes, timeout: float) -> None:
        if self.tls:
            return self._timeout(timeout).sendall(data)
        if timeout <= 0:
            raise TimeoutError("timed out")
        sock = self._sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return None
        end = time.monotonic() + timeout
        rest = memoryview(data)[sent:]
        writable = Poller(sock.fileno(), select.POLLOUT)
        while rest:
            if not writable.ready(end - time.monotonic()):
                raise TimeoutError("timed out")
            with contextlib.suppress(BlockingIOError):
                rest = rest[sock.send(rest) :]
        return None

    def unsent(self) -> bool:
        return True  # a send fails only before the kernel took the last byte

    def receive_some(self, timeout: float) -> bytes:
        if self.tls:
            return self._timeout(timeout).recv(65536)
        if timeout <= 0:
            raise TimeoutError("timed out")
        try:  # a reply often is there already: one system call, no poll()
            return self._sock.recv(65536)
        except BlockingIOError:
            pass
        end = time.monotonic() + timeout
        while True:
            if timeout <= 0 or not self._readable.ready(timeout):
                raise TimeoutError("timed out")
            try:
                return self._sock.recv(65536)
            except BlockingIOError:  # a spurious wake-up
                timeout = end - time.monotonic()

    def start_tls(
        self,
        context: ssl.SSLContext,
        server_hostname: str | None,
        timeout: float,
        server_side: bool = False,
    ) -> SocketStream:
        return SocketStream(
            _handshake(context, self._timeout(timeout), server_hostname, server_side)
        )

    def idle_clean(self) -> bool:
        sock = self._sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return False
        return not self._readable.ready(0)

    def peer(self, listening: str) -> str:
        return peer_name(self._sock, listening)

    def close(self, forceful: bool = False) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


def _handshake(
    context: ssl.SSLContext,
    sock: socket.socket,
    server_hostname: str | None,
    server_side: bool = False,
) -> ssl.SSLSocket:
    """TLS over `sock` (which it takes over), handshake done. ssl closes the socket
    when the handshake fails with an OSError; this closes it on anything else too
    (Ctrl-C during the handshake left it to the garbage collector)."""
    tls = context.wrap_socket(
        sock,
        server_side=server_side,
        server_hostname=server_hostname,
        do_handshake_on_connect=False,
    )
    try:
        tls.do_handshake()
    except BaseException:
        tls.close()
        raise
    return tls


def _unix_socket(path: str, timeout: float) -> socket.socket:
    """Connected, waiting (within `timeout`) while the listen queue is full."""
    end = time.monotonic() + timeout
    pause, most = UNIX_RETRY
    while (sock := unix_connect(path)) is None:
        if time.monotonic() + pause > end:
            raise TimeoutError("timed out")
        time.sleep(pause)
        pause = min(pause * 2, most)
    sock.settimeout(max(end - time.monotonic(), 0.001))
    return sock


class SocketBackend:
    def connect(self, config: ClientConfig, timeout: float) -> SocketStream:
        sock: socket.socket | None = None
        try:
            if config.socket_path is not None:
                sock = _unix_socket(config.socket_path, timeout)
            else:
                sock = socket.create_connection((config.host, config.port), timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if config.implicit_tls:
                assert config.ssl_context is not None
                sock = _handshake(config.ssl_context, sock, config.server_hostname)
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        return SocketStream(sock)

    def lock(self) -> threading.RLock:
        # Re-entrant: Ctrl-C can land just after the lock was taken and before the try
        # that releases it (Python runs signal handlers when a call returns); then
        # close(), in the same thread on the way out, must not wait for it forever.
        return threading.RLock()

    def acquire(self, lock: threading.RLock | threading.Semaphore, timeout: float | None) -> None:
        if not (lock.acquire() if timeout is None else lock.acquire(timeout=timeout)):
            raise TimeoutError("timed out")

    def semaphore(self, value: int) -> threading.Semaphore:
        return threading.Semaphore(value)

    def mutex(self) -> threading.Lock:
        return threading.Lock()

    def every(self, interval: float, function: Callable[[], object]) -> _Repeater:
        return _Repeater(interval, function)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _Repeater:
    """Calls a function every `interval` seconds in a daemon thread until cancel()."""

    def __init__(self, interval: float, function: Callable[[], object]) -> None:
        self._stop = threading.Event()
        self._interval, self._function = interval, function
        self._thread = threading.Thread(target=self._run, name="lmtp-repeater", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._function()
            except Exception:  # a failing round must not end the loop
                log.exception("background task failed")

    def cancel(self) -> None:
        """Stop, and wait (bounded) for a round under way: a pool closing must not
        return while its reaper still QUITs connections it took."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(_STOP_WAIT)


class Client(SyncClient):
    """One LMTP connection, opened on the first deliver() and reused after it.
    Thread-safe: concurrent deliver() calls take turns on the connection."""

    default_backend = SocketBackend()


class Pool(SyncPool):
    """Up to max_connections connections to one server, shared by concurrent
    deliveries; `with Pool(...) as pool:` QUITs them on leaving. Thread-safe."""

    default_backend = Client.default_backend


def deliver(
    message: Message,
    sender: str | MailFrom,
    recipients: Sequence[str | RcptTo],
    **settings: Unpack[ClientSettings],
) -> TransactionResult:
    """Connect, deliver one message, QUIT. See ClientSettings for the settings."""
    settings_error("transports.blocking.deliver", settings)
    with Client(**settings) as client:
        return client.deliver(message, sender, recipients)


class _Sessions:
    """What the blocking Server lends its sessions (_sync_server.SyncSessions): a
    handler runs in the session's own thread, and a shutdown wakes every idle read
    through one socketpair that each idle session polls alongside its socket."""

    def __init__(self) -> None:
        self.stopping = False
        self.wake, self._wake_w = socket.socketpair()

    def run_handler(self, call: Call) -> object:
        result = call.function(*call.args)
        if inspect.isawaitable(result):
            with contextlib.suppress(AttributeError):
                result.close()  # type: ignore[attr-defined]  # never awaited: no warning
            raise TypeError(f"{call.function!r} is async; the blocking server needs plain methods")
        return result

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def receive_idle(self, stream: SocketStream, timeout: float) -> bytes | None:
        sock = stream._sock
        if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
            poller.register(self.wake.fileno(), select.POLLIN)
            ready = poller.poll(math.ceil(timeout * 1000))
            if self.stopping:
                return None
            if not ready:
                raise TimeoutError("timed out")
        return stream.receive_some(timeout)

    def stop(self) -> None:
        """Safe in a signal handler: it sets a flag and writes one byte, taking no lock."""
        self.stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")  # never read: stays readable for every poll

    def woken(self, seconds: float) -> bool:
        """Wait up to `seconds` unless stop() is (or gets) called; whether it was."""
        if not self.stopping:
            poller = select.poll()
            poller.register(self.wake.fileno(), select.POLLIN)
            poller.poll(math.ceil(seconds * 1000))
        return self.stopping

    def close(self) -> None:
        self.wake.close()
        self._wake_w.close()


def _cut(fd: int) -> None:
    """Shut a session's socket down from another thread: its waits end at once."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()


class Server:
    """An LMTP server on threads. Use as a context manager to run it in a background
    thread, or call serve_forever() and, to stop it, shutdown(): from another thread,
    or from a signal handler while serve_forever() runs in the main thread.

    One thread accepts (a selector, which a stop request wakes through a socketpair),
    one connection per wake-up (fair to other processes sharing the socket, see
    _listen.py). Each session runs in a worker thread from a pool that grows to at
    most max_connections threads and keeps them for reuse; past max_connections a
    connection gets 421 4.3.2. When accept() fails or a thread cannot be started, the
    loop pauses and tries again (Gate). Stopping (shutdown(), see there) stops
    accepting and removes the socket, answers idle sessions 421 at once, gives
    transactions in flight `grace` seconds, then shuts the sockets of the sessions
    still open. A stop request is only a flag and a byte on the socketpair, so a
    signal handler can make it; the thread that serves then does the rest."""

    def __init__(self, handler: Handler, **settings: Unpack[ServerSettings]) -> None:
        self.handler = handler
        self.config = cfg = ServerConfig.from_settings("transports.blocking.Server", settings)
        self._listening = Listening(cfg)
        self.address: Any = self._listening.address
        self._gate = Gate(cfg, log)
        self._sessions = _Sessions()
        self._queue: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._active = 0  # sessions queued or being served
        self._served: set[int] = set()  # the descriptors of sessions being served
        self._workers: set[threading.Thread] = set()
        # A stop request: plain attributes, set without a lock (a signal handler may).
        self._stopping = False
        self._grace: float | None = None
        self._serving: int | None = None  # the thread in serve_forever(), if any
        self._accepting = threading.Lock()  # held while serve_forever() runs
        # Held while the graceful stop runs. Re-entrant: a signal handler calling
        # shutdown() in the thread already stopping returns at once (_finished).
        self._finishing = threading.RLock()
        self._finished = False
        self._background: threading.Thread | None = None

    def __enter__(self) -> Server:
        self._background = threading.Thread(
            target=self.serve_forever, name="lmtp-accept", daemon=True
        )
        self._background.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def serve_forever(self) -> None:
        """Accept connections in this thread until shutdown() is called; then stop
        gracefully (see shutdown()) and return. An exception (KeyboardInterrupt)
        leaves the stop to shutdown()."""
        self._serving = threading.get_ident()  # before the lock: see shutdown()
        try:
            with self._accepting:
                if not self._stopping:
                    self._accept_loop()
                self._finish()
        finally:
            self._serving = None

    def _accept_loop(self) -> None:
        sessions = self._sessions
        with selectors.DefaultSelector() as selector:
            for sock in self._listening.sockets:
                selector.register(sock, selectors.EVENT_READ)
            selector.register(sessions.wake, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj is sessions.wake or self._stopping:
                        break
                    try:
                        pause = self._accept(key.fileobj)  # type: ignore[arg-type]
                        while pause and not sessions.woken(pause):
                            pause = self._staff()
                    except Exception as exc:  # the loop must not die
                        sessions.woken(self._gate.failed(exc))

    def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting and remove the socket file; idle sessions get 421 at once,
        transactions in flight `grace` seconds (the setting by default) to finish;
        the sessions still open then have their sockets shut.

        From another thread it returns once all that is done. From the thread that
        runs serve_forever() (a signal handler, while serve_forever() runs in the
        main thread) it only asks to stop and returns at once: serve_forever() then
        stops gracefully itself before it returns. So a program may do::

            signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
            server.serve_forever()  # returns once stopped
        """
        if not self._stopping:  # no lock taken here: a signal handler may be calling
            self._grace = grace
            self._stopping = True
            self._sessions.stop()  # wakes the accept loop and every idle session
        if self._serving == threading.get_ident():
            return  # serve_forever(), below us in this thread, finishes the stop
        limit = self.config.grace if self._grace is None else self._grace
        # serve_forever() stops gracefully before it returns; wait for that, bounded.
        if self._accepting.acquire(timeout=limit + _CUT_WAIT + _STOP_WAIT):
            self._accepting.release()
        self._finish()

    def _finish(self) -> None:
        """The graceful stop, once, by serve_forever() or shutdown()."""
        with self._finishing:
            if self._finished:
                return
            self._finished = True
            self._sessions.stop()
            self._listening.close()
            self._drain()

    def _drain(self) -> None:
        limit = self.config.grace if self._grace is None else self._grace
        with self._lock:
            self._changed.wait_for(lambda: not self._active, limit)
            for fd in self._served:
                _cut(fd)
            # A cut session ends at once, unless it is in a handler call: that thread
            # (a daemon) is abandoned, to end on its own; its answer is never sent.
            end = time.monotonic() + _CUT_WAIT
            self._changed.wait_for(lambda: not self._active, _CUT_WAIT)
            workers = list(self._workers)
            abandoned = self._active
        for _ in workers:
            self._queue.put(None)
        for worker in workers:
            if worker is not threading.current_thread():  # shutdown() from a handler
                worker.join(max(end - time.monotonic(), 0.0))
        with contextlib.suppress(queue.Empty):
            while True:  # accepted, never served (no thread could be started)
                if (sock := self._queue.get_nowait()) is not None:
                    sock.close()
        if abandoned:
            log.warning(
                "%s: %d sessions still in a handler call after the grace period: abandoned",
                self.config.endpoint,
                abandoned,
            )
        else:  # an abandoned session may still poll the wake socket: kept open for it
            self._sessions.close()

    def _accept(self, listener: socket.socket) -> float:
        """Accept one connection and hand it to a worker; seconds to pause after."""
        if wait := self._gate.defer():  # a worker process less busy may take it
            return wait
        try:
            sock, _ = listener.accept()
        except BlockingIOError:  # another process sharing the socket took it
            return 0.0
        except OSError as exc:
            return self._gate.failed(exc)
        self._gate.accepted()
        with self._lock:
            full = self._active >= self._gate.limit
            self._active += not full
            self._gate.load(self._active)
        if full:
            self._gate.refuse(sock)
            return 0.0
        self._queue.put(sock)
        return self._staff()

    def _staff(self) -> float:
        """As many workers as sessions; seconds to pause if a thread cannot start."""
        while True:
            with self._lock:
                if len(self._workers) >= self._active:
                    return 0.0
                thread = threading.Thread(target=self._work, name="lmtp-session", daemon=True)
                self._workers.add(thread)
            try:
                thread.start()
            except (RuntimeError, MemoryError) as exc:  # "can't start new thread"
                with self._lock:
                    self._workers.discard(thread)
                return self._gate.failed(exc)

    def _work(self) -> None:
        try:
            while (sock := self._queue.get()) is not None:
                fd = sock.fileno()
                with self._lock:
                    self._served.add(fd)
                try:
                    self._serve(sock)
                except Exception:
                    log.exception("the session failed")
                finally:
                    with self._lock:
                        self._served.discard(fd)
                        self._active -= 1
                        self._gate.load(self._active)
                        self._changed.notify_all()
        finally:
            with self._lock:
                self._workers.discard(threading.current_thread())

    def _serve(self, sock: socket.socket) -> None:
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        serve_connection(SocketStream(sock), self.config, self.handler, self._sessions)


_STOP_WAIT = 5.0  # the most shutdown() waits for each step that should be quick
#: After the grace period, how long the sessions whose sockets were shut may take to
#: end (those in a read end at once; one in a handler call is then abandoned).
_CUT_WAIT = 0.5


def serve(
    handler: Handler, *, handle_signals: bool = True, **settings: Unpack[ServerSettings]
) -> None:
    """Run an LMTP server in this thread until Server.shutdown() or Ctrl-C
    (KeyboardInterrupt: a graceful stop, then serve() returns).

    Until SIGTERM or SIGINT too, when it runs in the main thread and handle_signals
    is true (the default): the server then stops gracefully (no new connections, the
    socket file removed, 421 to idle sessions, `grace` seconds for transactions in
    flight) and serve() returns. Pass handle_signals=False when the application
    takes those signals itself. See ServerSettings for the settings."""
    settings_error("transports.blocking.serve", settings, server=True)
    _serve.serve_blocking(Server(handler, **settings), handle_signals)
