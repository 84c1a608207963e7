"""The client's deadlines and its outcomes when a write fails, against every client runtime.

How it works: ``FakeServer`` listens on a UNIX socket (the ``sock_path`` fixture) and runs a
script, a plain function of one ``Peer``, in a thread for the one connection the client makes.
``Peer`` is the server's side of that connection over a blocking socket: buffered reads of
command lines, of BDAT chunks and of a DATA body up to its final dot, and a record of what
arrived (the command lines; whether the end of the message did). Every wait is bounded: reads
by the socket's timeout (HOLD), and a script that must keep quiet, or pace its own output,
waits on the test's ``stop`` event (``hold()``, ``pause()``), which the test sets as soon as
the client has returned. No test waits on a sleep for something to happen: the only timed
waits are the server's pauses between the bytes or replies it drips, which is what those
tests are about. Leaving the ``with`` block stops the server, joins its thread and re-raises
what the script raised (a client that went away mid-script is not an error).

Each test delivers to three recipients (or fails to open the session), times the call, and
checks the outcome of every recipient (status, stage, reply) and the elapsed time, both
ways: at least the deadline that should have ended the wait, at most that plus SLACK. Every
phase that is not under test gets LONG (30 s), so a test that ends in about a second proves
which deadline ended it; the ``failures`` fixture reads the failure the client logged
("timed out after 1 s writing to unix:...") to show what it was doing when it gave up.
What they prove:

- data_end bounds the wait for the replies after the end of the data: silence after a
  pipelined ``BDAT n LAST`` (nothing answered, so every recipient is UNKNOWN at stage RCPT)
  or after the final dot (MAIL, RCPT and 354 answered: UNKNOWN at stage DATA) ends after
  data_end, not after the 30 s of the MAIL or RCPT phases.
- data_end restarts with every reply: final replies 0.6 s apart (1.8 s in all) against a
  data_end of 1 s are all awaited, and every recipient is DELIVERED.
- A phase's deadline bounds the whole phase: a greeting dripped one byte every 0.3 s raises
  Timeout after the 1 s of the greeting phase, with the message naming the phase and the
  endpoint, however many bytes came.
- data_block bounds each write: a server that stops reading while an 8 MiB body goes out
  gets TEMPORARY for everyone after data_block (the end of the data never left). The stage
  is DATA when the RCPT replies were read before the body: with DATA, and with BDAT when the
  server stops reading in the second chunk. With pipelined BDAT a server that stops reading
  in the first chunk leaves the client writing, never reading its RCPT replies: stage RCPT.
- total bounds a whole delivery, connecting included: a server that never greets raises
  Timeout after the total (0.5 s), saying so; a server that answers every command after
  0.3 s, each well inside its phase's 30 s, is cut off after a total of 1 s. In lockstep
  (no PIPELINING, DATA) the cut comes while the envelope is being answered, so everyone is
  TEMPORARY at stage RCPT; with pipelined BDAT the whole message was written before the
  first reply could come, so everyone is UNKNOWN (at stage RCPT: no RCPT reply came).
- A write that fails is exact: a server that takes the envelope, reads 64 KiB of a 16 MiB
  body (bytes, or an iterator of 64 KiB pieces) and closes with unread data (SO_LINGER 0:
  the client's writes fail with EPIPE or ECONNRESET) gets TEMPORARY at stage DATA for
  everyone, DATA and BDAT alike: the write that would have carried the end of the data
  never happened. When the one write that fails is the one carrying the end (the message
  source holds back its end until the server has closed), the blocking and trio clients
  say TEMPORARY (the kernel refused those bytes), and so does asyncio, whose transport is
  closing right after the write() whose send() failed. A server that
  reads the whole message, end included, and closes without a reply gets UNKNOWN at
  stage DATA.
- Every recipient of every result has a stage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from lmtp_core import Stage, Status, TransactionResult
from transports import Timeout, Timeouts

from .runtimes import RUNTIMES, deliver, failure_of

T = TypeVar("T")

SENDER = "s@example.net"
RECIPIENTS = ["r0@example.org", "r1@example.org", "r2@example.org"]
SMALL = b"Subject: deadlines\r\n\r\nsmall body\r\n"
LINE = b"x" * 98 + b"\r\n"
MIB = 1024 * 1024
PIECE = 64 * 1024
BODY_8 = b"Subject: big\r\n\r\n" + LINE * (8 * MIB // len(LINE))
BODY_16 = b"Subject: big\r\n\r\n" + LINE * (16 * MIB // len(LINE))

LONG = 30.0  # every phase not under test
SLACK = 1.5  # for a loaded CI machine
EARLY = 0.05  # timers may fire this much early (asyncio rounds by its clock resolution)
HOLD = 10.0  # the longest a fake server waits, for the test or for the client

GREETING = b"220 fake.example LMTP ready\r\n"
MAIL_OK = b"250 2.1.0 OK\r\n"
RCPT_OK = b"250 2.1.5 OK\r\n"
GO_AHEAD = b"354 Go ahead\r\n"
CHUNK_OK = b"250 2.0.0 chunk OK\r\n"
SAVED = b"250 2.0.0 saved\r\n"


def timeouts(**seconds: float) -> Timeouts:
    """LONG for every phase, except those given."""
    return dataclasses.replace(Timeouts.of(LONG), **seconds)


# ---- the fake server ----------------------------------------------------------------------


class Gone(Exception):
    """The client closed the connection."""


class Over(Exception):
    """The test is over: the script stops."""


class Peer:
    """The server's side of one connection, on a blocking socket with a timeout."""

    def __init__(self, conn: socket.socket, stop: threading.Event) -> None:
        self.conn = conn
        self.stop = stop
        self.buffer = bytearray()
        self.commands: list[bytes] = []
        self.end_received = False  # the final dot, or the whole BDAT LAST chunk
        self.sent = 0  # octets written

    # -- writing, pacing

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)
        self.sent += len(data)

    def pause(self, seconds: float) -> None:
        """Pace our own output; raises Over once the test is over."""
        if self.stop.wait(seconds):
            raise Over

    def hold(self) -> None:
        """Neither read nor write until the test is over."""
        self.stop.wait(HOLD)

    def reset(self) -> None:
        """Close with unread data, lingering 0 s: the client's writes fail at once."""
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.conn.close()

    # -- reading

    def _recv(self) -> None:
        data = self.conn.recv(PIECE)
        if not data:
            raise Gone
        self.buffer += data

    def line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            self._recv()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        self.commands.append(line)
        return line

    def envelope(self) -> list[bytes]:
        """MAIL, the RCPTs and the DATA or BDAT line that ends a pipelined group."""
        lines = [self.line()]
        while lines[-1][:4].upper() not in (b"DATA", b"BDAT"):
            lines.append(self.line())
        assert lines[0].upper().startswith(b"MAIL FROM:"), lines
        assert len(lines) == len(RECIPIENTS) + 2, lines
        return lines

    def skip(self, size: int) -> None:
        """Read and drop exactly `size` octets."""
        while size > len(self.buffer):
            size -= len(self.buffer)
            self.buffer.clear()
            self._recv()
        del self.buffer[:size]

    def chunk(self, command: bytes) -> bool:
        """Read the chunk a BDAT line announces; whether it was the LAST."""
        words = command.split()
        assert words[0].upper() == b"BDAT", command
        self.skip(int(words[1]))
        last = words[-1].upper() == b"LAST"
        self.end_received |= last
        return last

    def to_dot(self) -> None:
        """Read a DATA body up to and including its final dot."""
        while (end := self.buffer.find(b"\r\n.\r\n")) < 0:
            del self.buffer[:-4]  # the tail may begin the final dot's line
            self._recv()
        del self.buffer[: end + 5]
        self.end_received = True

    def some_body(self, size: int) -> None:
        """Read at least `size` octets of body, and no further."""
        received = len(self.buffer)
        self.buffer.clear()
        while received < size:
            self._recv()
            received += len(self.buffer)
            self.buffer.clear()


def greet(
    peer: Peer, *, chunking: bool = True, pipelining: bool = True, delay: float = 0.0
) -> None:
    """The greeting and the LHLO reply, each `delay` seconds after what it answers."""
    if delay:
        peer.pause(delay)
    peer.send(GREETING)
    assert peer.line().upper().startswith(b"LHLO ")
    extensions = [b"fake.example", b"ENHANCEDSTATUSCODES", b"8BITMIME", b"SIZE 100000000"]
    if pipelining:
        extensions.append(b"PIPELINING")
    if chunking:
        extensions.append(b"CHUNKING")
    if delay:
        peer.pause(delay)
    lines = [b"250-" + x for x in extensions[:-1]] + [b"250 " + extensions[-1]]
    peer.send(b"".join(line + b"\r\n" for line in lines))


def answer_quit(peer: Peer) -> None:
    """Answer the QUIT that ends a delivery."""
    assert peer.line().upper() == b"QUIT"
    peer.send(b"221 2.0.0 Bye\r\n")


class FakeServer:
    """Runs `script` for the one connection a client makes to `path`."""

    def __init__(self, path: str, script: Callable[[Peer], None]) -> None:
        self.path = path
        self.script = script
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._peer: Peer | None = None
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.listener.settimeout(HOLD)
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def peer(self) -> Peer:
        assert self._peer is not None, "the client never connected"
        return self._peer

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        if self._peer is None and self.thread.is_alive():  # wake an accept() still waiting
            with socket.socket(socket.AF_UNIX) as wake, contextlib.suppress(OSError):
                wake.settimeout(1)
                wake.connect(self.path)
        self.thread.join(HOLD + 5)
        self.listener.close()
        assert not self.thread.is_alive(), "the fake server did not finish"
        if self.error is not None and exc_info[0] is None:
            raise AssertionError("the fake server failed") from self.error

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError as exc:
            self.error = exc
            return
        with conn:
            if self.stop.is_set():
                return
            conn.settimeout(HOLD)
            self._peer = Peer(conn, self.stop)
            try:
                self.script(self._peer)
            except (Gone, Over, ConnectionError):
                pass  # the client went away, or the test is over: the result tells the rest
            except BaseException as exc:
                self.error = exc


# ---- checks -------------------------------------------------------------------------------


def timed(call: Callable[[], T]) -> tuple[T, float]:
    started = time.monotonic()
    value = call()
    return value, time.monotonic() - started


def outcomes(result: TransactionResult) -> list[tuple[Status, Stage | None, int | None]]:
    return [(r.status, r.stage, r.reply.code if r.reply else None) for r in result.recipients]


def check(result: TransactionResult, expected: tuple[Status, Stage | None, int | None]) -> None:
    """Every recipient, in order, has a stage and the `expected` outcome."""
    assert [r.recipient for r in result.recipients] == RECIPIENTS
    for r in result.recipients:
        assert r.stage is not None, r
    assert outcomes(result) == [expected] * len(RECIPIENTS)


def check_elapsed(elapsed: float, low: float, high: float) -> None:
    assert low - EARLY <= elapsed < high, f"took {elapsed:.3f} s, expected {low} to {high}"


def pieces(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), PIECE):
        yield data[start : start + PIECE]


def run(client: str, message: Any, timeout: float | Timeouts, **settings: Any) -> TransactionResult:
    return deliver(client, message, SENDER, RECIPIENTS, timeout=timeout, **settings)


@pytest.fixture
def failures(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The stream failures the client logged ("[c1] timed out after ..."), without the id:
    they name what the client was doing when a deadline passed or a write failed."""
    caplog.set_level(logging.INFO, logger="transports")

    def logged() -> list[str]:
        return [
            r.getMessage().partition("] ")[2]
            for r in caplog.records
            if r.name == "transports" and r.levelno == logging.INFO and r.msg == "[%s] %s"
        ]

    return logged


# ---- data_end -----------------------------------------------------------------------------


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_data_end_bounds_the_silence_after_the_end_of_data(
    client: str, chunking: bool, sock_path: str, failures: Callable[[], list[str]]
) -> None:
    def script(peer: Peer) -> None:
        greet(peer)  # CHUNKING and PIPELINING offered: the client's setting picks
        commands = peer.envelope()
        if chunking:  # MAIL, RCPTs and BDAT LAST came in one write: answer nothing
            assert peer.chunk(commands[-1])
        else:
            assert commands[-1] == b"DATA"
            peer.send(MAIL_OK + RCPT_OK * len(RECIPIENTS) + GO_AHEAD)
            peer.to_dot()
        peer.hold()

    with FakeServer(sock_path, script) as server:
        result, elapsed = timed(
            lambda: run(
                client, SMALL, timeouts(data_end=1), socket_path=sock_path, chunking=chunking
            )
        )
    assert server.peer.end_received
    check_elapsed(elapsed, 1, 1 + SLACK)
    # The end of the data was written: the server may have stored it. Without any RCPT
    # reply (pipelined BDAT) the stage reached is RCPT; after 250s to RCPT it is DATA.
    check(result, (Status.UNKNOWN, Stage.RCPT if chunking else Stage.DATA, None))
    # Even the MAIL reply (phase MAIL, 30 s) was awaited under data_end once the end was out.
    assert failures() == [
        f"timed out after 1 s waiting for the replies after the end of the data "
        f"from unix:{sock_path}"
    ]


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_data_end_restarts_with_every_final_reply(
    client: str, chunking: bool, sock_path: str, failures: Callable[[], list[str]]
) -> None:
    gap = 0.6  # between final replies: under data_end, though all of them take 1.8 s

    def script(peer: Peer) -> None:
        greet(peer)
        commands = peer.envelope()
        if chunking:
            assert peer.chunk(commands[-1])
            peer.send(MAIL_OK + RCPT_OK * len(RECIPIENTS))
        else:
            peer.send(MAIL_OK + RCPT_OK * len(RECIPIENTS) + GO_AHEAD)
            peer.to_dot()
        for _ in RECIPIENTS:
            peer.pause(gap)
            peer.send(SAVED)
        answer_quit(peer)

    with FakeServer(sock_path, script) as server:
        result, elapsed = timed(
            lambda: run(
                client, SMALL, timeouts(data_end=1), socket_path=sock_path, chunking=chunking
            )
        )
    assert server.peer.end_received
    check_elapsed(elapsed, gap * len(RECIPIENTS), gap * len(RECIPIENTS) + SLACK)
    check(result, (Status.DELIVERED, Stage.DATA, 250))
    assert failures() == []


# ---- a phase's deadline -------------------------------------------------------------------


@pytest.mark.parametrize("client", RUNTIMES)
def test_a_dripping_greeting_cannot_stretch_its_phase(client: str, sock_path: str) -> None:
    drip = 0.3  # one byte every 0.3 s: the greeting would take 8.7 s

    def script(peer: Peer) -> None:
        for octet in GREETING:
            peer.send(bytes([octet]))
            peer.pause(drip)

    with FakeServer(sock_path, script) as server:
        failure, elapsed = timed(
            lambda: failure_of(lambda: run(client, SMALL, 1, socket_path=sock_path))
        )
    check_elapsed(elapsed, 1, 1 + SLACK)
    assert failure.kind is Timeout, failure
    assert failure.message == f"timed out after 1 s waiting for the greeting from unix:{sock_path}"
    assert failure.leaks == []
    assert 1 < server.peer.sent < len(GREETING)  # bytes came, but not the whole greeting
    assert server.peer.commands == []


# ---- data_block ---------------------------------------------------------------------------

STOP_READING = {
    # mode: (client's chunking, the stage the recipients reached)
    "data": (False, Stage.DATA),
    "bdat-second-chunk": (True, Stage.DATA),
    "bdat-first-chunk": (True, Stage.RCPT),
}


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize("mode", list(STOP_READING))
def test_data_block_bounds_a_write_the_server_stopped_reading(
    client: str, mode: str, sock_path: str, failures: Callable[[], list[str]]
) -> None:
    chunking, stage = STOP_READING[mode]

    def script(peer: Peer) -> None:
        greet(peer)
        commands = peer.envelope()
        if mode == "data":
            peer.send(MAIL_OK + RCPT_OK * len(RECIPIENTS) + GO_AHEAD)
        elif mode == "bdat-second-chunk":
            assert not peer.chunk(commands[-1])
            peer.send(MAIL_OK + RCPT_OK * len(RECIPIENTS) + CHUNK_OK)
        else:  # the client is still writing the first chunk: it reads none of these
            peer.send(MAIL_OK + RCPT_OK * len(RECIPIENTS))
        peer.hold()  # and never read again

    with FakeServer(sock_path, script) as server:
        result, elapsed = timed(
            lambda: run(
                client, BODY_8, timeouts(data_block=1), socket_path=sock_path, chunking=chunking
            )
        )
    assert not server.peer.end_received
    check_elapsed(elapsed, 1, 1 + SLACK)
    # The end of the data never went out, so nobody can have the message.
    check(result, (Status.TEMPORARY, stage, None))
    assert failures() == [f"timed out after 1 s writing to unix:{sock_path}"]


# ---- the total deadline -------------------------------------------------------------------


@pytest.mark.parametrize("client", RUNTIMES)
def test_total_bounds_a_server_that_never_greets(client: str, sock_path: str) -> None:
    with FakeServer(sock_path, Peer.hold) as server:
        failure, elapsed = timed(
            lambda: failure_of(
                lambda: run(client, SMALL, timeouts(total=0.5), socket_path=sock_path)
            )
        )
    check_elapsed(elapsed, 0.5, 0.5 + SLACK)
    assert failure.kind is Timeout, failure
    assert "total deadline of 0.5 s" in failure.message
    assert failure.message == (
        f"the total deadline of 0.5 s passed waiting for the greeting from unix:{sock_path}"
    )
    assert failure.leaks == []
    assert server.peer.sent == 0


PACED = {
    # mode: (offer and use PIPELINING and CHUNKING, the outcome after the cut)
    # Lockstep: greeting 0.3 s, LHLO 0.6 s, MAIL 0.9 s, the first RCPT reply would be
    # 1.2 s: the cut at 1 s comes before any recipient is accepted or any data is sent.
    "lockstep-data": (False, (Status.TEMPORARY, Stage.RCPT, None)),
    # Pipelined BDAT: after LHLO (0.6 s) MAIL, RCPTs and BDAT LAST leave in one write;
    # MAIL is answered at 0.9 s, the first RCPT would be at 1.2 s. The message was
    # written, so the server may have it: UNKNOWN, at stage RCPT (no RCPT reply came).
    "pipelined-bdat": (True, (Status.UNKNOWN, Stage.RCPT, None)),
}


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize("mode", list(PACED))
def test_total_bounds_a_delivery_whose_every_wait_is_short(
    client: str, mode: str, sock_path: str, failures: Callable[[], list[str]]
) -> None:
    delay = 0.3  # before every reply; a whole delivery needs 9 or 10 of them
    extended, expected = PACED[mode]

    def script(peer: Peer) -> None:
        # A steady server: it would deliver to everyone in about 3 s.
        greet(peer, chunking=extended, pipelining=extended, delay=delay)
        if extended:  # the whole group arrives at once; each reply takes its time
            assert peer.chunk(peer.envelope()[-1])
            for reply in [MAIL_OK] + [RCPT_OK] * len(RECIPIENTS) + [SAVED] * len(RECIPIENTS):
                peer.pause(delay)
                peer.send(reply)
        else:
            for reply in [MAIL_OK] + [RCPT_OK] * len(RECIPIENTS) + [GO_AHEAD]:
                peer.line()
                peer.pause(delay)
                peer.send(reply)
            peer.to_dot()
            for _ in RECIPIENTS:
                peer.pause(delay)
                peer.send(SAVED)
        answer_quit(peer)

    with FakeServer(sock_path, script) as server:
        result, elapsed = timed(
            lambda: run(client, SMALL, timeouts(total=1), socket_path=sock_path, chunking=extended)
        )
    check_elapsed(elapsed, 1, 1 + SLACK)
    check(result, expected)
    verbs = [c[:4].upper() for c in server.peer.commands]
    (logged,) = failures()
    if extended:
        assert verbs[-1] == b"BDAT" and server.peer.end_received
        assert logged == (
            "the total deadline of 1 s passed waiting for the replies after the end of "
            f"the data from unix:{sock_path}"
        )
    else:  # waiting for the reply to MAIL or to the first RCPT, as the clock fell
        assert b"DATA" not in verbs and not server.peer.end_received
        assert logged.startswith("the total deadline of 1 s passed waiting for the repl")
        assert logged.endswith(f"from unix:{sock_path}")


# ---- failed writes ------------------------------------------------------------------------


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize("source", ["bytes", "iterator"])
@pytest.mark.parametrize("chunking", [False, True], ids=["data", "bdat"])
def test_a_reset_mid_body_is_temporary_for_everyone(
    client: str, source: str, chunking: bool, sock_path: str, failures: Callable[[], list[str]]
) -> None:
    def script(peer: Peer) -> None:
        greet(peer)
        commands = peer.envelope()
        if chunking:  # take the first chunk, so that the client reads the RCPT replies
            assert not peer.chunk(commands[-1])
            peer.send(MAIL_OK + RCPT_OK * len(RECIPIENTS) + CHUNK_OK)
            second = peer.line()
            assert second.upper().startswith(b"BDAT ") and not second.upper().endswith(b"LAST")
        else:
            peer.send(MAIL_OK + RCPT_OK * len(RECIPIENTS) + GO_AHEAD)
        peer.some_body(PIECE)
        peer.reset()  # with 14 MiB or more of the body still to come

    message = BODY_16 if source == "bytes" else pieces(BODY_16)
    with FakeServer(sock_path, script) as server:
        result, elapsed = timed(
            lambda: run(client, message, timeouts(), socket_path=sock_path, chunking=chunking)
        )
    assert not server.peer.end_received
    check_elapsed(elapsed, 0, SLACK)  # at once: no deadline (30 s) was involved
    # The write that would have carried the end of the data never happened.
    check(result, (Status.TEMPORARY, Stage.DATA, None))
    (logged,) = failures()  # a write failed (EPIPE, ECONNRESET), not a read
    assert logged.startswith(f"connection failed writing to unix:{sock_path}: "), logged


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize("chunking", [False, True], ids=["data", "bdat"])
def test_a_failed_write_of_the_end_of_data_is_temporary(
    client: str, chunking: bool, sock_path: str, failures: Callable[[], list[str]]
) -> None:
    # The message source waits, before it ends, until the server has closed: the one
    # write left, the one that carries the end of the data (".\r\n", or the whole
    # "BDAT n LAST" chunk), then fails at once with EPIPE, and the kernel took none of it.
    gone = threading.Event()
    body = SMALL if not chunking else b"Subject: big\r\n\r\n" + LINE * (3 * MIB // 2 // len(LINE))

    def source() -> Iterator[bytes]:
        yield from pieces(body)
        gone.wait(HOLD)

    def script(peer: Peer) -> None:
        greet(peer)
        commands = peer.envelope()
        if chunking:  # the first 1 MiB chunk; the rest waits for the end of the source
            assert not peer.chunk(commands[-1])
            peer.send(MAIL_OK + RCPT_OK * len(RECIPIENTS) + CHUNK_OK)
        else:  # the body is sent as it is (CRLF, no dot to stuff): all but ".\r\n"
            peer.send(MAIL_OK + RCPT_OK * len(RECIPIENTS) + GO_AHEAD)
            peer.skip(len(body))
        peer.conn.close()  # nothing left unread
        gone.set()

    with FakeServer(sock_path, script) as server:
        result, elapsed = timed(
            lambda: run(client, source(), timeouts(), socket_path=sock_path, chunking=chunking)
        )
    assert not server.peer.end_received
    check_elapsed(elapsed, 0, SLACK)
    (logged,) = failures()
    assert logged.startswith(f"connection failed writing to unix:{sock_path}: "), logged
    # asyncio too: its transport was closing right after write() (the send() failed
    # before any turn of the loop), which proves none of those bytes left.
    check(result, (Status.TEMPORARY, Stage.DATA, None))


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize("chunking", [False, True], ids=["data", "bdat"])
def test_a_close_after_the_end_of_data_is_unknown_for_everyone(
    client: str, chunking: bool, sock_path: str, failures: Callable[[], list[str]]
) -> None:
    def script(peer: Peer) -> None:
        greet(peer)
        commands = peer.envelope()
        if chunking:
            assert not peer.chunk(commands[-1])
            peer.send(MAIL_OK + RCPT_OK * len(RECIPIENTS) + CHUNK_OK)
            while not peer.chunk(peer.line()):
                peer.send(CHUNK_OK)
        else:
            peer.send(MAIL_OK + RCPT_OK * len(RECIPIENTS) + GO_AHEAD)
            peer.to_dot()
        peer.conn.close()  # the whole message arrived; no reply to it

    with FakeServer(sock_path, script) as server:
        result, elapsed = timed(
            lambda: run(client, BODY_16, timeouts(), socket_path=sock_path, chunking=chunking)
        )
    assert server.peer.end_received
    check_elapsed(elapsed, 0, SLACK)
    check(result, (Status.UNKNOWN, Stage.DATA, None))
    assert failures() == []  # every write went through; the client read the end of file
