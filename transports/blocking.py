"""Blocking driver: lmtp_core over stdlib sockets, for the client and the server role.

How it works. This module is only the runtime's adapter: SocketStream moves bytes with
one socket timeout per wait, SocketBackend connects (UNIX, TCP, implicit TLS) and makes
threading locks, and the delivery flow and per-connection server loop are the shared
ones (_sync_client.py and _sync_server.py, generated from the async flows). Client is
SyncClient on sockets, thread-safe: concurrent deliver() calls take turns. The server
accepts in one thread (a selector, so that shutdown() can wake it through a
socketpair) and serves each connection in a worker thread of a pool bounded by
max_connections, where the handler runs too (see Server).
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
        sock = self._timeout(timeout)
        return SocketStream(
            context.wrap_socket(sock, server_side=server_side, server_hostname=server_hostname)
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
                sock = config.ssl_context.wrap_socket(sock, server_hostname=config.server_hostname)
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


class _Repeater:
    """Calls a function every `interval` seconds in a daemon thread until cancel()."""

    def __init__(self, interval: float, function: Callable[[], object]) -> None:
        self._stop = threading.Event()
        self._interval, self._function = interval, function
        threading.Thread(target=self._run, name="lmtp-repeater", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._function()
            except Exception:  # a failing round must not end the loop
                log.exception("background task failed")

    def cancel(self) -> None:
        self._stop.set()


class Client(SyncClient):
    """One LMTP connection, opened on the first deliver() and reused after it.
    Thread-safe: concurrent deliver() calls take turns on the connection."""

    _backend = SocketBackend()


class Pool(SyncPool):
    """Up to max_connections connections to one server, shared by concurrent
    deliveries; `with Pool(...) as pool:` QUITs them on leaving. Thread-safe."""

    _backend = Client._backend


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
        self.stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")  # never read: stays readable for every poll

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
    thread, or call serve_forever() and, from elsewhere, shutdown().

    One thread accepts (a selector, which shutdown() wakes through a socketpair).
    Each session runs in a worker thread from a pool that grows to at most
    max_connections threads and keeps them for reuse; past max_connections a
    connection gets 421 4.3.2. When accept() fails or a thread cannot be started, the
    loop pauses and tries again (Gate). shutdown() stops accepting and removes the
    socket, answers idle sessions 421 at once, gives transactions in flight `grace`
    seconds, then shuts the sockets of the sessions still open."""

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
        self._stopped = threading.Event()
        self._accepting = threading.Lock()  # held while serve_forever() runs
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
        with self._accepting, selectors.DefaultSelector() as selector:
            for sock in self._listening.sockets:
                selector.register(sock, selectors.EVENT_READ)
            selector.register(self._sessions.wake, selectors.EVENT_READ)
            while not self._stopped.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self._sessions.wake or self._stopped.is_set():
                        break
                    try:
                        pause = self._accept(key.fileobj)  # type: ignore[arg-type]
                        while pause and not self._stopped.wait(pause):
                            pause = self._staff()
                    except Exception as exc:  # the loop must not die
                        self._stopped.wait(self._gate.failed(exc))

    def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting and remove the socket file; idle sessions get 421 at once,
        transactions in flight `grace` seconds (the setting by default) to finish;
        the sessions still open then have their sockets shut."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._sessions.stop()  # wakes the accept loop and every idle session
        if self._background is not None:
            self._background.join(_STOP_WAIT)
        elif self._accepting.acquire(timeout=_STOP_WAIT):  # serve_forever() has returned
            self._accepting.release()
        self._listening.close()
        limit = self.config.grace if grace is None else grace
        with self._lock:
            self._changed.wait_for(lambda: not self._active, limit)
            for fd in self._served:
                _cut(fd)
            self._changed.wait_for(lambda: not self._active, _STOP_WAIT)
            workers = list(self._workers)
        for _ in workers:
            self._queue.put(None)
        for worker in workers:
            worker.join(_STOP_WAIT)
        with contextlib.suppress(queue.Empty):
            while True:  # accepted, never served (no thread could be started)
                if (sock := self._queue.get_nowait()) is not None:
                    sock.close()
        self._sessions.close()

    def _accept(self, listener: socket.socket) -> float:
        """Accept one connection and hand it to a worker; seconds to pause after."""
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
                        self._changed.notify_all()
        finally:
            with self._lock:
                self._workers.discard(threading.current_thread())

    def _serve(self, sock: socket.socket) -> None:
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        serve_connection(SocketStream(sock), self.config, self.handler, self._sessions)


_STOP_WAIT = 5.0  # the most shutdown() waits for each step that should be quick


def serve(handler: Handler, **settings: Unpack[ServerSettings]) -> None:
    """Run an LMTP server in this thread until interrupted. See ServerSettings."""
    settings_error("transports.blocking.serve", settings, server=True)
    server = Server(handler, **settings)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()
