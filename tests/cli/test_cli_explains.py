"""The CLI explains itself: help with defaults, --version, JSON on every exit, a notice
when the message is read from a terminal, progress on a terminal, and no traceback on
Ctrl-C.

How it works: `lmtp` runs in a subprocess; a pseudo-terminal (pty) stands for the
user's terminal where one is needed, and the receiver is the pytest plugin's
`lmtp_server` fixture (our server in a thread, recording what it got).
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from transports.pytest_plugin import LMTPTestServer

LMTP = (
    [shutil.which("lmtp") or ""] if shutil.which("lmtp") else [sys.executable, "-m", "transports"]
)


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LMTP, *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("lmtp ") and done.stdout.split()[1][0].isdigit()


@pytest.mark.parametrize("command", ["send", "serve"])
def test_every_option_has_a_help_line(command: str) -> None:
    text = run(command, "--help").stdout
    options = [line.split()[0] for line in text.splitlines() if line.startswith("  -")]
    assert len(options) >= 10
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if not line.startswith("  -") or line.strip().startswith("-h"):
            continue
        words = line.split("  ")
        described = len([w for w in words if w.strip()]) > 1 or (
            index + 1 < len(lines) and lines[index + 1].startswith(" " * 10)
        )
        assert described, f"no help for {line.strip()!r} in lmtp {command} --help"
    if command == "send":
        assert "(default: 2424)" in text and "(default: 127.0.0.1)" in text


def test_json_usage_error_is_one_object_with_an_error() -> None:
    done = run("send", "--json", "--from", "a@example.org")  # --to is missing
    assert done.returncode == 2
    obj = json.loads(done.stdout)
    assert set(obj) == {"recipients", "error"} and "--to" in obj["error"]
    assert done.stderr.count("\n") == 1  # and one line on stderr


def test_json_configuration_error_is_one_object(lmtp_server: LMTPTestServer) -> None:
    assert lmtp_server.socket_path is not None
    done = run(
        "send", "--json", "--from", "a@example.org", "--to", "bad address", "--socket",
        lmtp_server.socket_path, stdin=b"Subject: x\r\n\r\nx\r\n",
    )  # fmt: skip
    assert done.returncode == 2
    assert "error" in json.loads(done.stdout)
    assert lmtp_server.messages == []


def _read_until(fd: int, marker: bytes, seconds: float = 20) -> bytes:
    seen = b""
    end = time.monotonic() + seconds
    while marker not in seen and time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        seen += chunk
    return seen


# Runs a command with SIGINT delivered and acted on, as in a terminal's foreground job.
# A process inherits its parent's ignored signals and its blocked-signal mask; a test
# runner started in some ways has SIGINT ignored or blocked, and `lmtp send` would then
# never see the Ctrl-C this test sends (Python installs no KeyboardInterrupt for an
# ignored SIGINT).
_WITH_SIGINT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
    "os.execvp(sys.argv[1], sys.argv[1:])",
]


def _signal_state(pid: int) -> str:
    """The process's blocked and ignored signals, for a failure message."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return "no /proc status"
    return " ".join(line for line in lines if line.startswith(("SigBlk", "SigIgn", "State")))


def _send_from_a_terminal(socket_path: str) -> tuple[int, subprocess.Popen[bytes]]:
    """`lmtp send` reading its message from a pseudo-terminal: (the terminal's master
    side, which the test types into, and the process)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*_WITH_SIGINT, *LMTP, "send", "--from", "a@example.org", "--to", "b@example.org",
         "--socket", socket_path],
        stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(slave)
    return master, proc


def test_stdin_on_a_terminal_says_so(lmtp_server: LMTPTestServer) -> None:
    assert lmtp_server.socket_path is not None
    master, proc = _send_from_a_terminal(lmtp_server.socket_path)
    try:
        assert proc.stderr is not None
        notice = _read_until(proc.stderr.fileno(), b"\n")
        assert b"reading the message from standard input" in notice
        os.write(master, b"Subject: typed\n\nhello\n")
        os.write(master, b"\x04")  # Ctrl-D at the start of a line: end of input
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    (message,) = lmtp_server.messages
    assert message.data == b"Subject: typed\r\n\r\nhello\r\n"


def test_progress_on_a_terminal_for_a_large_message(
    lmtp_server: LMTPTestServer, tmp_path: Path
) -> None:
    assert lmtp_server.socket_path is not None
    big = tmp_path / "big.eml"
    big.write_bytes(b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 200_000)  # 16 MB
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*LMTP, "send", "--from", "a@example.org", "--to", "b@example.org", "--socket",
         lmtp_server.socket_path, str(big)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    try:
        shown = _read_until(master, b"MiB/s", 60)
        proc.communicate(timeout=60)
        assert proc.returncode == 0
        shown += _read_until(master, b"\n", 2)
    finally:
        os.close(master)
    assert b"lmtp: sent " in shown and b" of 15.3 MiB" in shown, shown[-300:]
    assert len(lmtp_server.messages) == 1


def test_no_progress_when_stderr_is_not_a_terminal(
    lmtp_server: LMTPTestServer, tmp_path: Path
) -> None:
    assert lmtp_server.socket_path is not None
    big = tmp_path / "big.eml"
    big.write_bytes(b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 100_000)
    done = run("send", "--from", "a@example.org", "--to", "b@example.org", "--socket",
               lmtp_server.socket_path, str(big))  # fmt: skip
    assert done.returncode == 0
    assert "MiB/s" not in done.stderr


def test_ctrl_c_prints_one_line_not_a_traceback(lmtp_server: LMTPTestServer) -> None:
    assert lmtp_server.socket_path is not None
    master, proc = _send_from_a_terminal(lmtp_server.socket_path)
    try:
        assert proc.stderr is not None
        assert b"standard input" in _read_until(proc.stderr.fileno(), b"\n")
        proc.send_signal(signal.SIGINT)  # waiting for the message, as a user would stop it
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            state = _signal_state(proc.pid)
            proc.kill()
            proc.communicate()
            pytest.fail(f"lmtp send did not stop on SIGINT within 30 s ({state})")
    finally:
        os.close(master)
    assert proc.returncode == 130
    assert b"Traceback" not in err and b"interrupted" in err
    assert lmtp_server.messages == []


def _serve_until_ready(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([*LMTP, "serve", *args], stderr=subprocess.PIPE)
    assert proc.stderr is not None
    line = _read_until(proc.stderr.fileno(), b"\n", 20).decode()
    return proc, line


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)


def test_serve_prints_ipv6_addresses_in_brackets(tmp_path: Path) -> None:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    proc, line = _serve_until_ready(
        "--maildir", str(tmp_path / "m"), "--host", "::1", "--port", "0"
    )
    try:
        assert "lmtp: ready on [::1]:" in line, line
        port = int(line.split("[::1]:")[1].split(",")[0])
        done = run("send", "--from", "a@example.org", "--to", "b@example.org", "--host", "::1",
                   "--port", str(port), stdin=b"Subject: v6\r\n\r\nx\r\n")  # fmt: skip
        assert done.returncode == 0, done.stderr
    finally:
        _stop(proc)


def test_serve_offers_implicit_tls(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    for blob in leaf.cert_chain_pems:
        blob.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    proc, line = _serve_until_ready(
        "--maildir", str(tmp_path / "m"), "--port", "0", "--tls-cert", str(cert), "--tls-key",
        str(key), "--implicit-tls",
    )  # fmt: skip
    try:
        port = line.split("127.0.0.1:")[1].split(",")[0]
        done = run("send", "--from", "a@example.org", "--to", "b@example.org", "--port", port,
                   "--ssl", "--cafile", str(ca_file), "--server-name", "localhost",
                   stdin=b"Subject: tls\r\n\r\nx\r\n")  # fmt: skip
        assert done.returncode == 0, done.stderr
        plain = run("send", "--from", "a@example.org", "--to", "b@example.org", "--port", port,
                    "--timeout", "3", stdin=b"Subject: plain\r\n\r\nx\r\n")  # fmt: skip
        assert plain.returncode == 75  # a plain client gets no greeting from a TLS port
    finally:
        _stop(proc)


def test_trio_runtime_without_trio_says_how_to_install_it(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['trio'] = None\n"
        "from transports.cli import main\n"
        f"sys.exit(main(['serve', '--maildir', {str(tmp_path / 'm')!r}, '--port', '0',"
        " '--runtime', 'trio']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0  # one line
    assert "pip install" in done.stderr and "[trio]" in done.stderr
    assert "Traceback" not in done.stderr
