"""Blocking driver: lmtp_core over stdlib sockets, for the client and the server role.

How it works. This module is only the runtime's adapter: SocketStream moves bytes with
one socket timeout per wait, SocketBackend connects (UNIX, TCP, implicit TLS) and makes
threading locks, and the delivery flow and per-connection server loop are the shared
ones (_sync_client.py and _sync_server.py, generated from the async flows). Client is
SyncClient on sockets, thread-safe: concurrent deliver() calls take turns. The server
accepts in one thread (a selector, so that shutdown() can wake it through a
socketpair) and serves each connection in a thread of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any, Unpack

from lmtp_core import MailFrom, RcptTo, TransactionResult

from ._config import ClientConfig, ClientSettings, ServerConfig, ServerSettings, settings_error
from ._message import Message
from ._net import idle_clean, peer_name
from ._session import Handler
from ._sync_client import SyncClient
from ._sync_pool import SyncPool
from ._sync_server import serve_connection

__all__ = ["Client", "Pool", "Server", "deliver", "serve"]

log = logging.getLogger("transports")


class SocketStream:
    """A connected socket; each wait sets the socket's timeout."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.tls = isinstance(sock, ssl.SSLSocket)

    def _timeout(self, seconds: float) -> socket.socket:
        if seconds <= 0:
            raise TimeoutError("timed out")
        self._sock.settimeout(seconds)
        return self._sock

    def send_all(self, data: bytes, timeout: float) -> None:
        self._timeout(timeout).sendall(data)

    def unsent(self) -> bool:
        return True  # sendall() fails only before the kernel took its last byte

    def receive_some(self, timeout: float) -> bytes:
        return self._timeout(timeout).recv(65536)

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
        return idle_clean(sock.fileno())

    def peer(self, listening: str) -> str:
        return peer_name(self._sock, listening)

    def close(self, forceful: bool = False) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


class SocketBackend:
    def connect(self, config: ClientConfig, timeout: float) -> SocketStream:
        sock: socket.socket | None = None
        try:
            if config.socket_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(config.socket_path)
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

    def lock(self) -> threading.Lock:
        return threading.Lock()

    def acquire(self, lock: threading.Lock | threading.Semaphore, timeout: float | None) -> None:
        if not (lock.acquire() if timeout is None else lock.acquire(timeout=timeout)):
            raise TimeoutError("timed out")

    def semaphore(self, value: int) -> threading.Semaphore:
        return threading.Semaphore(value)

    def mutex(self) -> threading.Lock:
        return threading.Lock()

    def every(self, interval: float, function: Callable[[], object]) -> _Repeater:
        return _Repeater(interval, function)

    def run_handler(self, function: Any, args: tuple[Any, ...]) -> object:
        result = function(*args)
        if hasattr(result, "__await__"):
            with contextlib.suppress(AttributeError):
                result.close()  # never awaited: do not leave a warning behind
            raise TypeError(f"{function!r} is async; the blocking server needs plain methods")
        return result


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


class Server:
    """An LMTP server: one thread per connection. Use as a context manager to run it in
    a background thread, or call serve_forever() and, from elsewhere, shutdown()."""

    def __init__(self, handler: Handler, **settings: Unpack[ServerSettings]) -> None:
        self.handler = handler
        self.config = cfg = ServerConfig.from_settings("transports.blocking.Server", settings)
        if cfg.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(cfg.socket_path)
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(cfg.socket_path)
        else:
            self._listener = socket.create_server((cfg.host, cfg.port))
        self._listener.listen(cfg.backlog)
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
                            sock, _peer = self._listener.accept()
                            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
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

    def _serve(self, sock: socket.socket) -> None:
        try:
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            serve_connection(SocketStream(sock), self.config, self.handler, Client._backend)
        finally:
            self._threads.discard(threading.current_thread())


def serve(handler: Handler, **settings: Unpack[ServerSettings]) -> None:
    """Run an LMTP server in this thread until interrupted. See ServerSettings."""
    settings_error("transports.blocking.serve", settings, server=True)
    server = Server(handler, **settings)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()
