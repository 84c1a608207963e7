"""Our servers under load, over real sockets, in every runtime concerned (issue 13, items
1 to 3).

Handlers never block the loop: in the asyncio and trio servers a synchronous handler
that blocks holds up no other session and runs in a worker thread (never the loop's);
methods the application did not override, or marked @inline, run on the loop (they need
no free thread); the pool of handler threads is bounded by handler_threads; async
methods run on the loop. Bounded concurrency: past max_connections a connection gets
421 4.3.2 and is closed, logged once, and a freed slot is used again; the blocking
server's threads stay within max_connections. Accept loops survive running out of file
descriptors (each runtime in a subprocess with RLIMIT_NOFILE lowered by
resource.setrlimit): one log line, no spinning, and serving resumes once descriptors
are free; the blocking server survives threads that cannot be started (RLIMIT_AS in a
subprocess). Deadlines: a TLS handshake never started (implicit TLS, or after
STARTTLS) or stalled half way, a client that stops reading, a silent client and a
session that goes on too long are each cut off within their bound.

Nothing sleeps to synchronise: tests wait (bounded) on events set by the handler, on log
records (LogWatch), on replies, or on a subprocess's output lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lmtp_core import Params
from transports import Handler, blocking, inline

from .conftest import PKI
from .runtimes import ASYNC_RUNTIMES, RUNTIMES, AsyncRecorder
from .servers import Blocker, LogWatch, Raw, code_of, serving

ROOT = Path(__file__).resolve().parents[2]
ENVELOPE = b"LHLO c.example\r\nMAIL FROM:<s@example.net>\r\nRCPT TO:<a@example.org>\r\n"


def start_transaction(raw: Raw) -> None:
    """Greeting, LHLO, MAIL, RCPT, DATA and a whole message: deliver() is called next."""
    raw.reply()
    raw.send(ENVELOPE + b"DATA\r\n")
    assert [code_of(r)[:3] for r in raw.replies(4)] == [b"250", b"250", b"250", b"354"]
    raw.send(b"Subject: x\r\n\r\nhello\r\n.\r\n")


def quick_session(address: Any, timeout: float = 2.0) -> list[bytes]:
    """A whole session but for the message, each reply within `timeout`."""
    with Raw(address, timeout) as raw:
        answers = [raw.reply()]
        raw.send(ENVELOPE + b"NOOP\r\nQUIT\r\n")
        answers += raw.replies(5)
    return [code_of(a) for a in answers]


# ---- handlers never block the loop ----------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_blocked_handler_holds_up_no_other_session(runtime: str, sock_path: str) -> None:
    handler = Blocker()
    with serving(runtime, handler, socket_path=sock_path) as server, Raw(sock_path) as first:
        start_transaction(first)
        assert handler.entered.wait(10)
        codes = quick_session(sock_path)  # while deliver() is still blocked
        assert not handler.release.is_set()
        handler.release.set()
        assert code_of(first.reply()) == b"250 2.0.0"
    assert codes[0].startswith(b"220") and codes[-2:] == [b"250 2.0.0", b"221 2.0.0"]
    assert handler.threads and handler.threads[0] != server.loop_thread


@dataclass(eq=False)
class BlockerWithInlineRcpt(Blocker):
    rcpt_threads: list[int] = field(default_factory=list)

    @inline
    def rcpt_to(self, recipient: str, params: Params) -> None:
        self.rcpt_threads.append(threading.get_ident())


@pytest.mark.parametrize("runtime", ASYNC_RUNTIMES)
@pytest.mark.parametrize("handler_class", [Blocker, BlockerWithInlineRcpt], ids=["own", "marked"])
def test_methods_left_to_handler_or_marked_inline_need_no_thread(
    runtime: str, handler_class: type[Blocker], sock_path: str
) -> None:
    # One handler thread, taken by a blocked deliver(): MAIL and RCPT are Handler's own
    # methods, or marked @inline, so they are answered all the same, on the loop.
    handler = handler_class()
    with (
        serving(runtime, handler, socket_path=sock_path, handler_threads=1) as server,
        Raw(sock_path) as first,
    ):
        start_transaction(first)
        assert handler.entered.wait(10)
        codes = quick_session(sock_path)
        handler.release.set()
        assert code_of(first.reply()) == b"250 2.0.0"
    assert codes[1:4] == [b"250", b"250 2.1.0", b"250 2.1.5"]
    if isinstance(handler, BlockerWithInlineRcpt):
        assert set(handler.rcpt_threads) == {server.loop_thread}


@dataclass(eq=False)
class BlockerWithRcpt(Blocker):
    rcpt_threads: list[int] = field(default_factory=list)

    def rcpt_to(self, recipient: str, params: Params) -> None:
        self.rcpt_threads.append(threading.get_ident())


@pytest.mark.parametrize("runtime", ASYNC_RUNTIMES)
def test_handler_threads_bound_the_pool(runtime: str, sock_path: str) -> None:
    handler = BlockerWithRcpt()
    with (
        serving(runtime, handler, socket_path=sock_path, handler_threads=1) as server,
        Raw(sock_path) as first,
        Raw(sock_path, timeout=0.5) as second,
    ):
        start_transaction(first)
        assert handler.entered.wait(10)
        second.reply()
        second.send(b"LHLO c.example\r\nMAIL FROM:<s@example.net>\r\n")
        assert [code_of(r) for r in second.replies(2)] == [b"250", b"250 2.1.0"]
        second.send(b"RCPT TO:<b@example.org>\r\n")
        with pytest.raises(TimeoutError):  # the only thread is busy: RCPT waits for it
            second.reply()
        handler.release.set()
        second.sock.settimeout(10)
        assert code_of(second.reply()) == b"250 2.1.5"
        assert code_of(first.reply()) == b"250 2.0.0"
    assert server.loop_thread not in handler.rcpt_threads


@pytest.mark.parametrize("runtime", ASYNC_RUNTIMES)
def test_async_handler_methods_run_on_the_loop(runtime: str, sock_path: str) -> None:
    seen: list[int] = []

    class OnLoop(AsyncRecorder):
        async def deliver(self, envelope: Any) -> Any:
            seen.append(threading.get_ident())
            return await super().deliver(envelope)

    handler = OnLoop()
    with serving(runtime, handler, socket_path=sock_path) as server:
        result = blocking.deliver(
            b"x\r\n", "s@example.net", ["a@example.org"], socket_path=sock_path
        )
    assert result.all_delivered
    assert seen == [server.loop_thread]


# ---- bounded concurrency --------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_past_max_connections_a_client_gets_421_and_the_slot_comes_back(
    runtime: str, sock_path: str
) -> None:
    with (
        LogWatch("transports", logging.WARNING) as logs,
        serving(runtime, Handler(), socket_path=sock_path, max_connections=2),
        ExitStack() as stack,
    ):
        first, second = (stack.enter_context(Raw(sock_path)) for _ in range(2))
        assert first.reply().startswith(b"220 ") and second.reply().startswith(b"220 ")
        refused = []
        for _ in range(5):
            with Raw(sock_path) as extra:
                refused.append(extra.reply())
                assert extra.eof()
        first.send(b"QUIT\r\n")
        assert code_of(first.reply()) == b"221 2.0.0" and first.eof()
        assert _greeted_within(sock_path, 10.0)  # the slot is free again
    assert all(r.startswith(b"421 4.3.2 ") for r in refused), refused
    assert len(logs.messages("max_connections")) == 1  # at most once per interval


def _greeted_within(address: Any, seconds: float) -> bool:
    """Connect until a 220 greeting comes (the server frees a slot just after the
    client saw the connection end)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with Raw(address) as raw:
            if raw.reply().startswith(b"220 "):
                return True
    return False


def test_blocking_server_keeps_its_threads_within_max_connections(sock_path: str) -> None:
    def workers() -> int:
        return sum(1 for t in threading.enumerate() if t.name == "lmtp-session")

    with serving("blocking", Handler(), socket_path=sock_path, max_connections=3):
        most = 0
        for _ in range(20):
            result = blocking.deliver(
                b"x\r\n", "s@example.net", ["a@example.org"], socket_path=sock_path
            )
            assert result.all_delivered
            most = max(most, workers())
    assert 1 <= most <= 3  # threads are reused, never more than max_connections
    assert workers() == 0  # and all gone once the server has stopped


# ---- accept loops survive resource exhaustion (subprocesses with lowered limits) -------------

SERVER_SCRIPT = """
import logging, os, resource, sys, threading
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
runtime, path, what = sys.argv[1], sys.argv[2], sys.argv[3]
from transports import Handler, blocking
from transports import asyncio as lmtp_asyncio
from transports import trio as lmtp_trio
import asyncio, trio

def limit():
    if what == "nofile":
        used = len(os.listdir("/proc/self/fd"))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + 12, hard))
    else:  # threads: room for the accept thread and one worker of 64 MiB stacks
        threading.stack_size(64 * 1024 * 1024)
        size = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (size + 170 * 1024 * 1024, resource.RLIM_INFINITY))

def ready():
    print("ready", flush=True)

if runtime == "blocking":
    server = blocking.Server(Handler(), socket_path=path)
    limit()
    with server:
        ready()
        sys.stdin.read()
elif runtime == "asyncio":
    async def main():
        async with lmtp_asyncio.Server(Handler(), socket_path=path):
            limit()
            ready()
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    asyncio.run(main())
else:
    async def main():
        async with trio.open_nursery() as nursery:
            server = await nursery.start(lmtp_trio.Server(Handler(), socket_path=path).serve)
            limit()
            ready()
            await trio.to_thread.run_sync(sys.stdin.read)
            server.close(0)
    trio.run(main)
"""


@dataclass
class Subprocess:
    proc: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)
    partial: bytes = b""

    def wait_line(self, needle: str, timeout: float = 10.0) -> bool:
        """Read stderr lines until one holds `needle` (bounded)."""
        assert self.proc.stderr is not None
        end = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stderr, selectors.EVENT_READ)
            while not any(needle in line for line in self.lines):
                left = end - time.monotonic()
                if left <= 0 or not selector.select(left):
                    return False
                chunk = os.read(self.proc.stderr.fileno(), 65536)  # never a buffered read
                if not chunk:
                    return False
                *complete, self.partial = (self.partial + chunk).split(b"\n")
                self.lines += [line.decode(errors="replace") for line in complete]
        return True

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def limited_server(runtime: str, path: str, what: str) -> Iterator[Subprocess]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), MALLOC_ARENA_MAX="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SERVER_SCRIPT), runtime, path, what],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            assert selector.select(15), "the server did not start"
            assert proc.stdout.readline() == b"ready\n"
        yield Subprocess(proc)
    finally:
        proc.kill()
        proc.wait(10)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_running_out_of_descriptors_pauses_accepting_then_serving_resumes(
    runtime: str, sock_path: str
) -> None:
    with limited_server(runtime, sock_path, "nofile") as server, ExitStack() as stack:
        idle = []
        for _ in range(40):  # more than the server has descriptors for
            sock = stack.enter_context(socket.socket(socket.AF_UNIX))
            sock.connect(sock_path)
            idle.append(sock)
        assert server.wait_line("cannot accept"), server.lines
        before, started = server.cpu_seconds(), time.monotonic()
        assert not server.wait_line("never printed", timeout=1.0)  # one second, watched
        spent = server.cpu_seconds() - before
        for sock in idle:
            sock.close()
        result = blocking.deliver(
            b"x\r\n", "s@example.net", ["a@example.org"], socket_path=sock_path, timeout=15
        )
    elapsed = time.monotonic() - started
    assert result.all_delivered
    assert spent < 0.3 * elapsed, f"{spent:.2f} s of CPU in {elapsed:.2f} s: spinning"
    failures = [line for line in server.lines if "cannot accept" in line]
    assert len(failures) == 1, failures  # logged once per interval, no traceback
    assert "EMFILE" in failures[0] and not any("Traceback" in line for line in server.lines)


def test_threads_that_cannot_start_pause_the_blocking_server(sock_path: str) -> None:
    with limited_server("blocking", sock_path, "threads") as server, ExitStack() as stack:
        first = stack.enter_context(Raw(sock_path))
        assert first.reply().startswith(b"220 ")  # the one worker that fits
        second = stack.enter_context(Raw(sock_path, timeout=0.5))
        assert server.wait_line("can't start new thread"), server.lines
        with pytest.raises(TimeoutError):
            second.reply()  # accepted and queued: no thread for it yet
        first.send(b"QUIT\r\n")
        assert code_of(first.reply()) == b"221 2.0.0"
        second.sock.settimeout(10)
        assert second.reply().startswith(b"220 ")  # the freed worker took it
        second.send(b"QUIT\r\n")
        assert code_of(second.reply()) == b"221 2.0.0"
    assert not any("Traceback" in line for line in server.lines), server.lines


# ---- a deadline on every wait -----------------------------------------------------------------

IDLE = 0.5
BOUND = 5.0  # a generous ceiling for a cut that the settings make happen after IDLE


def _closed_within(raw: Raw) -> float:
    started = time.monotonic()
    assert raw.eof(), "still open"
    return time.monotonic() - started


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_a_tls_handshake_never_started_is_cut_at_the_idle_timeout(
    runtime: str, mode: str, pki: PKI
) -> None:
    context = pki.server_context()
    tls = {"ssl_context": context} if mode == "implicit" else {"starttls_context": context}
    with (
        serving(runtime, Handler(), idle_timeout=IDLE, **tls) as server,
        Raw(server.address, timeout=BOUND) as raw,
    ):
        if mode == "starttls":
            raw.reply()
            raw.send(b"LHLO c.example\r\nSTARTTLS\r\n")
            assert code_of(raw.replies(2)[1]) == b"220 2.0.0"
        took = _closed_within(raw)  # the client never sends a ClientHello
    assert IDLE * 0.8 <= took < BOUND


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_client_that_stops_reading_is_cut_at_the_idle_timeout(
    runtime: str, sock_path: str
) -> None:
    # 600 kB of commands, 1.4 MB of replies never read: far more than a UNIX socket holds.
    flood = b"NOOP\r\n" * 100_000
    with (
        LogWatch("transports.server", logging.INFO) as logs,
        serving(runtime, Handler(), socket_path=sock_path, idle_timeout=IDLE),
        Raw(sock_path, timeout=BOUND) as raw,
    ):
        started = time.monotonic()
        sender = threading.Thread(target=_send_quietly, args=(raw.sock, flood), daemon=True)
        sender.start()
        assert logs.wait("connection ended: timed out", BOUND), logs.messages()
        took = time.monotonic() - started
        raw.close()
        sender.join(BOUND)
    assert took < BOUND


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server cut us off, or the test closed it
        sock.sendall(data)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_silent_client_is_cut_at_the_idle_timeout(runtime: str, sock_path: str) -> None:
    with (
        serving(runtime, Handler(), socket_path=sock_path, idle_timeout=IDLE),
        Raw(sock_path, timeout=BOUND) as raw,
    ):
        raw.reply()
        raw.send(b"LHLO c.example\r\nMAIL FROM:<s@example.net>\r\n")
        raw.replies(2)
        took = _closed_within(raw)  # silent inside a transaction
    assert IDLE * 0.8 <= took < BOUND


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_busy_session_is_cut_at_the_session_timeout(runtime: str, sock_path: str) -> None:
    with (
        serving(runtime, Handler(), socket_path=sock_path, session_timeout=1.0),
        Raw(sock_path, timeout=BOUND) as raw,
    ):
        started = time.monotonic()
        raw.reply()
        answered = 0
        try:
            while True:  # never idle: a NOOP as soon as the last one is answered
                raw.send(b"NOOP\r\n")
                raw.reply()
                answered += 1
        except (EOFError, OSError):
            took = time.monotonic() - started
    assert answered > 10
    assert 0.8 <= took < BOUND


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_handshake_stalled_half_way_is_cut_at_the_idle_timeout(runtime: str, pki: PKI) -> None:
    # A client that starts the handshake and stalls half way is cut off the same way.
    context = pki.server_context()
    with (
        serving(runtime, Handler(), idle_timeout=IDLE, ssl_context=context) as server,
        Raw(server.address, timeout=BOUND) as raw,
    ):
        hello = ssl.MemoryBIO()
        client = ssl.create_default_context().wrap_bio(hello, ssl.MemoryBIO())
        with pytest.raises(ssl.SSLWantReadError):
            client.do_handshake()
        raw.send(hello.read())  # the ClientHello, then nothing
        took = _closed_within(raw)
    assert took < BOUND
