"""Events: one frozen dataclass per wire message, the same class in both directions.

How it works: a server's next_event() returns Lhlo, MailFrom, RcptTo, MessageData,
EndOfData, Rset and Quit as the client sent them, and the application answers with
Reply. A client passes MailFrom and RcptTo to start_transaction() and gets Reply
objects back inside its results. Three outputs are for the driver, not the
application: StartTls (flush, then upgrade the transport), ConnectionClosed (flush,
then close) and the Signal members. Events validate only what would corrupt the wire
(CR or LF in a reply text, a code out of range); address syntax is checked by the
connection, which knows what the peer negotiated.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._errors import LocalProtocolError, ProtocolError
from ._grammar import ENHANCED_CODE, REPLY_TEXT

__all__ = [
    "ConnectionClosed",
    "EndOfData",
    "Lhlo",
    "MailFrom",
    "MessageData",
    "MessageRefused",
    "Params",
    "Quit",
    "RcptTo",
    "Reply",
    "Rset",
    "Signal",
    "StartTls",
]

#: ESMTP parameters as (KEYWORD, value or None) pairs, keywords upper-cased.
Params = tuple[tuple[str, "str | None"], ...]


class Signal(enum.Enum):
    """What next_event() returns when there is no event yet."""

    #: Read from the transport and call receive_data() (receive_eof() at end of file).
    NEED_DATA = "need_data"
    #: Client: call send_body() with the next piece of the message, or end_body().
    NEED_BODY = "need_body"
    #: Server: the application owes a Reply (see ServerConnection.owed_replies).
    PAUSED = "paused"


# True when this module runs compiled by mypyc (the optional accelerated build).
_COMPILED = not __file__.endswith(".py")


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: a code, an optional enhanced status code and its text.

    ``text`` holds one line per reply line, separated by newlines. The enhanced code
    (RFC 3463, e.g. "2.1.5") is kept apart from the text: the writer puts it at the
    start of every line, and the reader removes it from every line that repeats it.
    """

    code: int
    enhanced: str | None = None
    text: str = ""

    @classmethod
    def _parsed(cls, code: int, enhanced: str | None, text: str) -> Reply:
        """A Reply from what the reader already checked: the grammar that parsed it
        is at least as strict as __post_init__, which is skipped (h11 builds its events
        from parsed input the same way). Not for outside use."""
        if _COMPILED:  # pragma: no cover  (runs in nox -s compiled, not measured)
            # A class compiled by mypyc cannot be made by object.__new__; there the
            # checks of __post_init__ run as native code and cost little.
            return cls(code, enhanced, text)
        reply = object.__new__(cls)
        setattr_ = object.__setattr__
        setattr_(reply, "code", code)
        setattr_(reply, "enhanced", enhanced)
        setattr_(reply, "text", text)
        return reply

    def __post_init__(self) -> None:
        code = self.code
        if (
            isinstance(code, bool)
            or not isinstance(code, int)
            or not (200 <= code <= 559 and code // 10 % 10 <= 5)
        ):
            # RFC 5321 4.2: Reply-code = %x32-35 %x30-35 %x30-39
            raise LocalProtocolError(f"reply code {code!r} is not a valid reply code")
        if self.enhanced is not None and not (
            isinstance(self.enhanced, str)
            and ENHANCED_CODE.fullmatch(self.enhanced)
            and self.enhanced[0] == str(code)[0]
        ):
            raise LocalProtocolError(f"enhanced status {self.enhanced!r} does not fit code {code}")
        if not isinstance(self.text, str) or not REPLY_TEXT.fullmatch(self.text.replace("\n", " ")):
            raise LocalProtocolError(
                "reply text must be printable (tabs allowed, no control characters), lines "
                "separated by \\n"
            )

    @property
    def lines(self) -> tuple[str, ...]:
        return tuple(self.text.split("\n"))

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        head = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
        return head + self.text.replace("\n", " / ")


@dataclass(frozen=True, slots=True)
class Lhlo:
    """LHLO: the client names itself (RFC 2033 4.1)."""

    name: str


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM: the reverse path ("" for the null sender <>) and its parameters."""

    address: str
    params: Params = ()

    def param(self, keyword: str) -> str | None:
        return _param(self.params, keyword)


@dataclass(frozen=True, slots=True)
class RcptTo:
    """RCPT TO: one recipient and its parameters (NOTIFY=, ORCPT= with DSN)."""

    address: str
    params: Params = ()

    def param(self, keyword: str) -> str | None:
        return _param(self.params, keyword)


def _param(params: Params, keyword: str) -> str | None:
    keyword = keyword.upper()
    for key, value in params:
        if key == keyword:
            return value
    return None


@dataclass(frozen=True, slots=True)
class MessageData:
    """A piece of the message body, decoded (dot-unstuffed), in order."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfData:
    """The message is complete. The server owes one Reply per accepted recipient."""


@dataclass(frozen=True, slots=True)
class MessageRefused:
    """The core refused the message after its end (too large, a bare CR or LF, an
    over-long line) and has queued ``reply`` once per accepted recipient. Drop
    every MessageData of this transaction."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class Rset:
    """RSET: forget the transaction in progress. (A new LHLO and STARTTLS forget it
    too; they come as Lhlo and StartTls, without an Rset.)"""


@dataclass(frozen=True, slots=True)
class Quit:
    """QUIT; the 221 is queued, and ConnectionClosed follows."""


@dataclass(frozen=True, slots=True)
class StartTls:
    """Driver: write data_to_send(), start TLS on the transport, then call
    tls_established(). Until then the connection accepts no bytes."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """Driver: write data_to_send(), then close the transport. The session is over:
    ``reason`` says why, with the server's ``reply`` or the ``error`` if any."""

    reason: str
    reply: Reply | None = None
    error: ProtocolError | None = None
