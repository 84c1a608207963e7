"""The Pool under a server's limits and restarts, over real sockets, in every client runtime.

How it works. Each test runs one of our servers (``running_server()`` and ``serving()``,
in the client's own runtime) or ``Scripted``, a small LMTP server on a UNIX socket whose
Nth connection follows the Nth entry of a plan, and drives a ``Pool`` through
``test_pool.Driver`` with as many callers as deliveries (``Wide``: the blocking pool gets
one thread per delivery, the async ones one task each).

Covered: a server that takes 5 sessions and a Pool of 20 (200 concurrent deliveries,
every one delivered, the pool shrunk to what the server takes); a server killed (its
sessions cut, its socket gone) and started again a second later while 1,500
deliveries are queued (no exception; each message DELIVERED and stored once, or UNKNOWN
when its end of data was out at the kill and then never sent again); a server that stays
down (the last attempt's error once the bound has passed, not at once); a pool that grows
back once the server takes more; a 421 right behind the greeting or the reply to LHLO (tried
again; behind the greeting it used to escape as LocalProtocolError); a 554 greeting (raised
at once); a connection lost before the end of data or with a 421 to MAIL (delivered again
on a new connection), after it (UNKNOWN, never sent again), and with a one-shot body (not
sent again: it may be partly read).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from lmtp_core import Status, TransactionResult
from transports import ConnectError, Envelope, SessionError, Timeouts, _async_pool, _sync_pool

from .runtimes import RUNTIMES, Recorder, endpoint, running_server
from .servers import serving
from .test_pool import BOUND, Driver, errors, message, number_of, received

DOWN = 1.0  # seconds the killed server stays down


class Wide(Driver):
    """A Driver with a caller thread per delivery (the blocking pool's burst), plus one."""

    def __init__(self, runtime: str, kind: str, callers: int, **settings: Any) -> None:
        super().__init__(runtime, kind, **settings)
        self._executor.shutdown()
        self._executor = ThreadPoolExecutor(max_workers=callers + 1, thread_name_prefix="caller")


def statuses(results: Sequence[object]) -> list[Status]:
    """The one recipient's status of each delivery."""
    found = []
    for result in results:
        assert isinstance(result, TransactionResult), repr(result)
        assert len(result.recipients) == 1
        found.append(result.recipients[0].status)
    return found


# ---- 1. a server that takes fewer connections than the pool has ---------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_pool_larger_than_the_servers_limit_delivers_everything(runtime: str) -> None:
    """Before: 55 to 168 of the 200 raised SessionError (421 at the greeting): blocking
    55 to 98, asyncio 153 to 168, trio 147 to 148 (the issue: 155 to 165)."""
    handler = Recorder()
    jobs = [(message(n), [f"u{n}@example.org"]) for n in range(200)]
    with (
        running_server(runtime, handler, max_connections=5) as address,
        Wide(runtime, "Pool", len(jobs), **endpoint(address), max_connections=20) as pool,
    ):
        results = pool.burst(jobs)
        assert not errors(results)
        assert statuses(results) == [Status.DELIVERED] * len(jobs)
        assert pool.stat("busy") == 0
        # every connection left is a session the server took
        assert 1 <= pool.stat("open") == pool.stat("idle") <= 5
    assert received(handler) == {n: (f"u{n}@example.org",) for n in range(len(jobs))}


@pytest.fixture
def quick_growth(monkeypatch: pytest.MonkeyPatch) -> None:
    """A withheld slot is given back after 20 ms instead of a second."""
    for module in (_async_pool, _sync_pool):
        monkeypatch.setattr(module, "_GROW_PAUSE", 0.02)


@pytest.mark.usefixtures("quick_growth")
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_pool_grows_again_when_the_server_takes_more(runtime: str, sock_path: str) -> None:
    jobs = [(message(n), [f"g{n}@example.org"]) for n in range(60)]
    with Wide(runtime, "Pool", len(jobs), socket_path=sock_path, max_connections=8) as pool:
        with running_server(runtime, Recorder(), socket_path=sock_path, max_connections=2):
            assert statuses(pool.burst(jobs)) == [Status.DELIVERED] * len(jobs)
            assert 1 <= pool.stat("open") <= 2
        # the same endpoint, now taking many sessions: slots come back one at a time
        with running_server(runtime, Recorder(), socket_path=sock_path):
            for _ in range(50):  # bounded: each round gives back a slot or more
                assert statuses(pool.burst(jobs)) == [Status.DELIVERED] * len(jobs)
                if pool.stat("open") > 2:
                    break
            assert pool.stat("open") > 2


# ---- 2. a server killed and restarted under load ---------------------------------------------


@dataclass(eq=False)
class Stalling(Recorder):
    """Stores `after` messages; then each delivery waits in the handler (at most BOUND)
    until the test has killed the server, so that deliveries are in flight at the kill
    (their end of data out) and the rest are queued in the pool."""

    after: int = 40
    stalled: threading.Event = field(default_factory=threading.Event)
    killed: threading.Event = field(default_factory=threading.Event)

    def deliver(self, envelope: Envelope) -> Any:
        with self.lock:
            late = len(self.messages) >= self.after
        if late:
            self.stalled.set()
            self.killed.wait(BOUND)
        return super().deliver(envelope)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_pool_rides_out_a_server_restart(runtime: str, transport: str, sock_path: str) -> None:
    """1,500 deliveries with total=10 (the blocking runtime: a thread each), the server
    down for 1 s. Before: with 300, 240 to 253 raised ConnectError within milliseconds
    (the issue: 878 to 1,186 of 1,500)."""
    count = 1500
    first, second = Stalling(), Recorder()
    jobs = [(message(n), [f"r{n}@example.org"]) for n in range(count)]
    place: dict[str, Any] = {"socket_path": sock_path} if transport == "unix" else {"port": 0}
    with serving(runtime, first, **place) as running:
        client = endpoint(running.address)
        if transport == "tcp":
            place = {"port": running.address[1]}  # the restarted server listens there again
        with Wide(
            runtime, "Pool", count, **client, max_connections=20, timeout=Timeouts(total=10)
        ) as pool:
            burst = pool.later(lambda: pool.burst(jobs))
            assert first.stalled.wait(BOUND)
            running.stop(0)  # killed: listener closed, sessions cut at once
            first.killed.set()
            assert running.wait_stopped()
            time.sleep(DOWN)  # what is tested: the deliveries wait for the server
            with serving(runtime, second, **place):
                results = burst.result(BOUND * 3)
    assert isinstance(results, list)
    assert not errors(results)  # no ConnectError, nothing raised
    found = statuses(results)
    delivered = {n for n, status in enumerate(found) if status is Status.DELIVERED}
    unknown = {n for n, status in enumerate(found) if status is Status.UNKNOWN}
    assert len(delivered) + len(unknown) == count, sorted(set(found))
    before, after = received(first), received(second)
    assert not before.keys() & after.keys(), "a message was stored twice"
    stored = before.keys() | after.keys()
    assert delivered <= stored  # a delivered recipient is really stored
    assert stored - delivered <= unknown  # stored yet not confirmed: only at the kill
    assert not unknown & after.keys()  # an UNKNOWN message was never sent again
    assert len(unknown) <= 20  # only deliveries in flight at the kill
    assert len(after) >= count - len(before) - len(unknown)  # the queued ones waited
    assert len(before) <= first.after + 20


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_server_that_stays_down_fails_at_the_bound(runtime: str, sock_path: str) -> None:
    """wait_timeout bounds the retries when there is no total; the total when there is;
    then the last attempt's error, a ConnectError (not PoolTimeout)."""
    for settings in ({"wait_timeout": 0.4}, {"timeout": Timeouts(total=0.4)}):
        with Driver(runtime, "Pool", socket_path=sock_path, **settings) as pool:
            start = time.monotonic()
            with pytest.raises(ConnectError, match="cannot connect") as caught:
                pool.deliver(message(1), ["down@example.org"])
            waited = time.monotonic() - start
            assert caught.type is ConnectError
            # Not before the bound (0.4 s, less one last pause of at most half of it);
            # the upper margin is generous: a loaded machine schedules late.
            assert 0.15 <= waited <= 3.0, (settings, waited)
            assert pool.stat("open") == 0


# ---- 3. what is sent again, and what never is ---------------------------------------------


class Scripted:
    """An LMTP server on a UNIX socket, one connection at a time, in a thread. The Nth
    connection follows plan[N] (the last entry for any after it): "deliver" answers
    everything; "554 greeting" refuses the session; "220 and 421" greets and says 421
    at once, then closes; "250 and 421" does so with its reply to LHLO; "cut at DATA"
    closes when DATA comes; "421 to MAIL" answers MAIL with 421 and closes; "cut after
    the data" closes once the whole message has come, without a reply. No PIPELINING,
    no CHUNKING: one command, one reply, the body after 354."""

    def __init__(self, path: str, plan: Sequence[str]) -> None:
        self.plan = plan
        self.connections = 0
        self.messages: list[bytes] = []  # every message received whole
        self.mails = 0  # MAIL commands received
        self.error: BaseException | None = None
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(8)
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="scripted", daemon=True)

    def __enter__(self) -> Scripted:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._wake_w.send(b"x")
        self._thread.join(BOUND)
        assert not self._thread.is_alive(), "the scripted server did not stop"
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll(BOUND * 1000)}
                if self._wake_r.fileno() in ready or not ready:
                    return
                conn, _ = self._listener.accept()
                behaviour = self.plan[min(self.connections, len(self.plan) - 1)]
                self.connections += 1
                with conn:
                    conn.settimeout(BOUND)
                    self._session(conn.makefile("rb"), conn, behaviour)
        except BaseException as exc:
            self.error = exc

    def _session(self, reader: Any, conn: socket.socket, behaviour: str) -> None:
        def send(*lines: str) -> None:
            conn.sendall("".join(line + "\r\n" for line in lines).encode())

        if behaviour == "554 greeting":
            return send("554 5.3.2 not here")
        if behaviour == "220 and 421":  # greets and says it is closing, in one write
            return send("220 scripted ready", "421 4.3.2 going away")
        send("220 scripted ready")
        rcpts = 0
        with reader:
            while line := reader.readline():
                verb = line[:4].upper()
                if verb == b"LHLO" and behaviour == "250 and 421":
                    return send("250-scripted", "250 8BITMIME", "421 4.3.2 going away")
                if verb == b"LHLO":
                    send("250-scripted", "250 8BITMIME")
                elif verb == b"MAIL":
                    self.mails += 1
                    if behaviour == "421 to MAIL":
                        return send("421 4.3.2 going away")
                    rcpts = 0
                    send("250 2.1.0 ok")
                elif verb == b"RCPT":
                    rcpts += 1
                    send("250 2.1.5 ok")
                elif verb == b"DATA":
                    if behaviour == "cut at DATA":
                        return
                    send("354 go ahead")
                    data = b""
                    while (part := reader.readline()) not in (b".\r\n", b""):
                        data += part
                    self.messages.append(data)
                    if behaviour == "cut after the data":
                        return
                    send(*["250 2.0.0 stored"] * rcpts)
                elif verb == b"QUIT":
                    return send("221 2.0.0 bye")
                else:
                    send("250 2.0.0 ok" if verb == b"RSET" else "500 5.5.2 what?")


@contextlib.contextmanager
def scripted(sock_path: str, plan: Sequence[str]) -> Iterator[Scripted]:
    with Scripted(sock_path, plan) as server:
        yield server
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock_path)


@pytest.mark.parametrize("first", ["cut at DATA", "421 to MAIL"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_lost_before_the_end_of_data_is_delivered_again(
    runtime: str, first: str, sock_path: str
) -> None:
    with (
        scripted(sock_path, [first, "deliver"]) as server,
        Driver(runtime, "Pool", socket_path=sock_path, chunking=False) as pool,
    ):
        result = pool.deliver(message(7), ["again@example.org"])
        assert statuses([result]) == [Status.DELIVERED]
    assert server.connections == 2
    assert [number_of(data) for data in server.messages] == [7]  # stored once


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_lost_after_the_end_of_data_is_never_sent_again(runtime: str, sock_path: str) -> None:
    with (
        scripted(sock_path, ["cut after the data", "deliver"]) as server,
        Driver(runtime, "Pool", socket_path=sock_path, chunking=False) as pool,
    ):
        result = pool.deliver(message(8), ["once@example.org"])
        assert statuses([result]) == [Status.UNKNOWN]
        assert result.recipients[0].reply is None
    assert server.mails == 1  # no second transaction, on any connection
    assert [number_of(data) for data in server.messages] == [8]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_one_shot_body_is_not_sent_again(runtime: str, sock_path: str) -> None:
    """An iterator may be partly read by the lost attempt: the outcome stays TEMPORARY."""
    with (
        scripted(sock_path, ["cut at DATA", "deliver"]) as server,
        Driver(runtime, "Pool", socket_path=sock_path, chunking=False) as pool,
    ):
        result = pool.deliver(iter([message(9)]), ["one-shot@example.org"])
        assert statuses([result]) == [Status.TEMPORARY]
        assert result.recipients[0].reply is None
    assert server.mails == 1
    assert server.messages == []


@pytest.mark.parametrize("first", ["220 and 421", "250 and 421"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_421_right_behind_a_reply_is_tried_again(
    runtime: str, first: str, sock_path: str
) -> None:
    """A server that stops as a session opens (our servers' 421 to idle sessions).
    Behind the greeting: the core pairs the 421 with the LHLO it has not written yet,
    and writing it then fails (the server has closed); that used to escape as
    LocalProtocolError (next_event() after ConnectionClosed), in about one run of the
    restart test in three. Behind the reply to LHLO: the core sees a reply that answers
    no command (SessionError with a protocol error), which the pool tries again."""
    with (
        scripted(sock_path, [first, "deliver"]) as server,
        Driver(runtime, "Pool", socket_path=sock_path, chunking=False) as pool,
    ):
        result = pool.deliver(message(5), ["behind@example.org"])
        assert statuses([result]) == [Status.DELIVERED]
    assert server.connections == 2


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_other_refusals_of_the_session_are_not_retried(runtime: str, sock_path: str) -> None:
    """A 554 greeting is no "try again later": raised at once."""
    with (
        scripted(sock_path, ["554 greeting"]) as server,
        Driver(runtime, "Pool", socket_path=sock_path, wait_timeout=5) as pool,
    ):
        start = time.monotonic()
        with pytest.raises(SessionError) as caught:
            pool.deliver(message(1), ["nope@example.org"])
        assert time.monotonic() - start < 1.0
        assert caught.value.reply is not None and caught.value.reply.code == 554
    assert server.connections == 1
