"""Run our clients and servers in any of the three runtimes from synchronous test code.

How it works: ``deliver()`` calls ``blocking.deliver`` directly, or runs the asyncio/trio
driver's ``deliver`` to completion with ``asyncio.run``/``trio.run`` in this thread.
``client_session()`` keeps one ``Client`` open for several deliveries; for the async runtimes
the client lives in a ``LoopThread``: an asyncio or trio event loop running in a daemon thread,
into which ``call()`` submits an async function and waits for its result
(``run_coroutine_threadsafe`` / ``trio.from_thread.run``). ``running_server()`` starts one of
our servers (the blocking one in its own thread, the async ones inside a ``LoopThread``) and
yields its address once it listens; readiness is a ``threading.Event``, never a sleep, and on
exit the server is stopped and the thread joined (bounded), re-raising what the thread raised.

``Recorder`` is a thread-safe handler whose per-address policy is a dict, recording every call
and every message (with the connection it came on); ``AsyncRecorder`` is the same with
``async def`` methods that yield to the running loop (asyncio or trio, found with sniffio).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sniffio
import trio

from lmtp_core import Params, Reply, TransactionResult
from transports import Envelope, Handler, blocking
from transports import asyncio as lmtp_asyncio
from transports import trio as lmtp_trio

__all__ = [
    "ASYNC_RUNTIMES",
    "RUNTIMES",
    "AsyncRecorder",
    "Failure",
    "LoopThread",
    "Received",
    "Recorder",
    "SyncClient",
    "client_session",
    "collect_leaks",
    "deliver",
    "endpoint",
    "failure_of",
    "resource_warnings",
    "running_server",
]

RUNTIMES = ("blocking", "asyncio", "trio")
ASYNC_RUNTIMES = ("asyncio", "trio")

START_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0
CALL_TIMEOUT = 60.0


def endpoint(address: Any) -> dict[str, Any]:
    """Client settings for a server's ``.address``: a UNIX path or a (host, port) pair."""
    if isinstance(address, str):
        return {"socket_path": address}
    return {"host": address[0], "port": address[1]}


@dataclass(frozen=True)
class Failure:
    """What a call raised, kept without the exception itself (its traceback would keep the
    call's sockets alive), and the leaks the garbage collector found once it was dropped."""

    kind: type[BaseException] | None
    message: str
    cause: type[BaseException] | None
    leaks: list[str]

    @property
    def error(self) -> type[BaseException]:
        assert self.kind is not None, "the call did not raise"
        return self.kind


def failure_of(call: Callable[[], object]) -> Failure:
    """Run ``call`` and describe what it raised (if anything), then collect leaks."""
    kind: type[BaseException] | None = None
    cause: type[BaseException] | None = None
    message = ""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        try:
            call()
        except Exception as exc:
            kind, message = type(exc), str(exc)
            cause = type(exc.__cause__) if exc.__cause__ is not None else None
        # the exception and its frames are gone now: what they held is freed here
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    return Failure(kind, message, cause, leaks)


@contextlib.contextmanager
def resource_warnings() -> Iterator[list[str]]:
    """The ResourceWarnings raised in any thread inside the block (the warning filter is
    process-wide), plus those the garbage collector raises at its end; filled on exit."""
    found: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield found
        gc.collect()
    found.extend(str(w.message) for w in caught if issubclass(w.category, ResourceWarning))


def collect_leaks() -> list[str]:
    """Run the garbage collector and return the ResourceWarnings it raised: sockets and
    streams that were dropped without being closed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


# ---- clients ------------------------------------------------------------------------------


def deliver(
    runtime: str, message: Any, sender: str, recipients: Sequence[str], **settings: Any
) -> TransactionResult:
    """``<runtime>.deliver(message, sender, recipients, **settings)``, run to completion."""
    if runtime == "blocking":
        return blocking.deliver(message, sender, recipients, **settings)
    if runtime == "asyncio":
        return asyncio.run(lmtp_asyncio.deliver(message, sender, recipients, **settings))
    if runtime == "trio":
        return trio.run(
            functools.partial(lmtp_trio.deliver, message, sender, recipients, **settings)
        )
    raise ValueError(f"unknown runtime {runtime!r}")


class LoopThread:
    """An asyncio or trio event loop in a daemon thread; ``call(fn, *args)`` runs the async
    function ``fn`` in it and returns its result (or raises its exception) here."""

    def __init__(self, runtime: str) -> None:
        if runtime not in ASYNC_RUNTIMES:
            raise ValueError(f"not an async runtime: {runtime!r}")
        self.runtime = runtime
        self.nursery: trio.Nursery | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._asyncio_stop: asyncio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._trio_stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"{runtime}-loop", daemon=True)

    def __enter__(self) -> LoopThread:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError(f"the {self.runtime} loop did not start in {START_TIMEOUT}s")
        if self._error is not None:
            raise RuntimeError(f"the {self.runtime} loop failed to start") from self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                if self._loop is not None and self._asyncio_stop is not None:
                    self._loop.call_soon_threadsafe(self._asyncio_stop.set)
                elif self._token is not None and self._trio_stop is not None:
                    trio.from_thread.run_sync(self._trio_stop.set, trio_token=self._token)
        self._thread.join(STOP_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError(f"the {self.runtime} loop still runs after {STOP_TIMEOUT}s")
        if self._error is not None:
            raise RuntimeError(f"the {self.runtime} loop failed") from self._error

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``await fn(*args)`` in the loop; its result, or its exception re-raised."""
        if self._loop is not None:
            future = asyncio.run_coroutine_threadsafe(_awaited(fn, *args), self._loop)
            return future.result(CALL_TIMEOUT)
        assert self._token is not None
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def call_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` (a plain function) in the loop's thread."""

        async def run() -> Any:
            return fn(*args)

        return self.call(run)

    def _run(self) -> None:
        try:
            if self.runtime == "asyncio":
                asyncio.run(self._main_asyncio())
            else:
                trio.run(self._main_trio)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()  # never leave __enter__ waiting

    async def _main_asyncio(self) -> None:
        self._asyncio_stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await self._asyncio_stop.wait()

    async def _main_trio(self) -> None:
        self._trio_stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._trio_stop.wait()
            nursery.cancel_scope.cancel()


async def _awaited(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return await fn(*args)


class SyncClient:
    """One ``<runtime>.Client`` seen from synchronous code: ``deliver()`` blocks."""

    def __init__(self, runtime: str, client: Any, loop: LoopThread | None) -> None:
        self.runtime = runtime
        self.client = client
        self._loop = loop

    def deliver(self, message: Any, sender: str, recipients: Sequence[str]) -> TransactionResult:
        if self._loop is None:
            result: TransactionResult = self.client.deliver(message, sender, recipients)
            return result
        result = self._loop.call(self.client.deliver, message, sender, recipients)
        return result


@contextlib.contextmanager
def client_session(runtime: str, **settings: Any) -> Iterator[SyncClient]:
    """A ``<runtime>.Client(**settings)`` for several deliveries; closed (QUIT) on exit."""
    if runtime == "blocking":
        with blocking.Client(**settings) as client:
            yield SyncClient(runtime, client, None)
        return
    module: Any = lmtp_asyncio if runtime == "asyncio" else lmtp_trio
    with LoopThread(runtime) as loop:
        client = module.Client(**settings)
        try:
            yield SyncClient(runtime, client, loop)
        finally:
            loop.call(client.close)


# ---- servers ------------------------------------------------------------------------------


@contextlib.contextmanager
def running_server(runtime: str, handler: Handler, **settings: Any) -> Iterator[Any]:
    """``<runtime>.Server(handler, **settings)`` running in a background thread; yields its
    address (a UNIX path, or (host, port) on 127.0.0.1 with a free port unless given) and
    stops it on exit."""
    if "socket_path" not in settings:
        settings.setdefault("port", 0)
    if runtime == "blocking":
        with blocking.Server(handler, **settings) as server:
            yield server.address
        return
    with LoopThread(runtime) as loop:
        if runtime == "asyncio":
            aserver = lmtp_asyncio.Server(handler, **settings)
            loop.call(aserver.start)
            try:
                yield aserver.address
            finally:
                loop.call(aserver.close)
        elif runtime == "trio":
            assert loop.nursery is not None
            nursery = loop.nursery
            tserver = loop.call(nursery.start, lmtp_trio.Server(handler, **settings).serve)
            try:
                yield tserver.address
            finally:
                loop.call_sync(tserver.close)
        else:
            raise ValueError(f"unknown runtime {runtime!r}")


# ---- handlers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One message as the handler saw it."""

    sender: str
    mail_params: Params
    recipients: tuple[str, ...]
    data: bytes
    size: int
    tls: bool
    lhlo: str
    connection: str  # the session it came on (Envelope.session: "[s7] unix:...")


@dataclass(eq=False)  # identity equality: Session compares bound methods
class Recorder(Handler):
    """Accepts by default; ``rcpt`` and ``final`` map an address to its Reply (RCPT, and
    after the data); ``fail_rcpt``/``fail_deliver`` make those calls raise for an address."""

    rcpt: Mapping[str, Reply] = field(default_factory=dict)
    final: Mapping[str, Reply | None] = field(default_factory=dict)
    fail_rcpt: frozenset[str] = frozenset()
    fail_deliver: bool = False
    secret: str = "secret-detail-0x5eed"
    senders: list[str] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mail_from(self, sender: str, params: Params) -> Any:
        with self.lock:
            self.senders.append(sender)
        return None

    def rcpt_to(self, recipient: str, params: Params) -> Any:
        with self.lock:
            self.recipients.append(recipient)
        if recipient in self.fail_rcpt:
            raise RuntimeError(f"{self.secret}: rcpt lookup crashed")
        return self.rcpt.get(recipient)

    def deliver(self, envelope: Envelope) -> Any:
        received = Received(
            envelope.sender,
            envelope.mail_params,
            tuple(envelope.recipients),
            envelope.read(),
            envelope.size,
            envelope.tls,
            envelope.lhlo,
            envelope.session,
        )
        with self.lock:
            self.messages.append(received)
        if self.fail_deliver:
            raise RuntimeError(f"{self.secret}: the store crashed")
        return [self.final.get(r) for r in envelope.recipients]

    @property
    def connections(self) -> int:
        """How many distinct connections (sessions) delivered messages."""
        return len({m.connection for m in self.messages})


async def _checkpoint() -> None:
    if sniffio.current_async_library() == "trio":
        await trio.lowlevel.checkpoint()
    else:
        await asyncio.sleep(0)


@dataclass(eq=False)
class AsyncRecorder(Recorder):
    """Recorder with ``async def`` methods that yield to the loop before answering."""

    async def mail_from(self, sender: str, params: Params) -> Any:
        await _checkpoint()
        return Recorder.mail_from(self, sender, params)

    async def rcpt_to(self, recipient: str, params: Params) -> Any:
        await _checkpoint()
        return Recorder.rcpt_to(self, recipient, params)

    async def deliver(self, envelope: Envelope) -> Any:
        await _checkpoint()
        return Recorder.deliver(self, envelope)
