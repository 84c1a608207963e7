"""The `lmtp` command, run for real in subprocesses against real receivers.

Covers `lmtp send` (per-recipient lines, the JSON shape, every exit status, stdin and
file input, -v transcript, TLS and STARTTLS with certificates made by trustme, usage
errors, connection refused), `lmtp serve` (Maildir contents equal what was sent,
--reject, --max-size, STARTTLS, the trio runtime) and `lmtp demo`. Receivers that need
answers `lmtp serve` cannot give (4xx, implicit TLS, silence) are our blocking Server
in this process.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme

from lmtp_core import Params, Reply
from transports import blocking
from transports._session import Envelope, Handler

LMTP = (
    [
        shutil.which("lmtp") or "",
    ]
    if shutil.which("lmtp")
    else [sys.executable, "-m", "transports"]
)
MESSAGE = (
    b"From: a@example.net\r\nSubject: cli\r\n\r\nline one\r\n.dot line\r\n\xc3\xa9t\xc3\xa9\r\n"
)


def run(*args: str, stdin: bytes = b"", timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*LMTP, *args], input=stdin, capture_output=True, timeout=timeout, check=False
    )


@contextmanager
def lmtp_serve(*args: str) -> Iterator[str]:
    """Start `lmtp serve`, wait for its "ready on" line, yield the address it gave."""
    proc = subprocess.Popen(
        [*LMTP, "serve", *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    assert proc.stderr is not None
    try:
        deadline = time.monotonic() + 15
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stderr, selectors.EVENT_READ)
            while True:
                assert selector.select(max(0.0, deadline - time.monotonic())), "not ready"
                line = proc.stderr.readline().decode()
                assert line, "lmtp serve exited before it was ready"
                if " ready on " in line:
                    yield line.split(" ready on ", 1)[1].split(",", 1)[0]
                    break
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()


def stored(maildir: Path, recipient: str) -> list[bytes]:
    files = sorted((maildir / recipient / "new").iterdir())
    return [path.read_bytes() for path in files]


def strip_added_headers(copy: bytes) -> bytes:
    head, rest = copy.split(b"\r\n", 1)
    assert head.startswith(b"Return-Path: <")
    head, rest = rest.split(b"\r\n", 1)
    assert head.startswith(b"Delivered-To: ")
    return rest


def test_send_prints_one_line_per_recipient_and_stores_exact_bytes(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    with lmtp_serve(
        "--maildir", str(maildir), "--socket", str(tmp_path / "s"), "--reject", "nobody@example.org"
    ) as _:
        done = run(
            "send",
            "--from",
            "a@example.net",
            "--to",
            "alice@example.org",
            "--to",
            "nobody@example.org",
            "--socket",
            str(tmp_path / "s"),
            stdin=MESSAGE,
        )
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 2
    assert lines[0].split()[:5] == ["alice@example.org", "delivered", "data", "250", "2.0.0"]
    assert lines[1].split()[:5] == ["nobody@example.org", "permanent", "rcpt", "550", "5.1.1"]
    assert done.returncode == 1  # every failure is permanent
    [copy] = stored(maildir, "alice@example.org")
    assert strip_added_headers(copy) == MESSAGE
    assert not (maildir / "nobody@example.org").exists()


def test_json_is_exactly_one_object_of_the_documented_shape(tmp_path: Path) -> None:
    message = tmp_path / "message.eml"
    message.write_bytes(MESSAGE)
    with lmtp_serve(
        "--maildir",
        str(tmp_path / "m"),
        "--socket",
        str(tmp_path / "s"),
        "--reject",
        "x@example.org",
    ):
        done = run(
            "send",
            "--json",
            "--from",
            "a@example.net",
            "--to",
            "b@example.org",
            "--to",
            "x@example.org",
            "--socket",
            str(tmp_path / "s"),
            str(message),
        )
    document = json.loads(done.stdout)
    assert list(document) == ["recipients"]
    assert document["recipients"] == [
        {
            "recipient": "b@example.org",
            "status": "delivered",
            "code": 250,
            "enhanced": "2.0.0",
            "text": "Saved",
            "stage": "data",
            "reason": None,
        },
        {
            "recipient": "x@example.org",
            "status": "permanent",
            "code": 550,
            "enhanced": "5.1.1",
            "text": "No such user here",
            "stage": "rcpt",
            "reason": None,
        },
    ]
    assert stored(tmp_path / "m", "b@example.org")  # file input was delivered


def test_all_delivered_exits_0_and_serve_runs_on_trio(tmp_path: Path) -> None:
    with lmtp_serve("--maildir", str(tmp_path / "m"), "--port", "0", "--runtime", "trio") as where:
        host, port = where.rsplit(":", 1)
        done = run(
            "send",
            "--from",
            "a@example.net",
            "--to",
            "b@example.org",
            "--to",
            "c@example.org",
            "--host",
            host,
            "--port",
            port,
            stdin=MESSAGE,
        )
    assert done.returncode == 0, done.stderr
    assert [line.split()[1] for line in done.stdout.decode().splitlines()] == ["delivered"] * 2


class Mixed(Handler):
    def rcpt_to(self, recipient: str, params: Params) -> Reply | None:
        return Reply(450, "4.2.1", "try later") if recipient.startswith("later") else None

    def deliver(self, envelope: Envelope) -> list[Reply]:
        return [
            Reply(452, "4.2.2", "full")
            if r.startswith("full")
            else Reply(552, "5.2.2", "over quota")
            if r.startswith("quota")
            else Reply(250, "2.0.0", "ok")
            for r in envelope.recipients
        ]


@pytest.mark.parametrize(
    ("recipients", "status"),
    [
        (["ok@example.org"], 0),
        (["quota@example.org", "ok@example.org"], 1),
        (["full@example.org", "quota@example.org"], 75),
        (["later@example.org"], 75),
    ],
)
def test_exit_status_follows_the_outcomes(
    tmp_path: Path, recipients: list[str], status: int
) -> None:
    with blocking.Server(Mixed(), socket_path=str(tmp_path / "s")):
        args = [arg for r in recipients for arg in ("--to", r)]
        done = run(
            "send", "--from", "a@example.net", *args, "--socket", str(tmp_path / "s"), stdin=MESSAGE
        )
    assert done.returncode == status, done.stdout


def test_silent_server_gives_unknown_and_exit_75(tmp_path: Path) -> None:
    class OneReply(Handler):
        def deliver(self, envelope: Envelope) -> list[Reply]:
            return [Reply(250, "2.0.0", "ok")] * len(envelope.recipients)

    import socket
    import threading

    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "s"))
    listener.listen(1)
    release = threading.Event()

    def fake() -> None:  # answers everything, then only one reply after the data
        conn, _ = listener.accept()
        conn.sendall(b"220 fake\r\n")
        data = b""
        script = [
            (b"LHLO", b"250-fake\r\n250 PIPELINING\r\n"),
            (b"DATA\r\n", b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
            (b"\r\n.\r\n", b"250 2.0.0 first\r\n"),
        ]
        for needle, answer in script:
            while needle not in data:
                data += conn.recv(65536)
            data = data.split(needle, 1)[1]
            conn.sendall(answer)
        release.wait(30)
        conn.close()

    thread = threading.Thread(target=fake)
    thread.start()
    done = run(
        "send",
        "--json",
        "--no-chunking",
        "--timeout",
        "1",
        "--from",
        "a@example.net",
        "--to",
        "b@example.org",
        "--to",
        "c@example.org",
        "--socket",
        str(tmp_path / "s"),
        stdin=b"Subject: ascii only, as the fake offers no 8BITMIME\r\n\r\nhello\r\n",
    )
    release.set()
    thread.join(10)
    listener.close()
    assert done.stdout, done.stderr
    statuses = [r["status"] for r in json.loads(done.stdout)["recipients"]]
    assert statuses == ["delivered", "unknown"]
    assert done.returncode == 75


def test_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    for args in (
        ["send", "--to", "b@example.org"],  # no --from
        ["send", "--from", "a b", "--to", "b@example.org", "--socket", "/nonexistent"],
        ["send", "--from", "a@x.org", "--to", "b@x.org", "--ssl", "--starttls"],
        ["send", "--from", "a@x.org", "--to", "b@x.org", "--port", "70000"],
        ["frobnicate"],
    ):
        done = run(*args)
        assert done.returncode == 2, args
        assert len(done.stderr.decode().strip().splitlines()) == 1, done.stderr
        assert b"Traceback" not in done.stderr


def test_connection_refused_is_one_line_and_exit_75(tmp_path: Path) -> None:
    done = run(
        "send",
        "--from",
        "a@example.net",
        "--to",
        "b@example.org",
        "--socket",
        str(tmp_path / "nothing-here"),
        stdin=MESSAGE,
    )
    assert done.returncode == 75
    assert done.stderr.decode().count("\n") == 1 and b"Traceback" not in done.stderr


def test_verbose_prints_the_transcript_without_the_body(tmp_path: Path) -> None:
    with lmtp_serve("--maildir", str(tmp_path / "m"), "--socket", str(tmp_path / "s")):
        done = run(
            "send",
            "-v",
            "--from",
            "a@example.net",
            "--to",
            "b@example.org",
            "--socket",
            str(tmp_path / "s"),
            stdin=MESSAGE,
        )
    transcript = done.stderr.decode()
    assert "C: MAIL FROM:<a@example.net>" in transcript
    assert "C: RCPT TO:<b@example.org>" in transcript
    assert "S: 250 2.0.0 Saved" in transcript
    assert "dot line" not in transcript and "Subject" not in transcript


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_starttls_with_a_verified_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with lmtp_serve(
        "--maildir",
        str(tmp_path / "m"),
        "--port",
        "0",
        "--tls-cert",
        str(tmp_path / "server.pem"),
        "--tls-key",
        str(tmp_path / "server.pem"),
    ) as where:
        host, port = where.rsplit(":", 1)
        ok = run(
            "send",
            "--starttls",
            "--cafile",
            str(tmp_path / "ca.pem"),
            "--from",
            "a@example.net",
            "--to",
            "b@example.org",
            "--host",
            host,
            "--port",
            port,
            stdin=MESSAGE,
        )
        other = trustme.CA()
        other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
        bad = run(
            "send",
            "--starttls",
            "--cafile",
            str(tmp_path / "other.pem"),
            "--from",
            "a@example.net",
            "--to",
            "c@example.org",
            "--host",
            host,
            "--port",
            port,
            stdin=MESSAGE,
        )
    assert ok.returncode == 0, ok.stderr
    assert bad.returncode == 75
    assert b"TLS failed" in bad.stderr and b"Traceback" not in bad.stderr
    assert stored(tmp_path / "m", "b@example.org")
    assert not (tmp_path / "m" / "c@example.org").exists()


def test_implicit_tls(tmp_path: Path, ca: trustme.CA) -> None:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with blocking.Server(Handler(), port=0, ssl_context=context) as server:
        done = run(
            "send",
            "--ssl",
            "--cafile",
            str(tmp_path / "ca.pem"),
            "--server-name",
            "localhost",
            "--from",
            "a@example.net",
            "--to",
            "b@example.org",
            "--port",
            str(server.address[1]),
            stdin=MESSAGE,
        )
        insecure = run(
            "send",
            "--ssl",
            "--insecure",
            "--from",
            "a@example.net",
            "--to",
            "b@example.org",
            "--port",
            str(server.address[1]),
            stdin=MESSAGE,
        )
    assert done.returncode == 0, done.stderr
    assert insecure.returncode == 0, insecure.stderr


def test_max_size_is_advertised_and_enforced(tmp_path: Path) -> None:
    with lmtp_serve(
        "--maildir", str(tmp_path / "m"), "--socket", str(tmp_path / "s"), "--max-size", "100"
    ):
        big = run(
            "send",
            "--json",
            "--from",
            "a@example.net",
            "--to",
            "b@example.org",
            "--socket",
            str(tmp_path / "s"),
            stdin=b"x" * 50 + b"\r\n" * 100,
        )
    [row] = json.loads(big.stdout)["recipients"]
    assert (row["status"], row["code"], row["stage"]) == ("permanent", 552, "data")
    assert big.returncode == 1
    assert not (tmp_path / "m" / "b@example.org").exists() or not stored(
        tmp_path / "m", "b@example.org"
    )


def test_demo_runs_end_to_end() -> None:
    done = run("demo")
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    for expected in (
        "alice@example.org   delivered",
        "nobody@example.org  permanent  rcpt",
        "full@example.org    permanent  data",
        "bob@example.org     delivered",
    ):
        assert expected in out
    maildir = Path(out.split("stored in the Maildir ", 1)[1].split(" ", 1)[0])
    assert len(list(maildir.glob("*/new/*"))) == 2
    shutil.rmtree(maildir)
    assert os.path.isabs(maildir)
