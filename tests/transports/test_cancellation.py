"""Cancelling a delivery at any point leaves nothing behind, in every runtime.

How it works. The server runs in a child process (our asyncio Server with the default
Handler, which accepts and stores nothing), so that the descriptors this process holds
are the client's alone. The client's backend is the runtime's own, counted
(checkpoints.py): run N cancels the delivery at the Nth wait of the driver (asyncio:
task cancellation, trio: a cancel scope, blocking: KeyboardInterrupt), for N = 1, 2, ...
until a delivery completes before its Nth wait. After each cancelled run: no descriptor
more than the connections the Pool says are open (the Client's is closed), the Pool's
counters agree (nothing busy, nothing held), and the next 100 deliveries on the same Pool
(3 on the same Client) succeed; after close(), the count is back to its baseline.
ResourceWarnings are errors in this suite, and the garbage collector runs before each
count, so a socket left for it to close fails the test too.

Over a UNIX socket, TCP with STARTTLS and TCP with implicit TLS: every phase of a
delivery is a counted wait (connect, greeting, LHLO, the TLS handshake, each command,
the body, the replies, QUIT). Waits no counter reaches are tested on their own below: a
connect waiting on a full UNIX listen queue, a TLS handshake the server never answers,
a greeting that never comes, and a delivery waiting for a pool slot or a Client's turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme

from transports import asyncio as lmtp_asyncio
from transports import blocking
from transports import trio as lmtp_trio

from .checkpoints import AsyncCheckpoints, SyncCheckpoints
from .runtimes import RUNTIMES

MESSAGE = b"Subject: cancelled\r\n\r\nbody\r\n"
SENDER, RECIPIENTS = "a@example.org", ["b@example.org", "c@example.org"]
AFTER_POOL, AFTER_CLIENT = 100, 3
WAIT = 10.0

SERVER = textwrap.dedent(
    """
    import asyncio, sys
    from transports import Handler, server_context
    from transports import asyncio as driver

    async def main() -> None:
        kind, where = sys.argv[1], sys.argv[2]
        settings = {}
        if kind == "unix":
            settings["socket_path"] = where
        else:
            settings.update(host="127.0.0.1", port=0)
            context = server_context(sys.argv[3], sys.argv[4])
            settings["starttls_context" if kind == "starttls" else "ssl_context"] = context
        async with driver.Server(Handler(), **settings) as server:
            address = server.address
            print(address if isinstance(address, str) else address[1], flush=True)
            await server.serve_forever()

    asyncio.run(main())
    """
)


def descriptors() -> int:
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module", params=["unix", "starttls", "implicit"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA
) -> Iterator[dict[str, Any]]:
    """Client settings for a server in a child process."""
    kind: str = request.param
    tmp = tmp_path_factory.mktemp(kind)
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "cert.pem"))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    args = [sys.executable, "-c", SERVER, kind, str(tmp / "s.sock")]
    args += [str(tmp / "cert.pem"), str(tmp / "cert.pem")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line, "the server did not start"
        if kind == "unix":
            yield {"socket_path": line, "timeout": WAIT}
        else:
            tls = {"ssl_opts": {"cafile": str(tmp / "ca.pem")}, "timeout": WAIT}
            flag = {"starttls": True} if kind == "starttls" else {"ssl": True}
            yield {"host": "127.0.0.1", "port": int(line), **tls, **flag}
    finally:
        proc.kill()
        proc.wait(WAIT)
        assert proc.stdout is not None
        proc.stdout.close()


def delivered(result: Any) -> bool:
    return bool(result.all_delivered)


def held(target: Any) -> int:
    """Descriptors the target may hold now: its open connections. A Pool with no
    delivery in flight has every slot free and counts nothing busy."""
    if isinstance(target, lmtp_asyncio.Pool | lmtp_trio.Pool | blocking.Pool):
        assert target.busy == 0, "a cancelled delivery still counts as busy"
        assert target.open == target.idle
        assert target._withheld == 0
        assert free_slots(target) == target.pool_config.max_connections, "a slot leaked"
        return int(target.open)
    return 1 if target._connection is not None else 0


def free_slots(pool: Any) -> int:
    """The free slots of a Pool's semaphore, whichever runtime's it is."""
    slots = pool._slots
    if isinstance(slots, trio.Semaphore):
        return int(slots.value)
    if isinstance(slots, threading.Semaphore):
        return int(slots._value)
    return int(slots._free)  # transports._slots.Slots


# ---- every counted wait, in each runtime --------------------------------------------------
#
# One attempt is a delivery and then close(), with the counter armed through both, so the
# QUIT's waits (and the Pool's close) are cancelled too. A cancelled delivery is followed
# by deliveries on the same target; a cancelled close() by close() again.


class Run:
    """The cancelled attempts of one scenario: the kind of wait each was cancelled at."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []


def run_asyncio(settings: dict[str, Any], kind: str) -> Run:
    async def cancel() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)

    async def attempt(target: Any) -> str:
        # In a task of its own: a cancellation requested at a wait that does not suspend,
        # with no wait after it, ends that task cancelled (its result lost) as it returns.
        steps: list[str] = []

        async def both() -> None:
            steps.append("deliver")
            assert delivered(await target.deliver(MESSAGE, SENDER, RECIPIENTS))
            steps.append("close")
            await target.close()

        task = asyncio.create_task(both())
        await asyncio.wait([task])
        return steps[-1] if task.cancelled() else task.result() or ""

    async def main() -> Run:
        counter = AsyncCheckpoints(lmtp_asyncio.Client.default_backend, cancel)
        return await drive(counter, lmtp_asyncio, kind, settings, attempt, asyncio.gather)

    return asyncio.run(main())


def run_trio(settings: dict[str, Any], kind: str) -> Run:
    scopes: list[trio.CancelScope] = []

    async def attempt(target: Any) -> str:
        for step in ("deliver", "close"):
            with trio.CancelScope() as scope:
                scopes.append(scope)
                if step == "deliver":
                    assert delivered(await target.deliver(MESSAGE, SENDER, RECIPIENTS))
                else:
                    await target.close()
            if scope.cancelled_caught:
                return step
        return ""

    async def main() -> Run:
        async def cancel() -> None:
            scopes[-1].cancel()
            await trio.lowlevel.checkpoint()

        counter = AsyncCheckpoints(lmtp_trio.Client.default_backend, cancel)
        return await drive(counter, lmtp_trio, kind, settings, attempt, trio_gather)

    return trio.run(main)


async def drive(  # noqa: PLR0917
    counter: AsyncCheckpoints,
    driver: Any,
    kind: str,
    settings: dict[str, Any],
    attempt: Callable[[Any], Any],
    gather: Callable[..., Any],
) -> Run:
    run, baseline, n = Run(), descriptors(), 0
    while True:
        n += 1
        counter.arm(n)
        target = make(driver, kind, counter, settings)
        step = await attempt(target)
        fired, where = counter.fired, f"cancelled at wait {n}: {counter.points}"
        last = counter.at
        counter.arm(0)
        if not step:  # completed before its nth wait: there is none left to cancel
            assert not fired, f"the cancellation was swallowed: {where}"
            assert descriptors() == baseline, where
            return run
        run.cancelled.append(last)
        assert descriptors() - baseline <= held(target), where
        if step == "deliver":
            await after(target, kind, gather)
        await target.close()
        assert descriptors() == baseline, where


def run_blocking(settings: dict[str, Any], kind: str) -> Run:
    run, baseline, n = Run(), descriptors(), 0
    counter = SyncCheckpoints(blocking.Client.default_backend)
    while True:
        n += 1
        counter.arm(n)
        target = make(blocking, kind, counter, settings)
        step = ""
        try:
            step = "deliver"
            assert delivered(target.deliver(MESSAGE, SENDER, RECIPIENTS))
            step = "close"
            target.close()
            step = ""
        except KeyboardInterrupt:
            pass
        fired, where = counter.fired, f"interrupted at wait {n}: {counter.points}"
        last = counter.at
        counter.arm(0)
        if not fired:
            assert not step
            assert descriptors() == baseline, where
            return run
        assert step, where
        run.cancelled.append(last)
        assert descriptors() - baseline <= held(target), where
        if step == "deliver":
            for _ in range(AFTER_POOL if kind == "pool" else AFTER_CLIENT):
                assert delivered(target.deliver(MESSAGE, SENDER, RECIPIENTS))
        target.close()
        assert descriptors() == baseline, where


def make(driver: Any, kind: str, backend: Any, settings: dict[str, Any]) -> Any:
    if kind == "pool":
        return driver.Pool(backend=backend, max_connections=4, **settings)
    return driver.Client(backend=backend, **settings)


async def after(target: Any, kind: str, gather: Callable[..., Any]) -> None:
    """The next deliveries on the same target succeed (the Pool's, 10 at a time)."""
    if kind != "pool":
        for _ in range(AFTER_CLIENT):
            assert delivered(await target.deliver(MESSAGE, SENDER, RECIPIENTS))
        return

    async def ten() -> None:
        for _ in range(AFTER_POOL // 10):
            assert delivered(await target.deliver(MESSAGE, SENDER, RECIPIENTS))

    await gather(*(ten() for _ in range(10)))


async def trio_gather(*coroutines: Any) -> None:
    async with trio.open_nursery() as nursery:
        for coroutine in coroutines:
            nursery.start_soon(lambda c=coroutine: c)


RUNNERS = {"asyncio": run_asyncio, "trio": run_trio, "blocking": run_blocking}


@pytest.mark.parametrize("kind", ["client", "pool"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cancelled_at_every_wait_leaves_nothing_behind(
    runtime: str, kind: str, server: dict[str, Any]
) -> None:
    run = RUNNERS[runtime](server, kind)
    # Every kind of wait was cancelled at: connecting, the commands and the body, the
    # replies, (TLS) the handshake, (async) closing.
    assert {"connect", "send", "receive"} <= set(run.cancelled)
    if runtime != "blocking":
        assert "close" in run.cancelled
    if server.get("starttls"):
        assert "start_tls" in run.cancelled
    if kind == "pool":
        assert "acquire" in run.cancelled
    assert len(run.cancelled) >= 8, run.cancelled


# ---- waits inside connect and the pool, cancelled by the runtime's own timeouts -----------
#
# Each wait below lasts until the connect timeout (10 s) unless cancelled, so a
# cancellation after 0.1 s lands inside it: asyncio by wait_for() and by task.cancel(),
# trio by a cancel scope's deadline, blocking by Ctrl-C (SIGINT from an interval timer).
CANCEL_AFTER = 0.1
ROUNDS = 20


@contextlib.contextmanager
def silent_listener(family: int = socket.AF_INET, path: str = "") -> Iterator[dict[str, Any]]:
    """A listening socket that never accepts: connects complete (within the queue) and
    then nothing is ever said. Its queue is long enough for every round."""
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind(path or ("127.0.0.1", 0))
        listener.listen(ROUNDS * 4)
        yield (
            {"socket_path": path}
            if path
            else {"host": "127.0.0.1", "port": listener.getsockname()[1]}
        )


@contextlib.contextmanager
def full_unix_queue(path: str) -> Iterator[dict[str, Any]]:
    """A UNIX listener whose queue is full: a connect gets EAGAIN, and the client waits."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(0)
        queued: list[socket.socket] = []
        try:
            while True:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    sock.connect(path)
                except BlockingIOError:
                    sock.close()
                    break
                queued.append(sock)
                assert len(queued) < 100
            yield {"socket_path": path}
        finally:
            for sock in queued:
                sock.close()


@contextlib.contextmanager
def interrupt_after(seconds: float) -> Iterator[None]:
    """Ctrl-C (SIGINT, default handler: KeyboardInterrupt) after `seconds`, once."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    old_alarm = signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGINT, previous)


def cancel_rounds(runtime: str, how: str, make_target: Callable[[], Any]) -> int:
    """ROUNDS deliveries through targets from make_target(), each cancelled while it
    waits; the descriptors this process gained (0 when nothing leaked)."""
    if runtime == "blocking":
        baseline = descriptors()
        for _ in range(ROUNDS):
            target = make_target()
            with pytest.raises(KeyboardInterrupt), interrupt_after(CANCEL_AFTER):
                target.deliver(MESSAGE, SENDER, RECIPIENTS)
            held_now = held(target)
            target.close()
            assert held_now == 0
        return descriptors() - baseline

    async def asyncio_main() -> int:
        baseline = descriptors()
        for _ in range(ROUNDS):
            target = make_target()
            if how == "wait_for":
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(
                        target.deliver(MESSAGE, SENDER, RECIPIENTS), CANCEL_AFTER
                    )
            else:
                task = asyncio.create_task(target.deliver(MESSAGE, SENDER, RECIPIENTS))
                asyncio.get_running_loop().call_later(CANCEL_AFTER, task.cancel)
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert held(target) == 0
            await target.close()
        return descriptors() - baseline

    async def trio_main() -> int:
        baseline = descriptors()
        for _ in range(ROUNDS):
            target = make_target()
            with trio.move_on_after(CANCEL_AFTER) as scope:
                await target.deliver(MESSAGE, SENDER, RECIPIENTS)
            assert scope.cancelled_caught
            assert held(target) == 0
            await target.close()
        return descriptors() - baseline

    if runtime == "asyncio":
        return asyncio.run(asyncio_main())
    return trio.run(trio_main)


DRIVERS = {"blocking": blocking, "asyncio": lmtp_asyncio, "trio": lmtp_trio}
HOWS = [
    ("blocking", "interrupt"),
    ("asyncio", "wait_for"),
    ("asyncio", "cancel"),
    ("trio", "scope"),
]


@pytest.mark.parametrize("kind", ["client", "pool"])
@pytest.mark.parametrize(("runtime", "how"), HOWS)
@pytest.mark.parametrize("wait", ["greeting", "tls handshake", "full unix queue"])
def test_cancelled_while_opening_leaks_no_descriptor(
    runtime: str, how: str, kind: str, wait: str, tmp_path: Path
) -> None:
    """What leaked one descriptor per cancel under asyncio: a listener that accepts and
    never greets (20 cancels, 20 descriptors), through Pool and Client alike."""
    driver = DRIVERS[runtime]
    if wait == "full unix queue":
        where = full_unix_queue(str(tmp_path / "full.sock"))
    else:
        where = silent_listener()
    with where as settings:
        if wait == "tls handshake":
            settings["ssl"] = True
        settings["timeout"] = WAIT

        def make_target() -> Any:
            if kind == "pool":
                return driver.Pool(max_connections=2, **settings)
            return driver.Client(**settings)

        assert cancel_rounds(runtime, how, make_target) == 0


@pytest.mark.parametrize("kind", ["client", "pool"])
@pytest.mark.parametrize(("runtime", "how"), HOWS)
def test_cancelled_while_waiting_for_a_turn_or_a_slot(runtime: str, how: str, kind: str) -> None:
    """One delivery holds the only connection (its server never greets); a second waits
    for the Client's turn or the Pool's slot and is cancelled there; then the first is
    cancelled too. Nothing is held afterwards, and every descriptor is given back."""
    driver = DRIVERS[runtime]
    with silent_listener() as settings:
        settings["timeout"] = 2.0  # the first delivery's wait for its greeting, at most
        if kind == "pool":
            target = driver.Pool(max_connections=1, **settings)
        else:
            target = driver.Client(**settings)
        if runtime == "blocking":
            baseline = descriptors()

            def hold() -> None:  # ends with Timeout once the greeting is overdue
                with contextlib.suppress(Exception):
                    target.deliver(MESSAGE, SENDER, RECIPIENTS)

            first = threading.Thread(target=hold, daemon=True)
            first.start()
            with pytest.raises(KeyboardInterrupt), interrupt_after(CANCEL_AFTER):
                target.deliver(MESSAGE, SENDER, RECIPIENTS)
            # close() waits for the first delivery, which times out on its own.
            target.close()
            first.join(WAIT)
            assert not first.is_alive()
            assert held(target) == 0
            assert descriptors() == baseline
            return

        async def asyncio_main() -> None:
            baseline = descriptors()
            first = asyncio.create_task(target.deliver(MESSAGE, SENDER, RECIPIENTS))
            second = asyncio.create_task(target.deliver(MESSAGE, SENDER, RECIPIENTS))
            if how == "wait_for":
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(second, CANCEL_AFTER)
            else:
                asyncio.get_running_loop().call_later(CANCEL_AFTER, second.cancel)
                with pytest.raises(asyncio.CancelledError):
                    await second
            assert not first.done()  # still waiting for its greeting
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            assert held(target) == 0
            await target.close()
            assert descriptors() == baseline

        async def trio_main() -> None:
            baseline = descriptors()
            async with trio.open_nursery() as nursery:
                first = trio.CancelScope()

                async def hold() -> None:
                    with first:
                        await target.deliver(MESSAGE, SENDER, RECIPIENTS)

                nursery.start_soon(hold)
                await trio.testing.wait_all_tasks_blocked()
                with trio.move_on_after(CANCEL_AFTER) as scope:
                    await target.deliver(MESSAGE, SENDER, RECIPIENTS)
                assert scope.cancelled_caught
                first.cancel()
            assert held(target) == 0
            await target.close()
            assert descriptors() == baseline

        if runtime == "asyncio":
            asyncio.run(asyncio_main())
        else:
            trio.run(trio_main)
