"""Run our client and server in any of the three runtimes from synchronous tests.

How it works: ``deliver()`` calls the runtime's own ``deliver()`` (one connection, QUIT), and
``deliver_all()`` its ``Client``; the blocking driver is called directly, the asyncio/trio
driver's coroutine is run to completion with ``asyncio.run``/``trio.run`` in this thread;
``deliver_all()`` sends every message over one reused ``Client``.  ``serve()`` runs one of our
servers in a background thread (the blocking ``Server`` in its own thread, the asyncio and trio
ones inside an event loop of their own) and yields it once it listens: the thread reports
readiness through a ``threading.Event`` and the context manager stops the server and joins the
thread (bounded) on exit, re-raising anything the thread raised.  ``TLSFiles`` is the throwaway
trustme CA and server certificate the ``tls_files`` fixture writes for our servers.  trio is
imported only when a trio runtime is asked for, so conftest (which imports ``TLSFiles``) needs
nothing beyond the standard library and our packages.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtp_core import TransactionResult
from transports import Handler, blocking, server_context
from transports import asyncio as lmtp_asyncio

__all__ = ["RUNTIMES", "TLSFiles", "deliver", "deliver_all", "serve"]

RUNTIMES = ("blocking", "asyncio", "trio")

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class TLSFiles:
    """A CA certificate and a server certificate (for localhost and 127.0.0.1) it signed."""

    ca_file: Path
    cert_file: Path  # the chain, leaf first
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side context for our servers' ``starttls_context``."""
        return server_context(str(self.cert_file), str(self.key_file))


def deliver(
    runtime: str, message: bytes, sender: str, recipients: Sequence[str], **settings: Any
) -> TransactionResult:
    """``<runtime>.deliver(message, sender, recipients, **settings)``, run to completion."""
    if runtime == "blocking":
        return blocking.deliver(message, sender, recipients, **settings)
    if runtime == "asyncio":
        return asyncio.run(lmtp_asyncio.deliver(message, sender, recipients, **settings))
    if runtime == "trio":
        import trio

        from transports import trio as lmtp_trio

        async def with_trio() -> TransactionResult:
            return await lmtp_trio.deliver(message, sender, recipients, **settings)

        return trio.run(with_trio)
    raise ValueError(f"unknown runtime {runtime!r}")


def deliver_all(
    runtime: str,
    messages: Sequence[bytes],
    sender: str,
    recipients: Sequence[str],
    **settings: Any,
) -> list[TransactionResult]:
    """Deliver each message in turn over one ``<runtime>.Client`` (one connection if it stays
    usable), then close it."""
    if runtime == "blocking":
        with blocking.Client(**settings) as client:
            return [client.deliver(m, sender, recipients) for m in messages]
    if runtime == "asyncio":

        async def with_asyncio() -> list[TransactionResult]:
            async with lmtp_asyncio.Client(**settings) as client:
                return [await client.deliver(m, sender, recipients) for m in messages]

        return asyncio.run(with_asyncio())
    if runtime == "trio":
        import trio

        from transports import trio as lmtp_trio

        async def with_trio() -> list[TransactionResult]:
            async with lmtp_trio.Client(**settings) as client:
                return [await client.deliver(m, sender, recipients) for m in messages]

        return trio.run(with_trio)
    raise ValueError(f"unknown runtime {runtime!r}")


class _Thread:
    """A background thread running a server; remembers what it raised."""

    def __init__(self, target: Callable[[], None]) -> None:
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.server: Any = None
        self.stop: Callable[[], None] | None = None
        self._target = target
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._target()
        except BaseException as exc:
            self.error = exc
        finally:
            self.ready.set()  # never leave start() waiting

    def start(self) -> Any:
        self.thread.start()
        if not self.ready.wait(_START_TIMEOUT):
            raise RuntimeError(f"server did not start within {_START_TIMEOUT}s")
        if self.error is not None:
            raise RuntimeError("server failed to start") from self.error
        return self.server

    def join(self) -> None:
        if self.stop is not None:
            self.stop()
        self.thread.join(_STOP_TIMEOUT)
        if self.thread.is_alive():
            raise RuntimeError(f"server thread still running after {_STOP_TIMEOUT}s")
        if self.error is not None:
            raise RuntimeError("server thread failed") from self.error


@contextlib.contextmanager
def serve(runtime: str, handler: Handler, **settings: Any) -> Iterator[Any]:
    """Run ``<runtime>.Server(handler, **settings)`` in a background thread; yield the server
    (its ``.address`` is set) and stop it on exit."""
    if runtime == "blocking":
        with blocking.Server(handler, **settings) as server:
            yield server
        return

    runner: _Thread
    if runtime == "asyncio":

        def run_asyncio() -> None:
            async def main() -> None:
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                async with lmtp_asyncio.Server(handler, **settings) as server:
                    runner.server = server

                    def stop_asyncio() -> None:
                        with contextlib.suppress(RuntimeError):  # the loop has already ended
                            loop.call_soon_threadsafe(stop.set)

                    runner.stop = stop_asyncio
                    runner.ready.set()
                    await stop.wait()

            asyncio.run(main())

        runner = _Thread(run_asyncio)
    elif runtime == "trio":
        import trio

        from transports import trio as lmtp_trio

        def run_trio() -> None:
            async def main() -> None:
                async with trio.open_nursery() as nursery:
                    server = await nursery.start(lmtp_trio.Server(handler, **settings).serve)
                    token = trio.lowlevel.current_trio_token()
                    runner.server = server

                    def stop_trio() -> None:
                        with contextlib.suppress(trio.RunFinishedError):
                            trio.from_thread.run_sync(server.close, trio_token=token)

                    runner.stop = stop_trio
                    runner.ready.set()

            trio.run(main)

        runner = _Thread(run_trio)
    else:
        raise ValueError(f"unknown runtime {runtime!r}")

    server = runner.start()
    try:
        yield server
    finally:
        runner.join()
