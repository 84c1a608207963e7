"""Helpers for the server tests: one of our servers under the test's control, a raw
client socket, a handler that blocks, and log lines seen as they happen.

How it works: ``serving()`` runs ``<runtime>.Server`` in the background (the blocking one in
its own accept thread, the async ones in a ``LoopThread``) and yields a ``Running``:
``stop(grace)`` begins the runtime's own shutdown (``shutdown()`` or ``close()``) without
waiting for it, and ``wait_stopped()`` waits, bounded, until it has finished. The server is
always stopped on exit. ``Raw`` is a plain socket speaking LMTP by hand, every read bounded
by its timeout: ``reply()`` returns one complete reply, ``eof()`` says whether the server
closed the connection. ``Blocker`` is a handler whose ``deliver`` records its thread and
blocks until the test releases it. ``LogWatch`` collects the records of a logger from any
thread and lets a test wait (bounded) for one that matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from transports import Envelope, Handler, blocking
from transports import asyncio as lmtp_asyncio
from transports import trio as lmtp_trio

from .runtimes import LoopThread

WAIT = 10.0  # the most any step that should be quick may take


@dataclass
class Running:
    runtime: str
    server: Any
    address: Any
    loop: LoopThread | None = None
    _done: Callable[[float], bool] | None = None
    _stopper: Any = None

    @property
    def loop_thread(self) -> int | None:
        """The ident of the event loop's thread (None for the blocking server)."""
        return None if self.loop is None else self.loop._thread.ident

    def stop(self, grace: float | None = None) -> None:
        """Begin the server's shutdown; returns at once."""
        if self._stopper is not None:
            return
        if self.runtime == "blocking":
            self._stopper = threading.Thread(target=self.server.shutdown, args=(grace,))
            self._stopper.start()
        elif self.runtime == "asyncio":
            assert self.loop is not None and self.loop._loop is not None
            self._stopper = asyncio.run_coroutine_threadsafe(
                self.server.close(grace), self.loop._loop
            )
        else:
            assert self.loop is not None
            self.loop.call_sync(self.server.close, grace)
            self._stopper = True

    def wait_stopped(self, timeout: float = WAIT) -> bool:
        """True once the shutdown has finished (within `timeout`)."""
        if self.runtime == "blocking":
            self._stopper.join(timeout)
            return not self._stopper.is_alive()
        if self.runtime == "asyncio":
            with contextlib.suppress(TimeoutError):
                self._stopper.result(timeout)
            return bool(self._stopper.done())
        assert self._done is not None
        return self._done(timeout)


@contextlib.contextmanager
def serving(runtime: str, handler: Handler, **settings: Any) -> Iterator[Running]:
    """``<runtime>.Server(handler, **settings)`` running until the block ends."""
    if "socket_path" not in settings and "sock" not in settings:
        settings.setdefault("port", 0)
    if runtime == "blocking":
        server = blocking.Server(handler, **settings)
        server.__enter__()
        running = Running(runtime, server, server.address)
        try:
            yield running
        finally:
            running.stop(0)
            assert running.wait_stopped(), "the blocking server did not stop"
        return
    with LoopThread(runtime) as loop:
        if runtime == "asyncio":
            aserver = lmtp_asyncio.Server(handler, **settings)
            loop.call(aserver.start)
            running = Running(runtime, aserver, aserver.address, loop)
        else:
            tserver = lmtp_trio.Server(handler, **settings)
            finished = threading.Event()

            async def serve(task_status: Any) -> None:
                try:
                    await tserver.serve(task_status=task_status)
                finally:
                    finished.set()

            assert loop.nursery is not None
            loop.call(loop.nursery.start, serve)
            running = Running(runtime, tserver, tserver.address, loop, finished.wait)
        try:
            yield running
        finally:
            running.stop(0)
            assert running.wait_stopped(), f"the {runtime} server did not stop"


class Raw:
    """A client socket speaking LMTP by hand; every read is bounded by `timeout`."""

    def __init__(self, address: Any, timeout: float = WAIT) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(address if isinstance(address, str) else tuple(address[:2]))
        except BaseException:
            self.sock.close()
            raise
        self._buffer = b""

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One complete reply (all its lines); EOFError if the connection ends first."""
        while (match := _FINAL.search(self._buffer)) is None:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"closed; unanswered: {self._buffer!r}")
            self._buffer += chunk
        reply, self._buffer = self._buffer[: match.end()], self._buffer[match.end() :]
        return reply

    def replies(self, count: int) -> list[bytes]:
        return [self.reply() for _ in range(count)]

    def eof(self) -> bool:
        """True when the server has closed the connection (read to the end, within the
        timeout; a reset counts as closed); False when it timed out still open."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self._buffer += chunk
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    @property
    def unread(self) -> bytes:
        return self._buffer

    def close(self) -> None:
        self.sock.close()


_FINAL = re.compile(rb"(?:^|\r\n)[2-5][0-9][0-9](?: [^\r\n]*)?\r\n")


def code_of(reply: bytes) -> bytes:
    """The last line's "code enhanced" of a reply (b"250 2.0.0"), or its code alone."""
    last = reply.rstrip(b"\r\n").split(b"\r\n")[-1]
    code, _, rest = last.partition(b" ")
    enhanced = rest.split(b" ")[0]
    return code + b" " + enhanced if _ENHANCED.fullmatch(enhanced) else code


_ENHANCED = re.compile(rb"[245]\.[0-9]{1,3}\.[0-9]{1,3}")


@dataclass(eq=False)
class Blocker(Handler):
    """deliver() records its thread, says it has begun, and waits for release."""

    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    threads: list[int] = field(default_factory=list)
    delivered: list[bytes] = field(default_factory=list)

    def deliver(self, envelope: Envelope) -> Any:
        self.threads.append(threading.get_ident())
        self.entered.set()
        assert self.release.wait(WAIT), "never released"
        self.delivered.append(envelope.read())
        return None


class LogWatch(logging.Handler):
    """The records of `logger` from any thread; wait() for one whose message matches."""

    def __init__(self, logger: str, level: int = logging.DEBUG) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()
        self._logger = logging.getLogger(logger)
        self._level = level

    def __enter__(self) -> LogWatch:
        self._saved = self._logger.level
        self._logger.setLevel(min(self._level, self._logger.getEffectiveLevel()))
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._saved)

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def messages(self, pattern: str = "") -> list[str]:
        with self._changed:
            found = [r.getMessage() for r in self.records]
        return [m for m in found if re.search(pattern, m)]

    def wait(self, pattern: str, timeout: float = WAIT) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: bool(self._matching(pattern)), timeout)

    def _matching(self, pattern: str) -> list[str]:
        return [r.getMessage() for r in self.records if re.search(pattern, r.getMessage())]
