"""The Server classes (transports/blocking.py, asyncio.py, trio.py) where the other
tests do not go: a handler bug that escapes the session's own guard is logged, ends that
session only (its connection closed: the client knows nothing was confirmed) and the
next client is served; a server stopped before it ever served stops at once and leaves
no socket file behind."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import pytest
import trio

from lmtp_core import Reply, Stage, Status
from transports import Envelope, Handler, _sync_server, blocking
from transports import trio as lmtp_trio

from .conftest import PKI
from .runtimes import RUNTIMES, deliver, endpoint, resource_warnings
from .servers import WAIT, LogWatch, Raw, code_of, serving

MESSAGE = b"Subject: servers\r\n\r\nbody\r\n"


class _Unmeasurable(Sequence[Reply | None]):
    """deliver()'s answer from a buggy handler: a sequence whose length cannot be read."""

    def __len__(self) -> int:
        raise RuntimeError("a bug in the handler's answer")

    def __getitem__(self, index: Any) -> Any:
        raise IndexError(index)


class BuggyOnce(Handler):
    """Its first deliver() answers with _Unmeasurable(); later ones accept."""

    def __init__(self) -> None:
        self.calls = 0

    def deliver(self, envelope: Envelope) -> Any:
        self.calls += 1
        return _Unmeasurable() if self.calls == 1 else None


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_handler_bug_past_the_session_guard_ends_that_session_only(
    runtime: str, sock_path: str
) -> None:
    handler = BuggyOnce()
    with (
        LogWatch("transports", logging.ERROR) as logs,
        serving(runtime, handler, socket_path=sock_path) as running,
    ):
        first = deliver(runtime, MESSAGE, "a@x.org", ["b@x.org"], **endpoint(running.address))
        assert logs.wait("the session failed")
        second = deliver(runtime, MESSAGE, "a@x.org", ["b@x.org"], **endpoint(running.address))
    # The end of data went out and no reply came: not delivered, and not known lost.
    assert [(r.status, r.reply) for r in first.recipients] == [(Status.UNKNOWN, None)]
    assert [r.status for r in second.recipients] == [Status.DELIVERED]
    (record,) = [r for r in logs.records if r.getMessage() == "the session failed"]
    assert record.exc_info is not None
    assert "a bug in the handler's answer" in str(record.exc_info[1])


def test_a_trio_server_closed_before_it_served_stops_at_once(sock_path: str) -> None:
    server = lmtp_trio.Server(Handler(), socket_path=sock_path)
    server.close(grace=0)

    async def main() -> None:
        with trio.fail_after(WAIT):
            await server.serve()

    trio.run(main)
    assert server.address == sock_path
    assert not os.path.exists(sock_path)


def test_a_blocking_server_shut_down_before_it_served_stops_at_once(sock_path: str) -> None:
    server = blocking.Server(Handler(), socket_path=sock_path)
    assert os.path.exists(sock_path)
    server.shutdown(0)
    assert not os.path.exists(sock_path)
    server.serve_forever()  # returns at once: it was stopped already
    with pytest.raises(OSError):
        Raw(sock_path, timeout=1.0)


# ---- the blocking server's own waits and calls -------------------------------------------


class AsyncRcpt(Handler):
    async def rcpt_to(self, recipient: str, params: Any) -> Reply | None:
        return None


def test_an_async_method_in_the_blocking_server_is_a_451_and_never_left_unawaited(
    sock_path: str,
) -> None:
    with (
        resource_warnings() as warned,
        LogWatch("transports.server", logging.ERROR) as logs,
        serving("blocking", AsyncRcpt(), socket_path=sock_path),
    ):
        result = blocking.deliver(MESSAGE, "a@x.org", ["b@x.org"], socket_path=sock_path)
    (outcome,) = result.recipients
    assert (outcome.status, outcome.stage) == (Status.TEMPORARY, Stage.RCPT)
    assert outcome.reply == Reply(451, "4.3.0", "Internal error, try again later")
    (record,) = [r for r in logs.records if "failed" in r.getMessage()]
    assert record.exc_info is not None and isinstance(record.exc_info[1], TypeError)
    assert "is async; the blocking server needs plain methods" in str(record.exc_info[1])
    logs.records.clear()
    assert not [w for w in warned if "never awaited" in w]


def test_a_silent_client_of_the_blocking_server_is_cut_off_after_idle_timeout(
    sock_path: str,
) -> None:
    with (
        LogWatch("transports.server") as logs,
        serving("blocking", Handler(), socket_path=sock_path, idle_timeout=0.3),
        Raw(sock_path) as client,
    ):
        assert code_of(client.reply()) == b"220"
        assert client.eof()  # closed by the server, well before the client's own 10 s
        assert logs.wait("connection ended: timed out")


class Clock:
    """The server loop's clock (_sync_server), which the handler moves on."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


class TakesAllTheTime(Handler):
    """deliver() outlasts the session's whole time (it moves the clock past it)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def deliver(self, envelope: Envelope) -> Any:
        self.clock.offset += 10_000.0
        return None


@pytest.mark.parametrize("tls", [False, True])
def test_replies_due_after_the_session_time_ran_out_are_not_sent(
    tls: bool, sock_path: str, pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(_sync_server, "time", clock)
    settings: dict[str, Any] = {"socket_path": sock_path, "session_timeout": 60.0}
    client: dict[str, Any] = {"socket_path": sock_path, "timeout": WAIT}
    if tls:
        settings["ssl_context"] = pki.server_context()
        client.update(ssl=True, ssl_opts={"cafile": pki.ca_file, "server_hostname": "localhost"})
    with (
        LogWatch("transports.server") as logs,
        serving("blocking", TakesAllTheTime(clock), **settings),
    ):
        result = blocking.deliver(MESSAGE, "a@x.org", ["b@x.org"], **client)
        assert logs.wait("connection ended: timed out")
    # Handed over, never confirmed: the client cannot know whether it was stored.
    assert [(r.status, r.reply) for r in result.recipients] == [(Status.UNKNOWN, None)]
