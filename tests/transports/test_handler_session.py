"""What a Handler sees of its session, in every runtime (issue 21, item 5).

How it works: the handlers here declare a ``session`` parameter on mail_from, rcpt_to and
deliver and write down the SessionInfo each call got, and the thread it ran in. They come in
three styles: plain methods (run in a worker thread by the asyncio and trio servers, in the
session's own thread by the blocking one), @inline methods and ``async def`` methods (run on
the event loop; asyncio and trio only). Each server runtime runs in a background thread
(runtimes.running_server) and our blocking client delivers to it. Also here: handlers that
do not ask for the session (or ask only in one method) are called as before, whether a
method asks is read from its signature once per function, not once per session, and
Envelope.message is closed once deliver() has returned or raised.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import FrozenInstanceError
from typing import IO, Any

import pytest

from lmtp_core import Params, Reply
from transports import Envelope, Handler, SessionInfo, blocking, inline

from .conftest import PKI, SERVER_NAME
from .runtimes import ASYNC_RUNTIMES, RUNTIMES, client_session, deliver, endpoint, running_server

SENDER = "s@example.net"
TO = ["a@example.org", "b@example.org"]
MESSAGE = b"Subject: session\r\n\r\nbody\r\n"
LHLO = "client.example.net"
STYLES = [(runtime, "plain") for runtime in RUNTIMES] + [
    (runtime, style) for runtime in ASYNC_RUNTIMES for style in ("inline", "async")
]
STYLE_IDS = [f"{runtime}-{style}" for runtime, style in STYLES]


class Seen:
    """What the calls of one handler saw: (method, SessionInfo, thread name), in order;
    for deliver(), Envelope.session too, and the message files it was given."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, SessionInfo | None, str]] = []
        self.envelope_sessions: list[str] = []
        self.files: list[IO[bytes]] = []
        self.open_in_deliver: list[bool] = []

    def note(self, method: str, session: SessionInfo | None) -> None:
        with self.lock:
            self.calls.append((method, session, threading.current_thread().name))

    def delivered(self, envelope: Envelope, session: SessionInfo | None) -> None:
        self.note("deliver", session)
        assert envelope.message is not None
        with self.lock:
            self.envelope_sessions.append(envelope.session)
            self.files.append(envelope.message)
            self.open_in_deliver.append(not envelope.message.closed)

    @property
    def infos(self) -> list[SessionInfo | None]:
        return [info for _, info, _ in self.calls]


class PlainHandler(Handler):
    def __init__(self, fail_deliver: bool = False) -> None:
        self.seen = Seen()
        self.fail_deliver = fail_deliver

    def mail_from(
        self, sender: str, params: Params, *, session: SessionInfo | None = None
    ) -> Reply | None:
        self.seen.note("mail_from", session)
        return None

    def rcpt_to(
        self, recipient: str, params: Params, *, session: SessionInfo | None = None
    ) -> Reply | None:
        self.seen.note("rcpt_to", session)
        return None

    def deliver(self, envelope: Envelope, *, session: SessionInfo | None = None) -> None:
        self.seen.delivered(envelope, session)
        if self.fail_deliver:
            raise RuntimeError("the store crashed")


class InlineHandler(PlainHandler):
    @inline
    def mail_from(
        self, sender: str, params: Params, *, session: SessionInfo | None = None
    ) -> Reply | None:
        return super().mail_from(sender, params, session=session)

    @inline
    def rcpt_to(
        self, recipient: str, params: Params, *, session: SessionInfo | None = None
    ) -> Reply | None:
        return super().rcpt_to(recipient, params, session=session)

    @inline
    def deliver(self, envelope: Envelope, *, session: SessionInfo | None = None) -> None:
        super().deliver(envelope, session=session)


class AsyncHandler(PlainHandler):
    async def mail_from(  # type: ignore[override]
        self, sender: str, params: Params, *, session: SessionInfo | None = None
    ) -> Reply | None:
        return PlainHandler.mail_from(self, sender, params, session=session)

    async def rcpt_to(  # type: ignore[override]
        self, recipient: str, params: Params, *, session: SessionInfo | None = None
    ) -> Reply | None:
        return PlainHandler.rcpt_to(self, recipient, params, session=session)

    async def deliver(  # type: ignore[override]
        self, envelope: Envelope, *, session: SessionInfo | None = None
    ) -> None:
        PlainHandler.deliver(self, envelope, session=session)


HANDLERS: dict[str, Callable[..., PlainHandler]] = {
    "plain": PlainHandler,
    "inline": InlineHandler,
    "async": AsyncHandler,
}


def check_threads(runtime: str, style: str, seen: Seen) -> None:
    threads = {thread for _, _, thread in seen.calls}
    if runtime == "blocking":
        assert len(threads) == 1  # the session's own thread
        assert threads != {"lmtp-accept"}
    elif style == "plain":
        assert f"{runtime}-loop" not in threads  # a worker thread
    else:
        assert threads == {f"{runtime}-loop"}  # on the event loop


@pytest.mark.parametrize(("runtime", "style"), STYLES, ids=STYLE_IDS)
def test_every_method_sees_its_session(runtime: str, style: str, sock_path: str) -> None:
    handler = HANDLERS[style]()
    with running_server(runtime, handler, socket_path=sock_path) as address:
        result = deliver("blocking", MESSAGE, SENDER, TO, **endpoint(address), lhlo_name=LHLO)
    assert result.all_delivered
    seen = handler.seen
    assert [method for method, _, _ in seen.calls] == ["mail_from", "rcpt_to", "rcpt_to", "deliver"]
    info = seen.infos[0]
    assert isinstance(info, SessionInfo)
    assert re.fullmatch(r"s\d+", info.id)
    assert info == SessionInfo(info.id, f"unix:{sock_path}", tls=False, lhlo=LHLO)
    assert seen.infos == [info] * 4
    assert info.name == f"[{info.id}] unix:{sock_path}" == seen.envelope_sessions[0]
    check_threads(runtime, style, seen)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_tcp_peer_is_named_by_its_address_and_port(runtime: str) -> None:
    handler = PlainHandler()
    with running_server(runtime, handler) as address:
        deliver("blocking", MESSAGE, SENDER, TO[:1], **endpoint(address))
    info = handler.seen.infos[0]
    assert info is not None
    match = re.fullmatch(r"127\.0\.0\.1:(\d+)", info.peer)
    assert match and int(match[1]) != address[1]  # the client's port, not the server's


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
@pytest.mark.parametrize(("runtime", "style"), STYLES, ids=STYLE_IDS)
def test_the_session_tells_of_tls(runtime: str, style: str, mode: str, pki: PKI) -> None:
    handler = HANDLERS[style]()
    key, flag = ("ssl_context", "ssl") if mode == "implicit" else ("starttls_context", "starttls")
    with running_server(runtime, handler, **{key: pki.server_context()}) as address:
        result = deliver(
            "blocking",
            MESSAGE,
            SENDER,
            TO,
            **endpoint(address),
            lhlo_name=LHLO,
            ssl_opts={"cafile": pki.ca_file, "server_hostname": SERVER_NAME},
            timeout=10,
            **{flag: True},
        )
    assert result.all_delivered
    infos = handler.seen.infos
    assert len(infos) == 4 and all(info is not None and info.tls for info in infos)
    assert all(info is not None and info.lhlo == LHLO for info in infos)
    check_threads(runtime, style, handler.seen)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_one_id_per_connection(runtime: str, sock_path: str) -> None:
    handler = PlainHandler()
    with running_server(runtime, handler, socket_path=sock_path) as address:
        with client_session("blocking", **endpoint(address)) as client:
            client.deliver(MESSAGE, SENDER, TO[:1])
            client.deliver(MESSAGE, SENDER, TO[:1])
        deliver("blocking", MESSAGE, SENDER, TO[:1], **endpoint(address))
    ids = [info.id for info in handler.seen.infos if info is not None]
    assert len(ids) == 9
    assert len(set(ids[:6])) == 1  # one connection, two transactions
    assert ids[6:] == [ids[6]] * 3 and ids[6] != ids[0]


class OnlyRcpt(Handler):
    """Old-style mail_from and deliver; rcpt_to takes `session` positionally or by name."""

    def __init__(self) -> None:
        self.rcpt: list[SessionInfo | None] = []
        self.other: list[tuple[Any, ...]] = []

    def mail_from(self, sender: str, params: Params) -> None:
        self.other.append((sender, params))

    def rcpt_to(self, recipient: str, params: Params, session: SessionInfo | None = None) -> None:
        self.rcpt.append(session)

    def deliver(self, envelope: Envelope, **extra: Any) -> None:  # **extra: not a `session`
        self.other.append((envelope.recipients, extra))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_only_the_methods_that_ask_get_the_session(runtime: str, sock_path: str) -> None:
    handler = OnlyRcpt()
    with running_server(runtime, handler, socket_path=sock_path) as address:
        result = deliver("blocking", MESSAGE, SENDER, TO, **endpoint(address))
    assert result.all_delivered
    assert [info.peer if info else None for info in handler.rcpt] == [f"unix:{sock_path}"] * 2
    assert handler.other[0][0] == SENDER
    assert handler.other[1] == (TO, {})


@pytest.fixture
def signature_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[type], int]]:
    """How many times inspect.signature() read a method of a given class."""
    reads: list[object] = []
    original = inspect.signature

    def counting(obj: Any, *args: Any, **kwargs: Any) -> inspect.Signature:
        reads.append(getattr(obj, "__func__", obj))
        return original(obj, *args, **kwargs)

    monkeypatch.setattr(inspect, "signature", counting)

    def count(cls: type) -> int:
        own = [f for f in vars(cls).values() if inspect.isfunction(f)]
        return sum(1 for read in list(reads) if any(read is f for f in own))

    yield count


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_signature_is_read_once_per_function_not_per_session(
    runtime: str, sock_path: str, signature_reads: Callable[[type], int]
) -> None:
    class Fresh(PlainHandler):  # new functions: nothing is cached for them yet
        def rcpt_to(
            self, recipient: str, params: Params, *, session: SessionInfo | None = None
        ) -> Reply | None:
            return super().rcpt_to(recipient, params, session=session)

    handler = Fresh()
    with running_server(runtime, handler, socket_path=sock_path) as address:
        for _ in range(4):
            deliver("blocking", MESSAGE, SENDER, TO[:1], **endpoint(address))
    assert len({info.id for info in handler.seen.infos if info is not None}) == 4
    assert all(info is not None for info in handler.seen.infos)
    assert signature_reads(Fresh) == 1  # Fresh.rcpt_to; the others were read before


@pytest.mark.parametrize("fails", [False, True], ids=["returned", "raised"])
@pytest.mark.parametrize(("runtime", "style"), STYLES, ids=STYLE_IDS)
def test_the_message_is_closed_once_deliver_has_returned(
    runtime: str, style: str, fails: bool, sock_path: str
) -> None:
    handler = HANDLERS[style](fail_deliver=fails)
    with (
        running_server(runtime, handler, socket_path=sock_path) as address,
        client_session("blocking", **endpoint(address)) as client,
    ):
        result = client.deliver(MESSAGE, SENDER, TO)
        # the replies are out, the session still open: the file is closed already
        (kept,) = handler.seen.files
        assert kept.closed
    assert handler.seen.open_in_deliver == [True]
    assert [r.reply.code if r.reply else None for r in result.recipients] == (
        [451, 451] if fails else [250, 250]
    )
    with pytest.raises(ValueError, match="closed file"):
        kept.read()


def test_session_info_is_frozen_and_names_the_session() -> None:
    info = SessionInfo("s7", "127.0.0.1:51234", tls=True, lhlo="c.example")
    assert info.name == "[s7] 127.0.0.1:51234"
    with pytest.raises(FrozenInstanceError):
        info.tls = False  # type: ignore[misc]
    assert SessionInfo("s1", "unix:/s") == SessionInfo("s1", "unix:/s", False, "")


def test_a_blocking_handler_without_session_is_unchanged(sock_path: str) -> None:
    calls: list[tuple[str, Params]] = []

    class Old(Handler):
        def rcpt_to(self, recipient: str, params: Params) -> Reply | None:
            calls.append((recipient, params))
            return Reply(550, "5.1.1", "No") if recipient == TO[1] else None

    with blocking.Server(Old(), socket_path=sock_path) as server:
        result = blocking.deliver(MESSAGE, SENDER, TO, socket_path=server.address)
    assert [r.reply.code if r.reply else None for r in result.recipients] == [250, 550]
    assert calls == [(TO[0], ()), (TO[1], ())]
