"""Every file in docs/examples/ runs here, as a reader would run it.

How it works: each example runs in a subprocess from the repository root, with the
socket path as its argument. The clients deliver to the pytest plugin's lmtp_server
(set up to refuse or fail the addresses the example expects to see refused), and the
servers are delivered to by our blocking client, then stopped with SIGINT (what Ctrl-C
sends); a session left idle must get the 421 of a graceful stop. Each must exit 0 with
the output the docs promise. The framework adapter's own tests run under pytest, as
the testing guide says. test_every_example_runs_here fails when an example is added
without a test; `nox -s typing` checks them all with mypy --strict.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from lmtp_core import Reply, Stage, Status, normalized_size
from transports import blocking
from transports.pytest_plugin import LMTPUnixTestServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
TIMEOUT = 120

#: The examples the tests below run, filled in by @runs.
RUN: set[str] = set()
F = TypeVar("F", bound=Callable[..., object])


def runs(*names: str) -> Callable[[F], F]:
    """Marks a test as the one that runs these examples."""
    RUN.update(names)
    return lambda test: test


def run(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def example(name: str, *args: str) -> list[str]:
    """Run docs/examples/NAME with ARGS; its output lines."""
    return run(str(EXAMPLES / name), *args).stdout.splitlines()


def test_every_example_runs_here() -> None:
    on_disk = {path.name for path in EXAMPLES.glob("*.py")}
    assert on_disk == RUN, f"examples without a test: {sorted(on_disk - RUN)}"


# ---- clients, against the pytest plugin's server --------------------------------------


@runs("client_blocking.py")
def test_client_blocking(lmtp_server: LMTPUnixTestServer) -> None:
    lmtp_server.reject("nobody@example.org")
    lines = example("client_blocking.py", lmtp_server.socket_path)
    assert lines == [
        "alice@example.org delivered data 250 2.0.0 Delivered",
        "nobody@example.org permanent rcpt 550 5.1.1 User unknown",
        "alice delivered",
        "bob delivered",
    ]
    assert [m.recipients for m in lmtp_server.messages] == [
        ["alice@example.org"],
        ["alice@example.org"],
        ["bob@example.org"],
        ["bob@example.org"],  # the example's own file, streamed
    ]
    assert lmtp_server.messages[-1].data == (EXAMPLES / "client_blocking.py").read_bytes().replace(
        b"\n", b"\r\n"
    )


@runs("client_asyncio.py")
def test_client_asyncio(lmtp_server: LMTPUnixTestServer) -> None:
    lmtp_server.reject("nobody@example.org")
    lines = example("client_asyncio.py", lmtp_server.socket_path)
    assert lines[0].startswith("RecipientResult(recipient='alice@example.org'")
    assert sorted(lines[1:]) == ["alice delivered", "bob delivered", "nobody permanent"]
    assert all(b"Hello over LMTP, from asyncio." in m.data for m in lmtp_server.messages)


@runs("client_trio.py")
def test_client_trio(lmtp_server: LMTPUnixTestServer) -> None:
    lines = example("client_trio.py", lmtp_server.socket_path)
    assert lines[0].startswith("RecipientResult(recipient='alice@example.org'")
    assert sorted(lines[1:3]) == [
        "alice delivered 250 2.0.0 Delivered",
        "bob delivered 250 2.0.0 Delivered",
    ]
    assert lines[3:] == ["streamed: delivered"]
    assert lmtp_server.messages[-1].data == b"Subject: Streamed\r\n\r\nSent piece by piece.\r\n"


@runs("pool_blocking.py")
def test_pool_blocking(lmtp_server: LMTPUnixTestServer) -> None:
    (line,) = example("pool_blocking.py", lmtp_server.socket_path)
    assert line.startswith("100 delivered, 0 not; ")
    assert len(lmtp_server.messages) == 100


@runs("pool_asyncio.py")
def test_pool_asyncio(lmtp_server: LMTPUnixTestServer) -> None:
    lines = example("pool_asyncio.py", lmtp_server.socket_path)
    assert lines[-1] == "200 of 200 messages delivered to every recipient"
    assert len(lmtp_server.messages) == 200


@runs("pool_trio.py")
def test_pool_trio(lmtp_server: LMTPUnixTestServer) -> None:
    assert example("pool_trio.py", lmtp_server.socket_path) == ["200 of 200 delivered"]
    assert len(lmtp_server.messages) == 200


@runs("sansio_client.py")
def test_sansio_client(lmtp_server: LMTPUnixTestServer) -> None:
    lmtp_server.reject("nobody@x.org")
    lines = example("sansio_client.py", lmtp_server.socket_path)
    assert lines[0].startswith("server offers: ['PIPELINING'")
    assert lines[1:] == [
        "alice@example.org delivered data 250 2.0.0 Delivered",
        "nobody@x.org permanent rcpt 550 5.1.1 User unknown",
    ]
    (received,) = lmtp_server.messages
    sent = b"Subject: by hand\n\nDelivered by a hand-written loop.\n.dot\n"
    assert received.data == sent.replace(b"\n", b"\r\n")
    # SIZE= is the size as sent, CRLF line ends: not len() of a message with bare LFs
    assert ("SIZE", str(normalized_size(sent))) in received.mail_params
    assert normalized_size(sent) == len(received.data) != len(sent)


@runs("sansio_plan.py")
def test_sansio_plan() -> None:
    lines = example("sansio_plan.py")
    assert lines[0] == "3 transactions"
    assert lines[1:] == [f"user{n}@example.org delivered data 250 2.0.0 Saved" for n in range(5)]


@runs("migrate_smtplib.py")
def test_migrating_from_smtplib_side_by_side(lmtp_server: LMTPUnixTestServer) -> None:
    lmtp_server.reject("nobody@example.org")
    lmtp_server.fail("full@example.org")
    lines = example("migrate_smtplib.py", lmtp_server.socket_path)
    assert lines == [
        # smtplib read one reply after the data (alice's) and saw no failure...
        "smtplib: refused at RCPT: {'nobody@example.org': (550, b'5.1.1 User unknown')}",
        "smtplib: nothing raised, so every other recipient looks delivered",
        # ...while full@'s and bob's replies were left for its next commands
        "smtplib: NOOP got (452, b'4.2.2 Mailbox full')",
        "smtplib: QUIT got (250, b'2.0.0 Delivered')",
        "lmtp: alice@example.org delivered data 250 2.0.0 Delivered",
        "lmtp: nobody@example.org permanent rcpt 550 5.1.1 User unknown",
        "lmtp: full@example.org temporary data 452 4.2.2 Mailbox full",
        "lmtp: bob@example.org delivered data 250 2.0.0 Delivered",
        "lmtp: to retry later: ['full@example.org']",
        "lmtp: to bounce: ['nobody@example.org']",
    ]
    assert [m.delivered for m in lmtp_server.messages] == [
        ["alice@example.org", "bob@example.org"],  # smtplib's copy: full@ failed unseen
        ["alice@example.org", "bob@example.org"],
    ]


@runs("framework_lifespan.py")
def test_framework_lifespan(lmtp_server: LMTPUnixTestServer) -> None:
    lmtp_server.reject("nobody@example.org")
    done = run(str(EXAMPLES / "framework_lifespan.py"), lmtp_server.socket_path)
    lines = done.stdout.splitlines()
    assert lines[:20] == [f"user{n}@example.org welcome mail sent" for n in range(20)]
    assert lines[20] == "nobody@example.org not delivered"
    opened = int(lines[21].removeprefix("connections open: "))
    assert 1 <= opened <= 4  # max_connections
    assert lines[22:] == ["after shutdown: 0"]
    assert "myapp.mail WARNING welcome mail to nobody@example.org: 550 5.1.1" in done.stderr
    assert len(lmtp_server.messages) == 20


# ---- the framework adapter ---------------------------------------------------------------


@runs("adapter.py")
def test_adapter_self_test_logs_each_failed_recipient() -> None:
    done = run(str(EXAMPLES / "adapter.py"), "--self-test")
    assert "self-test passed" in done.stdout
    logged = done.stdout + done.stderr
    assert "nobody@example.org: permanent at rcpt: 550" in logged
    assert "full@example.org: temporary at data: 452" in logged


@runs("test_adapter.py")
def test_adapter_tests_pass_with_the_plugin() -> None:
    done = run("-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLES / "test_adapter.py"))
    assert "4 passed" in done.stdout


# ---- servers, delivered to by our client, stopped by SIGINT -----------------------------


# The server examples get SIGINT as in a terminal's foreground job. A process inherits
# its parent's ignored signals and blocked-signal mask, and a test runner started in
# the background (bash ignores SIGINT for background jobs without job control) or by
# some CI runners has SIGINT ignored or blocked: Python then installs no
# KeyboardInterrupt, and the example would never see the Ctrl-C the test sends.
WITH_SIGINT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])",
]


@contextlib.contextmanager
def server_example(name: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """docs/examples/NAME listening on a new socket path, until the block ends."""
    with tempfile.TemporaryDirectory(prefix="lmtp-ex-") as directory:
        path = str(Path(directory) / "lmtp.sock")
        process = subprocess.Popen(
            [*WITH_SIGINT, str(EXAMPLES / name), path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            wait_listening(process, path)
            yield process, path
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()


def wait_listening(process: subprocess.Popen[str], path: str) -> None:
    until = time.monotonic() + 60
    while time.monotonic() < until:
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the example ended before listening:\n{out}{err}")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(path)
            except OSError:
                time.sleep(0.05)
                continue
            return
    pytest.fail(f"nothing listens on {path}")


@contextlib.contextmanager
def idle_session(path: str) -> Iterator[socket.socket]:
    """A session that said LHLO and then nothing."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(path)
        read_reply(sock)
        sock.sendall(b"LHLO idle.example\r\n")
        read_reply(sock)
        yield sock


def read_reply(sock: socket.socket) -> bytes:
    """One whole reply (its last line has a space after the code)."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
        last = data.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
        if data.endswith(b"\r\n") and last[3:4] == b" ":
            return data


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGINT, as Ctrl-C; the example must end by itself, with status 0."""
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, out + err
    return out, err


def outcomes(path: str, recipients: list[str]) -> list[tuple[Status, Stage, str]]:
    message = b"Subject: to the example\r\n\r\nHello.\r\n"
    result = blocking.deliver(message, "s@example.net", recipients, socket_path=path)
    return [(r.status, r.stage, str(r.reply)) for r in result.recipients]


def graceful(process: subprocess.Popen[str], path: str) -> tuple[str, str]:
    """Stop the example while a session is idle: a graceful stop answers it 421 4.3.2
    (a server cut off by Ctrl-C would only close it). The socket file goes too."""
    with idle_session(path) as sock:
        process.send_signal(signal.SIGINT)
        assert read_reply(sock).startswith(b"421 4.3.2")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, out + err
    assert "Traceback" not in err, err
    assert not os.path.exists(path)
    return out, err


@runs("server_blocking.py")
def test_server_blocking() -> None:
    with server_example("server_blocking.py") as (process, path):
        assert outcomes(path, ["alice@example.org", "nobody@example.org"]) == [
            (Status.DELIVERED, Stage.DATA, str(Reply(250, "2.0.0", "Delivered"))),
            (Status.PERMANENT, Stage.RCPT, str(Reply(550, "5.1.1", "No such user here"))),
        ]
        for _ in range(3):  # QUOTA is 3: the fourth fails after the data
            outcomes(path, ["bob@example.org"])
        assert outcomes(path, ["bob@example.org"]) == [
            (Status.PERMANENT, Stage.DATA, str(Reply(552, "5.2.2", "Mailbox full")))
        ]
        out, _ = graceful(process, path)
    assert out.splitlines()[1:] == [
        "alice@example.org 1 messages",
        "bob@example.org 3 messages",
    ]


@runs("server_asyncio.py")
def test_server_asyncio() -> None:
    with server_example("server_asyncio.py") as (process, path):
        assert [o[:2] for o in outcomes(path, ["alice@example.org", "a@elsewhere.net"])] == [
            (Status.DELIVERED, Stage.DATA),
            (Status.PERMANENT, Stage.RCPT),
        ]
        out, _ = graceful(process, path)
    assert "alice@example.org: 35 octets" in out.splitlines()


@runs("server_trio.py")
def test_server_trio() -> None:
    with server_example("server_trio.py") as (process, path):
        assert [o[:2] for o in outcomes(path, ["alice@example.org", "nobody@example.org"])] == [
            (Status.DELIVERED, Stage.DATA),
            (Status.PERMANENT, Stage.RCPT),
        ]
        out, _ = graceful(process, path)
    lines = out.splitlines()
    assert "s@example.net -> ['alice@example.org']: 35 octets" in lines
    assert lines[-2:] == ["stopping on SIGINT", "stopped"]


@runs("sansio_server.py")
def test_sansio_server() -> None:
    with server_example("sansio_server.py") as (process, path):
        assert [o[:2] for o in outcomes(path, ["alice@example.org", "carol@example.org"])] == [
            (Status.DELIVERED, Stage.DATA),
            (Status.PERMANENT, Stage.RCPT),
        ]
        out, _ = stop(process)  # one connection at a time, and no graceful stop: by hand
    assert out.splitlines()[-1] == "stored: {'alice@example.org': 1}"
    assert not os.path.exists(path)


def test_sansio_client_bounds_each_reply_not_each_read() -> None:
    # The guide's rule: a reply's deadline starts when it begins to be awaited and is
    # not restarted by each recv(), so a server that drips one byte at a time cannot
    # stretch it. Here the greeting drips for 2.4 s, a byte per 0.1 s, against a
    # greeting deadline of 0.5 s: the loop must give up after about 0.5 s (a timeout
    # per recv() would take the whole greeting, then time out waiting for LHLO's reply).
    import importlib.util
    import threading

    from transports import Timeouts

    spec = importlib.util.spec_from_file_location("sansio_client", EXAMPLES / "sansio_client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.TIMEOUTS = Timeouts(greeting=0.5, lhlo=0.5)
    ours, theirs = socket.socketpair()
    stop = threading.Event()

    def drip() -> None:
        for byte in b"220 slow.example ready\r\n":
            if stop.wait(0.1):
                return
            with contextlib.suppress(OSError):
                theirs.sendall(bytes([byte]))

    dripping = threading.Thread(target=drip, daemon=True)
    dripping.start()
    started = time.monotonic()
    try:
        result = module.deliver(ours, b"Subject: x\r\n\r\nx\r\n", "s@example.net", ["a@x.org"])
    finally:
        elapsed = time.monotonic() - started
        stop.set()
        dripping.join()
        ours.close()
        theirs.close()
    assert result is None  # the session never opened
    assert 0.4 < elapsed < 2.0
