"""Every runtime's serve() stops gracefully on SIGTERM and SIGINT, with any handler
(issue 21, part 2), for real: the server runs in a child process (child_server.py).

What each test asserts: a client has a delivery in flight (the handler's deliver() is
blocked on a pipe the test holds) and another session is idle when the signal comes;
the idle session gets 421 at once, the delivery, released after that, gets its real
outcome (delivered, for each recipient), the child's serve() returns (it prints
"returned") and it exits 0 within grace + 1 seconds of the signal, the socket file is
gone, and SIGTERM's handler is the default again. The blocking Server's documented
recipe (shutdown() from a signal handler while serve_forever() runs in the main
thread) does the same. handle_signals=False leaves the signal to the process (SIGTERM
kills it), and serve() away from the main thread leaves the signals alone and serves.

Every wait is bounded: the pipe and the child's exit with deadlines, replies with
socket timeouts; the only polling is for the server to take connections at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from lmtp_core import Status, TransactionResult
from transports import asyncio as lmtp_asyncio
from transports import blocking
from transports import trio as lmtp_trio

from .servers import WAIT, Blocker, Raw, code_of

ROOT = Path(__file__).resolve().parents[2]
RUNTIMES = ["blocking", "asyncio", "trio"]
GRACE = 5.0
MESSAGE = b"Subject: in flight\r\n\r\nHello.\r\n"
RECIPIENTS = ["a@example.org", "b@example.org"]


class Child:
    """child_server.py in a child process, with the pipes of its gated handler."""

    def __init__(self, tmp: Path, how: str, runtime: str, *extra: str) -> None:
        self.path = str(tmp / "lmtp.sock")
        self.out, self.err = tmp / "stdout", tmp / "stderr"
        self._entered, entered = os.pipe()
        release, self._release = os.pipe()
        command = [sys.executable, "-W", "error", "-m", "tests.transports.child_server"]
        gate = ["--gate", f"{entered},{release}"]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [*command, how, runtime, self.path, *gate, *extra],
                cwd=ROOT,
                pass_fds=(entered, release),
                stdout=out,
                stderr=err,
            )
        os.close(entered)
        os.close(release)

    def wait_listening(self) -> None:
        self._until(lambda: listening(self.path))

    def wait_log(self, pattern: str, count: int = 1) -> list[re.Match[str]]:
        """The first `count` matches of `pattern` in the child's log, waiting for them."""
        self._until(lambda: len(re.findall(pattern, self.err.read_text())) >= count)
        return list(re.finditer(pattern, self.err.read_text()))[:count]

    def _until(self, done: Callable[[], bool]) -> None:
        end = time.monotonic() + 15
        while not done():
            assert time.monotonic() < end, self.err.read_text()
            with pytest.raises(subprocess.TimeoutExpired):  # it must not have died
                self.proc.wait(0.01)

    def entered(self) -> bool:
        """Whether a deliver() call has begun (within WAIT seconds)."""
        ready, _, _ = select.select([self._entered], [], [], WAIT)
        return bool(ready) and os.read(self._entered, 1) == b"E"

    def release(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # the child has ended
            os.write(self._release, b"R")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._entered)
        os.close(self._release)


def listening(path: str) -> bool:
    """Whether a server takes connections on `path` (the file exists from bind() on,
    before listen())."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return False
    return True


@contextmanager
def child(tmp: Path, how: str, runtime: str, *extra: str) -> Iterator[Child]:
    running = Child(tmp, how, runtime, *extra)
    try:
        running.wait_listening()
        yield running
    finally:
        running.close()


def in_flight(path: str) -> tuple[threading.Thread, list[TransactionResult]]:
    """A delivery to RECIPIENTS in a thread of its own; its result lands in the list."""
    results: list[TransactionResult] = []

    def deliver() -> None:
        results.append(blocking.deliver(MESSAGE, "s@example.net", RECIPIENTS, socket_path=path))

    thread = threading.Thread(target=deliver)
    thread.start()
    return thread, results


def stops_gracefully(running: Child, signum: signal.Signals) -> float:
    """Signal the child while one session is idle and one delivery is in flight; check
    what each gets. The seconds from the signal to the child's exit."""
    with Raw(running.path) as idle:
        idle.reply()
        idle.send(b"LHLO c.example\r\n")
        idle.reply()
        thread, results = in_flight(running.path)
        try:
            assert running.entered(), running.err.read_text()
            running.proc.send_signal(signum)
            signalled = time.monotonic()
            assert code_of(idle.reply()) == b"421 4.3.2"
            assert idle.eof()
        finally:
            running.release()
            thread.join(WAIT)
    [result] = results
    assert [r.status for r in result.recipients] == [Status.DELIVERED] * 2, result
    assert [(r.reply.code, r.reply.enhanced) for r in result.recipients if r.reply] == [
        (250, "2.0.0")
    ] * 2
    status = running.proc.wait(GRACE + 1)
    took = time.monotonic() - signalled
    assert status == 0, running.err.read_text()
    assert took <= GRACE + 1
    assert not os.path.exists(running.path)
    assert running.out.read_text() == "returned restored\n"
    assert "Traceback" not in running.err.read_text()
    return took


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_gracefully_on_a_signal(
    runtime: str, signum: signal.Signals, tmp_path: Path
) -> None:
    with child(tmp_path, "serve", runtime, "--grace", str(GRACE)) as running:
        stops_gracefully(running, signum)


def test_shutdown_from_a_signal_handler_while_serve_forever_runs(tmp_path: Path) -> None:
    # signal.signal(SIGTERM, lambda *a: server.shutdown()); server.serve_forever()
    with child(tmp_path, "recipe", "blocking", "--grace", str(GRACE)) as running:
        stops_gracefully(running, signal.SIGTERM)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_recipe_and_serve_keep_their_bound_when_a_delivery_never_ends(
    runtime: str, tmp_path: Path
) -> None:
    how = "recipe" if runtime == "blocking" else "serve"
    with child(tmp_path, how, runtime, "--grace", "1") as running:
        thread, results = in_flight(running.path)
        try:
            assert running.entered()
            running.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            status = running.proc.wait(2)  # grace + 1: the handler is still blocked
            took = time.monotonic() - signalled
        finally:
            running.release()
            thread.join(WAIT)
    assert status == 0, running.err.read_text()
    assert took <= 2
    [result] = results
    assert [r.status for r in result.recipients] == [Status.UNKNOWN] * 2
    assert not os.path.exists(running.path)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_handle_signals_false_leaves_the_signal_to_the_process(
    runtime: str, tmp_path: Path
) -> None:
    with child(tmp_path, "unhandled", runtime) as running:
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(WAIT) == -signal.SIGTERM
    assert running.out.read_text() == ""


@pytest.mark.parametrize("runtime", ["asyncio", "trio"])
def test_serve_away_from_the_main_thread_leaves_the_signals_alone(
    runtime: str, sock_path: str
) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    handler = Blocker()
    handler.release.set()
    stop = threading.Event()
    raised: list[BaseException] = []

    async def asyncio_main() -> None:
        task = asyncio.create_task(lmtp_asyncio.serve(handler, socket_path=sock_path))
        await asyncio.to_thread(stop.wait, WAIT)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def trio_main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: lmtp_trio.serve(
                handler, socket_path=sock_path, task_status=task_status
            ))  # fmt: skip
            await trio.to_thread.run_sync(stop.wait, WAIT)
            nursery.cancel_scope.cancel()

    def run() -> None:
        try:
            asyncio.run(asyncio_main()) if runtime == "asyncio" else trio.run(trio_main)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        end = time.monotonic() + WAIT
        while not listening(sock_path) and thread.is_alive() and time.monotonic() < end:
            time.sleep(0.01)
        result = blocking.deliver(MESSAGE, "s@example.net", RECIPIENTS, socket_path=sock_path)
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    finally:
        stop.set()
        thread.join(WAIT)
    assert not raised
    assert [r.status for r in result.recipients] == [Status.DELIVERED] * 2
    assert not os.path.exists(sock_path)


REENTRY = r"""
import os, signal, sys, threading, time
from transports import Handler, blocking

entered = threading.Event()

class Held(Handler):
    def deliver(self, envelope):
        entered.set()
        time.sleep(30)  # a delivery still in flight when the grace period ends

server = blocking.Server(Held(), socket_path=sys.argv[1], grace=float(sys.argv[2]))

def client():
    try:
        blocking.deliver(b"Subject: x\r\n\r\nx\r\n", "a@example.org", ["b@example.org"],
                         socket_path=sys.argv[1], timeout=10)
    except Exception:
        pass

def interrupt():  # Ctrl-C once the delivery is in flight
    if entered.wait(10):
        os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=client, daemon=True).start()
threading.Thread(target=interrupt, daemon=True).start()
# The application's own handler calls shutdown() too; its signal comes while the
# shutdown() after Ctrl-C waits for the delivery in flight, in the same thread.
signal.signal(signal.SIGALRM, lambda *_: server.shutdown())
try:
    server.serve_forever()
except KeyboardInterrupt:
    pass
signal.setitimer(signal.ITIMER_REAL, 0.2)
started = time.monotonic()
server.shutdown()
print(round(time.monotonic() - started, 2), flush=True)
"""


def test_shutdown_again_from_a_signal_handler_in_the_stopping_thread(tmp_path: Path) -> None:
    """A second shutdown() in the thread whose shutdown() is already stopping the
    server (a signal handler) returns at once; the first then ends after the grace
    period as usual (it deadlocked on its own lock)."""
    grace = 1.0
    done = subprocess.run(
        [sys.executable, "-c", REENTRY, str(tmp_path / "s.sock"), str(grace)],
        capture_output=True,
        text=True,
        timeout=grace + 20,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert grace <= float(done.stdout.strip()) < grace + 5.0
