"""The accept loops' rules (transports/_listen.py's Gate, as each runtime's Server applies
them) where the other tests do not go: accept() failing (EMFILE: logged once and a
pause; ECONNABORTED: the next connection at once; in the blocking loop, an unforeseen
error too), a stop that comes while the loop pauses after a failure (it ends at once,
not when the pause would), a worker serving more sessions than another leaving a
connection to it before taking it itself, and, in the blocking server, a session thread
that cannot start (a pause, then served; or, at shutdown, the connection closed).

The faults are injected: the server is handed its listening socket (`sock=`), a real
one whose accept() fails as the test says first; a thread that cannot start is a
Thread whose start() fails. Clients are real (UNIX sockets in a temporary directory)."""

from __future__ import annotations

import errno
import logging
import socket
import threading
import types
from collections.abc import Iterator

import pytest

from lmtp_core import Status
from transports import Handler, _listen, blocking
from transports._listen import Loads

from .runtimes import RUNTIMES, deliver, resource_warnings
from .servers import WAIT, LogWatch, Raw, code_of, serving

MESSAGE = b"Subject: listen\r\n\r\nbody\r\n"


class FlakyListener(socket.socket):
    """A listening UNIX socket whose accept() first raises what `failures` holds."""

    failures: list[BaseException]

    def accept(self) -> tuple[socket.socket, object]:
        if self.failures:
            raise self.failures.pop(0)
        return super().accept()


@pytest.fixture
def flaky(sock_path: str) -> Iterator[FlakyListener]:
    listener = FlakyListener(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.failures = []
    with listener:
        listener.bind(sock_path)
        listener.listen(16)
        yield listener


def delivered(runtime: str, path: str) -> list[Status]:
    result = deliver(runtime, MESSAGE, "a@x.org", ["b@x.org"], socket_path=path, timeout=WAIT)
    return [r.status for r in result.recipients]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_an_accept_that_fails_for_want_of_descriptors_is_logged_and_retried(
    runtime: str, flaky: FlakyListener, sock_path: str
) -> None:
    flaky.failures = [OSError(errno.EMFILE, "Too many open files")] * 2
    with LogWatch("transports", logging.ERROR) as logs, serving(runtime, Handler(), sock=flaky):
        assert delivered(runtime, sock_path) == [Status.DELIVERED]
    lines = logs.messages("cannot accept a connection")
    assert lines == [  # twice in a row, logged once
        f"unix:{sock_path}: cannot accept a connection: EMFILE (Too many open files); "
        "pausing, then trying again"
    ]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_connection_aborted_before_accept_is_skipped_without_a_word(
    runtime: str, flaky: FlakyListener, sock_path: str
) -> None:
    flaky.failures = [OSError(errno.ECONNABORTED, "Software caused connection abort")]
    with LogWatch("transports", logging.ERROR) as logs, serving(runtime, Handler(), sock=flaky):
        assert delivered(runtime, sock_path) == [Status.DELIVERED]
    assert logs.messages("cannot accept") == []
    assert flaky.failures == []


def test_an_unforeseen_error_does_not_end_the_blocking_accept_loop(
    flaky: FlakyListener, sock_path: str
) -> None:
    flaky.failures = [RuntimeError("unforeseen")]
    with LogWatch("transports", logging.ERROR) as logs, serving("blocking", Handler(), sock=flaky):
        assert delivered("blocking", sock_path) == [Status.DELIVERED]
    assert logs.messages("cannot accept") == [
        f"unix:{sock_path}: cannot accept a connection: RuntimeError: unforeseen; "
        "pausing, then trying again"
    ]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_stop_during_the_pause_after_a_failure_ends_it_at_once(
    runtime: str, flaky: FlakyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_listen, "PAUSE_MIN", 3600.0)  # a pause far beyond the test
    flaky.failures = [OSError(errno.ENFILE, "Too many open files in system")]
    with (
        LogWatch("transports", logging.ERROR) as logs,
        serving(runtime, Handler(), sock=flaky) as running,
        Raw(flaky.getsockname()) as client,
    ):
        assert logs.wait("cannot accept a connection: ENFILE")
        running.stop(0)
        assert running.wait_stopped(), "the stop waited for the pause"
        assert client.eof()  # never accepted; the listening socket is closed
    assert flaky.fileno() == -1


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_busier_worker_leaves_a_connection_then_takes_it(
    runtime: str, sock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This process plays worker 1 of 2; worker 2 runs and serves nobody.
    loads = Loads(2)
    monkeypatch.setattr(Loads, "current", None)
    loads.join(1)
    loads.join(0)
    assert Loads.current is loads and loads.others() == (0,)
    with (
        serving(runtime, Handler(), socket_path=sock_path) as running,
        Raw(running.address) as first,
    ):
        assert code_of(first.reply()) == b"220"  # one session here: busier now
        with Raw(running.address) as second:  # left waiting, then taken (DEFER_MAX)
            assert code_of(second.reply()) == b"220"
            second.send(b"QUIT\r\n")
            assert code_of(second.reply()) == b"221 2.0.0"
        first.send(b"QUIT\r\n")
        assert code_of(first.reply()) == b"221 2.0.0"


class _FlakyThread(threading.Thread):
    """A session thread that cannot start while `failures` lasts."""

    failures = 0

    def start(self) -> None:
        if self.name == "lmtp-session" and _FlakyThread.failures:
            _FlakyThread.failures -= 1
            raise RuntimeError("can't start new thread")
        super().start()


@pytest.fixture
def flaky_threads(monkeypatch: pytest.MonkeyPatch) -> type[_FlakyThread]:
    fake = types.SimpleNamespace(**vars(threading))
    fake.Thread = _FlakyThread
    monkeypatch.setattr(blocking, "threading", fake)
    return _FlakyThread


def test_a_session_thread_that_cannot_start_pauses_the_loop_then_serves(
    flaky_threads: type[_FlakyThread], sock_path: str
) -> None:
    flaky_threads.failures = 1
    with (
        LogWatch("transports", logging.ERROR) as logs,
        serving("blocking", Handler(), socket_path=sock_path),
    ):
        assert delivered("blocking", sock_path) == [Status.DELIVERED]
    assert logs.messages("cannot accept") == [
        f"unix:{sock_path}: cannot accept a connection: RuntimeError: can't start new thread; "
        "pausing, then trying again"
    ]


@pytest.mark.xfail(
    strict=True,
    reason="bug: blocking.Server._drain() closes a connection no thread could serve but "
    "still counts it active, so it warns of a session 'still in a handler call' and "
    "keeps (leaks) the wake socketpair for it",
)
def test_a_connection_no_thread_could_serve_is_closed_at_shutdown(
    flaky_threads: type[_FlakyThread], sock_path: str
) -> None:
    flaky_threads.failures = 10**6
    with resource_warnings() as leaks, LogWatch("transports") as logs:
        server = serving("blocking", Handler(), socket_path=sock_path)
        running = server.__enter__()
        try:
            with Raw(running.address) as client:
                assert logs.wait("can't start new thread")
                running.stop(0)
                assert running.wait_stopped()
                assert client.eof()
                assert client.unread == b""  # not even a greeting
        finally:
            server.__exit__(None, None, None)
        del server, running
    assert logs.messages("abandoned") == []
    assert leaks == []
