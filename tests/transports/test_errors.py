"""What users read when something goes wrong: exceptions, their messages, and the log.

How it works: every test runs one runtime's public API (blocking, asyncio, trio) over real
sockets on 127.0.0.1 or UNIX sockets, through the helpers of runtimes.py, and looks at what
the caller and the log get, never at internals.

- Settings: a misspelt name raises Python's own TypeError naming the public function the
  caller called (``transports.trio.deliver()``), and a bad value ConfigurationError naming the
  setting, both before any socket exists: a listening socket stays untouched, a server's
  socket path is never created, and the garbage collector finds no leaked socket. A serve()
  that does not raise would serve forever, so it is given a few seconds, then fails the test.
- Failures: each scenario is a real endpoint that fails one way: a TCP port bound but not
  listening (refused), a missing socket path, a name under .invalid, and ``ScriptedServer``,
  a thread that accepts and then stays silent or greets with ``554 no``. Each runtime's
  exception must have the exact type and words; then the three runtimes' messages, each
  against its own endpoint, must be equal once the endpoint is replaced by a placeholder.
  No message may say the same two words twice ("cannot connect: cannot connect").
- Logs: caplog at DEBUG on ``transports``. Client lines start ``[c<N>] ``; two Clients
  delivering at once (their sessions held together by a barrier in a blocking server's
  handler) log under two ids whose transcripts interleave but never mix. Server lines start
  ``[s<N>] <peer>: ``. A failed connect is logged once, at INFO. Recipients with a bidi
  override, accepted and refused, appear escaped. The async servers log their last line
  after the client has returned, so tests wait (bounded) for it before looking.

Two tests pin bugs found while writing them and fixed since: the transcript lost the
reply that ended a session, and asyncio reported a refusal on every address of a name as
"Multiple exceptions: ..." instead of the OS's words.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from lmtp_core import Params, Reply, Status
from transports import (
    ConfigurationError,
    ConnectError,
    Handler,
    LMTPError,
    SessionError,
    Timeout,
    blocking,
)
from transports import asyncio as lmtp_asyncio
from transports import trio as lmtp_trio

from .runtimes import (
    RUNTIMES,
    Failure,
    Recorder,
    client_session,
    deliver,
    endpoint,
    failure_of,
    running_server,
)

MESSAGE = b"Subject: errors\r\n\r\nbody\r\n"
SENDER = "sender@example.net"
RECIPIENTS = ["rcpt@example.org"]
UNKNOWN_HOST = "no.such.host.invalid"  # RFC 2606: never resolves
CLIENTS: dict[str, Any] = {
    "blocking": blocking.Client,
    "asyncio": lmtp_asyncio.Client,
    "trio": lmtp_trio.Client,
}
SERVERS: dict[str, Any] = {
    "blocking": blocking.Server,
    "asyncio": lmtp_asyncio.Server,
    "trio": lmtp_trio.Server,
}
SERVE_BOUND = 5.0  # seconds a serve() that should raise gets before the test gives up
WAIT_BOUND = 5.0  # seconds to wait for a server's last log line
CLIENT_LINE = re.compile(r"\[c(\d+)\] ")
SERVER_LINE = re.compile(r"\[s(\d+)\] (\S+): ")


# ---- helpers ------------------------------------------------------------------------------


def serve_bounded(runtime: str, handler: Handler, **settings: Any) -> None:
    """``<runtime>.serve(handler, **settings)``, which must raise within SERVE_BOUND
    seconds: one that starts serving fails the test instead of hanging it."""
    if runtime == "asyncio":

        async def asyncio_main() -> None:
            await asyncio.wait_for(lmtp_asyncio.serve(handler, **settings), SERVE_BOUND)

        asyncio.run(asyncio_main())
    elif runtime == "trio":

        async def trio_main() -> None:
            with trio.fail_after(SERVE_BOUND):
                await lmtp_trio.serve(handler, **settings)

        trio.run(trio_main)
    else:
        raised: list[BaseException] = []

        def run() -> None:
            try:
                blocking.serve(handler, **settings)
            except BaseException as exc:
                raised.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(SERVE_BOUND)
        if thread.is_alive():
            raise AssertionError("blocking.serve() is serving instead of raising")
        if raised:
            raise raised.pop()


def repeated_phrase(message: str) -> str | None:
    """The first two consecutive words that occur twice in `message`, if any."""
    words = re.findall(r"[a-z]+", message.lower())
    seen: set[tuple[str, str]] = set()
    for pair in itertools.pairwise(words):
        if pair in seen:
            return " ".join(pair)
        seen.add(pair)
    return None


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` until it holds; fail after WAIT_BOUND seconds."""
    end = time.monotonic() + WAIT_BOUND
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"still waiting after {WAIT_BOUND} s for {what}")
        time.sleep(0.01)


def messages(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


def server_closed(caplog: pytest.LogCaptureFixture, sessions: int) -> Callable[[], bool]:
    """True once the server logged the end of `sessions` sessions."""
    return lambda: (
        sum(": closed: " in line for line in messages(caplog, "transports.server")) >= sessions
    )


class ScriptedServer:
    """A TCP server on 127.0.0.1 in a thread: it accepts every connection, sends
    `greeting` if there is one, then says nothing and holds the connection until exit."""

    def __init__(self, greeting: bytes | None) -> None:
        self.greeting = greeting
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.02)  # how often the thread looks at _stop
        self.port: int = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(WAIT_BOUND)
        self._listener.close()
        for sock in self._held:
            sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._held.append(sock)
            self.accepted += 1
            if self.greeting is not None:
                with contextlib.suppress(OSError):
                    sock.sendall(self.greeting)


# ---- failure scenarios ----------------------------------------------------------------------

CASES = ["refused", "missing-path", "unknown-host", "silent", "greeting-554"]


@contextlib.contextmanager
def scenario(case: str, sock_path: str) -> Iterator[tuple[dict[str, Any], str]]:
    """Client settings for an endpoint that fails as `case` says, and its name in messages."""
    if case == "refused":
        with socket.socket() as bound:
            bound.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
            port = bound.getsockname()[1]
            yield {"host": "127.0.0.1", "port": port, "timeout": 5}, f"127.0.0.1:{port}"
    elif case == "missing-path":
        yield {"socket_path": sock_path}, f"unix:{sock_path}"
    elif case == "unknown-host":
        yield {"host": UNKNOWN_HOST, "port": 2424, "timeout": 5}, f"{UNKNOWN_HOST}:2424"
    elif case in ("silent", "greeting-554"):
        greeting = None if case == "silent" else b"554 no\r\n"
        with ScriptedServer(greeting) as server:
            settings = {"host": "127.0.0.1", "port": server.port, "timeout": 0.5}
            yield settings, f"127.0.0.1:{server.port}"
            wait_until(lambda: server.accepted >= 1, "the client's connection")
    else:
        raise ValueError(case)


def fail(runtime: str, settings: dict[str, Any]) -> Failure:
    failure = failure_of(lambda: deliver(runtime, MESSAGE, SENDER, RECIPIENTS, **settings))
    assert failure.kind is not None, "the delivery did not fail"
    return failure


def check_message(case: str, failure: Failure, name: str) -> None:
    """The exception's type and words for `case`, against the endpoint called `name`."""
    message = failure.message
    assert issubclass(failure.error, LMTPError), failure
    assert failure.leaks == [], failure.leaks
    placeholder = message.replace(name, "ENDPOINT").replace(UNKNOWN_HOST, "HOST")
    assert repeated_phrase(placeholder) is None, message
    if case == "refused":
        assert failure.error is ConnectError, failure
        assert message == f"cannot connect to {name}: Connection refused"
    elif case == "missing-path":
        assert failure.error is ConnectError, failure
        assert message == f"cannot connect to {name}: No such file or directory"
    elif case == "unknown-host":
        assert failure.error is ConnectError, failure
        assert message.startswith(f"cannot resolve {UNKNOWN_HOST}: "), message
        assert message.removeprefix(f"cannot resolve {UNKNOWN_HOST}: ").strip(), message
        assert "Unknown error" not in message, message
    elif case == "silent":
        assert failure.error is Timeout, failure
        assert message == f"timed out after 0.5 s waiting for the greeting from {name}"
    else:
        assert failure.error is SessionError, failure
        assert name in message, message
        assert "554 no" in message, message


# ---- 1. a misspelt setting ------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_misspelt_client_setting_names_the_public_function(runtime: str, sock_path: str) -> None:
    for name, call in [
        ("deliver", lambda: deliver(runtime, MESSAGE, SENDER, RECIPIENTS, sockt_path=sock_path)),
        ("Client", lambda: CLIENTS[runtime](sockt_path=sock_path)),
    ]:
        failure = failure_of(call)
        assert failure.kind is TypeError, failure
        assert failure.message == (
            f"transports.{runtime}.{name}() got an unexpected keyword argument 'sockt_path'"
        )
        assert failure.leaks == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_misspelt_server_setting_names_the_public_function(runtime: str, sock_path: str) -> None:
    failure = failure_of(lambda: SERVERS[runtime](Recorder(), sockt_path=sock_path))
    assert failure.kind is TypeError, failure
    assert failure.message == (
        f"transports.{runtime}.Server() got an unexpected keyword argument 'sockt_path'"
    )
    assert failure.leaks == []
    # socket_path is right, so a serve() that went on would listen there
    failure = failure_of(lambda: serve_bounded(runtime, Recorder(), socket_path=sock_path, prot=1))
    assert failure.kind is TypeError, failure
    assert failure.message == (
        f"transports.{runtime}.serve() got an unexpected keyword argument 'prot'"
    )
    assert failure.leaks == []
    assert not os.path.exists(sock_path), "serve() listened before raising"


# ---- 2. an invalid value --------------------------------------------------------------------


@pytest.fixture
def untouched() -> Iterator[int]:
    """The port of a listening TCP socket that must never see a connection."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.accept()  # nobody connected


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(
    ("setting", "value"), [("port", "2424"), ("timeout", "5"), ("host", "")], ids=str
)
def test_invalid_client_value_is_refused_before_connecting(
    runtime: str, setting: str, value: object, untouched: int
) -> None:
    settings = {"host": "127.0.0.1", "port": untouched, setting: value}
    for call in [
        lambda: CLIENTS[runtime](**settings),
        lambda: deliver(runtime, MESSAGE, SENDER, RECIPIENTS, **settings),
    ]:
        failure = failure_of(call)
        assert failure.kind is ConfigurationError, failure
        assert setting in failure.message, failure.message
        assert failure.leaks == []


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(("setting", "value"), [("idle_timeout", 0), ("port", -1)], ids=str)
def test_invalid_server_value_is_refused_before_listening(
    runtime: str, setting: str, value: object, sock_path: str
) -> None:
    # with socket_path the port is not used: the port case listens on TCP, if at all
    settings = {setting: value} if setting == "port" else {"socket_path": sock_path, setting: value}
    for call in [
        lambda: SERVERS[runtime](Recorder(), **settings),
        lambda: serve_bounded(runtime, Recorder(), **settings),
    ]:
        failure = failure_of(call)
        assert failure.kind is ConfigurationError, failure
        assert setting in failure.message, failure.message
        assert failure.leaks == []
        assert not os.path.exists(sock_path)


# ---- 3. messages ----------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("case", CASES)
def test_failure_message(runtime: str, case: str, sock_path: str) -> None:
    with scenario(case, sock_path) as (settings, name):
        failure = fail(runtime, settings)
    check_message(case, failure, name)


@pytest.mark.parametrize("case", CASES)
def test_failure_messages_read_the_same_in_every_runtime(case: str, sock_path: str) -> None:
    seen: dict[str, tuple[type[BaseException], str]] = {}
    for runtime in RUNTIMES:  # each against an endpoint of its own
        path = os.path.join(os.path.dirname(sock_path), f"{runtime}.sock")
        with scenario(case, path) as (settings, name):
            failure = fail(runtime, settings)
        check_message(case, failure, name)
        seen[runtime] = (failure.error, failure.message.replace(name, "<endpoint>"))
    assert seen["asyncio"] == seen["blocking"] == seen["trio"], seen


@pytest.mark.parametrize(
    "runtime",
    [
        "blocking",
        "asyncio",
        "trio",
    ],
)
def test_refused_on_every_address_of_a_name_reads_the_same(
    runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A name with two addresses, both refusing: "localhost" on a dual-stack host (::1 and
    # 127.0.0.1). Resolution is faked (two refusing ports on 127.0.0.1); sockets are real.
    real = socket.getaddrinfo
    with socket.socket() as one, socket.socket() as two:
        one.bind(("127.0.0.1", 0))
        two.bind(("127.0.0.1", 0))
        ports = [one.getsockname()[1], two.getsockname()[1]]

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host != "two-addresses.test":
                return real(host, port, *args, **kwargs)
            return [a for p in ports for a in real("127.0.0.1", p, *args, **kwargs)]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        settings = {"host": "two-addresses.test", "port": ports[0], "timeout": 5}
        failure = fail(runtime, settings)
    assert failure.error is ConnectError, failure
    assert failure.message == f"cannot connect to two-addresses.test:{ports[0]}: Connection refused"


# ---- 4. connection ids in the log -----------------------------------------------------------


@dataclass(eq=False)
class Rendezvous(Recorder):
    """Holds each session in RCPT until the other one is there too."""

    barrier: threading.Barrier = field(default_factory=lambda: threading.Barrier(2, timeout=10))

    def rcpt_to(self, recipient: str, params: Params) -> Any:
        self.barrier.wait()
        return super().rcpt_to(recipient, params)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_client_lines_carry_a_connection_id_and_concurrent_sessions_are_apart(
    runtime: str, sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="transports")
    senders = ["first@example.net", "second@example.net"]
    with (
        running_server("blocking", Rendezvous(), socket_path=sock_path) as address,
        contextlib.ExitStack() as stack,
    ):
        sessions = [
            stack.enter_context(client_session(runtime, **endpoint(address))) for _ in senders
        ]
        with ThreadPoolExecutor(2) as pool:
            futures = [
                pool.submit(session.deliver, MESSAGE, sender, RECIPIENTS)
                for session, sender in zip(sessions, senders, strict=True)
            ]
            results = [future.result(30) for future in futures]
    assert all(result.all_delivered for result in results), results

    lines = messages(caplog, "transports")
    debug = [r for r in caplog.records if r.name == "transports" and r.levelno == logging.DEBUG]
    assert debug, "no transcript was logged"
    unmarked = [line for line in lines if not CLIENT_LINE.match(line)]
    assert unmarked == [], unmarked
    by_id: dict[str, list[int]] = {}
    for index, line in enumerate(lines):
        match = CLIENT_LINE.match(line)
        assert match is not None
        by_id.setdefault(match[1], []).append(index)
    assert len(by_id) == 2, by_id.keys()
    owners: dict[str, str] = {}
    for cid, indexes in by_id.items():
        own = [lines[i].removeprefix(f"[c{cid}] ") for i in indexes]
        assert own[0] == f"connected to unix:{sock_path}", own
        assert "C: LHLO localhost" in own, own
        assert own[-1] == "closed: quit", own
        mail = [text for text in own if text.startswith("C: MAIL FROM:")]
        assert len(mail) == 1, own
        (owner,) = [s for s in senders if f"<{s}>" in mail[0]]
        owners[owner] = cid
    assert set(owners) == set(senders), owners  # one transcript each, nothing mixed
    first, second = by_id.values()
    assert first[0] < second[-1] and second[0] < first[-1], "the sessions did not overlap"


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_server_lines_carry_a_session_id_and_the_peer(
    runtime: str, family: str, sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="transports")
    settings = {"socket_path": sock_path} if family == "unix" else {}
    with running_server(runtime, Recorder(), **settings) as address:
        for _ in range(2):
            result = deliver("blocking", MESSAGE, SENDER, RECIPIENTS, **endpoint(address))
            assert result.all_delivered, result
        wait_until(server_closed(caplog, 2), "the server to log both sessions' end")

    lines = messages(caplog, "transports.server")
    matches = [SERVER_LINE.match(line) for line in lines]
    assert all(matches), lines
    sessions: dict[str, list[str]] = {}
    for match, line in zip(matches, lines, strict=True):
        assert match is not None
        sid, peer = match[1], match[2]
        if family == "unix":
            assert peer == f"unix:{sock_path}", line
        else:
            peer_port = re.fullmatch(r"127\.0\.0\.1:(\d+)", peer)
            assert peer_port is not None, line
            assert 0 < int(peer_port[1]) != address[1], line  # the client's port
        sessions.setdefault(sid, []).append(line[match.end() :])
    assert len(sessions) == 2, sessions  # one id per session
    for own in sessions.values():
        assert own[0] == "connected", own
        assert f"{RECIPIENTS[0]} 250 2.0.0 Delivered" in own, own
        assert own[-1] == "closed: quit", own


# ---- 5. a failed connect is logged once -----------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("case", ["refused", "missing-path", "unknown-host"])
def test_failed_connect_is_logged_once_at_info(
    runtime: str, case: str, sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: nobody else may report it either
    caplog.set_level(logging.DEBUG, logger="transports")
    with scenario(case, sock_path) as (settings, _name):
        failure = fail(runtime, settings)
    mention = {"refused": "Connection refused", "missing-path": sock_path}.get(case, UNKNOWN_HOST)
    records = [r for r in caplog.records if mention in r.getMessage()]
    assert len(records) == 1, [(r.name, r.getMessage()) for r in records]
    (record,) = records
    assert (record.name, record.levelno) == ("transports", logging.INFO)
    assert re.fullmatch(r"\[c\d+\] " + re.escape(failure.message), record.getMessage())


# ---- 6. peer text is escaped ----------------------------------------------------------------

BIDI = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: reverses how the rest of a log line reads


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_peer_text_is_escaped_in_the_server_log(
    runtime: str, sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="transports")
    # displayed raw, the accepted address reads "live@example.org"
    accepted, refused = f"{BIDI}gro.elpmaxe@evil", f"x{BIDI}@example.org"
    recorder = Recorder(rcpt={refused: Reply(550, "5.1.1", "No such user")})
    with running_server(runtime, recorder, socket_path=sock_path) as address:
        result = deliver("blocking", MESSAGE, SENDER, [accepted, refused], **endpoint(address))
        wait_until(server_closed(caplog, 1), "the server to log the session's end")
    assert [r.status for r in result.recipients] == [Status.DELIVERED, Status.PERMANENT], result
    assert recorder.recipients == [accepted, refused]  # the server took them as they were

    server = messages(caplog, "transports.server")
    raw = [line for line in server if BIDI in line]
    assert raw == [], raw
    escaped = [BIDI.encode("unicode_escape").decode() + t for t in ("gro", "@example.org")]
    assert any(escaped[0] in line and "250" in line for line in server), server
    assert any(escaped[1] in line and "550" in line for line in server), server
    client = messages(caplog, "transports")
    assert [line for line in client if BIDI in line] == []


# ---- documented bug: the transcript loses the reply that ends a session -------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_transcript_keeps_the_reply_that_ends_the_session(
    runtime: str, sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="transports")
    with scenario("greeting-554", sock_path) as (settings, _name):
        failure = fail(runtime, settings)
    assert failure.error is SessionError
    transcript = [CLIENT_LINE.sub("", line) for line in messages(caplog, "transports")]
    assert "S: 554 no" in transcript, transcript
