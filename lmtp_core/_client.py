"""The client role: greeting, LHLO, STARTTLS, then any number of transactions.

How it works. The connection keeps a queue of what each expected reply answers
(_Await: LHLO, MAIL, RCPT i, DATA, one BDAT chunk, one final reply per accepted
recipient, ...), in the order the commands were written. next_event() pops replies off
the receive buffer and applies each to the head of that queue, so pairing is purely
positional however the replies were split across reads. What a reply does is one
lookup in _REPLIES, the table at the end of this module: for each thing awaited, the
codes it may get and the method each one runs. A code it may not get (a 3xx but 354 to
DATA, a 2xx to DATA) is a RemoteProtocolError; in a transaction a 421 settles what it
answers, then everyone else as if the connection had ended. Within a transaction,
_Step names what the client writes next (the envelope, the body asked for, chunks left,
the end of data queued, then handed out, an RSET); ClientState is what a driver sees.

A reply can only answer something already written, so the client also notes, with
every receive_data(), how many replies were due when those bytes arrived (one per
command data_to_send() has handed out; any number once the end of data is out). In a
transaction, bytes left in the buffer after the last reply due at their arrival answer
nothing sent yet: paired with the next command or the body they would shift every
outcome by one (a false DELIVERED), so the client closes (RemoteProtocolError) before
writing what they would seem to answer. A 421 is exempt, as the server may say it is
closing at any time; a driver must write data_to_send() before it reads, as
next_event() says.

With PIPELINING, MAIL, every RCPT and DATA (or the first BDAT chunk) go out as one
write; without it, one command waits for the previous reply. The body is asked for
with Signal.NEED_BODY only after 354 (DATA), or at once for the first BDAT chunk; later
BDAT chunks each wait for the previous chunk's reply, so a refused transaction costs
at most one chunk.

When the reader raises RemoteProtocolError, or the driver reports end of file, an
abort or a failed write, the transaction in progress is settled by Transaction.lost()
and returned as a TransactionResult, then ConnectionClosed; the client never raises for
the peer's faults. A 421 reply settles things the same way, since the server is closing.
Whether the end of data may have reached the server decides UNKNOWN against TEMPORARY:
it counts as written once data_to_send() handed it out (END_SENT), unless send_failed()
then says that very write failed.

For the driver's deadlines: `phase` names what is awaited (DATA_END as soon as the end
of data is out, whatever reply comes first), and `replies_received` grows with every
reply, so a driver restarts a phase's deadline on progress and on nothing else.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from ._body import BodyEncoder, LongLines
from ._buffer import ReceiveBuffer
from ._delivery import Transaction, TransactionResult
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import ConnectionClosed, MailFrom, Params, RcptTo, Reply, Signal, StartTls
from ._grammar import (
    ESMTP_KEYWORD,
    ESMTP_VALUE,
    LHLO_DOMAIN,
    MAILBOX,
    MAILBOX_UTF8,
    MAX_LOCAL_PART,
    MAX_PATH,
)
from ._limits import Limits
from ._readers import ReplyReader
from ._writers import write_params

__all__ = ["Capabilities", "ClientConnection", "ClientState", "Phase", "Ready"]


class ClientState(enum.Enum):
    CONNECTING = "connecting"  # greeting, LHLO and STARTTLS are under way
    TLS_HANDSHAKE = "tls_handshake"  # the driver is starting TLS
    READY = "ready"  # idle: start_transaction() or quit() may be called
    TRANSACTION = "transaction"  # its finer states are the _Step below
    CLOSING = "closing"  # QUIT sent, waiting for its reply
    CLOSED = "closed"


class Phase(enum.Enum):
    """What the client is waiting for, named after RFC 5321 4.5.3.2's timeouts, so
    that a driver can look up a deadline without knowing the protocol."""

    GREETING = "greeting"
    LHLO = "lhlo"
    STARTTLS = "starttls"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA_INIT = "data_init"
    DATA_BLOCK = "data_block"
    DATA_END = "data_end"
    COMMAND = "command"  # RSET, QUIT


class _Await(enum.IntEnum):  # an int's hash: _REPLIES and _PHASE look these up per reply
    """What a reply due answers: the rows of _REPLIES."""

    GREETING = enum.auto()
    LHLO = enum.auto()
    STARTTLS = enum.auto()
    MAIL = enum.auto()
    RCPT = enum.auto()
    DATA = enum.auto()
    BDAT = enum.auto()  # a chunk before the last
    BDAT_LAST = enum.auto()  # the last chunk: its reply is the first recipient's final one
    FINAL = enum.auto()  # an accepted recipient's reply after the data
    RSET = enum.auto()
    QUIT = enum.auto()


class _Step(enum.IntEnum):  # an int's hash: the sets below are looked up per event
    """A transaction's finer state (ClientState.TRANSACTION): what it writes next. The
    queue of _Await says what the replies still due answer. How each state is reached:

        ENVELOPE    start_transaction() (but for pipelined BDAT)
        HELD        start_transaction() with PIPELINING and BDAT
        BODY        354 to DATA; BDAT without PIPELINING: the last RCPT reply, someone
                    accepted; HELD: next_event() wrote the envelope and a full chunk
        HELD_ENDED  HELD: end_body()
        ENDED       BDAT: end_body(); HELD_ENDED: the first of several chunks written
        END_QUEUED  DATA: end_body(); BDAT: next_event() wrote the last chunk
        END_SENT    END_QUEUED: data_to_send() handed it out
        RSET        the outcomes are in and the server holds a transaction (END_QUEUED
                    stays so, RSET queued behind it, when a server answers early)
        NONE        the transaction ended, or the connection did

    With BDAT, next_event() writes a chunk once it is full (or the body complete) and
    no other reply is due, the first one at once; so each waits for the previous reply.
    """

    NONE = enum.auto()  # no transaction
    ENVELOPE = enum.auto()  # MAIL, RCPT, DATA: all out with PIPELINING, else one per reply
    HELD = enum.auto()  # the body is asked for; the envelope waits for the first BDAT chunk
    BODY = enum.auto()  # the body is asked for (Signal.NEED_BODY)
    HELD_ENDED = enum.auto()  # HELD, the body complete: envelope and first chunk go together
    ENDED = enum.auto()  # BDAT, the body complete: chunks of it are left to write
    END_QUEUED = enum.auto()  # the end of data is queued, withdrawn if the connection ends
    END_SENT = enum.auto()  # the end of data was handed out: the replies after it are due
    RSET = enum.auto()  # the outcomes are in; RSET is queued or awaits its reply


# (Final, here and below: a compiled build reads them as C statics, not module globals.)
_ASKING: Final = frozenset({_Step.HELD, _Step.BODY})  # send_body(), end_body() may be called
# The body is not all out: next_event() asks for it (Signal.NEED_BODY) or writes a chunk.
_IN_BODY: Final = frozenset({_Step.HELD, _Step.BODY, _Step.HELD_ENDED, _Step.ENDED})
_HOLDING: Final = frozenset({_Step.HELD, _Step.HELD_ENDED})  # the envelope is not out yet
_AT_END: Final = frozenset({_Step.END_QUEUED, _Step.END_SENT})  # every reply waits on it

# Replies due once the end of data is out: one per accepted recipient, not known yet.
# (Below 2**62, so that a compiled build keeps it an unboxed int.)
_ANY: Final = 1 << 60

# What is awaited once the end of data is out (the last thing awaited until then).
_AFTER_DATA: Final = frozenset({_Await.FINAL, _Await.BDAT_LAST})

_PHASE: Final = {
    _Await.GREETING: Phase.GREETING,
    _Await.LHLO: Phase.LHLO,
    _Await.STARTTLS: Phase.STARTTLS,
    _Await.MAIL: Phase.MAIL,
    _Await.RCPT: Phase.RCPT,
    _Await.DATA: Phase.DATA_INIT,
    _Await.BDAT: Phase.DATA_BLOCK,
    _Await.BDAT_LAST: Phase.DATA_END,
    _Await.FINAL: Phase.DATA_END,
    _Await.RSET: Phase.COMMAND,
    _Await.QUIT: Phase.COMMAND,
}


def _number(value: str | None) -> int | None:
    """A positive decimal limit from an LHLO keyword's value, or None (0 is no limit)."""
    if not value or not (value.isascii() and value.isdigit()) or len(value) > 18:
        return None
    return int(value) or None


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The LHLO reply: the server's name and its extensions with their parameters."""

    server: str
    extensions: tuple[tuple[str, str], ...]
    #: keyword -> its text, the first of each (looked up for every transaction).
    _index: dict[str, str] = field(init=False, repr=False, compare=False, hash=False)
    _size: int | None = field(init=False, repr=False, compare=False, hash=False)
    _rcptmax: int | None = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        index: dict[str, str] = {}
        for key, value in self.extensions:
            index.setdefault(key.upper(), value)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_size", _number(index.get("SIZE")))
        rcptmax = None
        for item in index.get("LIMITS", "").split():
            name, _, value = item.partition("=")
            if name.upper() == "RCPTMAX":
                rcptmax = _number(value)
                break
        object.__setattr__(self, "_rcptmax", rcptmax)

    def __contains__(self, keyword: object) -> bool:
        return isinstance(keyword, str) and keyword.upper() in self._index

    def param(self, keyword: str) -> str | None:
        """The text after the keyword ("" if none), or None if it was not offered."""
        return self._index.get(keyword.upper())

    @property
    def size(self) -> int | None:
        """The SIZE limit in octets, or None when none is given (RFC 1870: 0 is none)."""
        return self._size

    @property
    def rcptmax(self) -> int | None:
        """The most recipients per transaction (RFC 9422 LIMITS RCPTMAX=), or None."""
        return self._rcptmax

    @classmethod
    def from_reply(cls, reply: Reply) -> Capabilities:
        first, *rest = reply.lines
        extensions = []
        for line in rest:
            keyword, _, value = line.strip().partition(" ")
            if ESMTP_KEYWORD.fullmatch(keyword):
                extensions.append((keyword.upper(), value.strip()))
        return cls(first.partition(" ")[0], tuple(extensions))


@dataclass(frozen=True, slots=True)
class Ready:
    """The session is open (greeting, LHLO and any STARTTLS done): start a transaction."""

    capabilities: Capabilities


# Which extension each MAIL/RCPT parameter needs (RFC 1870, 6152, 3030, 6531, 3461).
_PARAM_NEEDS = {
    "SIZE": "SIZE",
    "SMTPUTF8": "SMTPUTF8",
    "RET": "DSN",
    "ENVID": "DSN",
    "NOTIFY": "DSN",
    "ORCPT": "DSN",
}
# Parameters that must carry a value (RFC 1870, 6152, 3461); SMTPUTF8 takes none.
_VALUED = frozenset({"SIZE", "BODY", "RET", "ENVID", "NOTIFY", "ORCPT"})
_BODY_NEEDS = {"7BIT": None, "8BITMIME": "8BITMIME", "BINARYMIME": "BINARYMIME"}


ClientEvent = Ready | TransactionResult | StartTls | ConnectionClosed | Signal


# Addresses already found valid (one set a role): a delivery checks each address before
# connecting and again in start_transaction(), and the same recipients recur. Bounded:
# emptied when full. A pure memo of a pure function.
_VALID: dict[str, set[str]] = {"sender": set(), "recipient": set()}
_VALID_MAX = 4096


def _check_address(address: str, what: str) -> None:
    """A valid RFC 5321 (or, beyond ASCII, RFC 6531) mailbox within the length limits of
    RFC 5321 4.5.3.1; "" is the null sender. Whatever passes cannot break a command."""
    valid = _VALID[what]
    if type(address) is str and address in valid:
        return
    if not isinstance(address, str):
        raise LocalProtocolError(f"{what} must be a str, not {type(address).__name__}")
    if address == "" and what == "sender":
        return
    match = (MAILBOX if address.isascii() else MAILBOX_UTF8).fullmatch(address)
    if match is None:
        raise LocalProtocolError(f"invalid {what} address {address!r}")
    # The path limit (256 with "<>") is the tighter one for the domain (255).
    if len(match["local"].encode()) > MAX_LOCAL_PART or len(address.encode()) + 2 > MAX_PATH:
        raise LocalProtocolError(f"{what} {address!r} is over the RFC 5321 4.5.3.1 length limits")
    if len(valid) >= _VALID_MAX:
        valid.clear()
    valid.add(address)


def _check_params(params: Params) -> None:
    """Parameters that can be written at all (misuse otherwise, whatever the server)."""
    for key, value in params:
        if not ESMTP_KEYWORD.fullmatch(key):
            raise LocalProtocolError(f"invalid parameter keyword {key!r}")
        if value is not None and not ESMTP_VALUE.fullmatch(value):
            raise LocalProtocolError(f"invalid value for parameter {key}: {value!r}")
        keyword = key.upper()
        if value is None and keyword in _VALUED:
            raise LocalProtocolError(f"parameter {key} needs a value")
        if value is not None and keyword == "SMTPUTF8":
            raise LocalProtocolError("parameter SMTPUTF8 takes no value")


def _unoffered(params: Params, caps: Capabilities) -> str | None:
    """Why these parameters cannot go to this server, or None if they can."""
    for key, value in params:
        keyword = key.upper()
        if keyword == "BODY":
            needs = _BODY_NEEDS.get((value or "").upper())
        else:
            needs = _PARAM_NEEDS.get(keyword, keyword)
        if needs is not None and needs not in caps:
            return f"parameter {key} needs {needs}, which the server did not offer"
    return None


def _checked_envelope(
    sender: str | MailFrom, recipients: Sequence[str | RcptTo]
) -> tuple[MailFrom, tuple[RcptTo, ...], dict[str, str | None], str]:
    """The envelope as events, its MAIL parameters by keyword and its BODY type, once
    all that is misuse whatever the server (LocalProtocolError) was ruled out."""
    mail = sender if isinstance(sender, MailFrom) else MailFrom(sender)
    rcpts = tuple(r if isinstance(r, RcptTo) else RcptTo(r) for r in recipients)
    if not rcpts:
        raise LocalProtocolError("a transaction needs at least one recipient")
    _check_address(mail.address, "sender")
    if mail.params:
        _check_params(mail.params)
    for rcpt in rcpts:
        _check_address(rcpt.address, "recipient")
        if rcpt.params:
            _check_params(rcpt.params)
    params = {key.upper(): value for key, value in mail.params}
    body = (params.get("BODY") or "7BIT").upper()
    if body not in _BODY_NEEDS:
        raise LocalProtocolError(f"unknown BODY type {body!r}")
    return mail, rcpts, params, body


def _refusal(
    mail: MailFrom,
    caps: Capabilities,
    *,
    size: int | None,
    body: str,
    eight_bit: bool | None,
    nul: bool | None,
) -> str | None:
    """Why this server cannot take the message at all (see start_transaction()), or
    None. `body` is the BODY type that will be declared."""
    if not mail.address.isascii() and "SMTPUTF8" not in caps:
        return "the sender's address needs SMTPUTF8, which the server did not offer"
    if mail.params and (why := _unoffered(mail.params, caps)) is not None:
        return why
    if size is not None and caps.size is not None and size > caps.size:
        return f"the message ({size} octets) is over the server's SIZE limit ({caps.size})"
    if eight_bit and body == "7BIT":
        return (
            "the message has 8-bit bytes but BODY=7BIT was declared"
            if "8BITMIME" in caps
            else "the message has 8-bit bytes and the server did not offer 8BITMIME"
        )
    if body == "BINARYMIME":
        return (
            None
            if "CHUNKING" in caps
            else "BODY=BINARYMIME needs CHUNKING, which the server did not offer"
        )
    return "the message has NUL bytes, which only BODY=BINARYMIME can carry" if nul else None


class ClientConnection:
    """The sans-I/O LMTP client. See the module comment for how it works."""

    def __init__(
        self,
        *,
        lhlo_name: str = "localhost",
        require_starttls: bool = False,
        chunking: bool = True,
        long_lines: LongLines = LongLines.ERROR,
        limits: Limits | None = None,
        trace: bool = False,
    ) -> None:
        """``trace=True`` records a transcript of command lines and replies (never
        body bytes) for take_trace()."""
        if not LHLO_DOMAIN.fullmatch(lhlo_name):
            raise LocalProtocolError(f"LHLO name {lhlo_name!r} is not a domain or address literal")
        self._name = lhlo_name
        self._require_starttls = require_starttls
        self._tls = False
        self._chunking = chunking
        self._long_lines = long_lines
        self._limits = limits or Limits()
        self._buffer = ReceiveBuffer()
        self._reader = ReplyReader(self._limits)
        self._out: list[bytes] = []  # pieces to write, joined by data_to_send()
        self._awaiting: deque[_Await] = deque([_Await.GREETING])
        self._events: deque[ClientEvent] = deque()
        self.state = ClientState.CONNECTING
        self.capabilities: Capabilities | None = None
        # The transaction in progress, and how its commands and body go out.
        self._txn: Transaction | None = None
        self._encoder: BodyEncoder | None = None
        self._step = _Step.NONE
        self._rcpt_lines: list[str] = []  # without PIPELINING: sent one reply at a time
        self._held = ""  # HELD: the envelope, to go out with the first chunk
        self._bdat: bytearray | None = None  # BDAT: the body gathered for the next chunk
        self.replies_received = 0
        self._trace: list[tuple[str, str]] | None = [] if trace else None
        # Replies ahead of their command (see the module comment): how many replies are
        # due (the greeting from the start), and per stretch of received bytes, its end
        # in the stream and how many replies were due when it arrived.
        self._due = 1
        self._received = 0  # octets received so far
        self._arrivals: deque[tuple[int, int]] = deque()

    # ---- driver side ---------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes read from the transport (b"" is allowed and changes nothing)."""
        if self.state is ClientState.CLOSED or not data:
            return
        if self.state is ClientState.TLS_HANDSHAKE:
            raise LocalProtocolError("receive_data() during the TLS handshake")
        rx, arrivals, due = self._buffer.data, self._arrivals, self._due
        before = len(rx)
        if not before:
            arrivals.clear()  # all taken: only the stretches still in the buffer matter
        self._buffer.feed(data)
        self._received = end = self._received + len(rx) - before
        if arrivals and arrivals[-1][1] == due:  # the same replies due: one stretch
            arrivals[-1] = (end, due)
        else:
            arrivals.append((end, due))

    def receive_eof(self) -> None:
        """The server closed the connection: settle what is pending."""
        if self.state is not ClientState.CLOSED:
            self._lose("the server closed the connection")

    def abort(self, reason: str) -> None:
        """The transport failed or a deadline passed: settle what is pending and close.
        Everything data_to_send() returned so far counts as written."""
        if self.state is not ClientState.CLOSED:
            self._lose(reason)

    def send_failed(self, reason: str) -> None:
        """Writing the last data_to_send() result failed (or timed out): as abort(),
        except that what that write carried counts as never sent. A driver that cannot
        tell whether its writes went out (buffered I/O) calls abort() instead."""
        if self.state is not ClientState.CLOSED:
            txn = self._txn
            # END_SENT: that write carried the end of data (nothing is written after it
            # but an RSET), unless a final reply already read proves it arrived.
            if self._step is _Step.END_SENT and txn is not None and not txn.finals:
                txn.end_sent = False
            self._lose(reason)

    def tls_established(self) -> None:
        """The driver finished the TLS handshake that StartTls asked for."""
        if self.state is not ClientState.TLS_HANDSHAKE:
            raise LocalProtocolError("tls_established() without a StartTls")
        self._tls = True
        self.capabilities = None  # RFC 3207 4.2: forget what was learnt in the clear
        self.state = ClientState.CONNECTING
        self._command(f"LHLO {self._name}", _Await.LHLO)

    def take_trace(self) -> list[tuple[str, str]]:
        """The transcript since the last call: ("C", command) and ("S", reply) pairs."""
        if self._trace is None:
            return []
        trace, self._trace = self._trace, []
        return trace

    def data_to_send(self) -> bytes:
        """Bytes to write now (possibly b"")."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)  # one piece: no copy at all
        out.clear()
        # Every reply queued is now due, but those to an envelope held back for the first
        # BDAT chunk; while the replies after the data are awaited, one per accepted
        # recipient: any number (until the transaction ends, where the surplus is caught).
        awaiting, txn, step = self._awaiting, self._txn, self._step
        if awaiting and awaiting[-1] in _AFTER_DATA:  # the end of data is out
            self._due = _ANY
        else:
            held = 1 + len(txn.sent) if step in _HOLDING and txn is not None else 0
            self._due = self.replies_received + len(awaiting) - held
        if step is _Step.END_QUEUED:
            self._step = _Step.END_SENT
            assert txn is not None  # END_QUEUED is a transaction's
            txn.end_sent = True
        return data

    @property
    def reusable(self) -> bool:
        """True when a new transaction may start on this connection now."""
        return self.state is ClientState.READY

    @property
    def phase(self) -> Phase:
        """What the client waits for now, for the driver's deadline. Once the end of
        data is out every reply still due may wait for the message to be stored (a
        server may hold back even its MAIL and RCPT replies until then): DATA_END."""
        if self._awaiting:
            head = self._awaiting[0]
            if self._step in _AT_END and head is not _Await.RSET:
                return Phase.DATA_END
            return _PHASE[head]
        return Phase.DATA_BLOCK if self._step in _IN_BODY else Phase.COMMAND

    def next_event(self) -> ClientEvent:
        """Ready, TransactionResult, StartTls, ConnectionClosed or a Signal.

        Signal.NEED_DATA: read and call receive_data(). Signal.NEED_BODY: call
        send_body() or end_body(). Write data_to_send() before waiting on either.
        Never raises for anything the server does; LocalProtocolError if called
        after ConnectionClosed or when nothing is awaited (READY)."""
        while not self._events:
            if self.state is ClientState.CLOSED:
                raise LocalProtocolError("next_event() after ConnectionClosed")
            step = self._step
            if step in _IN_BODY:
                bdat = self._bdat
                if bdat is None or (step in _ASKING and len(bdat) < self._limits.bdat_chunk):
                    return Signal.NEED_BODY
                if step in _HOLDING or not self._awaiting:
                    self._flush_bdat()
                    continue
                # a full chunk is waiting for the previous chunk's reply: read it
            if not self._awaiting:
                if self._buffer:
                    self._unsolicited()
                    continue
                raise LocalProtocolError(
                    f"next_event() with nothing to wait for ({self.state.name})"
                )
            try:
                reply = self._reader.read(self._buffer)
            except RemoteProtocolError as exc:
                self._lose(str(exc), error=exc)
                continue
            if reply is None:
                return Signal.NEED_DATA
            self._on_reply(reply)
            if (
                self._due != _ANY
                and self._buffer.data
                and self.state is ClientState.TRANSACTION
                and self._ahead()
            ):
                self._out.clear()  # what they would seem to answer must not go out
                self._unsolicited()
        return self._events.popleft()

    # ---- application side ----------------------------------------------------------

    def start_transaction(
        self,
        sender: str | MailFrom,
        recipients: Sequence[str | RcptTo],
        *,
        size: int | None = None,
        eight_bit: bool | None = None,
        nul: bool | None = None,
    ) -> None:
        """Begin delivering one message. Nothing is queued if this raises.

        ``size`` (octets, if known) is sent as SIZE= when offered. ``eight_bit``: True
        if the body has 8-bit bytes, False if not, None if unknown (BODY=8BITMIME is
        then declared whenever the server offers it, and otherwise the body is checked
        as it streams). ``nul``: True if the body has NUL bytes, which only
        BODY=BINARYMIME carries (None: checked as it streams). SMTPUTF8 is added when
        an address needs it.

        Raises LocalProtocolError for misuse that no server changes (the wrong state,
        no recipients, an invalid address, parameter or BODY value, a command line over
        the limit). What this server cannot take is an outcome instead: the next event
        is the TransactionResult at once, every recipient PERMANENT at Stage.LOCAL with
        the reason, when the message cannot be carried (over SIZE, 8-bit data without
        8BITMIME, NUL without BINARYMIME, a sender needing SMTPUTF8 or a MAIL parameter
        not offered); a recipient needing what is not offered (SMTPUTF8, a parameter)
        alone is refused that way, and the others go ahead."""
        if self.state is not ClientState.READY:
            raise LocalProtocolError(f"start_transaction() in state {self.state.name}")
        caps = self.capabilities
        assert caps is not None
        mail, rcpts, params, body = _checked_envelope(sender, recipients)
        txn = Transaction(mail, rcpts)
        if self._buffer:  # the server spoke while idle: a reply to nothing we sent
            self._txn = txn
            self.state = ClientState.TRANSACTION
            return self._unsolicited()

        # What this server cannot take: refused here, as outcomes.
        if "BODY" not in params and eight_bit is not False and "8BITMIME" in caps:
            params["BODY"] = body = "8BITMIME"
        refusal = _refusal(mail, caps, size=size, body=body, eight_bit=eight_bit, nul=nul)
        if refusal is not None:
            txn.refuse(refusal)
        utf8 = "SMTPUTF8" in caps
        for index, rcpt in enumerate(rcpts):
            why = _unoffered(rcpt.params, caps) if rcpt.params else None
            if not utf8 and not rcpt.address.isascii():
                why = "this address needs SMTPUTF8, which the server did not offer"
            if why is not None:
                txn.refuse(why, [index])
        if not txn.sent:
            self._events.append(txn.result())  # nothing to send: still READY
            return None

        if not mail.address.isascii() or not all(rcpts[i].address.isascii() for i in txn.sent):
            params.setdefault("SMTPUTF8", None)
        if size is not None and "SIZE" in caps and "SIZE" not in params:
            params["SIZE"] = str(size)
        txn.mail = mail = MailFrom(mail.address, tuple(params.items()))
        command_line = self._command_line
        lines = [command_line(f"MAIL FROM:<{mail.address}>{write_params(mail.params)}")]
        for index in txn.sent:
            rcpt = rcpts[index]
            tail = write_params(rcpt.params) if rcpt.params else ""
            lines.append(command_line(f"RCPT TO:<{rcpt.address}>{tail}"))
        self._begin(txn, caps, lines, body)  # everything is valid: commit

    def send_body(self, data: bytes | bytearray | memoryview) -> None:
        """The next piece of the message, after Signal.NEED_BODY. A body this session
        cannot carry (an 8-bit byte without 8BITMIME, NUL without BINARYMIME, an
        over-long line) is refused here: the recipients not yet decided become
        PERMANENT at Stage.LOCAL and the connection is closed, since the part already
        written cannot be taken back (next_event() gives the result, then
        ConnectionClosed)."""
        if self._step not in _ASKING:
            raise LocalProtocolError("send_body() when the body was not asked for")
        assert self._encoder is not None
        try:
            encoded = self._encoder.encode(bytes(data))
        except LocalProtocolError as exc:
            return self._refuse_body(str(exc))
        if self._bdat is None:
            if encoded:
                self._out.append(encoded)
        else:
            self._bdat += encoded

    def end_body(self) -> None:
        """The message is complete."""
        step = self._step
        if step not in _ASKING:
            raise LocalProtocolError("end_body() when the body was not asked for")
        assert self._encoder is not None
        try:
            tail = self._encoder.finish()
        except LocalProtocolError as exc:
            return self._refuse_body(str(exc))
        if self._bdat is None:
            self._out.append(tail)  # never empty for DATA: at least ".\r\n"
            self._step = _Step.END_QUEUED
            self._awaiting.append(_Await.FINAL)
        else:
            self._bdat += tail
            self._step = _Step.HELD_ENDED if step is _Step.HELD else _Step.ENDED

    def quit(self) -> None:
        """Say QUIT; next_event() then gives ConnectionClosed once the server answered."""
        if self.state is not ClientState.READY:
            raise LocalProtocolError(f"quit() in state {self.state.name}")
        self.state = ClientState.CLOSING
        self._command("QUIT", _Await.QUIT)

    # ---- commands ------------------------------------------------------------------

    def _begin(self, txn: Transaction, caps: Capabilities, lines: list[str], body: str) -> None:
        """Start `txn`, whose command lines are all valid: with PIPELINING the envelope
        goes out at once (then DATA, or held for the first BDAT chunk), without it the
        MAIL command."""
        binary = body == "BINARYMIME"
        use_bdat = binary or (self._chunking and "CHUNKING" in caps)
        self._txn = txn
        self.state = ClientState.TRANSACTION
        self._encoder = BodyEncoder(
            dot_stuff=not use_bdat,
            binary=binary,
            allow_8bit=body != "7BIT",
            max_line=None if self._long_lines is LongLines.ALLOW else self._limits.text_line - 2,
        )
        self._bdat = bytearray() if use_bdat else None
        if "PIPELINING" not in caps:
            self._step = _Step.ENVELOPE
            self._rcpt_lines = lines[:0:-1]  # reversed, so pop() gives them in order
            self._command(lines[0], _Await.MAIL)
        elif use_bdat:
            self._step = _Step.HELD
            self._awaiting.extend([_Await.MAIL] + [_Await.RCPT] * len(txn.sent))
            self._held = "".join(line + "\r\n" for line in lines)
        else:
            self._step = _Step.ENVELOPE
            self._awaiting.extend([_Await.MAIL] + [_Await.RCPT] * len(txn.sent))
            self._command("".join(line + "\r\n" for line in lines) + "DATA", _Await.DATA)

    def _command(self, line: str, awaiting: _Await) -> None:
        self._out.append((line + "\r\n").encode("utf-8"))
        self._awaiting.append(awaiting)
        self._note("C", line)

    def _note(self, side: str, text: str) -> None:
        if self._trace is not None:
            self._trace.extend((side, line) for line in text.split("\r\n") if line)

    @staticmethod
    def check_envelope(sender: str | MailFrom, recipients: Sequence[str | RcptTo]) -> None:
        """The checks that need no server (address syntax and length, at least one
        recipient): a driver calls this before it connects. start_transaction()
        repeats them. A str given as the recipients (one address, not a list of them)
        is a TypeError, since mypy cannot catch it: a str is a Sequence[str] too."""
        _check_address(sender.address if isinstance(sender, MailFrom) else sender, "sender")
        if isinstance(recipients, str):
            raise TypeError(
                f"recipients must be a list of addresses, not a str: pass [{recipients!r}]"
            )
        if not recipients:
            raise LocalProtocolError("a transaction needs at least one recipient")
        for rcpt in recipients:
            _check_address(rcpt.address if isinstance(rcpt, RcptTo) else rcpt, "recipient")

    def _command_line(self, line: str) -> str:
        if (len(line) if line.isascii() else len(line.encode())) + 2 > self._limits.command_line:
            raise LocalProtocolError(f"command longer than {self._limits.command_line} octets")
        return line

    def _refuse_body(self, reason: str) -> None:
        txn = self._txn
        assert txn is not None
        txn.refuse(reason, [i for i, slot in enumerate(txn.slots) if slot is None])
        self._out.clear()  # a body that will never be ended: do not send more of it
        self._lose(f"message refused locally: {reason}")

    def _flush_bdat(self) -> None:
        """Write the next BDAT chunk, after the held-back envelope if any: HELD becomes
        BODY, HELD_ENDED and ENDED become ENDED or, with the last chunk, END_QUEUED."""
        bdat, step = self._bdat, self._step
        assert bdat is not None and self._txn is not None
        size = self._limits.bdat_chunk
        ended = step not in _ASKING
        last = ended and len(bdat) <= size
        chunk = bytes(bdat[:size])
        del bdat[:size]
        head = f"{self._held}BDAT {len(chunk)}{' LAST' if last else ''}\r\n"
        self._held = ""
        self._out.append(head.encode("utf-8"))
        self._note("C", head)
        self._out.append(chunk)
        if last:
            self._step = _Step.END_QUEUED
            self._awaiting.append(_Await.BDAT_LAST)
        else:
            self._step = _Step.ENDED if ended else _Step.BODY
            self._awaiting.append(_Await.BDAT)

    # ---- replies: _REPLIES, at the end of the module, says which method each runs ----

    def _on_reply(self, reply: Reply) -> None:
        """The next reply, applied to what it answers: one lookup in _REPLIES."""
        kind = self._awaiting.popleft()
        self.replies_received += 1
        if self._trace is not None:
            self._trace.append(("S", str(reply)))
        _REPLIES[kind][_COLUMN[reply.code - 200]](self, kind, reply)

    def _greeted(self, kind: _Await, reply: Reply) -> None:
        self._command(f"LHLO {self._name}", _Await.LHLO)

    def _refused(self, kind: _Await, reply: Reply) -> None:
        """The session, LHLO or STARTTLS refused: closed (after QUIT, for STARTTLS)."""
        what = "the session" if kind is _Await.GREETING else kind.name  # LHLO, STARTTLS
        self._close(f"the server refused {what}", reply, quit=kind is _Await.STARTTLS)

    def _hello(self, kind: _Await, reply: Reply) -> None:
        self.capabilities = caps = Capabilities.from_reply(reply)
        if not self._require_starttls or self._tls:
            self._become_ready(Ready(caps))
        elif "STARTTLS" in caps:
            self._command("STARTTLS", _Await.STARTTLS)
        else:
            self._close("STARTTLS is required but the server does not offer it", quit=True)

    def _start_tls(self, kind: _Await, reply: Reply) -> None:
        if self._buffer:
            error = RemoteProtocolError(
                "bytes after the 220 reply to STARTTLS (STARTTLS response injection)"
            )
            return self._lose(str(error), error=error)
        self.state = ClientState.TLS_HANDSHAKE
        self._events.append(StartTls())
        return None

    def _quitted(self, kind: _Await, reply: Reply) -> None:
        self._close("quit", reply)

    def _reset(self, kind: _Await, reply: Reply) -> None:
        self._finish()

    def _reset_closing(self, kind: _Await, reply: Reply) -> None:
        self._finish()
        if self.state is not ClientState.CLOSED:  # (a reply ahead of it closed already)
            self._closing(reply)

    def _mail(self, kind: _Await, reply: Reply) -> None:
        txn = self._txn
        assert txn is not None
        txn.on_mail(reply)
        if self._awaiting:  # with PIPELINING: the rest went out already
            return
        if txn.mail_ok:
            self._command(self._rcpt_lines.pop(), _Await.RCPT)
        else:
            self._finish_transaction(rset=False)

    def _rcpt(self, kind: _Await, reply: Reply) -> None:
        txn = self._txn
        assert txn is not None
        txn.on_rcpt(reply)
        if self._awaiting:  # with PIPELINING: the rest went out already
            return
        if self._rcpt_lines:
            self._command(self._rcpt_lines.pop(), _Await.RCPT)
        elif not txn.accepted:
            self._finish_transaction(rset=True)
        elif self._bdat is None:
            self._command("DATA", _Await.DATA)
        else:
            self._step = _Step.BODY

    def _go_ahead(self, kind: _Await, reply: Reply) -> None:
        """354 to DATA: the body is asked for."""
        txn = self._txn
        assert txn is not None
        if not txn.accepted:
            error = RemoteProtocolError("354 to DATA though no recipient was accepted")
            return self._lose(str(error), error=error)
        self._step = _Step.BODY
        return None

    def _data_refused(self, kind: _Await, reply: Reply) -> None:
        """DATA or a BDAT chunk refused: the message goes to nobody."""
        txn = self._txn
        assert txn is not None
        txn.on_data_failed(reply)
        self._finish_transaction(rset=bool(txn.mail_ok))

    def _chunk_taken(self, kind: _Await, reply: Reply) -> None:
        """A BDAT chunk before the last taken: next_event() writes the next one."""
        txn = self._txn
        assert txn is not None
        if not txn.accepted:  # nobody to deliver to
            self._data_refused(kind, reply)

    def _last_chunk(self, kind: _Await, reply: Reply) -> None:
        txn = self._txn
        assert txn is not None
        if txn.accepted:  # the first recipient's final reply
            self._final(kind, reply)
        else:  # nobody to deliver to: the server answers the chunk once, with a refusal
            self._finish_transaction(rset=bool(txn.mail_ok))

    def _final(self, kind: _Await, reply: Reply) -> None:
        """One reply per accepted recipient after the data, in RCPT order."""
        txn = self._txn
        assert txn is not None
        txn.on_final(reply)
        if txn.finals_due:
            self._awaiting.appendleft(_Await.FINAL)
        else:
            self._finish_transaction(rset=False)

    # A 421 in a transaction: the server is going away. The reply stands for what it
    # answers; nothing more is written, and everyone else is settled as the connection
    # ends.

    def _mail_closing(self, kind: _Await, reply: Reply) -> None:
        assert self._txn is not None
        self._txn.on_mail(reply)
        self._closing(reply)

    def _rcpt_closing(self, kind: _Await, reply: Reply) -> None:
        assert self._txn is not None
        self._txn.on_rcpt(reply)
        self._closing(reply)

    def _data_closing(self, kind: _Await, reply: Reply) -> None:
        assert self._txn is not None
        self._txn.on_data_failed(reply)
        self._closing(reply)

    def _final_closing(self, kind: _Await, reply: Reply) -> None:
        txn = self._txn
        assert txn is not None
        if txn.accepted:  # BDAT LAST when nobody was accepted answers only the chunk
            txn.on_final(reply)
        self._closing(reply)

    def _closing(self, reply: Reply) -> None:
        self._lose("the server is closing the connection", reply=reply)

    def _illegal(self, kind: _Await, reply: Reply) -> None:
        """A reply the command cannot get: the pairing can no longer be trusted."""
        error = RemoteProtocolError(f"a {reply.code} reply cannot answer {kind.name}")
        self._lose(str(error), error=error)

    # ---- how a transaction and the session end ---------------------------------------

    def _become_ready(self, event: Ready | TransactionResult) -> None:
        # More replies than commands means the pairing can no longer be trusted: a
        # session never becomes Ready, and no outcome after the data stands.
        if self._buffer and isinstance(event, Ready):
            return self._unsolicited()
        self.state = ClientState.READY
        self._events.append(event)
        if self._buffer:
            self._unsolicited()
        return None

    def _ahead(self) -> bool:
        """The buffer's next bytes arrived when every reply due was already in (a 421
        aside): they answer nothing written yet."""
        arrivals, consumed = self._arrivals, self._received - len(self._buffer.data)
        while arrivals[0][0] <= consumed:
            arrivals.popleft()
        if arrivals[0][1] > self.replies_received:
            return False
        # A 421, or what may yet become one ("4", "42"): never a delivery, and the server
        # may say it is closing at any time.
        return not b"421".startswith(bytes(self._buffer.data[:3]))

    def _unsolicited(self) -> None:
        error = RemoteProtocolError("reply from the server that answers no command")
        self._lose(str(error), error=error)

    def _finish_transaction(self, *, rset: bool) -> None:
        """Every reply of the transaction is in: it ends, after an RSET if `rset` (the
        server holds a transaction open)."""
        assert not self._awaiting, "a transaction ends only when every reply is in"
        # Every reply due is in: whatever else was received came before anything more
        # (an RSET) was written, whatever its stretch was stamped with.
        if self._due == _ANY:
            received = self._due = self.replies_received
            arrivals = self._arrivals
            for index, (end, due) in enumerate(arrivals):
                arrivals[index] = (end, min(due, received))
        else:
            self._due = self.replies_received
        self._bdat = None
        self._held = ""
        self._rcpt_lines = []
        if not rset:
            return self._finish()
        # An end of data still queued (a server that answered it before it was written)
        # stays END_QUEUED, to be withdrawn if the connection ends before it goes out.
        if self._step is not _Step.END_QUEUED:
            self._step = _Step.RSET
        self._command("RSET", _Await.RSET)
        return None

    def _finish(self) -> None:
        txn = self._txn
        assert txn is not None
        # A reply beyond the last one due, already received: the pairing cannot be
        # trusted. (A 421 is the server saying it is closing, which it may do at any
        # time: that is no extra reply to anything.)
        if self._buffer and not self._buffer.startswith(b"421"):
            txn.distrust("more replies came than were due: the pairing cannot be trusted")
        self._txn = None
        self._encoder = None
        self._step = _Step.NONE
        self._become_ready(txn.result())

    def _close(self, reason: str, reply: Reply | None = None, *, quit: bool = False) -> None:
        if quit:
            self._out.append(b"QUIT\r\n")
            self._note("C", "QUIT")
        self.state = ClientState.CLOSED
        self._awaiting.clear()
        self._events.append(ConnectionClosed(reason, reply))

    def _lose(
        self, reason: str, *, reply: Reply | None = None, error: RemoteProtocolError | None = None
    ) -> None:
        txn = self._txn
        if self._step is _Step.END_QUEUED:  # withdrawn: it must not reach the server now
            self._out.clear()
        if txn is not None:
            txn.lost(reason)
            self._events.append(txn.result())
            self._txn = None
        self.state = ClientState.CLOSED
        self._awaiting.clear()
        self._step = _Step.NONE
        self._events.append(ConnectionClosed(reason, reply, error))


# ---- the reply table ------------------------------------------------------------------

#: What a reply does: a method of ClientConnection, given what the reply answers and the
#: reply.
_Action = Callable[[ClientConnection, _Await, Reply], None]

# The columns of _REPLIES, the reply codes a client tells apart: 220, any other 2xx, 354,
# any other 3xx, 421, and any other 4xx or 5xx.
_READY, _OK, _GO, _INTERIM, _CLOSING, _FAILED = range(6)


def _column(code: int) -> int:
    special = {220: _READY, 354: _GO, 421: _CLOSING}
    return special.get(code, (_OK, _INTERIM, _FAILED, _FAILED)[code // 100 - 2])


#: The column of each code the reader lets through (200 to 559), at code - 200.
_COLUMN: Final = tuple(_column(code) for code in range(200, 600))


def _row(
    *,
    ready: _Action | None = None,
    ok: _Action | None = None,
    go: _Action | None = None,
    closing: _Action | None = None,
    failed: _Action | None = None,
    otherwise: _Action = ClientConnection._illegal,
) -> tuple[_Action, ...]:
    """A row of _REPLIES, its columns in order: `ready` is 220, `ok` any 2xx (220 too,
    unless `ready` is named), `go` 354, `closing` 421, `failed` any other 4xx or 5xx.
    A code not named does `otherwise`: by default, a RemoteProtocolError."""
    ok = ok or otherwise
    return (ready or ok, ok, go or otherwise, otherwise, closing or otherwise, failed or otherwise)


_C = ClientConnection  # (short, for the table)

#: The client, read as a table: for each thing awaited, the reply codes it may get and
#: what each does. Any other code: a RemoteProtocolError (_illegal), but where
#: `otherwise` gives what every code not named does.
_REPLIES: Final[dict[_Await, tuple[_Action, ...]]] = {
    # The session: a refusal closes it (after QUIT, for STARTTLS).
    _Await.GREETING: _row(ready=_C._greeted, otherwise=_C._refused),
    _Await.LHLO: _row(ok=_C._hello, otherwise=_C._refused),
    _Await.STARTTLS: _row(ready=_C._start_tls, otherwise=_C._refused),
    # A transaction: each reply settles outcomes (Transaction); 421 closes (_*_closing).
    _Await.MAIL: _row(ok=_C._mail, failed=_C._mail, closing=_C._mail_closing),
    _Await.RCPT: _row(ok=_C._rcpt, failed=_C._rcpt, closing=_C._rcpt_closing),
    _Await.DATA: _row(go=_C._go_ahead, failed=_C._data_refused, closing=_C._data_closing),
    _Await.BDAT: _row(ok=_C._chunk_taken, failed=_C._data_refused, closing=_C._data_closing),
    _Await.BDAT_LAST: _row(ok=_C._last_chunk, failed=_C._last_chunk, closing=_C._final_closing),
    _Await.FINAL: _row(ok=_C._final, failed=_C._final, closing=_C._final_closing),
    # Whatever the code: the transaction's result (then closed, on 421), or closed.
    _Await.RSET: _row(otherwise=_C._reset, closing=_C._reset_closing),
    _Await.QUIT: _row(otherwise=_C._quitted),
}
