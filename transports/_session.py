"""Server-side glue shared by every runtime: core events to handler calls and back.

How it works: a Session wraps one ServerConnection and the application's Handler.
handle(event) keeps the envelope up to date, spools MessageData into a
SpooledTemporaryFile (memory up to a threshold, then disk), and returns a Call when
the handler must decide (MAIL, RCPT, the complete message). A Call is `inline` when
running it cannot block: the method is Handler's own (the application did not
override it), is `async def`, or is marked with @inline (quick, never blocking); the
asyncio and trio drivers run every other call in a worker thread. The driver runs the
call and hands the result, or the exception, to complete(), which turns it into the
replies the core owes: None means accept, a Reply is used as is, and a handler
exception becomes 451 4.3.0 for everyone it concerned (logged here, never sent to the
peer as text). The driver never sees a reply code. Once deliver() has answered (or
raised), the transaction ends and its spooled message is closed.

A handler method that declares a `session` parameter gets the session's SessionInfo
(id, peer, TLS, LHLO name) as `session=`. Whether it does, and whether it is inline,
is worked out once per function (inspect.signature is slow) and kept in _traits(); the
Session binds `session` into the call with functools.partial when the session starts
and again when SessionInfo changes (LHLO, STARTTLS), so the drivers call every method
the same way and a method that does not ask for it costs nothing more.

Refused recipients have a budget of their own, apart from the core's error budget
(syntax and sequence errors): past `refusal_soft_limit` refusals in a session, each
further one asks the driver, through take_delay(), to wait `refusal_delay` seconds
before answering (Postfix's smtpd_soft_error_limit and smtpd_error_sleep_time). A
delivery to many unknown users is slowed, never cut off; harvesting a reject list
is.
"""

from __future__ import annotations

import functools
import inspect
import logging
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any, TypeAlias, TypeGuard, TypeVar

from lmtp_core import (
    EndOfData,
    Lhlo,
    MailFrom,
    MessageData,
    MessageRefused,
    Params,
    RcptTo,
    Reply,
    Rset,
    ServerConnection,
)

from ._net import escape

__all__ = [
    "Call",
    "Decision",
    "Envelope",
    "Handler",
    "Session",
    "SessionInfo",
    "Verdicts",
    "inline",
]

log = logging.getLogger("transports.server")

ACCEPT_MAIL = Reply(250, "2.1.0", "Sender OK")
ACCEPT_RCPT = Reply(250, "2.1.5", "Recipient OK")
DELIVERED = Reply(250, "2.0.0", "Delivered")
FAILED = Reply(451, "4.3.0", "Internal error, try again later")
SPOOL_MEMORY = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """The session a handler call belongs to, for a Handler method that declares a
    ``session`` parameter (see Handler). A new one is made when it changes (LHLO,
    STARTTLS); each call gets the one current when the command came."""

    #: Unique among the sessions of this process: "s7".
    id: str
    #: The client: "host:port" or "[v6]:port" over TCP; over a UNIX socket, whose
    #: clients have no name, "unix:" and the listening path.
    peer: str
    #: Whether the session is encrypted (implicit TLS, or after STARTTLS).
    tls: bool = False
    #: The name the client gave in LHLO ("" before it sent one).
    lhlo: str = ""

    @property
    def name(self) -> str:
        """The session as log lines and Envelope.session name it: "[s7] 127.0.0.1:51234"."""
        return f"[{self.id}] {self.peer}"


@dataclass
class Envelope:
    """One message with its envelope, handed to Handler.deliver().

    The message file is the server's: it is closed once deliver() returns (or
    raises), so a handler that needs the message later (a queue, another thread)
    copies it first, with read() or by copying from .message."""

    sender: str = ""
    mail_params: Params = ()
    #: The accepted recipients, in RCPT order (duplicates kept).
    recipients: list[str] = field(default_factory=list)
    rcpt_params: list[Params] = field(default_factory=list)
    #: The message (dot-unstuffed, as received), positioned at its start; closed once
    #: deliver() returns.
    message: IO[bytes] | None = None
    size: int = 0
    lhlo: str = ""
    tls: bool = False
    #: The session it came on, as log lines name it: "[s7] 127.0.0.1:51234".
    session: str = ""

    def read(self) -> bytes:
        """The whole message as bytes (fine for small ones; large ones: use .message)."""
        assert self.message is not None
        self.message.seek(0)
        return self.message.read()


#: A handler's answer to MAIL or RCPT: None accepts, a Reply is sent as it is.
Decision: TypeAlias = Reply | None
#: deliver()'s answer: one Decision for every recipient, or one per recipient in order.
Verdicts: TypeAlias = Reply | Sequence[Reply | None] | None


class Handler:
    """The application's policy. Override what you need; in the asyncio and trio
    drivers each method may also be ``async def``.

    Return None to accept, or a Reply (2xx accepts, 4xx/5xx refuses). deliver() gets
    the complete message and returns one Reply or None per recipient in
    envelope.recipients, or a single Reply or None that applies to all of them.

    An override that declares a parameter named ``session`` (keyword-only is best) is
    also given the SessionInfo of its session as ``session=``: peer, TLS, LHLO name,
    id. Give it a default (``session: SessionInfo | None = None``) so that mypy
    accepts the override; the server always passes one. Overrides without it are
    called as before."""

    def mail_from(self, sender: str, params: Params) -> Decision | Awaitable[Decision]:
        return None

    def rcpt_to(self, recipient: str, params: Params) -> Decision | Awaitable[Decision]:
        return None

    def deliver(self, envelope: Envelope) -> Verdicts | Awaitable[Verdicts]:
        return None


F = TypeVar("F", bound=Callable[..., object])


def inline(method: F) -> F:
    """Mark a synchronous Handler method as quick and never blocking (no I/O, no
    locks held long): the asyncio and trio servers then call it on the event loop
    instead of in a worker thread, which saves a thread hop per call."""
    method.__lmtp_inline__ = True  # type: ignore[attr-defined]
    return method


@dataclass(slots=True)
class Call:
    function: Callable[..., object]
    args: tuple[Any, ...]
    replies: int  # how many replies the result must give
    #: Calling it cannot block (Handler's own method, or async def): no thread needed.
    inline: bool = False
    #: The reply a None (or a None in the list) stands for.
    default: Reply = DELIVERED
    #: The call is deliver(): its replies end the transaction.
    delivers: bool = False


def awaitable(result: object) -> TypeGuard[Awaitable[Any]]:
    """Whether a handler's result must be awaited. The usual results (None, a Reply)
    are told apart first: inspect.isawaitable() runs several isinstance() checks."""
    return result is not None and type(result) is not Reply and inspect.isawaitable(result)


_HANDLER_OWN = (Handler.mail_from, Handler.rcpt_to, Handler.deliver)


def _read_traits(method: Callable[..., object]) -> tuple[bool, bool]:
    """(inline, takes session) of a handler method, or of the function behind it."""
    function = getattr(method, "__func__", method)
    own = any(function is f for f in _HANDLER_OWN)
    marked = getattr(method, "__lmtp_inline__", False)
    inline = own or marked or inspect.iscoroutinefunction(method)
    try:
        parameter = inspect.signature(method).parameters.get("session")
    except (TypeError, ValueError):  # no signature to read (some builtins)
        return inline, False
    return inline, parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


_function_traits = functools.lru_cache(maxsize=256)(_read_traits)


def _traits(method: Callable[..., object]) -> tuple[bool, bool]:
    """(inline, takes session) of a handler's bound method, worked out once per
    function: every session asks, and reading a signature takes microseconds."""
    function = getattr(method, "__func__", None)
    if function is None:  # not a method (a callable object): read every time
        return _read_traits(method)
    return _function_traits(function)


def _shown(function: Callable[..., object]) -> object:
    """The handler method a call runs, for a log line (not the partial binding session=)."""
    return function.func if isinstance(function, functools.partial) else function


class Session:
    def __init__(
        self,
        conn: ServerConnection,
        handler: Handler,
        *,
        session_id: str = "",
        peer: str = "",
        tls: bool = False,
        refusal_soft_limit: int = 10,
        refusal_delay: float = 1.0,
    ) -> None:
        self.conn = conn
        self.handler = handler
        self.info = SessionInfo(session_id, peer, tls)
        self.name = self.info.name  # how log lines name the session
        self.envelope = Envelope(tls=tls, session=self.name)
        self._pending: tuple[str, object] | None = None
        # Bound once: a bound method is made anew at every attribute access.
        methods = (handler.mail_from, handler.rcpt_to, handler.deliver)
        traits = [_traits(method) for method in methods]
        self._inline_mail, self._inline_rcpt, self._inline_deliver = (i for i, _ in traits)
        self._wants_session = [wants for _, wants in traits]
        self._methods: tuple[Callable[..., object], ...] = methods
        self._mail_from: Callable[..., object] = methods[0]
        self._rcpt_to: Callable[..., object] = methods[1]
        self._deliver: Callable[..., object] = methods[2]
        if any(self._wants_session):
            self._bind()
        self._soft_limit, self._delay = refusal_soft_limit, refusal_delay
        self.refused = 0  # recipients refused in this session
        self._owed_delay = 0.0

    def _bind(self) -> None:
        """The methods to call, with session= bound for those that declare it."""
        info = self.info
        self._mail_from, self._rcpt_to, self._deliver = (
            functools.partial(method, session=info) if wants else method
            for method, wants in zip(self._methods, self._wants_session, strict=True)
        )

    def _update(self, **changes: Any) -> None:
        """A new SessionInfo (it is frozen), bound into the calls that follow."""
        self.info = replace(self.info, **changes)
        if any(self._wants_session):
            self._bind()

    def tls_established(self) -> None:
        """The session is encrypted from now on (after STARTTLS)."""
        self.envelope.tls = True
        self._update(tls=True)

    def handle(self, event: object) -> Call | None:
        env = self.envelope
        if isinstance(event, MessageData):
            if env.message is None:
                env.message = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
            env.message.write(event.data)
            env.size += len(event.data)
        elif isinstance(event, MailFrom):
            self._pending = ("mail", event)
            args = (event.address, event.params)
            return Call(self._mail_from, args, 1, self._inline_mail, ACCEPT_MAIL)
        elif isinstance(event, RcptTo):
            self._pending = ("rcpt", event)
            args = (event.address, event.params)
            return Call(self._rcpt_to, args, 1, self._inline_rcpt, ACCEPT_RCPT)
        elif isinstance(event, EndOfData):
            if env.message is None:
                env.message = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
            env.message.seek(0)
            count, inline_ = len(env.recipients), self._inline_deliver
            return Call(self._deliver, (env,), count, inline_, DELIVERED, delivers=True)
        elif isinstance(event, MessageRefused):
            log.info("%s: message refused by the core: %s", self.name, event.reply)
            self.new_transaction()
        elif isinstance(event, Rset | Lhlo):
            if isinstance(event, Lhlo):
                env.lhlo = event.name
                self._update(lhlo=event.name)
            self.new_transaction()
        return None

    def complete(self, call: Call, result: object) -> None:
        """Send the replies for a finished call's result."""
        replies = self._replies(call, result)
        if replies is None:
            log.error(
                "%s: %r returned %r, not a Reply, None or %d of them",
                self.name,
                _shown(call.function),
                result,
                call.replies,
            )
            replies = [FAILED] * call.replies
        self._send(call, replies)

    def failed(self, call: Call, error: BaseException) -> None:
        """The handler raised: 451 4.3.0 for everyone concerned; the text stays here."""
        log.error("%s: handler %r failed", self.name, _shown(call.function), exc_info=error)
        self._send(call, [FAILED] * call.replies)

    def _replies(self, call: Call, result: object) -> list[Reply] | None:
        default = call.default
        if result is None or isinstance(result, Reply):
            return [result or default] * call.replies
        if (
            isinstance(result, Sequence)
            and len(result) == call.replies
            and all(r is None or isinstance(r, Reply) for r in result)
        ):
            return [r or default for r in result]
        return None

    def _send(self, call: Call, replies: list[Reply]) -> None:
        env = self.envelope
        pending, self._pending = self._pending, None
        for reply in replies:
            if 300 <= reply.code < 400:
                log.error("%s: handler gave a 3xx reply; sending 451", self.name)
                replies = [FAILED] * len(replies)
                break
        for reply in replies:
            self.conn.send(reply)
        if pending is not None and not replies[0].is_positive:
            kind, event = pending
            if isinstance(event, RcptTo):
                log.info("%s: %s %s", self.name, escape(event.address), replies[0])
                self.refused += 1
                if self.refused > self._soft_limit:
                    self._owed_delay = self._delay
        elif pending is not None:
            kind, event = pending
            if kind == "mail" and isinstance(event, MailFrom):
                env.sender, env.mail_params = event.address, event.params
            elif isinstance(event, RcptTo):
                env.recipients.append(event.address)
                env.rcpt_params.append(event.params)
        if call.delivers:
            for recipient, reply in zip(env.recipients, replies, strict=True):
                log.info("%s: %s %s", self.name, escape(recipient), reply)
            self.new_transaction()

    def take_delay(self) -> float:
        """Seconds to wait before the next reply goes out (0: none), once."""
        delay, self._owed_delay = self._owed_delay, 0.0
        return delay

    def new_transaction(self) -> None:
        env = self.envelope
        if env.message is not None:
            env.message.close()
        self.envelope = Envelope(lhlo=env.lhlo, tls=env.tls, session=env.session)

    def close(self) -> None:
        self.new_transaction()
