"""Hostile peers over real sockets, each with the answer we expect.

Server side (our blocking and asyncio servers): SMTP smuggling sequences followed by
injected commands never run them; commands pipelined behind STARTTLS never run; a
megabyte command line gets one 500 and the session goes on; too many recipients get
452; a client dripping one byte at a time does not hold up another client; a burst of
200 concurrent connections is served. Client side (a scripted fake server): a STARTTLS
reply with injected lines behind it in the same segment stops the client before MAIL.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme

from lmtp_core import Limits, Params
from transports import Envelope, Handler, SessionError, blocking
from transports import asyncio as lmtp_asyncio


class Recorder(Handler):
    """Accepts everything and records what reached the application."""

    def __init__(self) -> None:
        self.senders: list[str] = []
        self.recipients: list[str] = []
        self.messages: list[bytes] = []
        self.lock = threading.Lock()

    def mail_from(self, sender: str, params: Params) -> None:
        with self.lock:
            self.senders.append(sender)

    def rcpt_to(self, recipient: str, params: Params) -> None:
        with self.lock:
            self.recipients.append(recipient)

    def deliver(self, envelope: Envelope) -> None:
        with self.lock:
            self.messages.append(envelope.read())


def talk(path: Path, data: bytes, *, until: bytes, timeout: float = 10) -> bytes:
    """Send `data` in one write, then read until `until` appears (or EOF)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        received = sock.recv(4096)
        sock.sendall(data)
        while until not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r.\n", b"\r.\r"]


@pytest.mark.parametrize("sequence", SMUGGLING, ids=repr)
def test_smuggled_commands_never_run(tmp_path: Path, sequence: bytes) -> None:
    handler = Recorder()
    injected = b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
    session = (
        b"LHLO client.example\r\nMAIL FROM:<good@example.net>\r\n"
        b"RCPT TO:<alice@example.org>\r\nDATA\r\n"
        b"Subject: hi\r\n\r\nbody" + sequence + injected + b"evil body\r\n.\r\nQUIT\r\n"
    )
    with blocking.Server(handler, socket_path=str(tmp_path / "s")):
        answer = talk(tmp_path / "s", session, until=b"221 ")
    assert handler.senders == ["good@example.net"]
    assert handler.recipients == ["alice@example.org"]
    assert handler.messages == []  # refused, never stored
    assert b"550 5.6.0" in answer
    assert answer.count(b"354 ") == 1


def test_commands_pipelined_behind_starttls_never_run(tmp_path: Path) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    handler = Recorder()
    with (
        blocking.Server(handler, socket_path=str(tmp_path / "s"), starttls_context=context),
        socket.socket(socket.AF_UNIX) as sock,
    ):
        sock.settimeout(10)
        sock.connect(str(tmp_path / "s"))
        sock.recv(4096)
        sock.sendall(b"LHLO x\r\n")
        while b"250 " not in sock.recv(4096):
            pass
        sock.sendall(b"STARTTLS\r\nMAIL FROM:<evil@attacker.example>\r\n")
        assert sock.recv(4096).startswith(b"220 ")
        tls = client_context.wrap_socket(sock, server_hostname="localhost")
        tls.sendall(b"MAIL FROM:<after@example.net>\r\n")
        answer = tls.recv(4096)
        tls.close()
    assert answer.startswith(b"503 ")  # a fresh session: LHLO first
    assert handler.senders == []  # neither the injected nor the early MAIL ran


def test_megabyte_command_line_gets_one_500_and_the_session_goes_on(tmp_path: Path) -> None:
    with blocking.Server(Recorder(), socket_path=str(tmp_path / "s")):
        answer = talk(
            tmp_path / "s", b"NOOP " + b"x" * 4_000_000 + b"\r\nNOOP\r\n", until=b"250 2.0.0 OK\r\n"
        )
    assert answer.count(b"500 5.5.2") == 1
    assert answer.endswith(b"250 2.0.0 OK\r\n")


def test_too_many_recipients_get_452(tmp_path: Path) -> None:
    handler = Recorder()
    rcpts = b"".join(b"RCPT TO:<r%d@example.org>\r\n" % i for i in range(5))
    with blocking.Server(handler, socket_path=str(tmp_path / "s"), limits=Limits(max_recipients=3)):
        answer = talk(
            tmp_path / "s",
            b"LHLO x\r\nMAIL FROM:<a@b.example>\r\n" + rcpts + b"QUIT\r\n",
            until=b"221 ",
        )
    assert answer.count(b"452 4.5.3") == 2
    assert len(handler.recipients) == 3


@contextmanager
def asyncio_server(path: Path, handler: Handler) -> Iterator[None]:
    """Our asyncio server in a thread of its own, until the block ends."""
    ready, loop_box = threading.Event(), []

    async def main() -> None:
        stop = asyncio.Event()
        loop_box.append((asyncio.get_running_loop(), stop))
        async with lmtp_asyncio.Server(handler, socket_path=str(path), idle_timeout=30):
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    assert ready.wait(10)
    try:
        yield
    finally:
        loop, stop = loop_box[0]
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


def test_a_dripping_client_does_not_hold_up_another(tmp_path: Path) -> None:
    handler = Recorder()
    with asyncio_server(tmp_path / "s", handler), socket.socket(socket.AF_UNIX) as slow:
        slow.connect(str(tmp_path / "s"))
        for byte in b"LHLO dripping.example":  # never finished
            slow.sendall(bytes([byte]))
        result = blocking.deliver(
            b"hello\r\n",
            "a@example.net",
            ["b@example.org"],
            socket_path=str(tmp_path / "s"),
            timeout=10,
        )
    assert result.all_delivered
    assert handler.messages == [b"hello\r\n"]


def test_a_burst_of_200_connections_is_served(tmp_path: Path) -> None:
    handler = Recorder()

    async def burst() -> list[bool]:
        async def one(i: int) -> bool:
            result = await lmtp_asyncio.deliver(
                b"m%d\r\n" % i,
                "a@example.net",
                [f"r{i}@example.org"],
                socket_path=str(tmp_path / "s"),
                timeout=30,
            )
            return result.all_delivered

        return await asyncio.gather(*(one(i) for i in range(200)))

    with asyncio_server(tmp_path / "s", handler):
        delivered = asyncio.run(burst())
    assert delivered == [True] * 200
    assert sorted(handler.messages) == sorted(b"m%d\r\n" % i for i in range(200))


def test_starttls_response_injection_stops_the_client(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "s"))
    listener.listen(1)
    seen = bytearray()

    def fake() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            conn.sendall(b"220 fake\r\n")
            seen.extend(conn.recv(4096))
            conn.sendall(b"250-fake\r\n250 STARTTLS\r\n")
            seen.extend(conn.recv(4096))
            conn.sendall(b"220 go ahead\r\n250-injected\r\n250 PIPELINING\r\n")
            while chunk := conn.recv(4096):
                seen.extend(chunk)

    thread = threading.Thread(target=fake)
    thread.start()
    with pytest.raises(SessionError) as caught:
        blocking.deliver(
            b"x\r\n",
            "a@example.net",
            ["b@example.org"],
            socket_path=str(tmp_path / "s"),
            starttls=True,
            timeout=10,
            ssl_opts={"server_hostname": "localhost"},
        )
    thread.join(10)
    listener.close()
    assert "injection" in str(caught.value)
    assert b"MAIL" not in seen
