"""Running a server as a program: until SIGTERM or SIGINT, in one process or in several.

How it works. serve_asyncio(), serve_trio() and serve_blocking() run a runtime's Server
until it is stopped, and, when asked to and in the main thread, stop it the graceful
way on SIGTERM or SIGINT (no new connections, the socket file removed, idle sessions
answered 421, transactions in flight given `grace` seconds), then return the signal's
name. They are the one implementation behind every runtime's public serve() and
behind run() (`lmtp serve`). asyncio takes the signals with loop.add_signal_handler()
and trio with open_signal_receiver(), kept open until the end, so that neither turns a
signal into KeyboardInterrupt or dies of a second one; the blocking server gets
signal.signal() handlers that call Server.shutdown(), which from serve_forever()'s own
thread only asks it to stop. Each puts back the handlers it found.

run_workers() is a pre-forking supervisor (serve_workers() is its public face). It
refuses to fork a process that runs threads (the child of such a fork can deadlock;
Python 3.12 warns). The parent binds the listening socket itself (Listening, so the
socket path rules hold), blocks SIGTERM, SIGINT and SIGCHLD and takes them with
sigwaitinfo() (no handler runs at an awkward moment), and forks `count` workers,
numbered 1 to count. A worker labels every log record it makes ("worker 2: ..."),
serves the inherited socket (the `sock` setting: a worker never removes the path)
through run(), and unblocks the signals only once its handlers are in place. A worker
that dies is reaped and replaced under its number, after RESTART_PAUSE if it lived
less than that (a worker that cannot start must not fork in a loop). On SIGTERM or
SIGINT the parent closes its copy of the socket, removes the socket file, passes
SIGTERM on to every worker, waits for them (the grace period and STOP_MARGIN, then
SIGKILL) and returns the signal's name. The workers share the connections through
_listen.py's rules: one accept per wake-up, and Loads, the workers' session counts in
memory the parent maps before forking (a worker joins its slot; the parent empties the
slot of one that ended), so that a busier worker leaves a connection to a less busy one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, Unpack

from ._config import ServerConfig, ServerSettings, settings_error
from ._listen import Listening, Loads
from ._session import Handler

if TYPE_CHECKING:
    from . import asyncio as asyncio_driver
    from . import blocking as blocking_driver
    from . import trio as trio_driver

__all__ = ["run", "run_workers", "serve_asyncio", "serve_blocking", "serve_trio", "serve_workers"]

STOPPING = (signal.SIGTERM, signal.SIGINT)
RESTART_PAUSE = 1.0
STOP_MARGIN = 10.0

Ready = Callable[[Any], None]
Runtime = Literal["asyncio", "trio", "blocking"]

log = logging.getLogger("transports.workers")


def _in_charge(handle_signals: bool) -> bool:
    """Whether to take SIGTERM and SIGINT: asked to, and able to (the main thread)."""
    return handle_signals and threading.current_thread() is threading.main_thread()


def _name(received: list[signal.Signals]) -> str | None:
    return received[0].name if received else None


@contextlib.contextmanager
def _handlers(
    install: Callable[[signal.Signals], object],
    remove: Callable[[signal.Signals], object] | None = None,
) -> Iterator[None]:
    """install() a handler for each stopping signal; remove() them and put back the
    handlers found, after."""
    saved = {signum: signal.getsignal(signum) for signum in STOPPING}
    try:
        for signum in STOPPING:
            install(signum)
        yield
    finally:
        for signum, previous in saved.items():
            if remove is not None:
                remove(signum)
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)


def serve_blocking(
    server: blocking_driver.Server, handle_signals: bool, ready: Ready | None = None
) -> str | None:
    """serve_forever() until shutdown() or, if in charge, SIGTERM or SIGINT; then
    the server has stopped gracefully. The signal's name, if one stopped it."""
    received: list[signal.Signals] = []

    def stopping(signum: int, frame: object) -> None:
        if not received:
            received.append(signal.Signals(signum))
        server.shutdown()  # from serve_forever()'s thread: only asks it to stop

    def install(signum: signal.Signals) -> None:
        signal.signal(signum, stopping)

    try:
        with _handlers(install) if _in_charge(handle_signals) else contextlib.nullcontext():
            if ready is not None:
                ready(server.address)
            server.serve_forever()
    except KeyboardInterrupt:  # SIGINT left to Python (not in charge)
        received.append(signal.SIGINT)
    finally:
        server.shutdown()  # nothing left to do once serve_forever() has returned
    return _name(received)


async def serve_asyncio(
    server: asyncio_driver.Server, handle_signals: bool, ready: Ready | None = None
) -> str | None:
    """Start the server and serve until it is closed or, if in charge, SIGTERM or
    SIGINT closes it gracefully. The signal's name, if one stopped it."""
    loop = asyncio.get_running_loop()
    received: list[signal.Signals] = []
    closing: list[asyncio.Task[None]] = []

    def stopping(signum: signal.Signals) -> None:
        if not received:
            received.append(signum)
            closing.append(loop.create_task(server.close()))

    def install(signum: signal.Signals) -> None:
        loop.add_signal_handler(signum, stopping, signum)

    taking = _in_charge(handle_signals)
    with _handlers(install, loop.remove_signal_handler) if taking else contextlib.nullcontext():
        try:
            async with server:
                if ready is not None:
                    ready(server.address)
                await server.serve_forever()
        finally:
            for task in closing:
                await task
    return _name(received)


async def serve_trio(
    server: trio_driver.Server, handle_signals: bool, task_status: Any
) -> str | None:
    """server.serve(task_status=...) until the server is closed or, if in charge,
    SIGTERM or SIGINT closes it gracefully. The signal's name, if one stopped it."""
    if not _in_charge(handle_signals):
        await server.serve(task_status=task_status)
        return None
    import trio  # noqa: PLC0415  # an optional extra: only when asked for

    received: list[signal.Signals] = []

    async def watch(signals: Any) -> None:
        async for signum in signals:
            received.append(signal.Signals(signum))
            server.close()  # serve() returns once the sessions have ended
            return

    try:
        with trio.open_signal_receiver(*STOPPING) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, signals)
                await server.serve(task_status=task_status)
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # one failure, wrapped by the nursery
        raise _only(group) from None
    return _name(received)


def _only(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


class _Started:
    """A task_status for serve_trio() called directly: started() calls ready()."""

    def __init__(self, ready: Ready | None) -> None:
        self._ready = ready

    def started(self, server: Any = None) -> None:
        if self._ready is not None:
            self._ready(server.address)


def run(
    runtime: str, handler: Handler, settings: Mapping[str, Any], ready: Ready | None = None
) -> str | None:
    """Serve until SIGTERM or SIGINT, then stop gracefully; the signal's name.
    ready(address) is called once the server listens and the signals are taken."""
    if runtime == "trio":
        # trio is an optional extra: imported only when asked for.
        import trio  # noqa: PLC0415

        from . import trio as trio_runtime  # noqa: PLC0415

        server = trio_runtime.Server(handler, **settings)
        return trio.run(serve_trio, server, True, _Started(ready))
    if runtime == "blocking":
        from . import blocking  # noqa: PLC0415

        return serve_blocking(blocking.Server(handler, **settings), True, ready)
    from . import asyncio as asyncio_runtime  # noqa: PLC0415

    async def main() -> str | None:
        return await serve_asyncio(asyncio_runtime.Server(handler, **settings), True, ready)

    return asyncio.run(main())


def serve_workers(
    handler: Handler,
    workers: int,
    *,
    runtime: Runtime = "asyncio",
    ready: Ready | None = None,
    **settings: Unpack[ServerSettings],
) -> None:
    """Serve `handler` in `workers` processes that share one listening socket, until
    SIGTERM or SIGINT; then stop them all gracefully and return.

    Call it from the main thread, before anything starts a thread: it forks, and it
    raises RuntimeError if this process runs threads already. Each worker gets a copy
    of `handler` as it is at the fork (open connections, pools and the like on first
    use, in the worker) and runs `runtime`'s server ("asyncio", "trio" or
    "blocking") with `settings` (ServerSettings; max_connections and
    handler_threads count per worker). The parent binds the socket (or serves
    `sock`) and calls ready(address) once the workers are started; a worker that
    dies is started again (after a second's pause if it lived less than that). On
    SIGTERM or SIGINT the parent stops accepting, removes the socket file (never a
    `sock` passed in), passes SIGTERM to the workers, which stop as serve() does,
    and waits for them (`grace` seconds and a margin, then SIGKILL).

    Logging: the parent logs each worker's start and end on the logger
    "transports.workers" ("worker 2 (pid 4321) started"); in a worker every log
    record's message starts with "worker N: " and the record has a `worker`
    attribute (N)."""
    settings_error("transports.serve_workers", settings, server=True)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, not {workers!r}")
    if runtime not in ("asyncio", "trio", "blocking"):
        raise ValueError(f"runtime must be 'asyncio', 'trio' or 'blocking', not {runtime!r}")

    def say(level: int, text: str) -> None:
        log.log(level, "%s", text)

    def started(address: Any) -> None:
        log.info("%d workers serving %s", workers, address)
        if ready is not None:
            ready(address)

    run_workers(workers, runtime, handler, settings, ready=started, say=say)


def _threads() -> int:
    """The threads of this process, as the system counts them (those of C libraries
    too) where it can, as Python 3.12's warning does."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - not Linux (no /proc): CI runs on Linux
        return threading.active_count()


def run_workers(
    count: int,
    runtime: str,
    handler: Handler,
    settings: Mapping[str, Any],
    *,
    ready: Ready | None,
    say: Callable[[int, str], None],
) -> str:
    """Serve in `count` worker processes sharing one listening socket, until SIGTERM
    or SIGINT; the signal's name. say(level, text) tells of workers starting and
    ending."""
    if (threads := _threads()) > 1:
        raise RuntimeError(
            f"cannot start worker processes: this process runs {threads} threads, and "
            "the child of a fork with threads can deadlock; start the workers before "
            "anything starts a thread (open what the handler needs in the workers)"
        )
    config = ServerConfig(**settings)
    listening = Listening(config)
    for unused in listening.sockets[1:]:  # a host with several addresses: the first only
        unused.close()
    shared = {**settings, "socket_path": None, "sock": listening.sockets[0]}
    loads = Loads(count)
    waited = {signal.SIGCHLD, *STOPPING}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    workers: dict[int, tuple[int, float]] = {}  # pid -> (its number, when it started)

    def spawn(number: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            loads.join(number - 1)
            os._exit(_work(number, runtime, handler, shared, mask))
        workers[pid] = (number, time.monotonic())
        say(logging.INFO, f"worker {number} (pid {pid}) started")

    def reap() -> list[tuple[int, bool]]:
        """Collect the workers that ended: (number, whether it lived < RESTART_PAUSE)."""
        ended = []
        for pid in list(workers):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: gone all the same
                done, status = pid, 0
            if done:
                number, started = workers.pop(pid)
                loads.vacate(number - 1)
                ended.append((number, time.monotonic() - started < RESTART_PAUSE))
                level = logging.INFO if status == 0 else logging.WARNING
                say(level, f"worker {number} (pid {pid}) {_ended(status)}")
        return ended

    try:
        for number in range(1, count + 1):
            spawn(number)
        if ready is not None:
            ready(listening.address)
        waiting: list[int] = []  # numbers of workers that died young, started at `due`
        due = 0.0
        while True:
            if waiting:
                info = signal.sigtimedwait(waited, max(due - time.monotonic(), 0.0))
            else:
                info = signal.sigwaitinfo(waited)
            if waiting and time.monotonic() >= due:
                for number in waiting:
                    spawn(number)
                waiting.clear()
            if info is None:
                continue
            if info.si_signo in STOPPING:
                name = signal.Signals(info.si_signo).name
                break
            for number, early in reap():
                if early:
                    waiting.append(number)
                    due = time.monotonic() + RESTART_PAUSE
                else:
                    spawn(number)
        listening.close()  # no new connections; the socket file goes
        for pid in workers:
            _kill(pid, signal.SIGTERM)
        end = time.monotonic() + config.grace + STOP_MARGIN
        reap()
        while workers and (left := end - time.monotonic()) > 0:
            if signal.sigtimedwait({signal.SIGCHLD}, left) is not None:
                reap()
        for pid, (number, _) in list(workers.items()):
            _kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            del workers[pid]
            say(logging.WARNING, f"worker {number} (pid {pid}) killed after the grace period")
        return name
    finally:
        for pid in workers:  # only after a failure here: stop them, as a stop would
            _kill(pid, signal.SIGTERM)
        listening.close()
        while signal.sigtimedwait(waited, 0) is not None:  # a second signal during the stop:
            pass  # taken here, not delivered (and fatal) once the mask is restored
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _work(
    number: int, runtime: str, handler: Handler, settings: Mapping[str, Any], mask: Any
) -> int:
    """A worker's life, in the forked child: its exit status."""
    _label_records(number)

    def unblock(address: object) -> None:  # the server's signal handlers are in place
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        log.info("serving (pid %d)", os.getpid())

    status = 1
    try:
        run(runtime, handler, settings, unblock)
        status = 0
    except KeyboardInterrupt:
        status = 0
    except BaseException:
        log.exception("failed")
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    return status


def _label_records(number: int) -> None:
    """Every log record made in this process says which worker made it."""
    make = logging.getLogRecordFactory()
    prefix = f"worker {number}: "

    def labelled(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        setattr(record, "worker", number)  # noqa: B010  # not an attribute LogRecord declares
        record.msg = prefix + str(record.msg)
        return record

    logging.setLogRecordFactory(labelled)


def _kill(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.kill(pid, signum)


def _ended(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
