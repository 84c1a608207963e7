"""transports/cli.py in this process (tests/cli runs the command in subprocesses): what
they leave out. --version from a checkout that is not installed; `send` failing before
any outcome (a message file that does not exist: usage, exit 2; a connect that times
out: exit 75, with the JSON rows saying why); Ctrl-C while the message is read, as one
JSON object; the message read through the progress reporter from a file that is not a
regular one; `serve` refusing contradictory options, a port in use and a setting out of
range, each in one line and exit 2."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import logging
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmtp_core import Params, Reply
from transports import Envelope, Handler, blocking, cli
from transports.pytest_plugin import LMTPUnixTestServer


@pytest.fixture(autouse=True)
def _root_logger_kept() -> Iterator[None]:
    """`serve` configures the root logger (basicConfig) for its process: put it back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_version_from_a_checkout_that_is_not_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == "lmtp unknown (not installed)"


def test_send_of_a_file_that_does_not_exist_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "missing.eml")
    argv = ["send", "--from", "a@x.org", "--to", "b@x.org", "--socket", "/nonexistent", missing]
    status, out, err = run(argv, capsys)
    assert status == cli.EX_USAGE
    assert err.startswith("lmtp: ") and err.count("\n") == 1 and "missing.eml" in err
    assert out == ""
    status, out, _ = run([*argv[:1], "--json", *argv[1:]], capsys)
    assert status == cli.EX_USAGE
    report = json.loads(out)
    assert report["recipients"] == [] and "missing.eml" in report["error"]


@pytest.fixture
def full_listener() -> Iterator[int]:
    """A port whose accept queue is full: a connect gets no answer (Linux drops the SYN)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener, filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler.settimeout(10)
        filler.connect(("127.0.0.1", port))
        yield port


def test_send_that_times_out_connecting_says_so_and_asks_to_retry(
    full_listener: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = tmp_path / "m.eml"
    message.write_bytes(b"Subject: t\r\n\r\nbody\r\n")
    argv = ["send", "--json", "--from", "a@x.org", "--to", "b@x.org", "--to", "c@x.org"]
    argv += ["--port", str(full_listener), "--timeout", "0.3", str(message)]
    status, out, err = run(argv, capsys)
    assert status == cli.EX_TEMPFAIL
    why = f"timed out: timed out after 0.3 s connecting to 127.0.0.1:{full_listener}"
    assert err == f"lmtp: {why}\n"
    report = json.loads(out)
    assert report["error"] == why
    assert [
        (r["recipient"], r["status"], r["code"], r["reason"]) for r in report["recipients"]
    ] == [
        ("b@x.org", "temporary", None, why),
        ("c@x.org", "temporary", None, why),
    ]


class _CtrlC(io.RawIOBase):
    """Standard input on which the user presses Ctrl-C while the message is read."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: object) -> int:
        raise KeyboardInterrupt


def test_ctrl_c_while_the_message_is_read_is_one_json_object(
    lmtp_server: LMTPUnixTestServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(_CtrlC())))
    argv = ["send", "--json", "--from", "a@x.org", "--to", "b@x.org"]
    status, out, err = run([*argv, "--socket", lmtp_server.socket_path], capsys)
    assert status == 130
    assert json.loads(out) == {"recipients": [], "error": "interrupted"}
    assert err == "\nlmtp: interrupted\n"
    assert lmtp_server.messages == []


def test_progress_on_a_terminal_reads_a_file_that_is_not_regular(
    lmtp_server: LMTPUnixTestServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # /dev/null: a character device, so no total is known; empty, so no progress line.
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    argv = ["send", "--from", "a@x.org", "--to", "b@x.org", "--socket", lmtp_server.socket_path]
    status, out, err = run([*argv, "/dev/null"], capsys)
    assert status == cli.EX_OK
    assert "b@x.org" in out and "delivered" in out
    assert "MiB" not in err
    (message,) = lmtp_server.messages
    assert message.data == b""


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
        (["--workers", "0"], "--workers must be 1 or more"),
        (["--grace", "-1"], "grace must be a number of 0 or more"),
    ],
)
def test_serve_refuses_bad_options_in_one_line(
    options: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--maildir", str(tmp_path / "mail"), "--port", "0", *options]
    status, _, err = run(argv, capsys)
    assert status == cli.EX_USAGE
    assert words in err and err.count("\n") == 1


def test_serve_on_a_port_in_use_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        argv = ["serve", "--maildir", str(tmp_path / "mail"), "--port", str(port)]
        status, _, err = run(argv, capsys)
    assert status == cli.EX_USAGE
    assert err.startswith(f"lmtp: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in err and err.count("\n") == 1


class OnePerTransaction(Handler):
    """Takes one recipient per transaction: 452 4.5.3 to any further RCPT."""

    def __init__(self) -> None:
        self.taken = 0

    def mail_from(self, sender: str, params: Params) -> Reply | None:
        self.taken = 0
        return None

    def rcpt_to(self, recipient: str, params: Params) -> Reply | None:
        self.taken += 1
        return None if self.taken == 1 else Reply(452, "4.5.3", "Too many recipients")


def test_progress_on_a_terminal_reads_the_file_again_for_a_second_transaction(
    sock_path: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = b"Subject: twice\r\n\r\nbody\r\n"
    message = tmp_path / "m.eml"
    message.write_bytes(body)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    received: list[bytes] = []

    class Recording(OnePerTransaction):
        def deliver(self, envelope: Envelope) -> None:
            received.append(envelope.read())

    with blocking.Server(Recording(), socket_path=sock_path):
        argv = ["send", "--json", "--from", "a@x.org", "--to", "b@x.org", "--to", "c@x.org"]
        status, out, _ = run([*argv, "--socket", sock_path, str(message)], capsys)
    assert status == cli.EX_OK
    assert [r["status"] for r in json.loads(out)["recipients"]] == ["delivered", "delivered"]
    assert received == [body, body]  # read from its start again for the second one


def test_send_to_a_socket_nobody_listens_on_is_refused_and_asks_to_retry(
    sock_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(sock_path)  # a socket file, but nobody listening: refused
        message = tmp_path / "m.eml"
        message.write_bytes(b"Subject: r\r\n\r\nbody\r\n")
        argv = ["send", "--from", "a@x.org", "--to", "b@x.org", "--socket", sock_path]
        status, out, err = run([*argv, str(message)], capsys)
    assert status == cli.EX_TEMPFAIL
    assert err.startswith(f"lmtp: connection refused: cannot connect to unix:{sock_path}")
    assert out == ""


def _greet_once(listener: socket.socket, greeting: bytes) -> threading.Thread:
    """Answer the next connection with `greeting` alone, then close it."""

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(greeting)
            conn.settimeout(10)
            with contextlib.suppress(OSError):
                while conn.recv(4096):  # until the client hangs up
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


REFUSALS = {
    "421": (b"421 4.3.2 too busy\r\n", cli.EX_TEMPFAIL, "temporary"),
    "554": (b"554 5.3.2 not here\r\n", cli.EX_PERMANENT, "permanent"),
}


@pytest.mark.parametrize("refusal", list(REFUSALS))
def test_send_to_a_server_that_refuses_the_session(
    refusal: str, sock_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    greeting, status, kind = REFUSALS[refusal]
    message = tmp_path / "m.eml"
    message.write_bytes(b"Subject: r\r\n\r\nbody\r\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(sock_path)
        listener.listen(1)
        server = _greet_once(listener, greeting)
        argv = ["send", "--json", "--from", "a@x.org", "--to", "b@x.org", "--socket", sock_path]
        code, out, err = run([*argv, str(message)], capsys)
        server.join(10)
    assert code == status
    assert err.startswith("lmtp: the server refused the session: ")
    (row,) = json.loads(out)["recipients"]
    assert (row["recipient"], row["status"]) == ("b@x.org", kind)
    assert (row["code"], row["text"]) == (int(greeting[:3]), greeting[10:-2].decode())
