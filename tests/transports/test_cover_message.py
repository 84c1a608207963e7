"""Every kind of message source through a Client, against the scripted peer
(scripted.py): what goes on the wire, the SIZE= it declares, what it refuses and when,
and how it is read again when one delivery takes several transactions (bytes from their
start, a file sought back, a one-shot source spooled as it was first read, and neither
when a one-shot source was not spooled). transports/_message.py, through the public API.

A second transaction is only started on a connection that stayed silent while idle; the
scripted peer counts a reply waiting at the front of its script as "spoke", so the
multi-transaction cases use a patient peer (``patient=True``) whose waiting replies are
not yet said (as a real server's reply to MAIL is not before MAIL was sent)."""

from __future__ import annotations

import asyncio
import email.message
import io
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from lmtp_core import Stage, Status

from .runtimes import ASYNC_RUNTIMES, RUNTIMES
from .scripted import (
    DRIVERS,
    EOF,
    GREETING,
    AsyncScripted,
    SyncScripted,
    _AsyncStream,
    _SyncStream,
)

OK_MAIL, OK_RCPT, GO, STORED, BYE = (
    b"250 2.1.0 ok\r\n",
    b"250 2.1.5 ok\r\n",
    b"354 go on\r\n",
    b"250 2.0.0 stored\r\n",
    b"221 2.0.0 bye\r\n",
)
LHLO_SIZE = b"250-scripted\r\n250-PIPELINING\r\n250-SIZE 10000000\r\n250 ENHANCEDSTATUSCODES\r\n"
LHLO = b"250-scripted\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"
MESSAGE = b"Subject: cover\r\n\r\none\r\ntwo\r\n"


def _quiet(play: Any) -> bool:
    return not play.closed and not (play.steps and play.steps[0] == EOF)


class _PatientSync(_SyncStream):
    def idle_clean(self) -> bool:
        return _quiet(self._play)


class _PatientAsync(_AsyncStream):
    def idle_clean(self) -> bool:
        return _quiet(self._play)


class PatientSync(SyncScripted):
    def connect(self, config: Any, timeout: float) -> _SyncStream:
        return _PatientSync(self._connect())


class PatientAsync(AsyncScripted):
    async def connect(self, config: Any, timeout: float) -> _AsyncStream:
        return _PatientAsync(self._connect())


def run(
    runtime: str,
    script: list[Any],
    make: Callable[[], Any],
    recipients: Sequence[str] = ("b@x.org",),
    patient: bool = False,
    **settings: Any,
) -> tuple[Any, Any]:
    """One delivery of the message make() returns (called in the runtime) on a Client
    of `runtime` against `script`, then close(); what it returned or raised, and the
    backend."""
    driver = DRIVERS[runtime]
    settings.setdefault("socket_path", "/scripted")
    outcome: Any = None
    if runtime == "blocking":
        sync = (PatientSync if patient else SyncScripted)(driver.Client.default_backend, [script])
        client = driver.Client(backend=sync, **settings)
        try:
            outcome = client.deliver(make(), "a@x.org", list(recipients))
        except Exception as exc:
            outcome = exc
        client.close()
        return outcome, sync
    backend = (PatientAsync if patient else AsyncScripted)(driver.Client.default_backend, [script])

    async def main() -> None:
        nonlocal outcome
        client = driver.Client(backend=backend, **settings)
        try:
            outcome = await client.deliver(make(), "a@x.org", list(recipients))
        except Exception as exc:
            outcome = exc
        await client.close()

    asyncio.run(main()) if runtime == "asyncio" else trio.run(main)
    return outcome, backend


def two_transactions(lhlo: bytes = LHLO) -> list[Any]:
    """One recipient per transaction, two transactions, then QUIT."""
    one = [OK_MAIL, OK_RCPT, GO, STORED]
    return [GREETING, lhlo, *one, *one, BYE]


def data_sent(sent: bytes) -> list[bytes]:
    """The bodies sent after each DATA up to their end of data (dot-stuffed); a DATA
    refused before any body went out has none."""
    bodies = []
    for part in sent.split(b"DATA\r\n")[1:]:
        body, end, _ = part.partition(b"\r\n.\r\n")
        if end:
            bodies.append(body + b"\r\n")
    return bodies


def mail_lines(sent: bytes) -> list[bytes]:
    return [line for line in sent.split(b"\r\n") if line.startswith(b"MAIL FROM:")]


def statuses(result: Any) -> list[Status]:
    return [r.status for r in result.recipients]


# ---- bytes, memoryviews, email messages ------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_a_message_over_a_piece_goes_out_whole(runtime: str, kind: Callable[[bytes], Any]) -> None:
    # 2.5 MiB: three 1 MiB slices of the caller's buffer, handed to the core in turn.
    line = b"x" * 510 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * 5120
    script = [GREETING, LHLO_SIZE, OK_MAIL, OK_RCPT, GO, STORED, BYE]
    result, backend = run(runtime, script, lambda: kind(body))
    assert statuses(result) == [Status.DELIVERED]
    sent = b"".join(backend.sent)
    assert data_sent(sent) == [body]
    assert mail_lines(sent) == [f"MAIL FROM:<a@x.org> SIZE={len(body)}".encode()]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_an_email_message_is_sent_with_crlf_line_ends(runtime: str) -> None:
    message = email.message.EmailMessage()
    message["Subject"] = "hello"
    message.set_content("line one\nline two\n")
    script = [GREETING, LHLO, OK_MAIL, OK_RCPT, GO, STORED, BYE]
    result, backend = run(runtime, script, lambda: message)
    assert statuses(result) == [Status.DELIVERED]
    (body,) = data_sent(b"".join(backend.sent))
    assert b"Subject: hello\r\n" in body
    assert body.endswith(b"line one\r\nline two\r\n")
    assert b"\n" not in body.replace(b"\r\n", b"")


# ---- what is refused, and when ---------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(
    ("message", "words"),
    [
        ("Subject: text\r\n\r\nbody\r\n", "must be bytes (encode it first), not str"),
        (42, "cannot send a message of type int"),
        (None, "cannot send a message of type NoneType"),
    ],
)
def test_a_message_of_the_wrong_type_is_refused_before_connecting(
    runtime: str, message: object, words: str
) -> None:
    error, backend = run(runtime, [], lambda: message)
    assert isinstance(error, TypeError)
    assert words in str(error)
    assert backend.plays == []  # no connection was made


async def _pieces(*pieces: Any) -> AsyncIterator[Any]:
    for piece in pieces:
        yield piece


def test_the_blocking_client_refuses_an_async_iterable_before_connecting() -> None:
    iterable = _pieces(MESSAGE)
    error, backend = run("blocking", [], lambda: iterable)
    assert isinstance(error, TypeError)
    assert "async iterables need the asyncio or trio driver" in str(error)
    assert backend.plays == []
    # never iterated: close it so that no "never awaited" warning is left behind
    asyncio.run(iterable.aclose())


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_piece_that_is_not_bytes_fails_the_delivery_and_closes(runtime: str) -> None:
    script = [GREETING, LHLO, OK_MAIL, OK_RCPT, GO]
    error, backend = run(runtime, script, lambda: iter([b"Subject: x\r\n\r\n", "text\r\n"]))
    assert isinstance(error, TypeError)
    assert "message pieces must be bytes, not str" in str(error)
    (play,) = backend.plays
    assert play.closed
    assert b"\r\n.\r\n" not in b"".join(play.sent)  # the message was never ended


@pytest.mark.parametrize("runtime", ASYNC_RUNTIMES)
def test_an_async_piece_that_is_not_bytes_fails_the_delivery_and_closes(runtime: str) -> None:
    script = [GREETING, LHLO, OK_MAIL, OK_RCPT, GO]
    error, backend = run(runtime, script, lambda: _pieces(b"Subject: x\r\n\r\n", 7))
    assert isinstance(error, TypeError)
    assert "message pieces must be bytes, not int" in str(error)
    assert backend.plays[0].closed


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_file_opened_in_text_mode_fails_the_delivery_and_closes(
    runtime: str, tmp_path: Path
) -> None:
    path = tmp_path / "message.eml"
    path.write_bytes(MESSAGE)
    script = [GREETING, LHLO, OK_MAIL, OK_RCPT, GO]
    with open(path, encoding="ascii") as text:
        error, backend = run(runtime, script, lambda: text)
    assert isinstance(error, TypeError)
    assert "the message file must be opened in binary mode" in str(error)
    assert backend.plays[0].closed


# ---- files -----------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_regular_file_declares_its_size_and_is_sought_back_for_a_second_transaction(
    runtime: str, tmp_path: Path
) -> None:
    # The caller read a first line already: the message is the rest, sent twice.
    path = tmp_path / "message.eml"
    path.write_bytes(b"From nobody\r\n" + MESSAGE)
    with open(path, "rb") as file:
        file.readline()
        result, backend = run(
            runtime,
            two_transactions(LHLO_SIZE),
            lambda: file,
            ["b@x.org", "c@x.org"],
            patient=True,
            recipients_per_transaction=1,
        )
    assert statuses(result) == [Status.DELIVERED, Status.DELIVERED]
    sent = b"".join(backend.sent)
    assert data_sent(sent) == [MESSAGE, MESSAGE]
    assert mail_lines(sent) == [f"MAIL FROM:<a@x.org> SIZE={len(MESSAGE)}".encode()] * 2


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_bytesio_has_no_size_but_is_read_again_from_where_it_started(runtime: str) -> None:
    file = io.BytesIO(b"ignored" + MESSAGE)
    file.seek(len(b"ignored"))
    result, backend = run(
        runtime,
        two_transactions(LHLO_SIZE),
        lambda: file,
        ["b@x.org", "c@x.org"],
        patient=True,
        recipients_per_transaction=1,
    )
    assert statuses(result) == [Status.DELIVERED, Status.DELIVERED]
    sent = b"".join(backend.sent)
    assert data_sent(sent) == [MESSAGE, MESSAGE]
    assert mail_lines(sent) == [b"MAIL FROM:<a@x.org>"] * 2  # no fileno(): no SIZE=


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_pipe_is_spooled_as_it_is_read_and_sent_again_from_the_spool(runtime: str) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, MESSAGE)  # well under the pipe's buffer
    os.close(write_end)
    with open(read_end, "rb") as pipe:
        result, backend = run(
            runtime,
            two_transactions(LHLO_SIZE),
            lambda: pipe,
            ["b@x.org", "c@x.org"],
            patient=True,
            recipients_per_transaction=1,
        )
    assert statuses(result) == [Status.DELIVERED, Status.DELIVERED]
    sent = b"".join(backend.sent)
    assert data_sent(sent) == [MESSAGE, MESSAGE]
    assert mail_lines(sent) == [b"MAIL FROM:<a@x.org>"] * 2  # not a regular file: no SIZE=


class ReadOnly:
    """Something with read() and nothing else a file has."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._data.read(size)


class NoPosition(ReadOnly):
    """Says it can seek, then fails to tell where it is (as some wrappers do)."""

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        raise OSError("no position")


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("kind", [ReadOnly, NoPosition])
def test_a_file_like_that_cannot_seek_is_spooled(runtime: str, kind: type[ReadOnly]) -> None:
    result, backend = run(
        runtime,
        two_transactions(),
        lambda: kind(MESSAGE),
        ["b@x.org", "c@x.org"],
        patient=True,
        recipients_per_transaction=1,
    )
    assert statuses(result) == [Status.DELIVERED, Status.DELIVERED]
    assert data_sent(b"".join(backend.sent)) == [MESSAGE, MESSAGE]


# ---- one-shot iterables ----------------------------------------------------------

BIG_PIECES = [b"Subject: big\r\n\r\n", *((bytes([65 + i]) * 48 + b"\r\n") * 1000 for i in range(3))]
BIG = b"".join(BIG_PIECES)  # about 150 kB: the spool gives it back in several reads


def _sync_big() -> Iterator[bytes]:
    return (piece for piece in BIG_PIECES)


def _async_big() -> AsyncIterator[bytes]:
    return _pieces(*BIG_PIECES)


@pytest.mark.parametrize(
    ("runtime", "make"),
    [
        ("blocking", _sync_big),
        ("asyncio", _sync_big),
        ("trio", _sync_big),
        ("asyncio", _async_big),
        ("trio", _async_big),
    ],
)
def test_a_one_shot_iterable_is_spooled_and_sent_again_whole(
    runtime: str, make: Callable[[], Any]
) -> None:
    result, backend = run(
        runtime,
        two_transactions(),
        make,
        ["b@x.org", "c@x.org"],
        patient=True,
        recipients_per_transaction=1,
    )
    assert statuses(result) == [Status.DELIVERED, Status.DELIVERED]
    assert data_sent(b"".join(backend.sent)) == [BIG, BIG]


@pytest.mark.parametrize(
    ("runtime", "make"),
    [
        ("blocking", _sync_big),
        ("asyncio", _sync_big),
        ("asyncio", _async_big),
        ("trio", _async_big),
    ],
)
def test_a_spool_never_read_by_the_first_transaction_reads_the_source_later(
    runtime: str, make: Callable[[], Any]
) -> None:
    # The first transaction's only recipient is refused at RCPT: its body is never
    # asked for. The second one gets the whole message, from the source itself.
    script = [
        GREETING,
        LHLO,
        OK_MAIL,
        b"550 5.1.1 no such user\r\n",
        b"554 5.5.1 no valid recipients\r\n",
        b"250 2.0.0 reset\r\n",  # RSET
        OK_MAIL,
        OK_RCPT,
        GO,
        STORED,
        BYE,
    ]
    result, backend = run(
        runtime,
        script,
        make,
        ["nobody@x.org", "c@x.org"],
        patient=True,
        recipients_per_transaction=1,
    )
    assert statuses(result) == [Status.PERMANENT, Status.DELIVERED]
    assert data_sent(b"".join(backend.sent)) == [BIG]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_one_shot_message_is_not_sent_again_after_a_452(runtime: str) -> None:
    # Nobody foresaw a second transaction (no limit known), so the generator was not
    # spooled; the recipient the server deferred (452) keeps that outcome.
    script = [
        GREETING,
        LHLO,
        OK_MAIL,
        OK_RCPT,
        b"452 4.5.3 too many recipients\r\n",
        GO,
        STORED,
        BYE,
    ]
    result, backend = run(
        runtime, script, lambda: iter([MESSAGE]), ["b@x.org", "c@x.org"], patient=True
    )
    assert statuses(result) == [Status.DELIVERED, Status.TEMPORARY]
    deferred = result.recipients[1]
    assert deferred.stage is Stage.RCPT
    assert deferred.reply is not None and deferred.reply.code == 452
    assert data_sent(b"".join(backend.sent)) == [MESSAGE]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_bytes_are_sent_again_for_the_recipient_deferred_by_a_452(runtime: str) -> None:
    script = [
        GREETING,
        LHLO,
        OK_MAIL,
        OK_RCPT,
        b"452 4.5.3 too many recipients\r\n",
        GO,
        STORED,
        OK_MAIL,
        OK_RCPT,
        GO,
        STORED,
        BYE,
    ]
    result, backend = run(runtime, script, lambda: MESSAGE, ["b@x.org", "c@x.org"], patient=True)
    assert statuses(result) == [Status.DELIVERED, Status.DELIVERED]
    assert data_sent(b"".join(backend.sent)) == [MESSAGE, MESSAGE]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_no_second_transaction_when_the_server_spoke_between_them(runtime: str) -> None:
    # The ordinary scripted peer: its next reply is already waiting after the first
    # transaction, which reads as a server that spoke unasked. The rest stays as it is.
    script = [GREETING, LHLO, OK_MAIL, OK_RCPT, GO, STORED, OK_MAIL]
    result, backend = run(
        runtime, script, lambda: MESSAGE, ["b@x.org", "c@x.org"], recipients_per_transaction=1
    )
    assert statuses(result) == [Status.DELIVERED, Status.TEMPORARY]
    assert result.recipients[1].reply is None
    sent = b"".join(backend.sent)
    assert len(mail_lines(sent)) == 1
