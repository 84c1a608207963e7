"""Running a server as a program: until SIGTERM or SIGINT, in one process or in several.

How it works. run() starts the asyncio or trio Server, calls ready(address) once it
listens, and waits for SIGTERM or SIGINT (asyncio: loop.add_signal_handler(); trio:
open_signal_receiver(), kept open until the end, so that neither runtime turns a
signal into KeyboardInterrupt or dies of a second one). It then stops the server the
graceful way (no new connections, the socket file removed, idle sessions answered
421, transactions in flight given `grace` seconds) and returns the signal's name.

run_workers() is a pre-forking supervisor. The parent binds the listening socket
itself (Listening, so the socket path rules hold), blocks SIGTERM, SIGINT and SIGCHLD
and takes them with sigwaitinfo() (no handler runs at an awkward moment), and forks
`count` workers. Each worker restores the signal mask and run()s the server on the
inherited socket (the `sock` setting: a worker never removes the path). A worker that
dies is reaped and replaced, after RESTART_PAUSE if it lived less than that (a worker
that cannot start must not fork in a loop). On SIGTERM or SIGINT the parent closes its
copy of the socket, removes the socket file, passes SIGTERM on to every worker, waits
for them (the grace period and STOP_MARGIN, then SIGKILL) and returns the signal's
name. Forking needs a process without threads: call it before anything starts one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

from ._config import ServerConfig
from ._listen import Listening
from ._session import Handler

__all__ = ["run", "run_workers"]

STOPPING = (signal.SIGTERM, signal.SIGINT)
RESTART_PAUSE = 1.0
STOP_MARGIN = 10.0

Ready = Callable[[Any], None]


def run(
    runtime: str, handler: Handler, settings: Mapping[str, Any], ready: Ready | None = None
) -> str:
    """Serve until SIGTERM or SIGINT, then stop gracefully; the signal's name."""
    if runtime == "trio":
        return _run_trio(handler, settings, ready)
    return asyncio.run(_run_asyncio(handler, settings, ready))


async def _run_asyncio(handler: Handler, settings: Mapping[str, Any], ready: Ready | None) -> str:
    from . import asyncio as driver  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[signal.Signals] = []

    def stopping(signum: signal.Signals) -> None:
        received.append(signum)
        stop.set()

    for signum in STOPPING:
        loop.add_signal_handler(signum, stopping, signum)
    try:
        async with driver.Server(handler, **settings) as server:
            if ready is not None:
                ready(server.address)
            await stop.wait()
    finally:
        for signum in STOPPING:
            loop.remove_signal_handler(signum)
    return received[0].name


def _run_trio(handler: Handler, settings: Mapping[str, Any], ready: Ready | None) -> str:
    # trio is an optional extra: imported only when asked for.
    import trio  # noqa: PLC0415

    from . import trio as driver  # noqa: PLC0415

    received: list[signal.Signals] = []

    async def main() -> None:
        with trio.open_signal_receiver(*STOPPING) as signals:
            async with trio.open_nursery() as nursery:
                server = await nursery.start(driver.Server(handler, **settings).serve)
                if ready is not None:
                    ready(server.address)
                async for signum in signals:
                    received.append(signal.Signals(signum))
                    break
                server.close()  # serve() returns once the sessions have ended

    try:
        trio.run(main)
    except BaseExceptionGroup as group:  # one failure, wrapped by the nurseries
        raise _only(group) from None
    return received[0].name


def _only(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def run_workers(
    count: int,
    runtime: str,
    handler: Handler,
    settings: Mapping[str, Any],
    *,
    ready: Ready,
    say: Callable[[str], None],
) -> str:
    """Serve in `count` worker processes sharing one listening socket, until SIGTERM
    or SIGINT; the signal's name."""
    config = ServerConfig(**settings)
    listening = Listening(config)
    for unused in listening.sockets[1:]:  # a host with several addresses: the first only
        unused.close()
    shared = {**settings, "socket_path": None, "sock": listening.sockets[0]}
    waited = {signal.SIGCHLD, *STOPPING}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    workers: dict[int, float] = {}  # pid -> when it started

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                run(runtime, handler, shared)
                status = 0
            except KeyboardInterrupt:
                status = 0
            finally:
                os._exit(status)
        workers[pid] = time.monotonic()
        say(f"worker {pid} started")

    def reap() -> int:
        """Collect the workers that ended; how many lived less than RESTART_PAUSE."""
        early = 0
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return early
            if pid == 0:
                return early
            started = workers.pop(pid, None)
            if started is not None:
                early += time.monotonic() - started < RESTART_PAUSE
                say(f"worker {pid} {_ended(status)}")

    try:
        for _ in range(count):
            spawn()
        ready(listening.address)
        owed, due = 0, 0.0  # workers to start again, and when
        while True:
            if owed:
                info = signal.sigtimedwait(waited, max(due - time.monotonic(), 0.0))
            else:
                info = signal.sigwaitinfo(waited)
            if info is None or (owed and time.monotonic() >= due):
                for _ in range(owed):
                    spawn()
                owed = 0
            if info is None:
                continue
            if info.si_signo in STOPPING:
                name = signal.Signals(info.si_signo).name
                break
            before = len(workers)
            early = reap()
            for _ in range(before - len(workers) - early):
                spawn()
            if early:
                owed, due = owed + early, time.monotonic() + RESTART_PAUSE
        listening.close()  # no new connections; the socket file goes
        for pid in workers:
            _kill(pid, signal.SIGTERM)
        end = time.monotonic() + config.grace + STOP_MARGIN
        while workers and (left := end - time.monotonic()) > 0:
            if signal.sigtimedwait({signal.SIGCHLD}, left) is not None:
                reap()
        for pid in list(workers):
            _kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            say(f"worker {pid} killed after the grace period")
        return name
    finally:
        listening.close()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _kill(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.kill(pid, signum)


def _ended(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
