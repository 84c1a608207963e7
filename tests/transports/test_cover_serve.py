"""transports/_serve.py where test_signals.py and test_workers.py do not go: a second
stopping signal while the first one's stop is under way changes nothing (blocking and
asyncio), SIGINT left to Python (handle_signals=False) still stops the blocking server
gracefully and is reported, trio's serve() without signals returns None once closed, and
a failure while trio's serve() takes the signals comes out as itself, not wrapped in an
exception group. The signal tests run the server in a child process (they signal it)."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from transports import Handler, _serve
from transports import trio as lmtp_trio

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0

CHILD = """
import os, signal, sys
from transports import Handler, _serve, blocking
from transports import asyncio as lmtp_asyncio

runtime, how, path = sys.argv[1], sys.argv[2], sys.argv[3]

def ready(address):
    # Called in the main thread once the server listens (and its handlers are in place).
    if how == "twice":
        # Both signals pending at once, then delivered together: the second comes while
        # the first one's stop is under way.
        both = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, both)
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, both)
    else:
        os.kill(os.getpid(), signal.SIGINT)

in_charge = how == "twice"
if runtime == "blocking":
    name = _serve.serve_blocking(blocking.Server(Handler(), socket_path=path), in_charge, ready)
else:
    import asyncio
    async def main():
        server = lmtp_asyncio.Server(Handler(), socket_path=path)
        return await _serve.serve_asyncio(server, in_charge, ready)
    name = asyncio.run(main())
print("returned", name, os.path.exists(path))
"""


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def child(runtime: str, how: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = str(tmp_path / "lmtp.sock")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), runtime, how, path],
        # SIGINT as Python starts it in a terminal, whatever the runner left (a shell's
        # background job ignores it, and an ignored SIGINT stays ignored in a child).
        preexec_fn=_sigint_default,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


@pytest.mark.parametrize("runtime", ["blocking", "asyncio"])
def test_a_second_signal_during_the_stop_changes_nothing(runtime: str, tmp_path: Path) -> None:
    done = child(runtime, "twice", tmp_path)
    assert done.returncode == 0, done.stderr
    # One graceful stop, named after the signal taken first (which of the two the kernel
    # hands over first is its own business); the socket file is gone.
    returned, name, exists = done.stdout.split()
    assert (returned, exists) == ("returned", "False"), done.stderr
    assert name in ("SIGINT", "SIGTERM")


def test_sigint_left_to_python_still_stops_the_blocking_server(tmp_path: Path) -> None:
    done = child("blocking", "python", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["returned", "SIGINT", "False"], done.stderr
    assert "Traceback" not in done.stderr


def test_trio_serve_without_signals_returns_none_once_closed(sock_path: str) -> None:
    results: list[object] = []

    async def main() -> None:
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:

                async def serve(task_status: object) -> None:
                    results.append(
                        await _serve.serve_trio(
                            lmtp_trio.Server(Handler(), socket_path=sock_path), False, task_status
                        )
                    )

                server = await nursery.start(serve)
                assert os.path.exists(sock_path)
                server.close()

    trio.run(main)
    assert results == [None]
    assert not os.path.exists(sock_path)


def test_a_failure_while_trio_takes_the_signals_comes_out_unwrapped(tmp_path: Path) -> None:
    # A regular file where the socket should be: refused (EEXIST), never replaced.
    path = tmp_path / "not-a-socket"
    path.write_text("mine")
    with pytest.raises(OSError) as caught:
        # in charge of the signals: this is the main thread
        trio.run(functools.partial(lmtp_trio.serve, Handler(), socket_path=str(path)))
    assert not isinstance(caught.value, BaseExceptionGroup)
    assert "not a socket" in str(caught.value)
    assert path.read_text() == "mine"
