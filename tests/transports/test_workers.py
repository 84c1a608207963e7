"""transports.serve_workers(): any Handler on N worker processes sharing one listening
socket (issue 21, part 3), for real: the supervisor runs in a child process
(child_server.py), whose handler answers MAIL with the pid of the worker serving.

What each test asserts, in every runtime where it applies: 8 concurrent long-lived
sessions spread over 2 workers, each serving 2 to 6 of them (25 % to 75 %); a worker
killed with SIGKILL is logged, replaced under its number by a new process, and the
new one serves; SIGTERM to the supervisor stops everything gracefully (the idle session
gets 421, the delivery in flight in a worker is delivered, exit 0 within grace + 1 s,
the socket file gone); the log says which worker wrote each line; a process that
runs threads is refused before anything is bound or forked.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from transports import Handler, serve_workers

from .servers import Raw
from .test_signals import GRACE, Child, child, stops_gracefully

RUNTIMES = ["asyncio", "trio", "blocking"]
STARTED = r"transports\.workers worker (\d) \(pid (\d+)\) started"
SERVING = r"transports\.workers worker (\d): serving \(pid (\d+)\)"


@contextmanager
def workers(tmp: Path, runtime: str, count: int = 2) -> Iterator[tuple[Child, dict[int, int]]]:
    """The supervisor with `count` workers, each serving; and {pid: worker number}."""
    with child(tmp, "workers", runtime, "--workers", str(count), "--grace", str(GRACE)) as sup:
        serving = sup.wait_log(SERVING, count)
        yield sup, {int(m[2]): int(m[1]) for m in serving}


def sessions(path: str, count: int, stack: ExitStack) -> list[int]:
    """Open `count` sessions at once, kept open; the pid that serves each."""
    raws = [stack.enter_context(Raw(path)) for _ in range(count)]
    for raw in raws:
        raw.reply()
    pids = []
    for raw in raws:
        raw.send(b"LHLO c.example\r\nMAIL FROM:<s@example.net>\r\n")
        raw.reply()
        match = re.search(rb"250 2\.1\.0 pid (\d+)", raw.reply())
        assert match is not None
        pids.append(int(match[1]))
    return pids


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_concurrent_sessions_spread_over_the_workers(runtime: str, tmp_path: Path) -> None:
    with workers(tmp_path, runtime) as (sup, numbers), ExitStack() as stack:
        served = collections.Counter(sessions(sup.path, 8, stack))
    assert set(served) <= set(numbers), (served, numbers)
    assert all(2 <= served[pid] <= 6 for pid in numbers), served


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_dead_worker_is_replaced_and_the_new_one_serves(runtime: str, tmp_path: Path) -> None:
    with workers(tmp_path, runtime) as (sup, numbers):
        dead = next(pid for pid, number in numbers.items() if number == 1)
        os.kill(dead, signal.SIGKILL)
        sup.wait_log(rf"transports\.workers worker 1 \(pid {dead}\) was killed by SIGKILL")
        [*_, replaced] = sup.wait_log(STARTED, 3)
        assert replaced[1] == "1" and int(replaced[2]) != dead
        new = int(replaced[2])
        sup.wait_log(rf"worker 1: serving \(pid {new}\)")
        with ExitStack() as stack:
            served = collections.Counter(sessions(sup.path, 4, stack))
        survivor = next(pid for pid, number in numbers.items() if number == 2)
        assert set(served) == {new, survivor}, (served, new, survivor)
        with pytest.raises(ProcessLookupError):
            os.kill(dead, 0)  # reaped


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sigterm_stops_every_worker_gracefully(runtime: str, tmp_path: Path) -> None:
    with workers(tmp_path, runtime) as (sup, numbers):
        stops_gracefully(sup, signal.SIGTERM)
    log = sup.err.read_text()
    for pid, number in numbers.items():
        assert f"worker {number} (pid {pid}) exited with status 0" in log
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_every_log_line_of_a_worker_says_which(tmp_path: Path) -> None:
    with workers(tmp_path, "asyncio") as (sup, _):
        stops_gracefully(sup, signal.SIGTERM)
    lines = sup.err.read_text().splitlines()
    # the handler's own logger, in the worker that served the delivery
    [delivering] = [line for line in lines if line.startswith("child ")]
    assert re.fullmatch(
        r"child worker [12]: delivering to a@example\.org, b@example\.org", delivering
    )
    # the server's lines, made in the workers, and the supervisor's, made in the parent
    made_in_workers = [line for line in lines if re.match(r"transports\.\S+ worker \d: ", line)]
    assert len(made_in_workers) >= 2, lines
    assert any(re.fullmatch(STARTED, line) for line in lines)


def test_a_process_with_threads_is_refused(sock_path: str) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        with pytest.raises(
            RuntimeError, match=r"runs [0-9]+ threads.*before anything starts a thread"
        ):
            serve_workers(Handler(), 2, socket_path=sock_path)
    finally:
        stop.set()
        thread.join()
    assert not os.path.exists(sock_path)  # refused before binding, and before forking


def test_bad_arguments_are_refused_before_anything_starts(sock_path: str) -> None:
    with pytest.raises(ValueError, match="workers must be a positive int"):
        serve_workers(Handler(), 0, socket_path=sock_path)
    with pytest.raises(ValueError, match="runtime must be"):
        serve_workers(Handler(), 2, runtime="gevent", socket_path=sock_path)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="serve_workers\\(\\) got an unexpected keyword argument"):
        serve_workers(Handler(), 2, socket_pth=sock_path)  # type: ignore[call-arg]
    assert not os.path.exists(sock_path)
