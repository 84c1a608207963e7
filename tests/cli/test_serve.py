"""`lmtp serve` as a program under signals, load and bad starts, for real in subprocesses
(issue 13).

SIGTERM and SIGINT (asyncio and trio): the idle connection gets 421 at once, the
transaction in flight finishes and is stored, the socket file goes, exit status 0, one
last line and no traceback. Starting where a live server answers, or on a path that is
not a socket, fails with exit 2 and one line naming the path (the file is kept); a stale
socket is replaced. --max-connections, --require-tls and --recipients do what they say.
--workers 2 serves from two processes, replaces a worker killed with SIGKILL (under its
number), and stops them all on SIGTERM. Started by systemd socket activation (the
socket as descriptor 3, LISTEN_PID and LISTEN_FDS set as systemd sets them, with one
process or two), it serves the socket passed instead of --socket and leaves its file;
LISTEN_PID naming another process is no activation. A Maildir delivery fsyncing a large
message for many recipients holds up no other connection.

Every wait is bounded: lines are read from the server's stderr with a selector and a
deadline, replies with socket timeouts.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme

from tests.transports.servers import Raw, code_of

from .test_cli import LMTP, MESSAGE, run

RUNTIMES = ["asyncio", "trio"]
STARTED = re.compile(r"lmtp: worker (\d+) \(pid (\d+)\) started\n")
ENVELOPE = b"LHLO c.example\r\nMAIL FROM:<s@example.net>\r\nRCPT TO:<a@example.org>\r\n"


class Serve:
    """A running `lmtp serve`; its stderr read line by line, with deadlines. `launch`
    goes before the command (a program that execs it), `pass_fds` to Popen."""

    def __init__(
        self, *args: str, launch: Sequence[str] = (), pass_fds: Sequence[int] = ()
    ) -> None:
        self.proc = subprocess.Popen(
            [*launch, *LMTP, "serve", *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            pass_fds=pass_fds,
        )
        self.lines: list[str] = []
        self.address = ""
        self._partial = b""

    def wait_line(self, needle: str, timeout: float = 15.0, start: int = 0) -> str | None:
        """The first line from index `start` on holding `needle` (read as needed)."""
        assert self.proc.stderr is not None
        end = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stderr, selectors.EVENT_READ)
            while True:
                for line in self.lines[start:]:
                    if needle in line:
                        return line
                start = len(self.lines)
                left = end - time.monotonic()
                if left <= 0 or not selector.select(left):
                    return None
                # os.read, not readline(): a buffered reader could hold lines the
                # selector never reports.
                chunk = os.read(self.proc.stderr.fileno(), 65536)
                if not chunk:
                    return None
                *complete, self._partial = (self._partial + chunk).split(b"\n")
                self.lines += [line.decode(errors="replace") + "\n" for line in complete]

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the exit (bounded) and read the rest of stderr."""
        assert self.proc.stderr is not None
        status = self.proc.wait(timeout)
        rest = self._partial + self.proc.stderr.read()
        self.lines += rest.decode(errors="replace").splitlines(keepends=True)
        return status

    def close(self) -> None:
        """Stop it the way an init system does: SIGTERM, then SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@contextmanager
def serving(
    *args: str, launch: Sequence[str] = (), pass_fds: Sequence[int] = ()
) -> Iterator[Serve]:
    serve = Serve(*args, launch=launch, pass_fds=pass_fds)
    try:
        ready = serve.wait_line(" ready on ")
        assert ready is not None, "".join(serve.lines)
        serve.address = ready.split(" ready on ", 1)[1].split(",", 1)[0]
        yield serve
    finally:
        serve.close()


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_gracefully(runtime: str, signum: signal.Signals, tmp_path: Path) -> None:
    path, maildir = str(tmp_path / "s"), tmp_path / "m"
    with (
        serving("--maildir", str(maildir), "--socket", path, "--runtime", runtime) as serve,
        Raw(path) as idle,
        Raw(path) as busy,
    ):
        idle.reply()
        idle.send(b"LHLO c.example\r\n")
        idle.reply()
        busy.reply()
        busy.send(ENVELOPE + b"DATA\r\n")
        busy.replies(4)
        busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        serve.proc.send_signal(signum)
        assert idle.reply().startswith(b"421 4.3.2 ")
        busy.send(b"second half\r\n.\r\n")
        assert code_of(busy.reply()) == b"250 2.0.0"
        assert busy.reply().startswith(b"421 4.3.2 ")
        status = serve.finish()
    assert status == 0
    assert serve.lines[-1] == f"lmtp: stopped ({signum.name})\n"
    assert not any("Traceback" in line for line in serve.lines), serve.lines
    assert not os.path.exists(path)
    [copy] = (maildir / "a@example.org" / "new").iterdir()
    assert copy.read_bytes().endswith(b"first half\r\nsecond half\r\n")


def test_a_live_path_a_file_and_a_stale_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with serving("--maildir", str(tmp_path / "m"), "--socket", path):
        second = run("serve", "--maildir", str(tmp_path / "m2"), "--socket", path)
        [line] = second.stderr.decode().splitlines()
        done = run("send", "--from", "a@example.net", "--to", "b@example.org", "--socket", path)
    assert second.returncode == 2
    assert line == f"lmtp: cannot listen on {path}: another server is listening there"
    assert done.returncode == 0  # the first server kept its socket
    Path(path).write_text("keep me\n")
    refused = run("serve", "--maildir", str(tmp_path / "m"), "--socket", path)
    assert refused.returncode == 2
    assert refused.stderr.decode().splitlines() == [
        f"lmtp: cannot listen on {path}: the path exists and is not a socket; not replacing it"
    ]
    assert Path(path).read_text() == "keep me\n"
    os.unlink(path)
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(path)  # stale: nobody listens
    with serving("--maildir", str(tmp_path / "m"), "--socket", path):
        assert run("send", "--from", "a@x.org", "--to", "b@x.org", "--socket", path).returncode == 0


def test_max_connections(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with (
        serving("--maildir", str(tmp_path / "m"), "--socket", path, "--max-connections", "1"),
        Raw(path) as first,
        Raw(path) as second,
    ):
        assert first.reply().startswith(b"220 ")
        assert second.reply().startswith(b"421 4.3.2 ")
        assert second.eof()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_require_tls(tmp_path: Path, ca: trustme.CA) -> None:
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem")
    )
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    path, pem = str(tmp_path / "s"), str(tmp_path / "server.pem")
    tls = ["--tls-cert", pem, "--tls-key", pem]
    with serving("--maildir", str(tmp_path / "m"), "--socket", path, *tls, "--require-tls"):
        send = ["send", "--from", "a@example.net", "--to", "b@example.org", "--socket", path]
        plain = run(*send, stdin=MESSAGE)
        secure = run(
            *send, "--starttls", "--cafile", str(tmp_path / "ca.pem"), "--server-name", "localhost"
        )
    assert plain.returncode == 1
    assert "530" in plain.stdout.decode() and "5.7.0" in plain.stdout.decode()
    assert secure.returncode == 0, secure.stderr
    assert run("serve", "--maildir", str(tmp_path / "m"), "--require-tls").returncode == 2


def test_known_recipients_from_a_file(tmp_path: Path) -> None:
    known = tmp_path / "recipients"
    known.write_text("# the mailboxes\nalice@example.org\n\nJosé@example.org\n", encoding="utf-8")
    path, maildir = str(tmp_path / "s"), tmp_path / "m"
    with serving("--maildir", str(maildir), "--socket", path, "--recipients", str(known)):
        to = ["alice@example.org", '"Alice"@EXAMPLE.org', "stranger@example.org"]
        done = run(
            "send", "--from", "s@example.net", *(a for r in to for a in ("--to", r)),
            "--socket", path, stdin=MESSAGE,
        )  # fmt: skip
    rows = [line.split() for line in done.stdout.decode().splitlines()]
    assert [row[1] for row in rows] == ["delivered", "delivered", "permanent"]
    assert rows[2][3:5] == ["550", "5.1.1"]
    assert done.returncode == 1
    assert len(list((maildir / "alice@example.org" / "new").iterdir())) == 2
    assert sorted(p.name for p in maildir.iterdir()) == ["alice@example.org"]


def test_workers_share_the_socket_and_are_replaced_and_stopped(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    send = ["send", "--from", "s@example.net", "--to", "a@example.org", "--socket", path]
    with serving("--maildir", str(tmp_path / "m"), "--socket", path, "--workers", "2") as serve:
        started = [STARTED.fullmatch(line) for line in serve.lines if " started" in line]
        assert [m[1] for m in started if m] == ["1", "2"], serve.lines
        pids = [int(m[2]) for m in started if m]
        assert "(2 workers)" in serve.lines[-1]
        assert all(run(*send, stdin=MESSAGE).returncode == 0 for _ in range(4))
        os.kill(pids[0], signal.SIGKILL)
        killed = f"lmtp: worker 1 (pid {pids[0]}) was killed by SIGKILL"
        assert serve.wait_line(killed) is not None
        replaced = STARTED.fullmatch(serve.wait_line(" started", start=len(serve.lines) - 1) or "")
        assert replaced is not None and replaced[1] == "1"  # it takes the number of the dead
        new = int(replaced[2])
        assert new not in pids
        assert run(*send, stdin=MESSAGE).returncode == 0
        serve.proc.send_signal(signal.SIGTERM)
        status = serve.finish()
    assert status == 0
    assert serve.lines[-1] == "lmtp: stopped (SIGTERM)\n"
    for pid in (pids[1], new):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # every worker has ended and been reaped
    assert not os.path.exists(path)
    assert not any("Traceback" in line for line in serve.lines)


#: What systemd does for a socket unit's service: the socket as descriptor 3, and
#: LISTEN_PID naming the process that execs the server (exec keeps the pid).
SOCKET_ACTIVATION = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); "
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='lmtp'); "
    "os.execvp(sys.argv[2], sys.argv[2:])"
)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_socket_passed_by_systemd_socket_activation(workers: str, tmp_path: Path) -> None:
    path, ignored, maildir = str(tmp_path / "s"), str(tmp_path / "ignored"), tmp_path / "m"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)  # systemd's: bound and listening before the service starts
        listener.listen()
        launch = [sys.executable, "-c", SOCKET_ACTIVATION, str(listener.fileno())]
        args = ["--maildir", str(maildir), "--socket", ignored, "--workers", workers]
        with serving(*args, launch=launch, pass_fds=[listener.fileno()]) as serve:
            assert serve.address == f"{path} (from systemd)"
            send = ["send", "--from", "s@example.net", "--to", "a@example.org", "--socket", path]
            assert run(*send, stdin=MESSAGE).returncode == 0
            serve.proc.send_signal(signal.SIGTERM)
            status = serve.finish()
        assert status == 0
        assert serve.lines[-1] == "lmtp: stopped (SIGTERM)\n"
        assert os.path.exists(path)  # systemd's socket file: never removed by the server
        assert not os.path.exists(ignored)  # --socket gives way to the socket passed
        assert len(list((maildir / "a@example.org" / "new").iterdir())) == 1


def test_variables_naming_another_process_are_not_socket_activation(tmp_path: Path) -> None:
    # LISTEN_PID of another process (a parent's, left in the environment): not ours.
    path = str(tmp_path / "s")
    leftover = (
        "import os, sys; os.environ.update(LISTEN_PID='1', LISTEN_FDS='1'); "
        "os.execvp(sys.argv[1], sys.argv[1:])"
    )
    launch = [sys.executable, "-c", leftover]
    with serving("--maildir", str(tmp_path / "m"), "--socket", path, launch=launch) as serve:
        assert serve.address == path
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.finish() == 0
    assert not os.path.exists(path)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_storing_a_large_message_holds_up_no_other_connection(runtime: str, tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    recipients = b"".join(b"RCPT TO:<r%d@example.org>\r\n" % n for n in range(60))
    body = b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 100_000  # 8 MB, 60 copies
    probes: list[tuple[float, float]] = []  # (when, how long the greeting and NOOP took)
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            started = time.monotonic()
            with Raw(path, timeout=10) as raw:
                raw.reply()
                raw.send(b"NOOP\r\n")
                raw.reply()
            probes.append((started, time.monotonic() - started))

    with (
        serving("--maildir", str(tmp_path / "m"), "--socket", path, "--runtime", runtime),
        Raw(path, timeout=60) as big,
    ):
        big.reply()
        big.send(b"LHLO c.example\r\nMAIL FROM:<s@example.net>\r\n" + recipients + b"DATA\r\n")
        big.replies(63)
        big.send(body + b".\r\n")
        sent = time.monotonic()
        prober = threading.Thread(target=probe)
        prober.start()
        try:
            finals = [code_of(r) for r in big.replies(60)]
            stored = time.monotonic()
        finally:
            done.set()
            prober.join(30)
    during = [took for when, took in probes if sent <= when and when + took <= stored]
    assert finals == [b"250 2.0.0"] * 60
    assert stored - sent > 0.3, "storing was too quick to show anything"
    assert len(during) >= 3, probes
    assert max(during) < max(0.25, (stored - sent) / 3), (max(during), stored - sent)
