"""The runtime adapters (transports/blocking.py, asyncio.py, trio.py) where a client's
connection goes wrong in ways the other tests do not make: a TLS write that outlasts
data_block against a server that stopped reading, a TCP connect that outlasts its limit
against a listener whose queue is full, a TLS setup that fails before the handshake, a
reaper round that fails; and, in the asyncio adapter, a reader woken for bytes a
receive already took, and a timer that fires after the wait it bounded ended.

Every peer is real (127.0.0.1) or a socketpair; the waits that must run out are the
settings' own (a connect or data_block limit of a fraction of a second)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lmtp_core import Stage, Status
from transports import ConfigurationError, Timeout, Timeouts, blocking
from transports import asyncio as lmtp_asyncio

from .conftest import PKI
from .runtimes import RUNTIMES, deliver, failure_of
from .scripted import AsyncScripted, SyncScripted, _AsyncStream, _SyncStream, dialogue
from .servers import LogWatch

WAIT = 10.0
SENDER, RECIPIENTS = "a@x.org", ["b@x.org"]


# ---- a TLS write that outlasts data_block -------------------------------------------


class StallingTLSServer:
    """Implicit TLS on 127.0.0.1: takes one session up to DATA's 354, then reads
    nothing more until stop()."""

    def __init__(self, pki: PKI) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._context = pki.server_context()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _read_until(self, tls: Any, marker: bytes, seen: bytes = b"") -> bytes:
        while marker not in seen:
            chunk = tls.recv(65536)
            if not chunk:
                raise EOFError(seen)
            seen += chunk
        return seen

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(WAIT)
            with self._context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"220 stalling ready\r\n")
                self._read_until(tls, b"\r\n")  # LHLO
                tls.sendall(b"250-stalling\r\n250 PIPELINING\r\n")
                self._read_until(tls, b"DATA\r\n")  # MAIL, RCPT, DATA pipelined
                tls.sendall(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go on\r\n")
                self._stop.wait(WAIT)  # the body is left unread
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        self.listener.close()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_tls_write_that_outlasts_data_block_leaves_the_recipient_temporary(
    runtime: str, pki: PKI
) -> None:
    # Far more than the kernel buffers of both ends hold: the writes must wait, and
    # the end of data never leaves, so the server cannot have taken the message.
    body = b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 210_000  # 16.8 MB
    server = StallingTLSServer(pki)
    try:
        result = deliver(
            runtime,
            body,
            SENDER,
            RECIPIENTS,
            host="127.0.0.1",
            port=server.port,
            ssl=True,
            ssl_opts={"cafile": pki.ca_file},
            timeout=Timeouts(data_block=0.5),
        )
    finally:
        server.stop()
    assert server.error is None, server.error
    (outcome,) = result.recipients
    assert outcome.status is Status.TEMPORARY
    assert outcome.stage is not Stage.LOCAL
    assert f"timed out after 0.5 s writing to 127.0.0.1:{server.port}" in (outcome.reason or "")


# ---- a TCP connect that outlasts its limit ------------------------------------------


@pytest.fixture
def full_listener() -> Iterator[int]:
    """A port whose listener's accept queue is full: a further connect gets no answer
    (Linux drops its SYN), so it waits until the client gives up."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener, filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler.settimeout(WAIT)
        filler.connect(("127.0.0.1", port))  # fills the queue (never accepted)
        yield port


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_tcp_connect_that_outlasts_its_limit_is_a_timeout_and_leaks_nothing(
    runtime: str, full_listener: int
) -> None:
    failure = failure_of(
        lambda: deliver(
            runtime,
            b"Subject: t\r\n\r\nbody\r\n",
            SENDER,
            RECIPIENTS,
            host="127.0.0.1",
            port=full_listener,
            timeout=Timeouts(connect=0.3),
        )
    )
    assert failure.error is Timeout
    assert failure.message == f"timed out after 0.3 s connecting to 127.0.0.1:{full_listener}"
    assert failure.leaks == []


# ---- a server_hostname ssl would refuse --------------------------------------------


@pytest.mark.parametrize("name", [".example.org", "", "a..b\udcff"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_server_hostname_ssl_would_refuse_is_a_configuration_error(
    runtime: str, name: str
) -> None:
    # ssl finds such a name only while it sets TLS up; the blocking driver's socket
    # was by then inside an SSLSocket nobody could close (Python 3.11 and 3.12). Now
    # it is refused before anything is opened, in every runtime.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        failure = failure_of(
            lambda: deliver(
                runtime,
                b"Subject: t\r\n\r\nbody\r\n",
                SENDER,
                RECIPIENTS,
                host="127.0.0.1",
                port=port,
                ssl=True,
                ssl_opts={"server_hostname": name},
                timeout=WAIT,
            )
        )
    assert failure.error is ConfigurationError
    assert "server_hostname" in failure.message
    assert failure.leaks == []


# ---- a reaper round that fails --------------------------------------------------------


class _QuitFailsOnce:
    """Streams whose first QUIT fails with an error no stream should raise (a bug)."""

    failed = 0

    def _quit_fails(self, data: bytes) -> None:
        if data.startswith(b"QUIT") and not type(self).failed:
            type(self).failed += 1
            raise RuntimeError("a bug in a backend")


class _SyncQuitFails(_QuitFailsOnce, _SyncStream):
    def send_all(self, data: bytes, timeout: float) -> None:
        self._quit_fails(data)
        super().send_all(data, timeout)


class _AsyncQuitFails(_QuitFailsOnce, _AsyncStream):
    async def send_all(self, data: bytes, timeout: float) -> None:
        self._quit_fails(data)
        await super().send_all(data, timeout)


class SyncQuitFails(SyncScripted):
    def connect(self, config: Any, timeout: float) -> _SyncStream:
        return _SyncQuitFails(self._connect())


class AsyncQuitFails(AsyncScripted):
    async def connect(self, config: Any, timeout: float) -> _AsyncStream:
        return _AsyncQuitFails(self._connect())


def test_a_failing_reaper_round_is_logged_and_the_pool_goes_on_blocking() -> None:
    _SyncQuitFails.failed = 0
    backend = SyncQuitFails(blocking.Pool.default_backend, [dialogue(), dialogue()])
    pool = blocking.Pool(backend=backend, socket_path="/scripted", idle_timeout=0.05)
    with LogWatch("transports", logging.ERROR) as logs, pool:
        first = pool.deliver(b"Subject: r\r\n\r\nbody\r\n", SENDER, RECIPIENTS)
        assert logs.wait("background task failed")  # the reaper's round failed
        second = pool.deliver(b"Subject: r\r\n\r\nbody\r\n", SENDER, RECIPIENTS)
    assert [r.status for r in (*first.recipients, *second.recipients)] == [Status.DELIVERED] * 2
    assert len(backend.plays) == 2 and all(play.closed for play in backend.plays)


def test_a_failing_reaper_round_is_logged_and_the_pool_goes_on_asyncio() -> None:
    _AsyncQuitFails.failed = 0
    backend = AsyncQuitFails(lmtp_asyncio.Pool.default_backend, [dialogue(), dialogue()])
    statuses: list[Status] = []

    class Seen(logging.Handler):
        def __init__(self, event: asyncio.Event) -> None:
            super().__init__(logging.ERROR)
            self.event = event

        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "background task failed":
                self.event.set()  # logged from the reaper task, in this loop's thread

    async def main() -> None:
        failed = asyncio.Event()
        seen = Seen(failed)
        logger = logging.getLogger("transports")
        logger.addHandler(seen)
        try:
            pool = lmtp_asyncio.Pool(backend=backend, socket_path="/scripted", idle_timeout=0.05)
            async with pool:
                first = await pool.deliver(b"Subject: r\r\n\r\nbody\r\n", SENDER, RECIPIENTS)
                await asyncio.wait_for(failed.wait(), WAIT)
                second = await pool.deliver(b"Subject: r\r\n\r\nbody\r\n", SENDER, RECIPIENTS)
        finally:
            logger.removeHandler(seen)
        statuses.extend(r.status for r in (*first.recipients, *second.recipients))

    asyncio.run(main())
    assert statuses == [Status.DELIVERED] * 2
    assert len(backend.plays) == 2 and all(play.closed for play in backend.plays)


# ---- the asyncio adapter's own reader ---------------------------------------------------


def test_a_reader_woken_for_bytes_a_receive_already_took_loses_nothing() -> None:
    async def main() -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            stream = lmtp_asyncio.SocketStream(ours)
            try:
                waiting = asyncio.ensure_future(stream.receive_some(WAIT))
                await asyncio.sleep(0)  # it waits, with a reader registered
                theirs.sendall(b"220 one\r\n")
                assert await waiting == b"220 one\r\n"  # the reader stays registered
                theirs.sendall(b"250 two\r\n")
                # The loop sees the socket readable and queues the reader; this task
                # runs first and takes the bytes at once; the reader then finds none.
                await asyncio.sleep(0)
                assert await stream.receive_some(WAIT) == b"250 two\r\n"
                await asyncio.sleep(0)
                theirs.sendall(b"250 three\r\n")
                assert await stream.receive_some(WAIT) == b"250 three\r\n"
                assert stream.idle_clean()
            finally:
                await stream.aclose()

    asyncio.run(asyncio.wait_for(main(), WAIT))


def test_a_wake_up_or_timer_after_the_wait_ended_changes_nothing() -> None:
    # A writer's wake-up and a wait's timer can both be due in one turn of the loop:
    # whichever runs second finds the wait over and must leave it as it is.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        lmtp_asyncio._wake(woken)
        lmtp_asyncio._expire(woken)
        assert woken.result() is None
        expired: asyncio.Future[None] = loop.create_future()
        lmtp_asyncio._expire(expired)
        lmtp_asyncio._wake(expired)
        with pytest.raises(TimeoutError):
            expired.result()

    asyncio.run(main())
