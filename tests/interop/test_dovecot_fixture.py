"""Self-test of the Dovecot fixture: the peer behaves the way later interop tests assume.

How it works: each test drives the private Dovecot started by the ``dovecot``/``dovecot_tls``
fixtures with ``swaks`` in a subprocess (over the UNIX socket or 127.0.0.1 TCP), parses swaks's
transcript into per-recipient replies, and checks the replies, the stored Maildir copies (via
``DovecotLMTP.body_of``) and the raw session logs.  Nothing waits on timers: swaks returns when the
session is over, and Dovecot has stored (or refused) each message before it replies.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from _dovecot import DovecotLMTP, dovecot_available, require_peer

if TYPE_CHECKING:
    import trustme

SENDER = "sender@example.com"
ALICE = "alice@example.org"
BOB = "bob@example.org"
QUOTA = "quota@example.org"
TEMPQUOTA = "tempquota@example.org"
NOBODY = "nobody@example.org"

# A message that starts with its own Received field and has lines needing dot-stuffing.
MESSAGE = (
    b"Received: from origin.example (origin.example [192.0.2.1])\r\n"
    b"\tby relay.example with ESMTP; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"From: <sender@example.com>\r\n"
    b"To: <alice@example.org>\r\n"
    b"Subject: interop fixture check\r\n"
    b"Message-ID: <fixture-check@example.com>\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b".A line that starts with a dot.\r\n"
    b"..And one with two.\r\n"
    b"\r\n"
    b"Last line.\r\n"
)

BASE_LHLO = {"8BITMIME", "CHUNKING", "ENHANCEDSTATUSCODES", "PIPELINING"}

_SENT = re.compile(r"^ (?:->|~>) ?(.*)$")
_RECEIVED = re.compile(r"^<(?:-|~|\*\*|~\*) +(\d{3}(?:[ -].*)?)$")
_RAWLOG_STAMP = re.compile(rb"^\d+\.\d+ ")


@dataclass
class Transcript:
    """A swaks session, with replies paired to the recipients they concern."""

    text: str
    returncode: int
    rcpt: dict[str, str] = field(default_factory=dict)
    after_data: dict[str, str] = field(default_factory=dict)
    lhlo: list[set[str]] = field(default_factory=list)


def parse_swaks(text: str, returncode: int) -> Transcript:
    """Pair replies: RCPT -> its reply; the final dot -> one reply per accepted RCPT, in order."""
    result = Transcript(text, returncode)
    pending = ""
    in_data = False
    accepted: list[str] = []
    reply: list[str] = []
    for line in text.splitlines():
        sent = _SENT.match(line)
        if sent:
            if in_data:
                if sent.group(1) == ".":
                    in_data = False
                    pending = "."
                continue
            pending = sent.group(1)
            continue
        received = _RECEIVED.match(line)
        if not received:
            continue
        reply.append(received.group(1))
        if received.group(1)[3:4] == "-":
            continue  # more lines of a multi-line reply follow
        lines, reply = reply, []
        last = lines[-1]
        command = pending.upper()
        if command.startswith("LHLO"):
            result.lhlo.append({item[4:].split(" ")[0] for item in lines[1:]})
        elif command.startswith("RCPT TO:"):
            address = pending[len("RCPT TO:") :].strip().strip("<>")
            result.rcpt[address] = last
            if last.startswith("2"):
                accepted.append(address)
        elif command == "DATA" and last.startswith("354"):
            in_data = True
        elif command == ".":
            result.after_data[accepted[len(result.after_data)]] = last
    return result


def run_swaks(swaks: str, data: bytes, tmp_path: Path, *args: str) -> Transcript:
    """Send ``data`` with swaks; swaks adds the CRLF before the final dot, so omit it here."""
    assert data.endswith(b"\r\n")
    data_file = tmp_path / "message.eml"
    data_file.write_bytes(data[:-2])
    proc = subprocess.run(
        [swaks, "--protocol", "LMTP", "--from", SENDER, "--data", f"@{data_file}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return parse_swaks(proc.stdout + proc.stderr, proc.returncode)


def transport_args(server: DovecotLMTP, transport: str) -> list[str]:
    if transport == "unix":
        return ["--socket", str(server.socket_path)]
    return ["--server", f"{server.host}:{server.port}"]


def unstuffed_data(rawlog_in: bytes) -> bytes:
    """The message a client sent, from a Dovecot ``*.in`` rawlog (timestamps, dots removed)."""
    lines = [_RAWLOG_STAMP.sub(b"", line) for line in rawlog_in.splitlines(keepends=True)]
    start = lines.index(b"DATA\r\n") + 1
    end = lines.index(b".\r\n", start)
    return b"".join(line[1:] if line.startswith(b".") else line for line in lines[start:end])


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_per_recipient_replies(
    swaks: str, dovecot: DovecotLMTP, tmp_path: Path, transport: str
) -> None:
    recipients = [ALICE, QUOTA, TEMPQUOTA, NOBODY]
    result = run_swaks(
        swaks, MESSAGE, tmp_path, *transport_args(dovecot, transport), "--to", ",".join(recipients)
    )
    assert result.returncode == 0, result.text

    assert result.lhlo == [BASE_LHLO], result.text
    assert result.rcpt[NOBODY] == f"550 5.1.1 <{NOBODY}> User doesn't exist: {NOBODY}"
    for accepted in (ALICE, QUOTA, TEMPQUOTA):
        assert result.rcpt[accepted] == "250 2.1.5 OK"
    assert list(result.after_data) == [ALICE, QUOTA, TEMPQUOTA], result.text
    assert re.fullmatch(rf"250 2\.0\.0 <{ALICE}> \S+ Saved", result.after_data[ALICE])
    quota_text = "Quota exceeded (mailbox for user is full)"
    assert result.after_data[QUOTA] == f"552 5.2.2 <{QUOTA}> {quota_text}"
    assert result.after_data[TEMPQUOTA] == f"452 4.2.2 <{TEMPQUOTA}> {quota_text}"

    stored = dovecot.messages(ALICE)
    assert len(stored) == 1
    assert dovecot.body_of(stored[0]) == MESSAGE
    assert dovecot.messages(QUOTA) == []
    assert dovecot.messages(TEMPQUOTA) == []
    assert not dovecot.maildir(NOBODY).exists()


def test_stored_copy_headers_and_user_case(
    swaks: str, dovecot: DovecotLMTP, tmp_path: Path
) -> None:
    mixed = "Bob@Example.ORG"
    result = run_swaks(
        swaks, MESSAGE, tmp_path, "--socket", str(dovecot.socket_path), "--to", mixed
    )
    assert re.fullmatch(rf"250 2\.0\.0 <{mixed}> \S+ Saved", result.after_data[mixed]), result.text

    # %u is the lower-cased full address, so Bob's mail lands in "bob@example.org".
    assert dovecot.maildir(mixed) == dovecot.maildir(BOB) == dovecot.mail_root / BOB
    (stored,) = dovecot.messages(BOB)
    # With one recipient Dovecot prepends Return-Path, Delivered-To and a Received field.
    assert stored.startswith(f"Return-Path: <{SENDER}>\r\nDelivered-To: ".encode())
    header_names = [line.split(b":")[0] for line in stored.split(b"\r\n")[:3]]
    assert header_names == [b"Return-Path", b"Delivered-To", b"Received"]
    prepended = stored[: len(stored) - len(MESSAGE)]
    assert b"with LMTP" in prepended
    assert f"for <{mixed}>".encode().lower() in prepended.lower()
    assert stored.endswith(MESSAGE)
    assert dovecot.body_of(stored) == MESSAGE


def test_rawlog_shows_the_session(swaks: str, dovecot: DovecotLMTP, tmp_path: Path) -> None:
    assert dovecot.rawlogs() == []  # the start-up probes are not listed
    run_swaks(swaks, MESSAGE, tmp_path, "--socket", str(dovecot.socket_path), "--to", ALICE)

    logs = dovecot.rawlogs()
    assert [p.suffix for p in logs] == [".in", ".out"], logs
    client_side, server_side = (p.read_bytes() for p in logs)
    assert re.search(rb"^\d+\.\d+ LHLO \S+\r\n", client_side, re.MULTILINE)
    assert b" ..A line that starts with a dot.\r\n" in client_side  # dot-stuffed on the wire
    assert b" 220 " in server_side
    assert unstuffed_data(client_side) == MESSAGE
    assert dovecot.body_of(dovecot.messages(ALICE)[0]) == MESSAGE
    assert "saved mail to INBOX" in dovecot.log_text()


def test_starttls_with_verified_certificate(
    swaks: str, dovecot_tls: tuple[DovecotLMTP, trustme.CA], tmp_path: Path
) -> None:
    server, ca = dovecot_tls
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    args = ["--server", f"{server.host}:{server.port}", "--tls", "--tls-verify"]
    result = run_swaks(
        swaks, MESSAGE, tmp_path, *args, "--tls-ca-path", str(ca_file), "--to", ALICE
    )

    assert result.returncode == 0, result.text
    assert "TLS started" in result.text
    assert result.lhlo == [BASE_LHLO | {"STARTTLS"}, BASE_LHLO], result.text
    assert result.after_data[ALICE].startswith("250 2.0.0 "), result.text
    assert server.body_of(server.messages(ALICE)[0]) == MESSAGE


def test_starttls_refuses_an_unknown_ca(
    swaks: str, dovecot_tls: tuple[DovecotLMTP, trustme.CA], tmp_path: Path
) -> None:
    server, ca = dovecot_tls
    other_ca = tmp_path / "other-ca.pem"
    type(ca)().cert_pem.write_to_path(str(other_ca))  # a second, unrelated trustme.CA
    args = ["--server", f"{server.host}:{server.port}", "--tls", "--tls-verify"]
    result = run_swaks(
        swaks, MESSAGE, tmp_path, *args, "--tls-ca-path", str(other_ca), "--to", ALICE
    )

    assert result.returncode != 0, result.text
    assert "TLS started" not in result.text
    assert server.messages(ALICE) == []


def test_starttls_is_offered_on_the_unix_socket(
    swaks: str, dovecot_tls: tuple[DovecotLMTP, trustme.CA], tmp_path: Path
) -> None:
    server, _ = dovecot_tls
    result = run_swaks(swaks, MESSAGE, tmp_path, "--socket", str(server.socket_path), "--to", BOB)
    assert result.lhlo == [BASE_LHLO | {"STARTTLS"}], result.text
    assert result.after_data[BOB].startswith("250 2.0.0 "), result.text


def test_start_stop_restart(tmp_path: Path) -> None:
    require_peer(dovecot_available())
    with DovecotLMTP(tmp_path / "dovecot") as server:
        assert server.version.startswith("2.")
        assert server.greeting.startswith(b"220 ") and server.greeting.endswith(b" ready.")
        pid = int((server.base_dir / "master.pid").read_text())
        server.stop()
        assert not server.running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        with pytest.raises(OSError), socket.create_connection((server.host, server.port), 1):
            pass
        with pytest.raises(OSError), socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(server.socket_path))

        server.start()  # same base directory, fresh port
        with socket.create_connection((server.host, server.port), 5) as sock:
            assert sock.recv(100).startswith(b"220 ")


@pytest.mark.parametrize(
    ("stored", "body"),
    [
        # Dovecot's own shape: CRLF, folded Received, original Received kept.
        (
            b"Return-Path: <a@x>\r\nDelivered-To: b@y\r\nReceived: from h\r\n\tby h with LMTP\r\n"
            b"Received: original\r\nSubject: s\r\n\r\nbody\r\n",
            b"Received: original\r\nSubject: s\r\n\r\nbody\r\n",
        ),
        # Several recipients: no Delivered-To.
        (
            b"Return-Path: <>\r\nReceived: from h\r\n\tid x\r\nDelivered-To: orig\r\n\r\nb\r\n",
            b"Delivered-To: orig\r\n\r\nb\r\n",
        ),
        # LF line endings (mail_save_crlf = no).
        (b"Return-Path: <a@x>\nReceived: from h\n by h\nFrom: a\n\nb\n", b"From: a\n\nb\n"),
        # Nothing prepended.
        (b"From: a\r\n\r\nb\r\n", b"From: a\r\n\r\nb\r\n"),
    ],
)
def test_body_of(stored: bytes, body: bytes) -> None:
    assert DovecotLMTP.body_of(stored) == body
