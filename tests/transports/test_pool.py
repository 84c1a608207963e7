"""Pools, shared Clients and recipient limits, over real UNIX sockets, in every client runtime.

How it works. ``Driver`` holds one ``Pool`` or ``Client`` of a runtime and drives it from the
test's own thread: the blocking one directly (concurrent callers are threads of a
ThreadPoolExecutor), the asyncio and trio ones inside a ``LoopThread``, where a burst is one
``asyncio.gather`` or one trio nursery. Every test that exercises the client side runs once
per client runtime (RUNTIMES).

``CountingProxy`` sits between a client and one of our servers: a thread with a selector that
accepts on its own UNIX path, connects each client to the server's path and pipes the bytes
both ways. It counts the connections it accepted, those live now and the most live at once,
and keeps what passed in each direction (so a test can count QUITs or look for a 452). To
count a closed connection before a new one, each round drains every readable socket, end of
file included, before it accepts at most one connection; waits on the live count use a
Condition with a bound, never a sleep.

``ScriptedServer`` is a small LMTP server on blocking sockets for what ours never does: it
advertises ``LIMITS RCPTMAX=`` or answers RCPT with a scripted 452 (policy(transaction,
accepted so far, address)), and records each transaction's RCPTs, acceptances and body.

Covered: 300 concurrent deliveries through Pool(max_connections=8) (limit never exceeded,
each recipient's status, stage and code, exactly the expected messages stored, nothing left
open after close, every connection QUIT); 50 callers on one shared Client (one connection);
a server restart between bursts; idle_timeout, max_lifetime, wait_timeout and a total
deadline spent waiting for a connection; recipient limits (452 4.5.3 from our server,
recipients_per_transaction, LIMITS RCPTMAX, a second refusal standing, no retry without an
acceptance, one-shot bodies replayed, and their spool closed); connection reuse on
descriptors above 1023; and regressions for bugs found while writing these (a blocking
Pool.close() that did not wait, a false UNKNOWN when the total passed before a write, a
one-shot body replayed empty after a transaction without data, an unclosed spool).
The servers that refuse hundreds of recipients per session run without the refusal tarpit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import resource
import select
import selectors
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from lmtp_core import Limits, Reply, Stage, Status, TransactionResult
from transports import Envelope, PoolTimeout, Timeout, Timeouts, blocking
from transports import asyncio as lmtp_asyncio
from transports import trio as lmtp_trio

from .runtimes import (
    ASYNC_RUNTIMES,
    RUNTIMES,
    LoopThread,
    Recorder,
    client_session,
    resource_warnings,
    running_server,
)

SENDER = "bounces@example.net"
REFUSED = "refused@example.org"  # 550 5.1.1 at RCPT
FULL = "full@example.org"  # accepted, then 452 4.2.2 after the data
RCPT_POLICY = {REFUSED: Reply(550, "5.1.1", "no")}
FINAL_POLICY: dict[str, Reply | None] = {FULL: Reply(452, "4.2.2", "full")}
BOUND = 10.0  # the longest any wait in these tests may take before it counts as a hang
#: The server's refusal tarpit off: these sessions refuse hundreds of recipients on purpose
NO_TARPIT: dict[str, Any] = {"refusal_soft_limit": 1_000_000}

Outcome = tuple[str, Status, Stage, int | None]


# ---- messages and outcomes ----------------------------------------------------------------


def message(number: int) -> bytes:
    return f"Subject: msg {number}\r\nMessage-ID: <{number}@pool.test>\r\n\r\nbody\r\n".encode()


def number_of(data: bytes) -> int:
    match = re.match(rb"Subject: msg (\d+)\r\n", data)
    assert match is not None, data[:80]
    return int(match[1])


def expected(address: str) -> tuple[Status, Stage, int]:
    if address == REFUSED:
        return Status.PERMANENT, Stage.RCPT, 550
    if address == FULL:
        return Status.TEMPORARY, Stage.DATA, 452
    return Status.DELIVERED, Stage.DATA, 250


def outcomes(result: TransactionResult) -> list[Outcome]:
    return [
        (r.recipient, r.status, r.stage, r.reply.code if r.reply else None)
        for r in result.recipients
    ]


def check(result: object, recipients: Sequence[str]) -> None:
    """One outcome per recipient given, in order, each the one the server's policy makes."""
    assert isinstance(result, TransactionResult), repr(result)
    assert outcomes(result) == [(a, *expected(a)) for a in recipients]


def mixed(number: int) -> list[str]:
    """Recipients of delivery `number`: delivered, refused at RCPT, failing after the data,
    duplicates, and some with nobody accepted at all."""
    user = f"u{number}@example.org"
    return [
        [user],
        [user, REFUSED],
        [FULL, user],
        [user, REFUSED, FULL, user],
        [REFUSED],
    ][number % 5]


def stored(recipients: Sequence[str]) -> tuple[str, ...]:
    """The recipients a message is stored for: everyone accepted at RCPT (FULL included:
    the handler sees it, then answers 452)."""
    return tuple(a for a in recipients if a != REFUSED)


def received(handler: Recorder) -> dict[int, tuple[str, ...]]:
    """Message number -> the recipients it was received for; each number at most once."""
    seen: dict[int, tuple[str, ...]] = {}
    for item in handler.messages:
        number = number_of(item.data)
        assert number not in seen, f"message {number} received twice"
        seen[number] = item.recipients
    return seen


def errors(results: Sequence[object]) -> list[str]:
    return [repr(r) for r in results if not isinstance(r, TransactionResult)]


# ---- a Pool or Client of any runtime, from this thread --------------------------------------


class Driver:
    """A ``<runtime>.Pool`` or ``<runtime>.Client`` (``kind``) driven from synchronous code."""

    def __init__(self, runtime: str, kind: str, **settings: Any) -> None:
        self.runtime = runtime
        self._kind = kind
        self._settings = settings
        self._loop: LoopThread | None = None
        self._stack = contextlib.ExitStack()
        self._executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="caller")
        self.target: Any = None

    def __enter__(self) -> Driver:
        try:
            if self.runtime == "blocking":
                self.target = getattr(blocking, self._kind)(**self._settings)
            else:
                module: Any = lmtp_asyncio if self.runtime == "asyncio" else lmtp_trio
                self._loop = self._stack.enter_context(LoopThread(self.runtime))
                factory = functools.partial(getattr(module, self._kind), **self._settings)
                self.target = self._loop.call_sync(factory)
            self._stack.callback(self._executor.shutdown, wait=True)
            self._stack.callback(self.close)
            if self._loop is None:
                self.target.__enter__()
            else:
                self._loop.call(self.target.__aenter__)
        except BaseException:
            self._stack.close()
            self._executor.shutdown()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def close(self) -> None:
        """Close the Pool or Client (QUIT); the loop keeps running until __exit__."""
        if self._loop is None:
            self.target.close()
        else:
            self._loop.call(self.target.close)

    def stat(self, name: str) -> int:
        """A pool's open, idle or busy count, read in the pool's own thread."""
        if self._loop is None:
            return int(getattr(self.target, name))
        return int(self._loop.call_sync(getattr, self.target, name))

    def deliver(self, body: Any, recipients: Sequence[str]) -> TransactionResult:
        if self._loop is None:
            result: TransactionResult = self.target.deliver(body, SENDER, recipients)
            return result
        result = self._loop.call(self.target.deliver, body, SENDER, recipients)
        return result

    def later(self, function: Callable[[], object]) -> Future[object]:
        """function() called in another thread."""
        return self._executor.submit(function)

    def submit(self, body: Any, recipients: Sequence[str]) -> Future[TransactionResult]:
        """deliver() started in another thread; the result later."""
        return self._executor.submit(self.deliver, body, recipients)

    def burst(self, jobs: Sequence[tuple[Any, Sequence[str]]]) -> list[object]:
        """All the deliveries at once; each one's result, or the exception it raised."""
        if self._loop is None:
            return list(self._executor.map(self._attempt, jobs))
        results: list[object] = self._loop.call(self._burst, jobs)
        return results

    def _attempt(self, job: tuple[Any, Sequence[str]]) -> object:
        try:
            return self.deliver(*job)
        except Exception as exc:
            return exc

    async def _burst(self, jobs: Sequence[tuple[Any, Sequence[str]]]) -> list[object]:
        deliver = self.target.deliver
        if self.runtime == "asyncio":
            calls = (deliver(body, SENDER, recipients) for body, recipients in jobs)
            return list(await asyncio.gather(*calls, return_exceptions=True))
        results: list[object] = [None] * len(jobs)

        async def one(index: int, body: Any, recipients: Sequence[str]) -> None:
            try:
                results[index] = await deliver(body, SENDER, recipients)
            except Exception as exc:
                results[index] = exc

        async with trio.open_nursery() as nursery:
            for index, (body, recipients) in enumerate(jobs):
                nursery.start_soon(one, index, body, recipients)
        return results

    def gated_body(
        self, head: bytes, tail: bytes
    ) -> tuple[Any, threading.Event, Callable[[], None]]:
        """A one-shot body that yields `head`, sets `started`, then waits (in the client's
        runtime, at most BOUND) until release() before it yields `tail`."""
        started = threading.Event()
        loop = self._loop
        if loop is None:
            gate = threading.Event()

            def pieces() -> Iterator[bytes]:
                yield head
                started.set()
                gate.wait(BOUND)
                yield tail

            return pieces(), started, gate.set
        if self.runtime == "asyncio":
            event: Any = loop.call_sync(asyncio.Event)

            async def apieces() -> AsyncIterator[bytes]:
                yield head
                started.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(BOUND):
                        await event.wait()
                yield tail

        else:
            event = trio.Event()

            async def apieces() -> AsyncIterator[bytes]:
                yield head
                started.set()
                with trio.move_on_after(BOUND):
                    await event.wait()
                yield tail

        return apieces(), started, lambda: loop.call_sync(event.set)


# ---- the counting proxy ---------------------------------------------------------------------


def _readable(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class CountingProxy:
    """Pipes each connection made to `path` into a new connection to `target`, counting."""

    def __init__(self, path: str, target: str) -> None:
        self.path, self.target = path, target
        self.accepted = 0  # connections accepted in all
        self.live = 0  # connections open now
        self.max_live = 0  # the most open at once
        self.upstream = bytearray()  # every byte clients sent
        self.downstream = bytearray()  # every byte the server sent
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._clients: set[socket.socket] = set()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(1024)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._run, name="counting-proxy", daemon=True)

    def __enter__(self) -> CountingProxy:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._wake_w.send(b"x")
        self._thread.join(BOUND)
        assert not self._thread.is_alive(), "the proxy thread did not stop"
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()
        if self.error is not None:
            raise AssertionError("the proxy failed") from self.error

    def wait_live(self, count: int, timeout: float = BOUND) -> bool:
        """Wait (at most `timeout`) until exactly `count` connections are live."""
        with self._cond:
            return self._cond.wait_for(lambda: self.live == count, timeout)

    def _run(self) -> None:
        try:
            while True:
                keys = [key for key, _ in self._selector.select()]
                if any(key.fileobj is self._wake_r for key in keys):
                    return
                # Ends of file first: a connection closed before a new one was made is
                # never counted together with it.
                for key in keys:
                    sock = key.fileobj
                    if isinstance(sock, socket.socket) and sock in self._peers:
                        self._drain(sock)
                if any(key.fileobj is self._listener for key in keys):
                    self._accept()
        except BaseException as exc:
            self.error = exc
        finally:
            for sock in list(self._peers):
                if sock in self._peers:
                    self._drop(sock)

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.connect(self.target)
        except OSError:
            client.close()
            server.close()
            return
        for sock in (client, server):
            sock.settimeout(BOUND)
            self._selector.register(sock, selectors.EVENT_READ)
        self._peers[client], self._peers[server] = server, client
        self._clients.add(client)
        with self._cond:
            self.accepted += 1
            self.live += 1
            self.max_live = max(self.max_live, self.live)

    def _drain(self, sock: socket.socket) -> None:
        """Forward everything readable now; an end of file (or error) ends the pair."""
        peer = self._peers[sock]
        log = self.upstream if sock in self._clients else self.downstream
        while True:
            try:
                data = sock.recv(65536)
                if data:
                    with self._cond:
                        log += data
                    peer.sendall(data)
            except OSError:
                data = b""
            if not data:
                self._drop(sock)
                return
            if not _readable(sock):
                return

    def _drop(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock)
        del self._peers[peer]
        for one in (sock, peer):
            self._selector.unregister(one)
            self._clients.discard(one)
            one.close()
        with self._cond:
            self.live -= 1
            self._cond.notify_all()


@contextlib.contextmanager
def behind_proxy(
    sock_path: str, handler: Recorder, *, server: str = "asyncio", **settings: Any
) -> Iterator[CountingProxy]:
    """One of our servers on `sock_path`, and a CountingProxy in front of it."""
    front = os.path.join(os.path.dirname(sock_path), "proxy.sock")
    with (
        running_server(server, handler, socket_path=sock_path, **settings),
        CountingProxy(front, sock_path) as proxy,
    ):
        yield proxy


# ---- a scripted server ----------------------------------------------------------------------

#: (transaction index, recipients accepted so far in it, address) -> the RCPT reply line
Policy = Callable[[int, int, str], bytes]


@dataclass
class Transaction:
    rcpts: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    data: bytes | None = None


class ScriptedServer:
    """An LMTP server on blocking sockets in a thread, one connection at a time: it offers
    `extensions` after LHLO, answers RCPT by `policy`, and accepts every message."""

    def __init__(self, path: str, policy: Policy, extensions: Sequence[str]) -> None:
        self.policy = policy
        self.extensions = ["PIPELINING", *extensions]
        self.transactions: list[Transaction] = []
        self.connections = 0
        self.error: BaseException | None = None
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(8)
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="scripted-server", daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._wake_w.send(b"x")
        self._thread.join(BOUND)
        assert not self._thread.is_alive(), "the scripted server did not stop"
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        if self.error is not None:
            raise AssertionError("the scripted server failed") from self.error

    def _run(self) -> None:
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._listener, selectors.EVENT_READ)
                selector.register(self._wake_r, selectors.EVENT_READ)
                while True:
                    keys = [key.fileobj for key, _ in selector.select()]
                    if self._wake_r in keys:
                        return
                    conn, _ = self._listener.accept()
                    self.connections += 1
                    with conn:
                        conn.settimeout(BOUND)
                        self._serve(conn)
        except BaseException as exc:
            self.error = exc

    def _serve(self, conn: socket.socket) -> None:
        buffer = bytearray()

        def line() -> bytes | None:
            while b"\r\n" not in buffer:
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                buffer.extend(chunk)
            end = buffer.index(b"\r\n")
            text = bytes(buffer[:end])
            del buffer[: end + 2]
            return text

        def send(*lines: bytes) -> None:
            conn.sendall(b"".join(one + b"\r\n" for one in lines))

        send(b"220 fake.example LMTP")
        transaction: Transaction | None = None
        while (command := line()) is not None:
            verb = command[:4].upper()
            if verb == b"LHLO":
                names = ["fake.example", *self.extensions]
                send(
                    *[
                        f"250{'-' if i < len(names) - 1 else ' '}{n}".encode()
                        for i, n in enumerate(names)
                    ]
                )
            elif verb == b"MAIL":
                transaction = Transaction()
                self.transactions.append(transaction)
                send(b"250 2.1.0 ok")
            elif verb == b"RCPT" and transaction is not None:
                address = command.decode().partition("<")[2].partition(">")[0]
                transaction.rcpts.append(address)
                index = len(self.transactions) - 1
                reply = self.policy(index, len(transaction.accepted), address)
                if reply.startswith(b"2"):
                    transaction.accepted.append(address)
                send(reply)
            elif verb == b"DATA":
                if transaction is None or not transaction.accepted:
                    send(b"503 5.5.1 no valid recipients")
                    continue
                send(b"354 go ahead")
                body = bytearray()
                while (text := line()) != b".":
                    if text is None:
                        return
                    body += (text[1:] if text.startswith(b".") else text) + b"\r\n"
                transaction.data = bytes(body)
                send(*[b"250 2.0.0 saved"] * len(transaction.accepted))
                transaction = None
            elif verb == b"RSET":
                transaction = None
                send(b"250 2.0.0 ok")
            elif verb == b"QUIT":
                send(b"221 2.0.0 bye")
                return
            else:
                send(b"500 5.5.2 unexpected " + command[:20])


def rcpts(server: ScriptedServer) -> list[list[str]]:
    return [t.rcpts for t in server.transactions]


# ---- 1. hundreds of deliveries through one pool ---------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_pool_hundreds_of_concurrent_deliveries(runtime: str, sock_path: str) -> None:
    handler = Recorder(rcpt=RCPT_POLICY, final=FINAL_POLICY)
    jobs = [(message(n), mixed(n)) for n in range(300)]
    with (
        behind_proxy(sock_path, handler, **NO_TARPIT) as proxy,
        Driver(runtime, "Pool", socket_path=proxy.path, max_connections=8) as pool,
    ):
        results = pool.burst(jobs)
        assert not errors(results)
        for result, (_, recipients) in zip(results, jobs, strict=True):
            check(result, recipients)
        assert pool.stat("busy") == 0
        assert 1 <= pool.stat("open") == pool.stat("idle") <= 8
        pool.close()
        assert pool.stat("open") == 0
        assert proxy.wait_live(0), f"{proxy.live} connections left open"
        assert 2 <= proxy.max_live <= 8, proxy.max_live
        # every connection ended with QUIT, none was dropped
        assert proxy.upstream.count(b"QUIT\r\n") == proxy.accepted
    want = {n: stored(r) for n, (_, r) in enumerate(jobs) if stored(r)}
    assert received(handler) == want
    assert len(handler.messages) == len(want) == 240


# ---- 2. one Client shared by 50 callers -----------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_shared_client_serializes_concurrent_callers(runtime: str, sock_path: str) -> None:
    handler = Recorder(rcpt=RCPT_POLICY, final=FINAL_POLICY)
    jobs = [(message(n), mixed(n)) for n in range(50)]
    with (
        behind_proxy(sock_path, handler, **NO_TARPIT) as proxy,
        Driver(runtime, "Client", socket_path=proxy.path) as client,
    ):
        results = client.burst(jobs)
        assert not errors(results)
        for result, (_, recipients) in zip(results, jobs, strict=True):
            check(result, recipients)
        client.close()
        assert proxy.wait_live(0)
    assert proxy.accepted == 1
    assert handler.connections == 1
    assert received(handler) == {n: stored(r) for n, (_, r) in enumerate(jobs) if stored(r)}


# ---- 3. a server restart between two bursts -------------------------------------------------


@dataclass(eq=False)
class GatheringRecorder(Recorder):
    """A Recorder for the trio server whose first `parties` deliveries wait for each other,
    so that they are all under way at once (on as many connections)."""

    parties: int = 4
    arrived: int = 0
    together: trio.Event = field(default_factory=trio.Event)

    async def deliver(self, envelope: Envelope) -> Any:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.together.set()
        with trio.fail_after(BOUND):
            await self.together.wait()
        return Recorder.deliver(self, envelope)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_server_restart_between_bursts(runtime: str, sock_path: str) -> None:
    first, second = GatheringRecorder(), Recorder()
    with Driver(runtime, "Pool", socket_path=sock_path, max_connections=4, idle_timeout=60) as pool:
        with running_server("trio", first, socket_path=sock_path):
            results = pool.burst([(message(n), [f"a{n}@example.org"]) for n in range(4)])
            assert not errors(results)
            assert all(isinstance(r, TransactionResult) and r.all_delivered for r in results)
            assert first.connections == 4
            assert pool.stat("idle") == pool.stat("open") == 4
        # the server is gone, its sessions closed; the four idle connections are stale
        with running_server("trio", second, socket_path=sock_path):
            jobs = [(message(n), [f"b{n}@example.org"]) for n in range(10, 22)]
            results = pool.burst(jobs)
            assert not errors(results)
            for result, (_, recipients) in zip(results, jobs, strict=True):
                check(result, recipients)
            assert pool.stat("open") <= 4
            pool.close()
    assert received(second) == {n: tuple(r) for n, (_, r) in enumerate(jobs, 10)}
    assert 1 <= second.connections <= 4


# ---- 4. idle timeout --------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_idle_connections_are_quit_after_idle_timeout(runtime: str, sock_path: str) -> None:
    handler = Recorder()
    with (
        behind_proxy(sock_path, handler) as proxy,
        Driver(
            runtime, "Pool", socket_path=proxy.path, max_connections=4, idle_timeout=0.3
        ) as pool,
    ):
        jobs = [(message(n), [f"u{n}@example.org"]) for n in range(12)]
        results = pool.burst(jobs)
        assert not errors(results)
        opened = proxy.accepted
        assert 1 <= opened <= 4
        if runtime == "trio":
            # No reaper in the background (trio runs no task outside the caller's
            # nursery): once the idle timeout has passed, the next delivery reaps.
            time.sleep(0.3 * 2)  # the idle timeout itself is what is tested
            assert proxy.live == opened
            check(pool.deliver(message(99), ["late@example.org"]), ["late@example.org"])
            assert proxy.upstream.count(b"QUIT\r\n") == opened  # QUIT, not dropped
            assert proxy.accepted == opened + 1
            assert len(handler.messages) == 13
            return
        start = time.monotonic()
        assert proxy.wait_live(0, timeout=3.0), f"{proxy.live} still open while the pool is"
        assert time.monotonic() - start < 3.0
        assert pool.stat("open") == pool.stat("idle") == 0
        assert proxy.upstream.count(b"QUIT\r\n") == opened  # QUIT, not dropped
        # the pool still works: it opens a new connection
        check(pool.deliver(message(99), ["late@example.org"]), ["late@example.org"])
        assert proxy.accepted == opened + 1
    assert len(handler.messages) == 13


# ---- 5. max lifetime ----------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_connection_older_than_max_lifetime_is_not_reused(runtime: str, sock_path: str) -> None:
    lifetime = 0.3
    handler = Recorder()
    with (
        behind_proxy(sock_path, handler) as proxy,
        Driver(
            runtime, "Pool", socket_path=proxy.path, max_lifetime=lifetime, idle_timeout=60
        ) as pool,
    ):
        begin = time.monotonic()
        check(pool.deliver(message(1), ["a@example.org"]), ["a@example.org"])
        check(pool.deliver(message(2), ["b@example.org"]), ["b@example.org"])
        young = time.monotonic() - begin < lifetime
        if young:  # both deliveries inside the lifetime: one connection, reused
            assert proxy.accepted == 1
        time.sleep(lifetime)  # what is tested: the connection outlives max_lifetime
        check(pool.deliver(message(3), ["c@example.org"]), ["c@example.org"])
        assert proxy.accepted == (2 if young else 3)
        assert proxy.wait_live(1), "the old connection was not closed"
        assert pool.stat("open") == 1
    assert handler.connections == proxy.accepted


# ---- 6. waiting for a connection --------------------------------------------------------------


@dataclass(eq=False)
class HoldingRecorder(Recorder):
    """For the blocking server: a delivery (to one of `held`, or any) waits in the handler
    until release is set; entered tells that one has."""

    held: frozenset[str] | None = None
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def deliver(self, envelope: Envelope) -> Any:
        if self.held is None or self.held & set(envelope.recipients):
            self.entered.set()
            self.release.wait(BOUND)
        return super().deliver(envelope)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_wait_timeout_ends_in_pool_timeout(runtime: str, sock_path: str) -> None:
    handler = HoldingRecorder()
    with (
        running_server("blocking", handler, socket_path=sock_path),
        Driver(runtime, "Pool", socket_path=sock_path, max_connections=1, wait_timeout=0.3) as pool,
    ):
        first = pool.submit(message(1), ["first@example.org"])
        try:
            assert handler.entered.wait(BOUND)
            start = time.monotonic()
            with pytest.raises(PoolTimeout, match=r"within 0\.3 s") as caught:
                pool.deliver(message(2), ["second@example.org"])
            waited = time.monotonic() - start
        finally:
            handler.release.set()
        assert isinstance(caught.value, Timeout)
        assert 0.25 <= waited <= 1.5, waited
        check(first.result(BOUND), ["first@example.org"])
        check(pool.deliver(message(3), ["third@example.org"]), ["third@example.org"])
        assert pool.stat("open") == 1
    assert received(handler) == {1: ("first@example.org",), 3: ("third@example.org",)}


@pytest.mark.parametrize("kind", ["Pool", "Client"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_total_deadline_bounds_the_wait_for_a_connection(
    runtime: str, kind: str, sock_path: str
) -> None:
    """The holder's body stalls (the caller's own code, not a network wait), so it keeps
    the only connection past the total; the second delivery must give up at the total."""
    handler = Recorder()
    settings: dict[str, Any] = {"socket_path": sock_path, "timeout": Timeouts(total=0.3)}
    if kind == "Pool":
        settings.update(max_connections=1, wait_timeout=30)
    with (
        running_server("blocking", handler, socket_path=sock_path),
        Driver(runtime, kind, **settings) as client,
    ):
        body, started, release = client.gated_body(b"Subject: held\r\n\r\n", b"tail\r\n")
        holder = client.submit(body, ["holder@example.org"])
        try:
            assert started.wait(BOUND)
            start = time.monotonic()
            with pytest.raises(Timeout) as caught:
                client.deliver(message(2), ["second@example.org"])
            waited = time.monotonic() - start
        finally:
            release()
        assert waited <= 0.3 + 0.2, waited  # what was left of its 0.3 s, not 30 s
        assert isinstance(caught.value, PoolTimeout if kind == "Pool" else Timeout)
        assert "total deadline of 0.3 s" in str(caught.value)
        held = holder.result(BOUND)  # no exception escapes; its outcome: the next test
        assert [r.reply for r in held.recipients] == [None]
        assert held.recipients[0].status is not Status.DELIVERED
        check(client.deliver(message(3), ["third@example.org"]), ["third@example.org"])
    assert received(handler) == {3: ("third@example.org",)}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_total_deadline_passed_in_the_body_is_temporary(runtime: str, sock_path: str) -> None:
    """The total passes while the caller's body stalls: the end of data was never written,
    so nothing can have been stored: TEMPORARY, not UNKNOWN."""
    handler = Recorder()
    with (
        running_server("blocking", handler, socket_path=sock_path),
        Driver(runtime, "Client", socket_path=sock_path, timeout=Timeouts(total=0.3)) as client,
    ):
        body, started, release = client.gated_body(b"Subject: held\r\n\r\n", b"tail\r\n")
        holder = client.submit(body, ["holder@example.org"])
        try:
            assert started.wait(BOUND)
            with pytest.raises(Timeout):  # a bounded wait for the total to pass
                client.deliver(message(2), ["second@example.org"])
        finally:
            release()
        held = holder.result(BOUND)
    assert handler.messages == []
    assert [(r.status, r.reply) for r in held.recipients] == [(Status.TEMPORARY, None)]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_close_waits_for_the_deliveries_in_flight(runtime: str, sock_path: str) -> None:
    handler = HoldingRecorder(held=frozenset({"flight@example.org"}))
    with (
        running_server("blocking", handler, socket_path=sock_path),
        Driver(runtime, "Pool", socket_path=sock_path, max_connections=2) as pool,
    ):
        check(pool.deliver(message(1), ["before@example.org"]), ["before@example.org"])
        flight = pool.submit(message(2), ["flight@example.org"])
        try:
            assert handler.entered.wait(BOUND)
            closing = pool.later(pool.close)
            with pytest.raises(TimeoutError):  # still waiting for the delivery
                closing.result(0.2)
        finally:
            handler.release.set()
        closing.result(BOUND)
        check(flight.result(BOUND), ["flight@example.org"])
        assert pool.stat("open") == 0
    assert received(handler) == {1: ("before@example.org",), 2: ("flight@example.org",)}


# ---- 7. recipient limits ----------------------------------------------------------------------


A, B, C, D, E, F = (f"{x}@example.org" for x in "abcdef")
LIMIT_3 = [
    # up to twice the limit: every deferred recipient fits in the one retry
    pytest.param([A, B, C, D, A], [(A, B, C), (D, A)], id="5-recipients"),
    # more: the retries keep to the 3 the server took, or F would be refused twice
    pytest.param([A, B, C, D, A, E, F], [(A, B, C), (D, A, E), (F,)], id="7-recipients"),
]


@pytest.mark.parametrize(("recipients", "batches"), LIMIT_3)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_452_past_the_server_limit_sends_the_rest_in_more_transactions(
    runtime: str, recipients: list[str], batches: list[tuple[str, ...]], sock_path: str
) -> None:
    handler = Recorder()
    body = message(7)
    with (
        running_server("blocking", handler, socket_path=sock_path, limits=Limits(max_recipients=3)),
        client_session(runtime, socket_path=sock_path) as client,
    ):
        result = client.deliver(body, SENDER, recipients)
    check(result, recipients)  # in the caller's order, the duplicate in its own slot
    assert [m.recipients for m in handler.messages] == batches
    assert all(m.data == body for m in handler.messages)
    assert handler.connections == 1
    assert handler.recipients == recipients  # the handler saw each once; 452s come from the core


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_recipients_per_transaction_splits_proactively(runtime: str, sock_path: str) -> None:
    handler = Recorder()
    recipients = [f"r{n}@example.org" for n in range(5)]
    # the server would answer 452 past 2: the client must never get there
    with (
        behind_proxy(
            sock_path, handler, server="blocking", limits=Limits(max_recipients=2)
        ) as proxy,
        client_session(runtime, socket_path=proxy.path, recipients_per_transaction=2) as client,
    ):
        check(client.deliver(message(1), SENDER, recipients), recipients)
    assert b"452" not in proxy.downstream
    assert [m.recipients for m in handler.messages] == [
        tuple(recipients[0:2]),
        tuple(recipients[2:4]),
        tuple(recipients[4:]),
    ]
    assert proxy.accepted == handler.connections == 1


def accept_all(transaction: int, accepted: int, address: str) -> bytes:
    return b"250 2.1.5 ok"


@pytest.mark.parametrize(
    ("rcptmax", "per_transaction", "size"), [(2, None, 2), (2, 3, 2), (3, 2, 2), (2, 1, 1)]
)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_limits_rcptmax_makes_batches(
    runtime: str, rcptmax: int, per_transaction: int | None, size: int, sock_path: str
) -> None:
    recipients = [f"r{n}@example.org" for n in range(5)]
    extensions = ["ENHANCEDSTATUSCODES", f"LIMITS RCPTMAX={rcptmax} MAILMAX=100"]
    with (
        ScriptedServer(sock_path, accept_all, extensions) as server,
        client_session(
            runtime, socket_path=sock_path, recipients_per_transaction=per_transaction
        ) as client,
    ):
        check(client.deliver(message(1), SENDER, recipients), recipients)
    assert rcpts(server) == [recipients[i : i + size] for i in range(0, 5, size)]
    assert all(t.data == message(1) for t in server.transactions)
    assert server.connections == 1


def two_per_transaction_and_never_c(enhanced: bool) -> Policy:
    """Accept two recipients per transaction, 452 (4.5.3 if `enhanced`) past them; and
    452 for c@ always."""
    too_many = b"452 4.5.3 too many recipients" if enhanced else b"452 too many recipients"

    def policy(transaction: int, accepted: int, address: str) -> bytes:
        return too_many if accepted >= 2 or address == C else b"250 2.1.5 ok"

    return policy


@pytest.mark.parametrize("enhanced", [True, False], ids=["4.5.3", "no-enhanced-code"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_second_452_for_the_same_recipient_stands(
    runtime: str, enhanced: bool, sock_path: str
) -> None:
    extensions = ["ENHANCEDSTATUSCODES"] if enhanced else []
    with (
        ScriptedServer(sock_path, two_per_transaction_and_never_c(enhanced), extensions) as server,
        client_session(runtime, socket_path=sock_path) as client,
    ):
        result = client.deliver(message(1), SENDER, [A, B, D, C])
    # D and C deferred once; in the retry D is accepted, and C refused again after it,
    # which stands: no third transaction
    assert rcpts(server) == [[A, B, D, C], [D, C]]
    assert [t.accepted for t in server.transactions] == [[A, B], [D]]
    assert outcomes(result) == [
        (A, Status.DELIVERED, Stage.DATA, 250),
        (B, Status.DELIVERED, Stage.DATA, 250),
        (D, Status.DELIVERED, Stage.DATA, 250),
        (C, Status.TEMPORARY, Stage.RCPT, 452),
    ]
    refusal = result.recipients[3].reply
    assert refusal is not None and refusal.enhanced == ("4.5.3" if enhanced else None)


@pytest.mark.parametrize(
    ("name", "policy", "codes"),
    [
        # nobody accepted: a 452 for the first recipient is no sign of a limit
        ("all-452", lambda t, n, a: b"452 4.5.3 too many", [452, 452]),
        # a 452 with another enhanced code (mailbox full at RCPT) is no limit either
        ("452-4.2.2", lambda t, n, a: b"452 4.2.2 full" if n else b"250 2.1.5 ok", [250, 452]),
        # nor a 451 4.5.3 or a 552 5.5.3
        ("451", lambda t, n, a: b"451 4.5.3 later" if n else b"250 2.1.5 ok", [250, 451]),
        ("552", lambda t, n, a: b"552 5.5.3 too many" if n else b"250 2.1.5 ok", [250, 552]),
    ],
)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_refusals_that_are_not_a_recipient_limit_are_not_retried(
    runtime: str, name: str, policy: Policy, codes: list[int], sock_path: str
) -> None:
    a, b = "a@example.org", "b@example.org"
    with (
        ScriptedServer(sock_path, policy, ["ENHANCEDSTATUSCODES"]) as server,
        client_session(runtime, socket_path=sock_path) as client,
    ):
        result = client.deliver(message(1), SENDER, [a, b])
    assert rcpts(server) == [[a, b]]  # one transaction, nobody tried twice
    assert [r.reply.code if r.reply else None for r in result.recipients] == codes
    assert result.recipients[1].stage is Stage.RCPT
    assert result.recipients[1].status is (
        Status.PERMANENT if codes[1] >= 500 else Status.TEMPORARY
    )
    assert [t.data for t in server.transactions] == [None if codes[0] != 250 else message(1)]


def one_shot(kind: str, pieces: Sequence[bytes]) -> Any:
    """The pieces as a generator or an async generator: readable once."""
    if kind == "generator":
        return (piece for piece in pieces)

    async def apieces() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    return apieces()


BIG_LINE = b"x" * 98 + b"\r\n"
#: 1.5 MiB, so that the spool of a one-shot body goes past memory into its temporary file;
#: a dotted line checks that what is replayed is the message, not the wire form
BIG_PIECES = [b"Subject: one-shot\r\n\r\n", b".dotted\r\n", BIG_LINE * 8000, BIG_LINE * 8000]
BIG = b"".join(BIG_PIECES)
SMALL_PIECES = [b"Subject: one-shot\r\n\r\n", b".dotted\r\n", b"tail\r\n"]
SMALL = b"".join(SMALL_PIECES)
BODY_KINDS = [(r, "generator") for r in RUNTIMES] + [(r, "async generator") for r in ASYNC_RUNTIMES]


@pytest.mark.parametrize("pieces", [SMALL_PIECES, BIG_PIECES], ids=["small", "1.5MiB"])
@pytest.mark.parametrize(("runtime", "kind"), BODY_KINDS)
def test_one_shot_body_is_spooled_replayed_and_closed(
    runtime: str, kind: str, pieces: list[bytes], sock_path: str
) -> None:
    """1.5 MiB: the spool goes past memory into its temporary file. Either way each
    transaction carries the whole body, and the spool is closed, not left to the GC."""
    handler = Recorder()
    recipients = [f"r{n}@example.org" for n in range(4)]
    with resource_warnings() as leaks:
        with (
            running_server("blocking", handler, socket_path=sock_path),
            client_session(runtime, socket_path=sock_path, recipients_per_transaction=2) as client,
        ):
            check(client.deliver(one_shot(kind, pieces), SENDER, recipients), recipients)
        assert [m.recipients for m in handler.messages] == [
            tuple(recipients[:2]),
            tuple(recipients[2:]),
        ]
        whole = b"".join(pieces)
        assert [m.data == whole for m in handler.messages] == [True, True]
    assert not leaks, leaks


@pytest.mark.parametrize(("runtime", "kind"), BODY_KINDS)
def test_one_shot_body_after_a_bdat_transaction_without_recipients(
    runtime: str, kind: str, sock_path: str
) -> None:
    handler = Recorder(rcpt={f"no{n}@example.org": Reply(550, "5.1.1", "no") for n in range(2)})
    recipients = ["no0@example.org", "no1@example.org", "a@example.org", "b@example.org"]
    with (
        running_server("blocking", handler, socket_path=sock_path),
        client_session(runtime, socket_path=sock_path, recipients_per_transaction=2) as client,
    ):
        result = client.deliver(one_shot(kind, SMALL_PIECES), SENDER, recipients)
    assert outcomes(result) == [
        *[(r, Status.PERMANENT, Stage.RCPT, 550) for r in recipients[:2]],
        *[(r, Status.DELIVERED, Stage.DATA, 250) for r in recipients[2:]],
    ]
    assert [m.data for m in handler.messages] == [SMALL]


def refuse_no(transaction: int, accepted: int, address: str) -> bytes:
    return b"550 5.1.1 no such user" if address.startswith("no") else b"250 2.1.5 ok"


@pytest.mark.parametrize(("runtime", "kind"), BODY_KINDS)
def test_one_shot_body_after_a_data_transaction_without_recipients(
    runtime: str, kind: str, sock_path: str
) -> None:
    recipients = ["no0@example.org", "no1@example.org", "a@example.org", "b@example.org"]
    with (
        ScriptedServer(sock_path, refuse_no, ["ENHANCEDSTATUSCODES"]) as server,
        client_session(runtime, socket_path=sock_path, recipients_per_transaction=2) as client,
    ):
        result = client.deliver(one_shot(kind, SMALL_PIECES), SENDER, recipients)
    assert rcpts(server) == [recipients[:2], recipients[2:]]
    assert [t.data for t in server.transactions] == [None, SMALL]
    assert outcomes(result) == [
        *[(r, Status.PERMANENT, Stage.RCPT, 550) for r in recipients[:2]],
        *[(r, Status.DELIVERED, Stage.DATA, 250) for r in recipients[2:]],
    ]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_one_shot_body_deferred_by_a_452_stays_temporary(runtime: str, sock_path: str) -> None:
    """Documented: a one-shot body is spooled only when more than one transaction is known
    to be needed beforehand; recipients deferred by a surprise 452 keep that 452."""
    handler = Recorder()
    recipients = [f"r{n}@example.org" for n in range(5)]
    with (
        running_server("blocking", handler, socket_path=sock_path, limits=Limits(max_recipients=3)),
        client_session(runtime, socket_path=sock_path) as client,
    ):
        result = client.deliver(one_shot("generator", SMALL_PIECES), SENDER, recipients)
        # the connection is still good for the next message
        check(client.deliver(message(2), SENDER, ["z@example.org"]), ["z@example.org"])
    assert outcomes(result) == [(r, Status.DELIVERED, Stage.DATA, 250) for r in recipients[:3]] + [
        (r, Status.TEMPORARY, Stage.RCPT, 452) for r in recipients[3:]
    ]
    assert [m.recipients for m in handler.messages] == [tuple(recipients[:3]), ("z@example.org",)]
    assert handler.connections == 1


# ---- 8. descriptors above 1023 ------------------------------------------------------------


@contextlib.contextmanager
def descriptors_above_1023() -> Iterator[None]:
    """Fill the descriptors below 1100 with pipes, raising RLIMIT_NOFILE if needed."""
    need = 2048
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        except (ValueError, OSError) as exc:
            pytest.skip(f"cannot raise RLIMIT_NOFILE: {exc}")
    dummies: list[int] = []
    try:
        while len(dummies) < 1100:
            dummies.extend(os.pipe())
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            assert probe.fileno() > 1023, probe.fileno()
        yield
    finally:
        for fd in dummies:
            os.close(fd)
        if soft != resource.RLIM_INFINITY and soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_connection_on_a_high_descriptor_is_reused(runtime: str, sock_path: str) -> None:
    handler = Recorder()
    with (
        descriptors_above_1023(),
        running_server("blocking", handler, socket_path=sock_path),
        client_session(runtime, socket_path=sock_path) as client,
    ):
        check(client.deliver(message(1), SENDER, ["a@example.org"]), ["a@example.org"])
        check(client.deliver(message(2), SENDER, ["b@example.org"]), ["b@example.org"])
    assert handler.connections == 1  # select() would have called it stale at >= 1024
    assert len(handler.messages) == 2
