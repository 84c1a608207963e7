"""How our servers start and stop, in every runtime, over real sockets (issue 13, item 5).

Starting: a UNIX socket path where a server answers is refused with EADDRINUSE naming
the path, and the live server keeps serving; a path that exists and is not a socket is
refused and left as it was; a stale socket file (nobody listening) is replaced; a socket
already listening can be handed over (`sock=`) and its path is then never removed.
Stopping: the socket file is removed (only if it is still ours); idle sessions get
421 4.3.2 at once; a transaction in flight (its body half sent, or its handler still
running) finishes and gets its replies, then 421; one that does not finish within the
grace period is cut off, and stopping returns soon after.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

import pytest

from transports import Handler, blocking

from .runtimes import RUNTIMES, Recorder
from .servers import Blocker, Raw, code_of, serving

ENVELOPE = b"LHLO c.example\r\nMAIL FROM:<s@example.net>\r\nRCPT TO:<a@example.org>\r\n"


def delivered(path: str) -> bool:
    result = blocking.deliver(b"x\r\n", "s@example.net", ["a@example.org"], socket_path=path)
    return result.all_delivered


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_stopping_removes_the_socket_file(runtime: str, sock_path: str) -> None:
    with serving(runtime, Handler(), socket_path=sock_path) as server:
        assert delivered(sock_path)
        server.stop()
        assert server.wait_stopped()
        assert not os.path.exists(sock_path)
        with pytest.raises(FileNotFoundError):
            Raw(sock_path)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_path_where_a_server_answers_is_refused(runtime: str, sock_path: str) -> None:
    with serving("blocking", Handler(), socket_path=sock_path):
        with pytest.raises(OSError) as caught, serving(runtime, Handler(), socket_path=sock_path):
            pass
        assert caught.value.errno == errno.EADDRINUSE
        assert sock_path in str(caught.value)
        assert delivered(sock_path)  # the first server still has its socket


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_path_that_is_not_a_socket_is_refused_and_kept(runtime: str, sock_path: str) -> None:
    Path(sock_path).write_text("precious\n")
    with pytest.raises(OSError) as caught, serving(runtime, Handler(), socket_path=sock_path):
        pass
    assert caught.value.errno == errno.EEXIST
    assert "not a socket" in str(caught.value) and sock_path in str(caught.value)
    assert Path(sock_path).read_text() == "precious\n"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_stale_socket_is_replaced(runtime: str, sock_path: str) -> None:
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(sock_path)  # a socket file nobody listens on any more
    assert os.path.exists(sock_path)
    with serving(runtime, Handler(), socket_path=sock_path):
        assert delivered(sock_path)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_socket_handed_over_is_served_and_its_path_kept(runtime: str, sock_path: str) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sock_path)
    listener.listen(16)
    with serving(runtime, Handler(), sock=listener) as server:
        assert server.address == sock_path
        assert delivered(sock_path)
    assert os.path.exists(sock_path)  # not ours to remove
    assert listener.fileno() == -1  # but ours to close


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_later_server_keeps_its_socket_when_an_earlier_one_stops(
    runtime: str, sock_path: str
) -> None:
    with serving(runtime, Handler(), socket_path=sock_path) as first:
        os.unlink(sock_path)  # an operator removed it; a new server takes the path
        with serving("blocking", Handler(), socket_path=sock_path):
            first.stop()
            assert first.wait_stopped()
            assert delivered(sock_path)  # the first one did not remove the second's


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("where", ["mid-body", "in-handler"])
def test_stopping_answers_idle_sessions_and_lets_a_transaction_finish(
    runtime: str, where: str, sock_path: str
) -> None:
    handler = Blocker()
    if where == "mid-body":
        handler.release.set()
    with (
        serving(runtime, handler, socket_path=sock_path, grace=10) as server,
        Raw(sock_path) as idle,
        Raw(sock_path) as busy,
    ):
        idle.reply()
        idle.send(b"LHLO c.example\r\n")
        idle.reply()
        busy.reply()
        busy.send(ENVELOPE + b"DATA\r\n")
        busy.replies(4)
        busy.send(b"Subject: stop\r\n\r\nfirst half\r\n")
        if where == "in-handler":
            busy.send(b"second half\r\n.\r\n")
            assert handler.entered.wait(10)
        server.stop()
        assert idle.reply().startswith(b"421 4.3.2 ")  # at once
        assert idle.eof()
        if where == "mid-body":
            busy.send(b"second half\r\n.\r\n")
        else:
            handler.release.set()
        assert code_of(busy.reply()) == b"250 2.0.0"  # the transaction finished
        assert busy.reply().startswith(b"421 4.3.2 ")
        assert busy.eof()
        assert server.wait_stopped()
    assert handler.delivered == [b"Subject: stop\r\n\r\nfirst half\r\nsecond half\r\n"]
    assert not os.path.exists(sock_path)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_transaction_that_outlasts_the_grace_period_is_cut_off(
    runtime: str, sock_path: str
) -> None:
    handler = Recorder()
    with serving(runtime, handler, socket_path=sock_path) as server, Raw(sock_path) as stuck:
        stuck.reply()
        stuck.send(ENVELOPE + b"DATA\r\n")
        stuck.replies(4)
        stuck.send(b"a body that never ends\r\n")
        started = time.monotonic()
        server.stop(grace=0.3)
        assert stuck.eof()
        assert server.wait_stopped(5)
        took = time.monotonic() - started
    assert 0.25 <= took < 5
    assert handler.messages == []
