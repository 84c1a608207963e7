"""Our clients against our servers, over real UNIX and TCP sockets, in every runtime.

Basic delivery and the per-recipient outcomes run for all nine (client runtime, server
runtime) pairs; tests of client behaviour run each client runtime against the blocking
server, and tests of server behaviour run each server runtime against the blocking client.
Covered: mixed outcomes reported in order with their stage, duplicate recipients paired by
position, connection reuse, every kind of message source, body encoding (dots, bare line
ends, 8-bit) as the handler receives it, DATA instead of BDAT when chunking is off, handler
exceptions and async handlers, the server's size limit, and 20 concurrent clients.
"""

from __future__ import annotations

import email.message
import email.policy
import io
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from lmtp_core import Limits, Params, Reply, Stage, Status, TransactionResult
from transports import Envelope, Handler

from .runtimes import (
    ASYNC_RUNTIMES,
    RUNTIMES,
    AsyncRecorder,
    Recorder,
    client_session,
    deliver,
    endpoint,
    running_server,
)

SENDER = "bounces@example.net"
MESSAGE = b"From: a@example.net\r\nSubject: hello\r\n\r\nHello, world.\r\n"
PAIRS = [(client, server) for client in RUNTIMES for server in RUNTIMES]
PAIR_IDS = [f"{client}-client-{server}-server" for client, server in PAIRS]


def statuses(result: TransactionResult) -> list[tuple[str, Status, Stage | None, int | None]]:
    return [
        (r.recipient, r.status, r.stage, r.reply.code if r.reply else None)
        for r in result.recipients
    ]


# ---- delivery in every pair of runtimes ---------------------------------------------------


@pytest.mark.parametrize(("client", "server"), PAIRS, ids=PAIR_IDS)
def test_delivers_over_tcp(client: str, server: str) -> None:
    handler = Recorder()
    with running_server(server, handler) as address:
        assert address[0] == "127.0.0.1" and address[1] > 0
        result = deliver(
            client, MESSAGE, SENDER, ["alice@example.org", "bob@example.org"], **endpoint(address)
        )
    assert result.all_delivered
    assert [r.recipient for r in result.recipients] == ["alice@example.org", "bob@example.org"]
    assert all(r.stage is Stage.DATA and r.reply and r.reply.code == 250 for r in result.recipients)
    (received,) = handler.messages
    assert received.sender == SENDER
    assert received.recipients == ("alice@example.org", "bob@example.org")
    assert received.data == MESSAGE
    assert received.size == len(MESSAGE)
    assert received.tls is False
    assert received.lhlo == "localhost"


@pytest.mark.parametrize(("client", "server"), PAIRS, ids=PAIR_IDS)
def test_delivers_over_unix_socket(client: str, server: str, sock_path: str) -> None:
    handler = Recorder()
    with running_server(server, handler, socket_path=sock_path) as address:
        assert address == sock_path
        result = deliver(
            client, MESSAGE, SENDER, ["carol@example.org"], socket_path=sock_path, lhlo_name="me"
        )
    assert statuses(result) == [("carol@example.org", Status.DELIVERED, Stage.DATA, 250)]
    assert [m.data for m in handler.messages] == [MESSAGE]
    assert handler.messages[0].lhlo == "me"


MIXED = ["ok@example.org", "refused@example.org", "full@example.org", "later@example.org"]


def mixed_handler(handler_class: type[Recorder] = Recorder) -> Recorder:
    return handler_class(
        rcpt={"refused@example.org": Reply(550, "5.1.1", "No such user")},
        final={
            "full@example.org": Reply(552, "5.2.2", "Mailbox full"),
            "later@example.org": Reply(452, "4.2.2", "Over quota, try later"),
        },
    )


def check_mixed(result: TransactionResult, handler: Recorder) -> None:
    assert statuses(result) == [
        ("ok@example.org", Status.DELIVERED, Stage.DATA, 250),
        ("refused@example.org", Status.PERMANENT, Stage.RCPT, 550),
        ("full@example.org", Status.PERMANENT, Stage.DATA, 552),
        ("later@example.org", Status.TEMPORARY, Stage.DATA, 452),
    ]
    assert result.recipients[1].reply == Reply(550, "5.1.1", "No such user")
    assert result.recipients[2].reply == Reply(552, "5.2.2", "Mailbox full")
    assert result.recipients[3].reply == Reply(452, "4.2.2", "Over quota, try later")
    assert [r.recipient for r in result.retry] == ["later@example.org"]
    assert [r.recipient for r in result.failed] == ["refused@example.org", "full@example.org"]
    (received,) = handler.messages
    assert received.recipients == ("ok@example.org", "full@example.org", "later@example.org")


@pytest.mark.parametrize(("client", "server"), PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_mixed_outcomes_in_order_with_their_stage(
    client: str, server: str, chunking: bool, sock_path: str
) -> None:
    handler = mixed_handler()
    with running_server(server, handler, socket_path=sock_path):
        result = deliver(client, MESSAGE, SENDER, MIXED, socket_path=sock_path, chunking=chunking)
    check_mixed(result, handler)


class PositionalHandler(Handler):
    """Answers each recipient after the data by its position, ignoring the address."""

    REPLIES = (
        Reply(250, "2.0.0", "copy 0"),
        Reply(452, "4.2.2", "copy 1"),
        Reply(250, "2.0.0", "copy 2"),
        Reply(550, "5.7.1", "copy 3"),
    )

    def __init__(self) -> None:
        self.recipients: list[tuple[str, ...]] = []

    def deliver(self, envelope: Envelope) -> Any:
        self.recipients.append(tuple(envelope.recipients))
        return list(self.REPLIES[: len(envelope.recipients)])


@pytest.mark.parametrize("client", RUNTIMES)
def test_duplicate_recipients_are_paired_by_position(client: str, sock_path: str) -> None:
    handler = PositionalHandler()
    recipients = ["a@example.org", "a@example.org", "b@example.org", "a@example.org"]
    with running_server("blocking", handler, socket_path=sock_path):
        result = deliver(client, MESSAGE, SENDER, recipients, socket_path=sock_path)
    assert handler.recipients == [tuple(recipients)]
    assert [r.recipient for r in result.recipients] == recipients
    assert [r.reply.text if r.reply else None for r in result.recipients] == [
        "copy 0",
        "copy 1",
        "copy 2",
        "copy 3",
    ]
    assert [r.status for r in result.recipients] == [
        Status.DELIVERED,
        Status.TEMPORARY,
        Status.DELIVERED,
        Status.PERMANENT,
    ]


@pytest.mark.parametrize(("client", "server"), PAIRS, ids=PAIR_IDS)
def test_one_client_reuses_one_connection(client: str, server: str) -> None:
    handler = mixed_handler()
    with (
        running_server(server, handler) as address,
        client_session(client, **endpoint(address)) as session,
    ):
        first = session.deliver(MESSAGE, SENDER, ["one@example.org"])
        second = session.deliver(MESSAGE + b"2\r\n", SENDER, MIXED)
        nobody = session.deliver(MESSAGE, SENDER, ["refused@example.org"])  # then RSET
        third = session.deliver(MESSAGE + b"3\r\n", "", ["three@example.org"])
    assert statuses(first) == [("one@example.org", Status.DELIVERED, Stage.DATA, 250)]
    assert statuses(nobody) == [("refused@example.org", Status.PERMANENT, Stage.RCPT, 550)]
    check_mixed(second, Recorder(messages=handler.messages[1:2]))
    assert statuses(third) == [("three@example.org", Status.DELIVERED, Stage.DATA, 250)]
    assert [m.data for m in handler.messages] == [MESSAGE, MESSAGE + b"2\r\n", MESSAGE + b"3\r\n"]
    assert [m.sender for m in handler.messages] == [SENDER, SENDER, ""]
    assert handler.connections == 1


def test_separate_deliveries_use_separate_connections(sock_path: str) -> None:
    # The control for the test above: the handler's count does see new connections.
    handler = Recorder()
    with running_server("blocking", handler, socket_path=sock_path):
        for _ in range(3):
            deliver("blocking", MESSAGE, SENDER, ["x@example.org"], socket_path=sock_path)
    assert handler.connections == 3


# ---- message sources and body encoding ----------------------------------------------------


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def async_chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for piece in chunks(data, size):
        yield piece


def as_email() -> email.message.Message:
    msg = email.message.EmailMessage()
    msg["From"] = "a@example.net"
    msg["To"] = "b@example.org"
    msg["Subject"] = "an email.message"
    msg.set_content("First line.\n.dot line\nLast line, caf\u00e9.\n")
    return msg


SOURCES = ["bytes", "bytearray", "memoryview", "file", "iterable", "email"]


def make_source(kind: str, data: bytes, tmp_path: Path) -> Any:
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(data)
    if kind == "file":
        path = tmp_path / "message.eml"
        path.write_bytes(data)
        return path.open("rb")
    if kind == "iterable":
        return chunks(data, 7)
    raise AssertionError(kind)


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize("kind", SOURCES)
def test_every_kind_of_message_source(
    client: str, kind: str, sock_path: str, tmp_path: Path
) -> None:
    handler = Recorder()
    if kind == "email":
        msg = as_email()
        source: Any = msg
        expected = msg.as_bytes(policy=email.policy.SMTP)
    else:
        expected = MESSAGE + b"x" * 78 + b"\r\n" * 2500  # several file reads and chunks
        source = make_source(kind, expected, tmp_path)
    with running_server("blocking", handler, socket_path=sock_path):
        result = deliver(client, source, SENDER, ["a@example.org"], socket_path=sock_path)
    if isinstance(source, io.IOBase):
        source.close()
    assert result.all_delivered
    assert [m.data for m in handler.messages] == [expected]
    assert b"\r\n" in expected and b"\n" not in expected.replace(b"\r\n", b"")


@pytest.mark.parametrize("client", ASYNC_RUNTIMES)
def test_async_iterable_message(client: str, sock_path: str) -> None:
    handler = Recorder()
    data = MESSAGE + b"tail\r\n" * 1000
    with running_server("blocking", handler, socket_path=sock_path):
        result = deliver(
            client, async_chunks(data, 1000), SENDER, ["a@example.org"], socket_path=sock_path
        )
    assert result.all_delivered
    assert [m.data for m in handler.messages] == [data]


def test_blocking_client_refuses_an_async_iterable(sock_path: str) -> None:
    handler = Recorder()
    with (
        running_server("blocking", handler, socket_path=sock_path),
        pytest.raises(TypeError, match="async"),
    ):
        deliver(
            "blocking", async_chunks(b"x\r\n", 1), SENDER, ["a@x.example"], socket_path=sock_path
        )
    assert handler.senders == []


# Lines starting with dots, a line that is a lone dot, CRLF.CRLF-like sequences made of bare
# line ends, bare LF and bare CR, 8-bit text, no final line end.
TRICKY = (
    b"Subject: dots\n\n"
    b".leading dot\n"
    b"..two dots\r\n"
    b".\n"
    b"middle\r\n.\r\n"
    b"after a lone dot\n\n.\n\n"
    b"bare CR\rthen LF\n"
    b"caf\xc3\xa9 \xff\xfe 8-bit\r\n"
    b"no final line end"
)
TRICKY_STORED = (
    b"Subject: dots\r\n\r\n"
    b".leading dot\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"middle\r\n.\r\n"
    b"after a lone dot\r\n\r\n.\r\n\r\n"
    b"bare CR\r\nthen LF\r\n"
    b"caf\xc3\xa9 \xff\xfe 8-bit\r\n"
    b"no final line end\r\n"
)


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
@pytest.mark.parametrize("piece", [None, 1, 5], ids=["whole", "bytewise", "pieces-of-5"])
def test_body_reaches_the_handler_crlf_normalised(
    client: str, chunking: bool, piece: int | None, sock_path: str
) -> None:
    handler = Recorder()
    source: Any = TRICKY if piece is None else chunks(TRICKY, piece)
    with running_server("blocking", handler, socket_path=sock_path):
        result = deliver(
            client, source, SENDER, ["a@example.org"], socket_path=sock_path, chunking=chunking
        )
    assert result.all_delivered
    assert [m.data for m in handler.messages] == [TRICKY_STORED]
    params = dict(handler.messages[0].mail_params)
    assert params["BODY"] == "8BITMIME"
    # SIZE only when known (bytes); RFC 1870 makes it an estimate, here of the input size
    assert ("SIZE" in params) is (piece is None)


@pytest.mark.parametrize("client", RUNTIMES)
@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_chunking_setting_picks_bdat_or_data(
    client: str, chunking: bool, sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="transports")
    handler = Recorder()
    body = b"Subject: t\r\n\r\nbody-marker-7f3a\r\n.starts with a dot\r\n"
    with running_server("blocking", handler, socket_path=sock_path):
        result = deliver(
            client, body, SENDER, ["a@example.org"], socket_path=sock_path, chunking=chunking
        )
    assert result.all_delivered
    assert [m.data for m in handler.messages] == [body]
    transcript = [r.getMessage() for r in caplog.records if r.name == "transports"]
    lines = [line.split("] ", 1)[1] for line in transcript]  # after the connection id
    commands = [line.split(": ", 1)[1].split(" ")[0] for line in lines if line[:3] == "C: "]
    assert "LHLO" in commands and "MAIL" in commands and "RCPT" in commands
    if chunking:
        assert "BDAT" in commands and "DATA" not in commands
    else:
        assert "DATA" in commands and "BDAT" not in commands
    assert not any("body-marker-7f3a" in line for line in transcript)  # never message bodies


# ---- server behaviour ---------------------------------------------------------------------


HANDLERS = [(s, Recorder) for s in RUNTIMES] + [(s, AsyncRecorder) for s in ASYNC_RUNTIMES]
HANDLER_IDS = [f"{s}-{'async' if h is AsyncRecorder else 'sync'}" for s, h in HANDLERS]


@pytest.mark.parametrize(("server", "handler_class"), HANDLERS, ids=HANDLER_IDS)
def test_handler_exception_in_deliver_is_451_without_its_text(
    server: str, handler_class: type[Recorder], sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    handler = handler_class(
        fail_deliver=True, rcpt={"refused@example.org": Reply(550, "5.1.1", "No such user")}
    )
    recipients = ["a@example.org", "refused@example.org", "b@example.org"]
    with running_server(server, handler, socket_path=sock_path):
        result = deliver("blocking", MESSAGE, SENDER, recipients, socket_path=sock_path)
    assert statuses(result) == [
        ("a@example.org", Status.TEMPORARY, Stage.DATA, 451),
        ("refused@example.org", Status.PERMANENT, Stage.RCPT, 550),
        ("b@example.org", Status.TEMPORARY, Stage.DATA, 451),
    ]
    for r in (result.recipients[0], result.recipients[2]):
        assert r.reply is not None and r.reply.enhanced == "4.3.0"
        assert handler.secret not in r.reply.text
        assert "crashed" not in r.reply.text and "RuntimeError" not in r.reply.text
    logged = [r for r in caplog.records if r.name == "transports.server" and r.exc_info]
    assert logged and handler.secret in str(logged[0].exc_info[1])  # type: ignore[index]


@pytest.mark.parametrize(("server", "handler_class"), HANDLERS, ids=HANDLER_IDS)
def test_handler_exception_in_rcpt_is_451_for_that_recipient_only(
    server: str, handler_class: type[Recorder], sock_path: str
) -> None:
    handler = handler_class(fail_rcpt=frozenset({"crash@example.org"}))
    recipients = ["a@example.org", "crash@example.org", "b@example.org"]
    with running_server(server, handler, socket_path=sock_path):
        result = deliver("blocking", MESSAGE, SENDER, recipients, socket_path=sock_path)
    assert statuses(result) == [
        ("a@example.org", Status.DELIVERED, Stage.DATA, 250),
        ("crash@example.org", Status.TEMPORARY, Stage.RCPT, 451),
        ("b@example.org", Status.DELIVERED, Stage.DATA, 250),
    ]
    reply = result.recipients[1].reply
    assert reply is not None and reply.enhanced == "4.3.0" and handler.secret not in reply.text
    assert handler.messages[0].recipients == ("a@example.org", "b@example.org")


@pytest.mark.parametrize(("client", "server"), [(c, s) for c in RUNTIMES for s in ASYNC_RUNTIMES])
def test_async_handlers(client: str, server: str, sock_path: str) -> None:
    handler = mixed_handler(AsyncRecorder)
    with running_server(server, handler, socket_path=sock_path):
        result = deliver(client, MESSAGE, SENDER, MIXED, socket_path=sock_path)
    check_mixed(result, handler)
    assert handler.senders == [SENDER]
    assert handler.recipients == MIXED


class WrongAnswers(Handler):
    """deliver() answers with the wrong number of replies, or something not a Reply."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def deliver(self, envelope: Envelope) -> Any:
        return self.answer


@pytest.mark.parametrize("server", RUNTIMES)
@pytest.mark.parametrize(
    "answer",
    [[None], [None, None, None], "250 OK", [Reply(250), "250"], Reply(354, None, "go on")],
    ids=["too-few", "too-many", "a-str", "a-str-inside", "a-3xx"],
)
def test_bad_handler_answers_become_451(server: str, answer: Any, sock_path: str) -> None:
    with running_server(server, WrongAnswers(answer), socket_path=sock_path):
        result = deliver(
            "blocking", MESSAGE, SENDER, ["a@x.example", "b@x.example"], socket_path=sock_path
        )
    assert [(r.status, r.reply.code if r.reply else None) for r in result.recipients] == [
        (Status.TEMPORARY, 451),
        (Status.TEMPORARY, 451),
    ]


@pytest.mark.parametrize("server", RUNTIMES)
@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_server_size_limit_refuses_with_552_for_everyone(
    server: str, chunking: bool, sock_path: str
) -> None:
    handler = Recorder()
    limits = Limits(max_message_size=10_000)
    big = MESSAGE + b"y" * 70 + b"\r\n"
    big = big * (30_000 // len(big))
    recipients = ["a@example.org", "b@example.org", "c@example.org"]
    with running_server(server, handler, socket_path=sock_path, limits=limits):
        # an iterable has no known size, so the client cannot refuse it from SIZE
        result = deliver(
            "blocking",
            chunks(big, 4096),
            SENDER,
            recipients,
            socket_path=sock_path,
            chunking=chunking,
        )
        small = deliver("blocking", MESSAGE, SENDER, recipients, socket_path=sock_path)
    assert [(r.status, r.stage, r.reply.code if r.reply else None) for r in result.recipients] == [
        (Status.PERMANENT, Stage.DATA, 552)
    ] * 3
    assert small.all_delivered  # the limit is about size, not a broken server
    assert [m.data for m in handler.messages] == [MESSAGE]  # nothing of the big one kept


@pytest.mark.parametrize("client", RUNTIMES)
def test_message_over_the_advertised_size_is_refused_before_mail(
    client: str, sock_path: str
) -> None:
    # A message this server cannot take is an outcome, not an exception: every
    # recipient PERMANENT at Stage.LOCAL, with the reason, and nothing sent.
    handler = Recorder()
    with running_server(
        "blocking", handler, socket_path=sock_path, limits=Limits(max_message_size=1000)
    ):
        message = b"z" * 500 + b"\r\n" + b"z" * 600
        result = deliver(
            client, message, SENDER, ["a@x.example", "b@x.example"], socket_path=sock_path
        )
    assert [(r.status, r.stage, r.reply) for r in result.recipients] == [
        (Status.PERMANENT, Stage.LOCAL, None)
    ] * 2
    assert all("SIZE limit (1000)" in (r.reason or "") for r in result.recipients)
    assert handler.senders == []


@pytest.mark.parametrize("client", RUNTIMES)
def test_nul_before_a_dot_never_goes_out_as_8bitmime(client: str, sock_path: str) -> None:
    # RFC 2045: no NUL in 8bit data; a receiver that strips NUL would see CRLF.CRLF.
    handler = Recorder()
    with running_server("blocking", handler, socket_path=sock_path):
        message = b"Subject: nul\r\n\r\nfirst\r\n\x00.\r\nRCPT TO:<victim@x.example>\r\n"
        result = deliver(client, message, SENDER, ["a@x.example"], socket_path=sock_path)
        later = deliver(client, MESSAGE, SENDER, ["a@x.example"], socket_path=sock_path)
    (outcome,) = result.recipients
    assert (outcome.status, outcome.stage, outcome.reply) == (Status.PERMANENT, Stage.LOCAL, None)
    assert "NUL" in (outcome.reason or "")
    assert handler.senders == [SENDER]  # only the later, clean message reached MAIL
    assert later.all_delivered
    assert handler.recipients == ["a@x.example"]


class BarrierHandler(Recorder):
    """deliver() returns only once `parties` sessions are inside it at the same time."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=20)

    def deliver(self, envelope: Envelope) -> Any:
        answer = super().deliver(envelope)
        self.barrier.wait()  # BrokenBarrierError (-> 451) unless all are concurrent
        return answer


def test_blocking_server_serves_20_concurrent_clients(sock_path: str) -> None:
    clients = 20
    handler = BarrierHandler(clients)
    results: list[TransactionResult | BaseException] = [RuntimeError("did not run")] * clients

    def run(index: int) -> None:
        try:
            results[index] = deliver(
                RUNTIMES[index % 3],
                MESSAGE + f"client {index}\r\n".encode(),
                SENDER,
                [f"user{index}@example.org"],
                socket_path=sock_path,
            )
        except BaseException as exc:
            results[index] = exc

    with running_server("blocking", handler, socket_path=sock_path):
        threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    for index, result in enumerate(results):
        assert isinstance(result, TransactionResult), result
        assert statuses(result) == [(f"user{index}@example.org", Status.DELIVERED, Stage.DATA, 250)]
    assert sorted(m.data for m in handler.messages) == sorted(
        MESSAGE + f"client {i}\r\n".encode() for i in range(clients)
    )
    assert handler.connections == clients


class RecordingParams(Handler):
    def __init__(self) -> None:
        self.mail: list[Params] = []

    def mail_from(self, sender: str, params: Params) -> Any:
        self.mail.append(params)
        return None


@pytest.mark.parametrize("client", RUNTIMES)
def test_size_and_body_parameters_follow_the_source(client: str, sock_path: str) -> None:
    handler = RecordingParams()
    with running_server("blocking", handler, socket_path=sock_path):
        deliver(client, MESSAGE, SENDER, ["a@x.example"], socket_path=sock_path)
        deliver(client, b"caf\xc3\xa9\r\n", SENDER, ["a@x.example"], socket_path=sock_path)
        deliver(client, chunks(MESSAGE, 3), SENDER, ["a@x.example"], socket_path=sock_path)
    assert handler.mail == [
        (("SIZE", str(len(MESSAGE))),),  # known 7-bit bytes: no BODY=8BITMIME
        (("BODY", "8BITMIME"), ("SIZE", "7")),
        (("BODY", "8BITMIME"),),  # unknown size and 8-bitness
    ]
