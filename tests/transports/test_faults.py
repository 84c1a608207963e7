"""Faults at every point of a session, against every client runtime, and a client that
breaks off in the middle of DATA against our server.

How it works: ``FakeServer`` is a scripted LMTP server on plain blocking sockets in a thread.
It answers like a real server (PIPELINING, 8BITMIME, optionally CHUNKING; recipient 1 refused
with 550) except at one chosen point, where it closes the connection, stalls (stops reading
and answering until the test releases it), sends garbage, or says 421 and closes. It records
every reply it sent and whether it received the end of the message, and ``expected()`` derives
from that record the outcome the client must report for each recipient: the server's own
reply where one came, else UNKNOWN if the server had the end of the message (it may have
stored it), else TEMPORARY. Every wait is bounded; nothing sleeps: a stalled server waits on
an Event that the test sets once the client has returned.

The fault points are named after what the server had sent: before-greeting, after-greeting,
after-lhlo, after-mail, after-rcpt-K (K of 3 RCPT replies), after-354, mid-body (64 KiB read),
after-dot-J (J of 2 final replies; J = 2 means the fault hits QUIT). UNIX sockets keep the
kernel's buffers small, so a 2 MB body cannot be handed over whole before a body fault bites.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from lmtp_core import RemoteProtocolError, Stage, Status, TransactionResult
from transports import ConnectError, Envelope, LMTPError, SessionError, Timeout, Timeouts

from .runtimes import (
    RUNTIMES,
    Recorder,
    client_session,
    deliver,
    resource_warnings,
    running_server,
)

SENDER = "s@example.net"
RECIPIENTS = ["r0@example.org", "r1@example.org", "r2@example.org"]
SMALL = b"Subject: faults\r\n\r\nsmall body\r\n"
LINE = b"x" * 98 + b"\r\n"
LARGE = b"Subject: faults\r\n\r\n" + LINE * 20_000  # 2 MB, ten times the UNIX socket buffers
GARBAGE = b"\x00\xff\x16\x03 this is not an SMTP reply\r\n"
STEP = 0.3  # every per-phase timeout in the matrix
TIMEOUTS = Timeouts(
    connect=2,
    greeting=STEP,
    lhlo=STEP,
    starttls=STEP,
    mail=STEP,
    rcpt=STEP,
    data_init=STEP,
    data_block=STEP,
    data_end=STEP,
    command=STEP,
)
BOUND = 3.0  # seconds any faulty delivery may take with those timeouts (one STEP + slack)
STALL_MAX = BOUND + 1  # a stalled fake server gives up after this, so a hung client shows


@dataclass
class Fault:
    """Where the server misbehaves and how. ``step`` names the reply it withholds:
    ("greeting",), ("lhlo",), ("mail",), ("rcpt", k), ("data",), ("final", j), ("quit",),
    or a body step: ("354",) right after the 354, ("body",) after 64 KiB of body."""

    step: tuple[Any, ...]
    action: str  # "close" | "stall" | "garbage" | "421"


POINTS: dict[str, tuple[Any, ...]] = {
    "before-greeting": ("greeting",),
    "after-greeting": ("lhlo",),
    "after-lhlo": ("mail",),
    "after-mail": ("rcpt", 0),
    "after-rcpt-1": ("rcpt", 1),
    "after-rcpt-2": ("rcpt", 2),
    "after-rcpt-3": ("data",),
    "after-354": ("354",),
    "mid-body": ("body",),
    "after-dot-0": ("final", 0),
    "after-dot-1": ("final", 1),
    "after-dot-2": ("quit",),
}
BODY_POINTS = {"after-354", "mid-body"}
SESSION_POINTS = {"before-greeting", "after-greeting"}  # no recipient can be tried
ACTIONS = ["close", "stall", "garbage", "421"]


@dataclass
class Record:
    """What one session of the fake server sent and received."""

    sent: dict[tuple[Any, ...], int] = field(default_factory=dict)  # step -> reply code
    end_received: bool = False  # the final dot, or the BDAT LAST chunk, arrived whole
    commands: list[bytes] = field(default_factory=list)


class _Closed(Exception):
    """The session is over (fault performed or peer gone)."""


class FakeServer:
    """Serves one connection per entry of ``faults`` (None: behave), in order."""

    def __init__(
        self,
        path: str,
        faults: list[Fault | None],
        *,
        refused: frozenset[int] = frozenset({1}),
        chunking: bool = False,
        pipelining: bool = True,
        idle_close: bytes | None = None,
    ) -> None:
        self.faults = faults
        self.refused = refused
        self.chunking = chunking
        self.pipelining = pipelining
        #: After the first transaction, once the test sets close_now: send these bytes
        #: (b"" for none) and close the idle connection, then set idle_closed.
        self.idle_close = idle_close
        self.close_now = threading.Event()
        self.idle_closed = threading.Event()
        self.release = threading.Event()
        self.records: list[Record] = []
        self.error: BaseException | None = None
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(4)
        self.listener.settimeout(10)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._conn: socket.socket | None = None
        self._buffer = b""
        self._fault: Fault | None = None
        self._record = Record()
        self._stopping = False

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self._stopping = True
        if self.thread.is_alive():  # wake an accept() for a connection that never came
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as wake:
                wake.connect(self.path)
        self.thread.join(15)
        self.listener.close()
        assert not self.thread.is_alive(), "the fake server did not finish"
        if self.error is not None and exc_info[0] is None:
            raise AssertionError("the fake server failed") from self.error

    @property
    def record(self) -> Record:
        return self.records[0]

    # ---- the session ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            for fault in self.faults:
                conn, _ = self.listener.accept()
                if self._stopping:
                    conn.close()
                    return
                conn.settimeout(10)
                self._conn, self._buffer, self._fault = conn, b"", fault
                self._record = Record()
                self.records.append(self._record)
                with conn, contextlib.suppress(_Closed, ConnectionError):
                    self._session()
        except BaseException as exc:
            if not self._stopping:  # not a connection that never came
                self.error = exc

    def _session(self) -> None:
        self._reply(("greeting",), b"220 fake.example LMTP ready\r\n")
        self._read_line()  # LHLO
        extensions = [b"ENHANCEDSTATUSCODES", b"8BITMIME", b"SIZE 100000000"]
        if self.pipelining:
            extensions.append(b"PIPELINING")
        if self.chunking:
            extensions.append(b"CHUNKING")
        lines = [b"fake.example", *extensions]
        lhlo = b"".join(b"250-" + x + b"\r\n" for x in lines[:-1]) + b"250 " + lines[-1] + b"\r\n"
        self._reply(("lhlo",), lhlo)
        transactions = 0
        while True:
            line = self._read_line()
            verb = line[:4].upper()
            if verb == b"QUIT":
                self._reply(("quit",), b"221 2.0.0 Bye\r\n")
                raise _Closed
            if verb == b"RSET":
                self._send(b"250 2.0.0 OK\r\n")
                continue
            assert verb == b"MAIL", line
            self._transaction(line)
            transactions += 1
            if self.idle_close is not None and transactions == 1:
                assert self.close_now.wait(10)
                self._send(self.idle_close)
                self._conn_close()
                self.idle_closed.set()
                raise _Closed

    def _transaction(self, mail: bytes) -> None:
        n = len(RECIPIENTS)
        if self.pipelining:  # read the whole pipelined group before answering, as servers may
            group = [mail]
            while group[-1][:4].upper() not in (b"DATA", b"BDAT"):
                group.append(self._read_line())
            if group[-1][:4].upper() == b"BDAT":
                self._read_chunk(group[-1])
            self._reply(("mail",), b"250 2.1.0 OK\r\n")
            for k in range(n):
                self._rcpt_reply(k)
        else:
            self._reply(("mail",), b"250 2.1.0 OK\r\n")
            for k in range(n):
                self._read_line()
                self._rcpt_reply(k)
            group = [self._read_line()]
            if group[-1][:4].upper() == b"BDAT":
                self._read_chunk(group[-1])
        if group[-1][:4].upper() == b"DATA":
            self._reply(("data",), b"354 Go ahead\r\n")
            self._maybe_fault(("354",))
            self._read_body()
        accepted = [k for k in range(n) if k not in self.refused]
        for j, k in enumerate(accepted):
            self._reply(("final", j), f"250 2.0.0 <{RECIPIENTS[k]}> saved\r\n".encode(), k)

    def _rcpt_reply(self, k: int) -> None:
        if k in self.refused:
            self._reply(("rcpt", k), b"550 5.1.1 No such user\r\n")
        else:
            self._reply(("rcpt", k), b"250 2.1.5 OK\r\n")

    def _read_body(self) -> None:
        """Read up to the final dot; the ("body",) fault bites after 64 KiB of body."""
        received = 0
        checked = False
        while (end := self._buffer.find(b"\r\n.\r\n")) < 0:
            if not checked and received + len(self._buffer) >= 64 * 1024:
                checked = True
                self._maybe_fault(("body",))
            received += max(0, len(self._buffer) - 4)
            self._buffer = self._buffer[-4:]
            self._recv()
        self._buffer = self._buffer[end + 5 :]
        self._record.end_received = True

    def _read_chunk(self, command: bytes) -> None:
        words = command.split()
        size = int(words[1])
        while len(self._buffer) < size:
            self._recv()
        self._buffer = self._buffer[size:]
        assert words[-1].upper() == b"LAST", "the fake server takes one-chunk messages"
        self._record.end_received = True

    # ---- replies and faults ---------------------------------------------------------------

    def _reply(self, step: tuple[Any, ...], data: bytes, recipient: int | None = None) -> None:
        self._maybe_fault(step, recipient)
        self._record.sent[step if recipient is None else ("final", recipient)] = int(data[:3])
        self._send(data)

    def _maybe_fault(self, step: tuple[Any, ...], recipient: int | None = None) -> None:
        fault = self._fault
        if fault is None or fault.step != step:
            return
        if fault.action == "close":
            self._conn_close()
        elif fault.action == "stall":
            self.release.wait(STALL_MAX)
            self._conn_close()
        elif fault.action == "421":
            key = step if recipient is None else ("final", recipient)
            self._record.sent[key] = 421
            self._send(b"421 4.3.2 Shutting down\r\n")
            self._conn_close()
        elif fault.action == "garbage":
            self._send(GARBAGE)
            self._fault = None
            if step in (("354",), ("body",)):  # read on to the end of the body, then drain
                with contextlib.suppress(_Closed, OSError):
                    self._read_body()
            self._drain()
        raise _Closed

    def _drain(self) -> None:
        with contextlib.suppress(_Closed, OSError):
            while True:
                self._recv()

    def _send(self, data: bytes) -> None:
        assert self._conn is not None
        self._conn.sendall(data)

    def _recv(self) -> None:
        assert self._conn is not None
        data = self._conn.recv(65536)
        if not data:
            raise _Closed
        self._buffer += data

    def _read_line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            self._recv()
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        self._record.commands.append(line)
        return line

    def _conn_close(self) -> None:
        assert self._conn is not None
        self._conn.close()


def _status(code: int) -> Status:
    if code < 300:
        return Status.DELIVERED
    return Status.TEMPORARY if code < 500 else Status.PERMANENT


def expected(record: Record) -> list[tuple[Status, Stage | None, int | None]]:
    """The outcome the client must report for each recipient, from what the server did."""
    outcomes: list[tuple[Status, Stage | None, int | None]] = []
    sent = record.sent
    mail, data = sent.get(("mail",), 250), sent.get(("data",), 354)
    for k in range(len(RECIPIENTS)):
        rcpt = sent.get(("rcpt", k))
        final = sent.get(("final", k))
        if mail >= 400:  # the MAIL reply decides for everyone
            outcomes.append((_status(mail), Stage.RCPT, mail))
        elif rcpt is not None and rcpt >= 400:
            outcomes.append((_status(rcpt), Stage.RCPT, rcpt))
        elif final is not None:
            outcomes.append((_status(final), Stage.DATA, final))
        elif rcpt is not None and data >= 400:  # DATA refused: nobody gets the message
            outcomes.append((_status(data), Stage.DATA, data))
        else:  # no reply: the stage reached is DATA once accepted at RCPT
            stage = Stage.DATA if rcpt is not None else Stage.RCPT
            if record.end_received:  # the server has the message and said nothing
                outcomes.append((Status.UNKNOWN, stage, None))
            else:  # it cannot have stored it
                outcomes.append((Status.TEMPORARY, stage, None))
    return outcomes


def outcomes(result: TransactionResult) -> list[tuple[Status, Stage | None, int | None]]:
    return [(r.status, r.stage, r.reply.code if r.reply else None) for r in result.recipients]


def check_invariants(result: TransactionResult, record: Record) -> None:
    """The rules, stated directly (expected() is one model of them)."""
    assert [r.recipient for r in result.recipients] == RECIPIENTS
    for k, r in enumerate(result.recipients):
        if r.status is Status.DELIVERED:  # only ever from a 2xx after the data
            assert r.reply is not None and r.reply.code < 300 and r.stage is Stage.DATA
            assert record.sent.get(("final", k), 0) // 100 == 2
        if r.reply is None:
            accepted = record.sent.get(("rcpt", k), 500) < 300
            assert r.stage is (Stage.DATA if accepted else Stage.RCPT)
            assert r.status is (Status.UNKNOWN if record.end_received else Status.TEMPORARY)


CASES = [
    (point, action)
    for point in POINTS
    for action in ACTIONS
    if not (action == "421" and point in BODY_POINTS)  # a 421 the client never reads
]


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize(("point", "action"), CASES, ids=[f"{p}-{a}" for p, a in CASES])
def test_fault_at_every_point(client: str, point: str, action: str, sock_path: str) -> None:
    body = LARGE if point in BODY_POINTS else SMALL
    with FakeServer(sock_path, [Fault(POINTS[point], action)]) as server:
        started = time.monotonic()
        outcome: TransactionResult | BaseException
        try:
            outcome = deliver(
                client,
                body,
                SENDER,
                RECIPIENTS,
                socket_path=sock_path,
                timeout=TIMEOUTS,
                chunking=False,
            )
        except LMTPError as exc:
            outcome = exc
        elapsed = time.monotonic() - started
        server.release.set()
    assert elapsed < BOUND, f"took {elapsed:.2f}s"
    if action == "stall":
        assert elapsed >= STEP * 0.9  # it was the deadline that ended the wait
    record = server.record
    if point in SESSION_POINTS:
        assert isinstance(outcome, ConnectError | SessionError), outcome
        if action == "stall":
            assert isinstance(outcome, Timeout)
        elif action == "garbage":
            assert isinstance(outcome, SessionError)
            assert isinstance(outcome.error, RemoteProtocolError)
        elif action == "421":
            assert isinstance(outcome, SessionError)
            assert outcome.reply is not None and outcome.reply.code == 421
        else:
            assert not isinstance(outcome, Timeout)
        assert not any(c[:4].upper() == b"MAIL" for c in record.commands)
        return
    assert isinstance(outcome, TransactionResult), outcome
    check_invariants(outcome, record)
    assert outcomes(outcome) == expected(record)
    if point == "after-dot-2":  # the transaction was complete before the fault
        assert outcomes(outcome) == [
            (Status.DELIVERED, Stage.DATA, 250),
            (Status.PERMANENT, Stage.RCPT, 550),
            (Status.DELIVERED, Stage.DATA, 250),
        ]


def test_the_model_covers_each_kind_of_outcome() -> None:
    # The matrix above compares with expected(); make sure that model is not trivially true.
    mid = Record(sent={("mail",): 250, ("rcpt", 0): 250, ("rcpt", 1): 550})
    assert expected(mid) == [
        (Status.TEMPORARY, Stage.DATA, None),
        (Status.PERMANENT, Stage.RCPT, 550),
        (Status.TEMPORARY, Stage.RCPT, None),
    ]
    after_dot = Record(
        sent={
            ("mail",): 250,
            ("rcpt", 0): 250,
            ("rcpt", 1): 550,
            ("rcpt", 2): 250,
            ("data",): 354,
            ("final", 0): 250,
        },
        end_received=True,
    )
    assert expected(after_dot) == [
        (Status.DELIVERED, Stage.DATA, 250),
        (Status.PERMANENT, Stage.RCPT, 550),
        (Status.UNKNOWN, Stage.DATA, None),
    ]


PIPELINE_CASES = [
    ("after-mail", "close"),
    ("after-rcpt-1", "stall"),
    ("after-rcpt-2", "garbage"),
    ("after-rcpt-3", "421"),
    ("after-dot-1", "stall"),
    ("after-dot-0", "421"),
]


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize(
    ("point", "action"), PIPELINE_CASES, ids=[f"{p}-{a}" for p, a in PIPELINE_CASES]
)
def test_faults_without_pipelining(client: str, point: str, action: str, sock_path: str) -> None:
    with FakeServer(sock_path, [Fault(POINTS[point], action)], pipelining=False) as server:
        started = time.monotonic()
        result = deliver(
            client,
            SMALL,
            SENDER,
            RECIPIENTS,
            socket_path=sock_path,
            timeout=TIMEOUTS,
            chunking=False,
        )
        elapsed = time.monotonic() - started
        server.release.set()
    assert elapsed < BOUND
    check_invariants(result, server.record)
    assert outcomes(result) == expected(server.record)


BDAT_CASES = [
    ("after-lhlo", "close"),
    ("after-mail", "stall"),
    ("after-rcpt-1", "garbage"),
    ("after-rcpt-2", "421"),
    ("after-dot-0", "close"),
    ("after-dot-1", "stall"),
    ("after-dot-1", "421"),
]


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize(("point", "action"), BDAT_CASES, ids=[f"{p}-{a}" for p, a in BDAT_CASES])
def test_faults_with_pipelined_bdat(client: str, point: str, action: str, sock_path: str) -> None:
    # MAIL, the RCPTs and "BDAT n LAST" with the body go out together, so once the server
    # has read them the message may be stored for anyone not refused, replies or not.
    with FakeServer(sock_path, [Fault(POINTS[point], action)], chunking=True) as server:
        started = time.monotonic()
        result = deliver(client, SMALL, SENDER, RECIPIENTS, socket_path=sock_path, timeout=TIMEOUTS)
        elapsed = time.monotonic() - started
        server.release.set()
    assert elapsed < BOUND
    assert server.record.end_received
    assert any(c.startswith(b"BDAT") for c in server.record.commands)
    check_invariants(result, server.record)
    assert outcomes(result) == expected(server.record)


@pytest.mark.parametrize("client", RUNTIMES)
def test_one_reply_after_data_then_silence(client: str, sock_path: str) -> None:
    # aiosmtpd's LMTP answers the end of data once, whatever the number of recipients.
    data_end = 0.5
    timeouts = dataclasses.replace(Timeouts.of(5.0), data_end=data_end)
    with FakeServer(sock_path, [Fault(("final", 1), "stall")], refused=frozenset()) as server:
        started = time.monotonic()
        result = deliver(
            client,
            SMALL,
            SENDER,
            RECIPIENTS,
            socket_path=sock_path,
            timeout=timeouts,
            chunking=False,
        )
        elapsed = time.monotonic() - started
        server.release.set()
    assert data_end * 0.9 <= elapsed < data_end + 2
    assert outcomes(result) == [
        (Status.DELIVERED, Stage.DATA, 250),
        (Status.UNKNOWN, Stage.DATA, None),
        (Status.UNKNOWN, Stage.DATA, None),
    ]
    assert [r.recipient for r in result.retry] == RECIPIENTS[1:]


@pytest.mark.parametrize("client", RUNTIMES)
def test_total_deadline_bounds_a_slow_delivery(client: str, sock_path: str) -> None:
    timeouts = Timeouts(
        connect=5, greeting=5, lhlo=5, mail=5, rcpt=5, data_init=5, data_end=5, total=0.5
    )
    with FakeServer(sock_path, [Fault(("rcpt", 1), "stall")]) as server:
        started = time.monotonic()
        result = deliver(
            client,
            SMALL,
            SENDER,
            RECIPIENTS,
            socket_path=sock_path,
            timeout=timeouts,
            chunking=False,
        )
        elapsed = time.monotonic() - started
        server.release.set()
    assert 0.45 <= elapsed < 3
    assert outcomes(result) == [
        (Status.TEMPORARY, Stage.DATA, None),
        (Status.TEMPORARY, Stage.RCPT, None),
        (Status.TEMPORARY, Stage.RCPT, None),
    ]


@pytest.mark.parametrize("client", RUNTIMES)
def test_client_reconnects_after_a_broken_connection(client: str, sock_path: str) -> None:
    faults: list[Fault | None] = [Fault(("final", 1), "close"), None]
    with (
        FakeServer(sock_path, faults) as server,
        client_session(client, socket_path=sock_path, timeout=TIMEOUTS, chunking=False) as session,
    ):
        first = session.deliver(SMALL, SENDER, RECIPIENTS)
        second = session.deliver(SMALL, SENDER, RECIPIENTS)
    assert outcomes(first) == [
        (Status.DELIVERED, Stage.DATA, 250),
        (Status.PERMANENT, Stage.RCPT, 550),
        (Status.UNKNOWN, Stage.DATA, None),
    ]
    assert outcomes(second) == expected(server.records[1])
    assert second.recipients[0].status is Status.DELIVERED
    assert len(server.records) == 2


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize(
    "goodbye", [b"", b"421 4.4.2 Idle too long, closing\r\n"], ids=["fin", "421"]
)
def test_client_reconnects_when_the_server_closed_an_idle_connection(
    client: str, goodbye: bytes, sock_path: str
) -> None:
    # Servers close idle LMTP connections (Dovecot, Postfix: "421 4.4.2 ... timeout"). The
    # README: a Client "opens a new one when the previous one broke"; the close is already
    # known to the client's kernel before the second delivery starts.
    with (
        FakeServer(sock_path, [None, None], idle_close=goodbye) as server,
        client_session(client, socket_path=sock_path, timeout=TIMEOUTS, chunking=False) as session,
    ):
        first = session.deliver(SMALL, SENDER, RECIPIENTS)
        server.close_now.set()  # only now, so the goodbye cannot arrive with the replies
        assert server.idle_closed.wait(10)
        second = session.deliver(SMALL, SENDER, RECIPIENTS)
    assert first.recipients[0].status is Status.DELIVERED
    assert outcomes(second) == [
        (Status.DELIVERED, Stage.DATA, 250),
        (Status.PERMANENT, Stage.RCPT, 550),
        (Status.DELIVERED, Stage.DATA, 250),
    ]


# ---- a client that breaks off, against our server -----------------------------------------


class CountingHandler(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.delivered = 0

    def deliver(self, envelope: Envelope) -> Any:
        with self.lock:
            self.delivered += 1
        return super().deliver(envelope)


def _talk(sock: socket.socket, data: bytes, replies: int) -> bytes:
    """Send `data`, then read until `replies` complete reply lines arrived."""
    sock.sendall(data)
    received = b""
    while sum(1 for line in received.split(b"\r\n")[:-1] if line[3:4] == b" ") < replies:
        chunk = sock.recv(65536)
        assert chunk, f"closed early after {received!r}"
        received += chunk
    return received


BREAK_OFFS = {
    "after-354": (b"DATA\r\n", b""),
    "mid-data": (b"DATA\r\n", b"Subject: cut\r\n\r\nhalf a body\r\n."),
    "before-final-dot": (b"DATA\r\n", b"Subject: cut\r\n\r\nall but the dot\r\n"),
    "mid-bdat": (b"BDAT 100 LAST\r\n", b"Subject: cut\r\n\r\n40 of 100 octets\r\n"),
    "between-bdat-chunks": (b"BDAT 16\r\n", b"Subject: cut\r\n\r\n"),
}


@pytest.mark.parametrize("how", ["close", "half-close"])
@pytest.mark.parametrize("break_off", list(BREAK_OFFS))
def test_client_closing_mid_data_never_reaches_deliver(
    break_off: str, how: str, sock_path: str
) -> None:
    command, body = BREAK_OFFS[break_off]
    handler = CountingHandler()
    with (
        resource_warnings() as leaks,
        running_server("blocking", handler, socket_path=sock_path),
        socket.socket(socket.AF_UNIX) as sock,
    ):
        sock.settimeout(10)
        sock.connect(sock_path)
        _talk(sock, b"", 1)  # the greeting
        _talk(sock, b"LHLO fake.client\r\n", 1)
        envelope = b"MAIL FROM:<s@example.net>\r\nRCPT TO:<a@example.org>\r\n"
        answer = _talk(sock, envelope + command, 3 if command == b"DATA\r\n" else 2)
        assert answer.startswith(b"250") and answer.count(b"250 ") == 2
        sock.sendall(body)
        if command.startswith(b"BDAT 16"):
            assert _talk(sock, b"", 1).startswith(b"250")  # the first chunk is taken...
        if how == "close":
            sock.shutdown(socket.SHUT_RDWR)  # ...and then the client is gone
        else:
            sock.shutdown(socket.SHUT_WR)  # the server reads all we sent, then EOF
            while sock.recv(65536):  # until the server closes its side
                pass
    # leaving running_server joined the server's session threads
    assert handler.senders == ["s@example.net"]
    assert handler.recipients == ["a@example.org"]
    assert handler.delivered == 0
    assert leaks == [], "the server did not close what it spooled"


def test_complete_fake_client_session_does_reach_deliver(sock_path: str) -> None:
    # The control for the test above: the same dialogue, finished, is delivered.
    handler = CountingHandler()
    with (
        running_server("blocking", handler, socket_path=sock_path),
        socket.socket(socket.AF_UNIX) as sock,
    ):
        sock.settimeout(10)
        sock.connect(sock_path)
        _talk(sock, b"", 1)
        _talk(sock, b"LHLO fake.client\r\n", 1)
        envelope = b"MAIL FROM:<s@example.net>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n"
        _talk(sock, envelope, 3)
        assert _talk(sock, b"Subject: whole\r\n\r\nbody\r\n.\r\n", 1).startswith(b"250")
    assert handler.delivered == 1
    assert handler.messages[0].data == b"Subject: whole\r\n\r\nbody\r\n"
