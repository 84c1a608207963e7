"""Third-party LMTP clients (stdlib smtplib.LMTP, swaks, msmtp) against our servers.

How it works: ``our_server()`` runs one of our servers (blocking on a UNIX socket or on
127.0.0.1 with a kernel-chosen port, asyncio or trio on a UNIX socket or TCP) in a background
thread via ``runtimes_interop.serve``, with ``Mailboxes``: the project's ``MaildirHandler`` (so a
copy is stored, fsynced and renamed before its 250) that also records every envelope that reached
the application and can refuse chosen recipients at RCPT or after the data.  Each client runs to
completion (smtplib in this thread, swaks and msmtp as subprocesses with a timeout), and the test
checks the client's own account (return value, exit status, transcript) against what our server
stored and what the handler saw.  Nothing waits on timers: a client returns only when its session
is over, and our server replies only after the handler returned.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from runtimes_interop import RUNTIMES, TLSFiles, serve

from lmtp_core import Params, Reply
from transports import Envelope
from transports.maildir import MaildirHandler

SENDER = "sender@example.com"
A = "a@example.org"
B = "b@example.org"
NOBODY = "nobody@example.org"
REFUSED_AFTER_DATA = Reply(550, "5.2.1", "Mailbox disabled")

# Headers msmtp would otherwise add (From, Date, Message-ID) are present, so every client sends
# the message as is; dot lines test each client's dot-stuffing against our unstuffing.
MESSAGE = (
    b"From: <sender@example.com>\r\n"
    b"To: <a@example.org>\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <interop-clients@example.com>\r\n"
    b"Subject: third-party clients\r\n"
    b"\r\n"
    b".A line that starts with a dot.\r\n"
    b".\r\n"
    b"..\r\n"
    b"Last line.\r\n"
)

SUBPROCESS_TIMEOUT = 60
# (runtime, transport) of our server; each client meets every runtime at least once.
SERVERS = ["blocking-unix", "blocking-tcp", "asyncio-unix", "trio-unix"]


# ----------------------------------------------------------------------------- our side


@dataclass(frozen=True)
class Seen:
    """What one delivery handed to the application."""

    sender: str
    recipients: list[str]
    data: bytes
    mail_params: Params
    tls: bool


class Mailboxes(MaildirHandler):
    """Stores each accepted recipient's copy; refuses ``reject`` at RCPT and
    ``fail_after_data`` after the data (550 5.2.1, nothing stored); records envelopes."""

    def __init__(
        self, root: Path, *, reject: tuple[str, ...] = (), fail_after_data: tuple[str, ...] = ()
    ) -> None:
        super().__init__(root, reject=reject)
        self.fail_after_data = set(fail_after_data)
        self.seen: list[Seen] = []
        self.lock = threading.Lock()

    def deliver(self, envelope: Envelope) -> list[Reply]:
        with self.lock:
            self.seen.append(
                Seen(
                    envelope.sender,
                    list(envelope.recipients),
                    envelope.read(),
                    envelope.mail_params,
                    envelope.tls,
                )
            )
        replies = []
        for recipient in envelope.recipients:
            if recipient in self.fail_after_data:
                replies.append(REFUSED_AFTER_DATA)
            else:
                self.store(envelope, recipient)
                replies.append(Reply(250, "2.0.0", "Saved"))
        return replies

    def stored(self, recipient: str) -> list[bytes]:
        new = self.folder(recipient) / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []

    def copy_for(self, recipient: str, data: bytes) -> bytes:
        """The stored form: Return-Path and Delivered-To prepended."""
        return f"Return-Path: <{SENDER}>\r\nDelivered-To: {recipient}\r\n".encode() + data


@dataclass(frozen=True)
class Endpoint:
    """How a client reaches the running server."""

    socket_path: str | None
    port: int | None

    def swaks(self) -> list[str]:
        if self.socket_path is not None:
            return ["--socket", self.socket_path]
        return ["--server", f"127.0.0.1:{self.port}"]

    def msmtp(self) -> list[str]:
        if self.socket_path is not None:
            # msmtp needs --host and --port even with --socket (they are not used).
            return [f"--socket={self.socket_path}", "--host=localhost", "--port=24"]
        return ["--host=127.0.0.1", f"--port={self.port}"]

    def smtplib(self) -> smtplib.LMTP:
        if self.socket_path is not None:
            return smtplib.LMTP(self.socket_path, timeout=SUBPROCESS_TIMEOUT)
        return smtplib.LMTP("127.0.0.1", self.port or 0, timeout=SUBPROCESS_TIMEOUT)


@contextlib.contextmanager
def our_server(
    kind: str, handler: Mailboxes, socket_dir: Path, **settings: Any
) -> Iterator[Endpoint]:
    """``kind`` is ``<runtime>-<unix|tcp>``."""
    runtime, transport = kind.split("-")
    if transport == "unix":
        path = str(socket_dir / "lmtp.sock")
        with serve(runtime, handler, socket_path=path, **settings):
            yield Endpoint(path, None)
    else:
        with serve(runtime, handler, host="127.0.0.1", port=0, **settings) as server:
            yield Endpoint(None, int(server.address[1]))


# ----------------------------------------------------------------------------- swaks


@dataclass(frozen=True)
class SwaksLine:
    sent: bool  # True: the client sent it
    tls: bool  # inside TLS
    failed: bool  # swaks marked the reply as an error ("<**")
    text: str


_SWAKS_LINE = re.compile(r"^(?P<mark> -> | ~> |<-  |<~  |<\*\* |<~\* )(?P<text>.*)$")


def swaks_lines(transcript: str) -> list[SwaksLine]:
    lines = []
    for line in transcript.splitlines():
        match = _SWAKS_LINE.match(line)
        if match:
            mark = match["mark"]
            lines.append(SwaksLine(mark.startswith(" "), "~" in mark, "*" in mark, match["text"]))
    return lines


def replies_after_dot(lines: list[SwaksLine]) -> list[SwaksLine]:
    """The replies between the client's final dot and its next command."""
    dot = max(i for i, line in enumerate(lines) if line.sent and line.text == ".")
    replies = []
    for line in lines[dot + 1 :]:
        if line.sent:
            break
        replies.append(line)
    return replies


def lhlo_extensions(lines: list[SwaksLine], tls: bool) -> set[str]:
    start = next(i for i, line in enumerate(lines) if line.sent and line.tls == tls)
    assert lines[start].text.startswith("LHLO ")
    extensions = set()
    for line in lines[start + 2 :]:  # skip the command and the reply's first line (host name)
        extensions.add(line.text[4:])
        if line.text[3] == " ":
            break
    return extensions


def run_swaks(swaks: str, tmp_path: Path, *args: str) -> tuple[int, str]:
    data = tmp_path / "message.eml"
    data.write_bytes(MESSAGE[:-2])  # swaks adds the CRLF before the final dot
    proc = subprocess.run(
        [swaks, "--protocol", "LMTP", "--from", SENDER, "--data", f"@{data}", *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def run_msmtp(msmtp: str, endpoint: Endpoint, *recipients: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [
            msmtp,
            "-C",
            "/dev/null",
            "--protocol=lmtp",
            *endpoint.msmtp(),
            "--auth=off",
            "--tls=off",
            f"--from={SENDER}",
            *recipients,
        ],
        input=MESSAGE,
        capture_output=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


OUR_EXTENSIONS = {
    "PIPELINING",
    "ENHANCEDSTATUSCODES",
    "8BITMIME",
    "CHUNKING",
    "BINARYMIME",
    "SMTPUTF8",
    "SIZE 33554432",
}


# ----------------------------------------------------------------------------- smtplib


@pytest.mark.parametrize("kind", SERVERS)
def test_smtplib_one_recipient(tmp_path: Path, socket_dir: Path, kind: str) -> None:
    """smtplib.LMTP reads one reply after DATA, so one recipient: stored, exact bytes (8-bit
    text declared with BODY=8BITMIME)."""
    handler = Mailboxes(tmp_path / "mail")
    message = MESSAGE + "Grüße ☃\r\n".encode()
    with our_server(kind, handler, socket_dir) as endpoint:
        client = endpoint.smtplib()
        try:
            client.ehlo_or_helo_if_needed()
            features = dict(client.esmtp_features)
            refused = client.sendmail(SENDER, [A], message, mail_options=["BODY=8BITMIME"])
            code, _ = client.noop()
        finally:
            client.quit()

    assert refused == {}
    assert code == 250  # still in step after the transaction
    assert features == {
        "pipelining": "",
        "enhancedstatuscodes": "",
        "8bitmime": "",
        "chunking": "",
        "binarymime": "",
        "smtputf8": "",
        "size": "33554432",
    }
    (seen,) = handler.seen
    # smtplib adds SIZE= on its own when the server offers SIZE (it uses lower-case "size=").
    assert seen == Seen(
        SENDER, [A], message, (("SIZE", str(len(message))), ("BODY", "8BITMIME")), False
    )
    assert handler.stored(A) == [handler.copy_for(A, message)]


def test_smtplib_refused_after_data(tmp_path: Path, socket_dir: Path) -> None:
    """The one recipient refused after the data: smtplib raises SMTPDataError with our reply."""
    handler = Mailboxes(tmp_path / "mail", fail_after_data=(A,))
    with our_server("blocking-unix", handler, socket_dir) as endpoint:
        client = endpoint.smtplib()
        try:
            with pytest.raises(smtplib.SMTPDataError) as failure:
                client.sendmail(SENDER, [A], MESSAGE)
        finally:
            client.quit()
    assert (failure.value.smtp_code, failure.value.smtp_error) == (550, b"5.2.1 Mailbox disabled")
    assert handler.stored(A) == []


# ----------------------------------------------------------------------------- swaks


@pytest.mark.parametrize("kind", SERVERS)
def test_swaks_one_reply_per_recipient_after_the_dot(
    swaks: str, tmp_path: Path, socket_dir: Path, kind: str
) -> None:
    """Two recipients, the second refused after the data: two replies after the dot, in order."""
    handler = Mailboxes(tmp_path / "mail", fail_after_data=(B,))
    with our_server(kind, handler, socket_dir) as endpoint:
        status, transcript = run_swaks(swaks, tmp_path, *endpoint.swaks(), "--to", f"{A},{B}")

    assert status == 0, transcript  # swaks exits 0 even when a recipient failed
    lines = swaks_lines(transcript)
    assert lines[0] == SwaksLine(False, False, False, "220 localhost LMTP server ready")
    assert lhlo_extensions(lines, tls=False) == OUR_EXTENSIONS
    assert [(r.failed, r.text) for r in replies_after_dot(lines)] == [
        (False, "250 2.0.0 Saved"),
        (True, "550 5.2.1 Mailbox disabled"),
    ]
    assert [line.text for line in lines if line.sent][-1] == "QUIT"
    (seen,) = handler.seen
    assert (seen.recipients, seen.data) == ([A, B], MESSAGE)
    assert handler.stored(A) == [handler.copy_for(A, MESSAGE)]
    assert handler.stored(B) == []


@pytest.mark.parametrize("kind", SERVERS)
def test_swaks_pipeline(swaks: str, tmp_path: Path, socket_dir: Path, kind: str) -> None:
    """swaks --pipeline sends MAIL, both RCPTs and DATA before reading a reply; our server answers
    each in order (one refused at RCPT) and then once per accepted recipient."""
    handler = Mailboxes(tmp_path / "mail", reject=(NOBODY,))
    with our_server(kind, handler, socket_dir) as endpoint:
        status, transcript = run_swaks(
            swaks, tmp_path, *endpoint.swaks(), "--pipeline", "--to", f"{A},{NOBODY}"
        )

    assert status == 0, transcript
    lines = swaks_lines(transcript)
    mail = next(i for i, line in enumerate(lines) if line.text.startswith("MAIL FROM:"))
    assert [(line.sent, line.text) for line in lines[mail : mail + 8]] == [
        (True, f"MAIL FROM:<{SENDER}>"),
        (True, f"RCPT TO:<{A}>"),
        (True, f"RCPT TO:<{NOBODY}>"),
        (True, "DATA"),
        (False, "250 2.1.0 Sender OK"),
        (False, "250 2.1.5 Recipient OK"),
        (False, "550 5.1.1 No such user here"),
        (False, "354 End data with <CR><LF>.<CR><LF>"),
    ]
    assert [r.text for r in replies_after_dot(lines)] == ["250 2.0.0 Saved"]
    (seen,) = handler.seen
    assert (seen.recipients, seen.data) == ([A], MESSAGE)
    assert handler.stored(A) == [handler.copy_for(A, MESSAGE)]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_swaks_starttls_verified(
    swaks: str, tmp_path: Path, socket_dir: Path, tls_files: TLSFiles, runtime: str
) -> None:
    """swaks --tls --tls-verify against our server's STARTTLS with a trustme certificate."""
    handler = Mailboxes(tmp_path / "mail")
    context = tls_files.server_context()
    with our_server(f"{runtime}-tcp", handler, socket_dir, starttls_context=context) as endpoint:
        status, transcript = run_swaks(
            swaks,
            tmp_path,
            *endpoint.swaks(),
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            str(tls_files.ca_file),
            "--to",
            A,
        )

    assert status == 0, transcript
    assert "=== TLS started with cipher " in transcript
    lines = swaks_lines(transcript)
    assert lhlo_extensions(lines, tls=False) == OUR_EXTENSIONS | {"STARTTLS"}
    assert lhlo_extensions(lines, tls=True) == OUR_EXTENSIONS
    assert [(r.tls, r.text) for r in replies_after_dot(lines)] == [(True, "250 2.0.0 Saved")]
    # Everything from the second LHLO on went over TLS.
    second_lhlo = [i for i, line in enumerate(lines) if line.text.startswith("LHLO ")][1]
    assert all(line.tls for line in lines[second_lhlo:])
    (seen,) = handler.seen
    assert (seen.tls, seen.data) == (True, MESSAGE)
    assert handler.stored(A) == [handler.copy_for(A, MESSAGE)]


def test_swaks_starttls_refuses_an_unknown_ca(
    swaks: str, tmp_path: Path, socket_dir: Path, tls_files: TLSFiles
) -> None:
    """Negative control for the test above: swaks really verifies our certificate."""
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    handler = Mailboxes(tmp_path / "mail")
    context = tls_files.server_context()
    with our_server("blocking-tcp", handler, socket_dir, starttls_context=context) as endpoint:
        status, transcript = run_swaks(
            swaks,
            tmp_path,
            *endpoint.swaks(),
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            str(other_ca),
            "--to",
            A,
        )
    assert status != 0, transcript
    assert "TLS started" not in transcript
    assert handler.seen == []
    assert handler.stored(A) == []


# ----------------------------------------------------------------------------- msmtp


@pytest.mark.parametrize("kind", SERVERS)
def test_msmtp_two_recipients(msmtp: str, tmp_path: Path, socket_dir: Path, kind: str) -> None:
    """Stored for both, exact bytes, exit status 0."""
    handler = Mailboxes(tmp_path / "mail")
    with our_server(kind, handler, socket_dir) as endpoint:
        proc = run_msmtp(msmtp, endpoint, A, B)

    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    (seen,) = handler.seen
    # msmtp declares no SIZE or BODY, although our server offers both.
    assert seen == Seen(SENDER, [A, B], MESSAGE, (), False)
    assert handler.stored(A) == [handler.copy_for(A, MESSAGE)]
    assert handler.stored(B) == [handler.copy_for(B, MESSAGE)]


@pytest.mark.parametrize("kind", SERVERS)
def test_msmtp_one_recipient_fails_after_data(
    msmtp: str, tmp_path: Path, socket_dir: Path, kind: str
) -> None:
    """msmtp reads each recipient's reply after the data and exits 69 (EX_UNAVAILABLE)."""
    handler = Mailboxes(tmp_path / "mail", fail_after_data=(B,))
    with our_server(kind, handler, socket_dir) as endpoint:
        proc = run_msmtp(msmtp, endpoint, A, B)

    assert proc.returncode == 69, proc.stderr
    assert proc.stderr.splitlines() == [
        f"msmtp: the server refuses to send the mail to {B}",
        "msmtp: LMTP server message: 550 5.2.1 Mailbox disabled",
        "msmtp: could not send mail to all recipients",
    ]
    assert handler.stored(A) == [handler.copy_for(A, MESSAGE)]
    assert handler.stored(B) == []


def test_msmtp_recipient_refused_at_rcpt(msmtp: str, tmp_path: Path, socket_dir: Path) -> None:
    """A recipient refused at RCPT: msmtp (which pipelined DATA) closes the connection without
    reading the 354 or sending the message, and exits 65 (EX_DATAERR); nothing is stored."""
    handler = Mailboxes(tmp_path / "mail", reject=(NOBODY,))
    with our_server("blocking-unix", handler, socket_dir) as endpoint:
        proc = run_msmtp(msmtp, endpoint, A, NOBODY)

    assert proc.returncode == 65, proc.stderr
    assert f"recipient address {NOBODY} not accepted by the server" in proc.stderr
    assert "550 5.1.1 No such user here" in proc.stderr
    assert handler.seen == []
    assert handler.stored(A) == []


# ----------------------------------------------------------------------------- versions


def test_client_versions(swaks: str, msmtp: str) -> None:
    """The peers these tests describe (seen with swaks 20201014.0 and msmtp 1.8.23)."""
    swaks_version = subprocess.run(
        [swaks, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    msmtp_version = subprocess.run(
        [msmtp, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert re.match(r"swaks version \d{8}\.\d+", swaks_version), swaks_version
    assert re.match(r"msmtp version 1\.8\.\d+", msmtp_version), msmtp_version
