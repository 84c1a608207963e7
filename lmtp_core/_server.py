"""The server role: parse commands, answer the mechanics, hand policy to the application.

How it works. The connection reads one command line at a time (only CRLF ends one; a
line over Limits.command_line is discarded in bounded memory and answered 500 once)
and looks its verb up in _TABLE, the (stage, verb) table below: where the verb is
legal its handler runs (and checks the syntax); anywhere else the table's reply
refuses it and the handler never runs. The stages are the states that read commands,
MAIL split by what decides RCPT, DATA and BDAT (a recipient accepted, BINARYMIME, a
BDAT chunk taken); `state` shows the coarse ServerState. The core answers everything
that is mechanics by itself, in order, into data_to_send(): LHLO and its extensions,
HELO/EHLO (500: LMTP has only LHLO), NOOP, VRFY, RSET, QUIT, syntax (501/555) and
sequence (503) errors, limits (452 too many recipients, 552 too large), STARTTLS.
Policy is the application's: next_event() returns MailFrom or RcptTo and then
Signal.PAUSED until the application send()s its Reply, so replies keep the order of
pipelined commands.

The body (DATA or BDAT) is released as MessageData pieces as it arrives; EndOfData
comes only once the message is whole, and the application then owes exactly one
Reply per accepted recipient (the core counts them; LMTP's rule). If the message
broke a limit or the bare CR/LF policy, the core reads it to its end, queues its own
refusal once per recipient, and returns MessageRefused instead. STARTTLS discards any
bytes pipelined behind it (command injection) and resets the session. More than
Limits.max_errors bad commands earn 421 and ConnectionClosed.

A refused DATA ends the session: the refusal is written and ConnectionClosed follows,
so whatever the client sent after DATA (a body it should have held back until 354) is
never run as commands, however the input was split (RFC 2920 makes DATA the last
command of a group). BDAT needs no such rule: a refused chunk's octets are counted
and consumed. With require_tls, MAIL before TLS gets 530 5.7.0. A server at its
connection limit makes the core with busy=True: the greeting is 421 4.3.2 and the
session ends. close_when_idle() is the server going away: 421 4.3.2 and
ConnectionClosed as soon as no transaction is in progress (at once when none is), so
a transaction in flight may finish first; `idle` says whether one is.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable

from ._body import (
    BareLineEndings,
    BodyEncoder,
    DataDecoder,
    LineEndingCheck,
    LineLengths,
)
from ._buffer import LineTooLong, ReceiveBuffer
from ._errors import LocalProtocolError
from ._events import (
    ConnectionClosed,
    EndOfData,
    Lhlo,
    MailFrom,
    MessageData,
    MessageRefused,
    Params,
    Quit,
    RcptTo,
    Reply,
    Rset,
    Signal,
    StartTls,
)
from ._grammar import (
    BDAT,
    COMMAND_BYTES_OK,
    ESMTP_KEYWORD,
    ESMTP_VALUE,
    LHLO_DOMAIN,
    MAIL_FROM,
    MAILBOX,
    MAILBOX_UTF8,
    MAX_LOCAL_PART,
    MAX_PATH,
    RCPT_TO,
)
from ._limits import Limits
from ._writers import write_reply

__all__ = ["ServerConnection", "ServerState"]


class ServerState(enum.Enum):
    NEED_LHLO = "need_lhlo"
    READY = "ready"  # after LHLO, no transaction
    MAIL = "mail"  # MAIL accepted: RCPT, DATA, BDAT
    DATA = "data"  # reading a DATA body
    BDAT = "bdat"  # reading a BDAT chunk
    TLS_HANDSHAKE = "tls_handshake"
    CLOSED = "closed"


class _Owed(enum.Enum):
    MAIL = "mail"
    RCPT = "rcpt"
    FINAL = "final"


ServerEvent = (
    Lhlo
    | MailFrom
    | RcptTo
    | MessageData
    | EndOfData
    | MessageRefused
    | Rset
    | Quit
    | StartTls
    | ConnectionClosed
    | Signal
)


class _Stage(enum.IntEnum):
    """Where a command line arrives: ServerState's NEED_LHLO and READY, and its MAIL
    split by what decides RCPT, DATA and BDAT. The columns of _TABLE, in this order
    (an IntEnum indexes a row directly: no hash call per command)."""

    NEED_LHLO = 0  # before LHLO, and after STARTTLS
    READY = 1  # after LHLO, no transaction
    MAIL = 2  # MAIL accepted, no recipient yet
    RCPT = 3  # a recipient accepted: DATA or BDAT may start the message
    BINARY = 4  # a recipient accepted, BODY=BINARYMIME: BDAT only
    CHUNKS = 5  # a BDAT chunk taken: more BDAT only, until LAST


# The ServerState each stage shows.
_STATE_OF = (
    ServerState.NEED_LHLO,
    ServerState.READY,
    ServerState.MAIL,
    ServerState.MAIL,
    ServerState.MAIL,
    ServerState.MAIL,
)

_OK = Reply(250, "2.0.0", "OK")
_IDLE_STATES = (ServerState.NEED_LHLO, ServerState.READY)
_BAD_SEQUENCE = "5.5.1"
_SYNTAX = "5.5.4"

_RUN = None  # legal: the verb's handler runs
_SEND_LHLO = Reply(503, _BAD_SEQUENCE, "Send LHLO first")
_NESTED = Reply(503, _BAD_SEQUENCE, "Nested MAIL command")
_SEND_MAIL = Reply(503, _BAD_SEQUENCE, "Send MAIL first")
_NO_RCPT = Reply(503, _BAD_SEQUENCE, "No valid recipients")
_NOT_DATA = Reply(503, _BAD_SEQUENCE, "BINARYMIME and BDAT exclude DATA")
_USE_LHLO = Reply(500, "5.5.1", "This is an LMTP server: use LHLO")
_DATA_SYNTAX = Reply(501, _SYNTAX, "Syntax: DATA")

# The (stage, verb) table: which command is legal when, and the reply that refuses it
# everywhere else. What follows a refusal is the verb's (_COMMANDS, at the end):
#   MAIL, RCPT, HELO, EHLO  the reply, counted against Limits.max_errors; the session
#                           goes on.
#   DATA                    the reply (501 instead when DATA has an argument, in every
#                           stage) with "; closing the connection", then the session
#                           ends: what follows may be a body sent before the 354.
#   BDAT                    its size is read first (501 and the session ends when it
#                           cannot be: the chunk's end is unknown), the chunk is read
#                           and dropped, then the reply, counted.
# A verb not in the table: 500 5.5.1 Unknown command, counted. Commands are read only
# in these stages: in a body, a TLS handshake or after the end, there are none. Two
# answers depend on TLS, not on the stage, and stay in their handler: MAIL before TLS
# under require_tls (530 5.7.0), STARTTLS when TLS is active (503) or not offered (502).
# fmt: off
_TABLE: dict[str, tuple[Reply | None, ...]] = {
    # verb       NEED_LHLO   READY       MAIL        RCPT        BINARY      CHUNKS
    "LHLO":     (_RUN,       _RUN,       _RUN,       _RUN,       _RUN,       _RUN),
    "MAIL":     (_SEND_LHLO, _RUN,       _NESTED,    _NESTED,    _NESTED,    _NESTED),
    "RCPT":     (_SEND_MAIL, _SEND_MAIL, _RUN,       _RUN,       _RUN,       _SEND_MAIL),
    "DATA":     (_SEND_MAIL, _SEND_MAIL, _NO_RCPT,   _RUN,       _NOT_DATA,  _NOT_DATA),
    "BDAT":     (_SEND_MAIL, _SEND_MAIL, _NO_RCPT,   _RUN,       _RUN,       _RUN),
    "RSET":     (_RUN,       _RUN,       _RUN,       _RUN,       _RUN,       _RUN),
    "NOOP":     (_RUN,       _RUN,       _RUN,       _RUN,       _RUN,       _RUN),
    "VRFY":     (_RUN,       _RUN,       _RUN,       _RUN,       _RUN,       _RUN),
    "QUIT":     (_RUN,       _RUN,       _RUN,       _RUN,       _RUN,       _RUN),
    "STARTTLS": (_RUN,       _RUN,       _RUN,       _RUN,       _RUN,       _RUN),
    "HELO":     (_USE_LHLO,  _USE_LHLO,  _USE_LHLO,  _USE_LHLO,  _USE_LHLO,  _USE_LHLO),
    "EHLO":     (_USE_LHLO,  _USE_LHLO,  _USE_LHLO,  _USE_LHLO,  _USE_LHLO,  _USE_LHLO),
}
# fmt: on


# Addresses already found well-formed (the grammar and the length limits): the same
# mailboxes recur in every delivery. Bounded: emptied when full. A pure memo of a pure
# function, shared by the connections of a process as the client's is.
_VALID: set[str] = set()
_VALID_MAX = 4096


class ServerConnection:
    """The sans-I/O LMTP server. See the module comment for how it works."""

    def __init__(
        self,
        hostname: str = "localhost",
        *,
        limits: Limits | None = None,
        tls_available: bool = False,
        tls_active: bool = False,
        bare_line_endings: BareLineEndings = BareLineEndings.REJECT,
        require_tls: bool = False,
        busy: bool = False,
    ) -> None:
        """``tls_available``: the driver can start TLS, so STARTTLS is offered.
        ``tls_active``: the connection is already TLS (implicit TLS).
        ``require_tls``: MAIL is refused (530 5.7.0) until TLS is active.
        ``busy``: the server takes no more connections: the greeting is 421 4.3.2
        and next_event() gives ConnectionClosed."""
        if not LHLO_DOMAIN.fullmatch(hostname):
            raise LocalProtocolError(f"hostname {hostname!r} is not a domain")
        if require_tls and not (tls_available or tls_active):
            raise LocalProtocolError("require_tls needs STARTTLS (tls_available) or tls_active")
        self._hostname = hostname
        self._limits = limits or Limits()
        self._tls_available = tls_available
        self._tls = tls_active
        self._require_tls = require_tls
        self._bare_policy = bare_line_endings
        self._closing = False
        self._buffer = ReceiveBuffer()
        self._out = bytearray()
        self._events: deque[ServerEvent] = deque()
        self._owed: deque[_Owed] = deque()
        self._eof = False
        self._errors = 0
        self.state = ServerState.NEED_LHLO
        self._stage = _Stage.NEED_LHLO  # where commands arrive (see _enter)
        # The transaction: accepted recipients and what MAIL declared.
        self._accepted = 0
        self._utf8 = False
        self._binary = False
        # The message being read: its size so far, checks, and the chunk in progress.
        self._size = 0
        self._long_line = False
        self._decoder = DataDecoder()
        self._line_lengths = LineLengths(self._limits.text_line - 2)
        self._endings = LineEndingCheck()
        self._normalizer: BodyEncoder | None = None
        self._bdat_left = 0
        self._bdat_last = False
        self._bdat_refused: Reply | None = None
        if busy:
            refusal = Reply(421, "4.3.2", f"{hostname} Too many connections, try again later")
            self._reply(refusal)
            self._close("too many connections", refusal)
        else:
            self._reply(Reply(220, None, f"{hostname} LMTP server ready"))

    # ---- driver side ---------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes read from the transport (b"" is allowed and changes nothing)."""
        if self.state is ServerState.TLS_HANDSHAKE and data:
            raise LocalProtocolError("receive_data() during the TLS handshake")
        if data and not self._eof and self.state is not ServerState.CLOSED:
            self._buffer.feed(data)

    def receive_eof(self) -> None:
        """The client closed the connection (or half-closed it)."""
        self._eof = True

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def tls_established(self) -> None:
        if self.state is not ServerState.TLS_HANDSHAKE:
            raise LocalProtocolError("tls_established() without a StartTls")
        self._tls = True
        self._enter(_Stage.NEED_LHLO)

    @property
    def owed_replies(self) -> int:
        """How many Reply objects the application must send() before reading goes on."""
        return len(self._owed)

    @property
    def idle(self) -> bool:
        """No transaction is in progress and no reply is owed: closing now loses nothing."""
        return self.state in _IDLE_STATES and not self._owed

    def close_when_idle(self) -> None:
        """The server is going away: from the next next_event() on, answer 421 4.3.2
        and close as soon as no transaction is in progress (at once if none is). A
        transaction in progress may finish first; commands after it are not run."""
        self._closing = True

    def next_event(self) -> ServerEvent:
        """The next event, Signal.NEED_DATA (read more) or Signal.PAUSED (reply first).

        A command the core answers by itself produces no event: its reply is simply
        queued in data_to_send()."""
        while not self._events:
            if self.state is ServerState.CLOSED:
                raise LocalProtocolError("next_event() after ConnectionClosed")
            if self._owed:
                return Signal.PAUSED
            if self.state is ServerState.TLS_HANDSHAKE:
                raise LocalProtocolError("next_event() before tls_established()")
            if self.state is ServerState.DATA:
                progressed = self._read_data()
            elif self.state is ServerState.BDAT:
                progressed = self._read_bdat()
            elif self._closing and self.state in _IDLE_STATES:  # nothing owed: idle
                progressed = True
                closing = Reply(421, "4.3.2", f"{self._hostname} Server shutting down")
                self._reply(closing)
                self._close("the server is shutting down", closing)
            else:
                progressed = self._read_command()
            if not progressed:
                if not self._eof:
                    return Signal.NEED_DATA
                self._close("the client closed the connection")
        return self._events.popleft()

    # ---- application side ----------------------------------------------------------

    def send(self, reply: Reply) -> None:
        """Answer the MailFrom, the RcptTo, or one recipient after EndOfData."""
        if not self._owed:
            raise LocalProtocolError("send(): no reply is owed now")
        if 300 <= reply.code < 400:
            raise LocalProtocolError(f"a {reply.code} reply cannot answer MAIL, RCPT or a message")
        owed = self._owed.popleft()
        if owed is _Owed.MAIL and reply.is_positive:
            self._enter(_Stage.MAIL)
        elif owed is _Owed.RCPT and reply.is_positive:
            self._accepted += 1
            if self._accepted == 1:
                self._enter(_Stage.BINARY if self._binary else _Stage.RCPT)
        self._reply(reply)

    # ---- commands ------------------------------------------------------------------

    def _read_command(self) -> bool:
        line = self._buffer.take_line(self._limits.command_line)
        if line is None:
            return False
        if line is LineTooLong.TOKEN:
            self._buffer.discard_line()
            self._error(Reply(500, "5.5.2", "Line too long"))
            return True
        if not COMMAND_BYTES_OK.fullmatch(line):
            self._error(Reply(500, "5.5.2", "Invalid characters in command"))
            return True
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._error(Reply(500, "5.5.2", "Command is not valid UTF-8"))
            return True
        verb, _, arg = text.partition(" ")
        # str.upper() folds some non-ASCII letters into ASCII (dotless i -> "I").
        command = _COMMANDS.get(verb.upper()) if verb.isascii() else None
        if command is None:
            self._error(Reply(500, "5.5.1", "Unknown command"))
            return True
        refuse, cells = command
        cell = cells[self._stage]
        if isinstance(cell, Reply):
            refuse(self, cell, text, arg)
        else:
            cell(self, text, arg)
        return True

    def _refuse(self, reply: Reply, text: str, arg: str) -> None:
        """A refusal from _TABLE: the reply, counted; the session goes on."""
        self._error(reply)

    def _lhlo(self, text: str, arg: str) -> None:
        if not LHLO_DOMAIN.fullmatch(arg):
            return self._error(Reply(501, _SYNTAX, "Syntax: LHLO domain"))
        self._reset_transaction()
        self._enter(_Stage.READY)
        ext = [
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
            "8BITMIME",
            "CHUNKING",
            "BINARYMIME",
            "SMTPUTF8",
            f"SIZE {self._limits.max_message_size}",
        ]
        if self._tls_available and not self._tls:
            ext.append("STARTTLS")
        self._reply(Reply(250, None, "\n".join([self._hostname, *ext])))
        self._events.append(Lhlo(arg))

    def _mail(self, text: str, arg: str) -> None:
        if self._require_tls and not self._tls:
            return self._error(Reply(530, "5.7.0", "Must issue a STARTTLS command first"))
        match = MAIL_FROM.fullmatch(text)
        if match is None:
            return self._error(Reply(501, _SYNTAX, "Syntax: MAIL FROM:<address> [parameters]"))
        params = self._params(match["params"], {"SIZE", "BODY", "SMTPUTF8"})
        if params is None:
            return
        address = match["path"]
        utf8 = any(key == "SMTPUTF8" for key, _ in params)
        if address and not self._address_ok(address, utf8, "5.1.7", "sender"):
            return
        body = self._body_and_size(params)
        if body is None:
            return
        self._utf8 = utf8
        self._binary = body == "BINARYMIME"
        self._owed.append(_Owed.MAIL)
        self._events.append(MailFrom(address, params))

    def _body_and_size(self, params: Params) -> str | None:
        """MAIL's BODY (upper case, 7BIT when absent), or None once BODY or SIZE is
        refused: 501 when malformed, 552 over Limits.max_message_size."""
        declared = dict(params)
        body = (declared.get("BODY") or "7BIT").upper()
        if body not in ("7BIT", "8BITMIME", "BINARYMIME"):
            self._error(Reply(501, _SYNTAX, "BODY must be 7BIT, 8BITMIME or BINARYMIME"))
            return None
        size = declared.get("SIZE")
        if size is None:
            return body
        if not (size.isascii() and size.isdigit() and len(size) <= 18):
            self._error(Reply(501, _SYNTAX, "SIZE must be a number"))
            return None
        if int(size) > self._limits.max_message_size:
            self._reply(Reply(552, "5.3.4", "Message size exceeds fixed maximum message size"))
            return None
        return body

    def _rcpt(self, text: str, arg: str) -> None:
        match = RCPT_TO.fullmatch(text)
        if match is None:
            return self._error(Reply(501, _SYNTAX, "Syntax: RCPT TO:<address> [parameters]"))
        params = self._params(match["params"], set())
        if params is None:
            return
        # RFC 5321 4.1.1.3 and 4.5.1: "<Postmaster>" without a domain must be accepted.
        postmaster = match["path"].lower() == "postmaster"
        if not postmaster and not self._address_ok(match["path"], self._utf8, "5.1.3", "recipient"):
            return
        if self._accepted >= self._limits.max_recipients:
            return self._reply(Reply(452, "4.5.3", "Too many recipients"))
        self._owed.append(_Owed.RCPT)
        self._events.append(RcptTo(match["path"], params))

    def _data(self, text: str, arg: str) -> None:
        if arg:
            return self._refuse_data(_DATA_SYNTAX, text, arg)
        self._start_body()
        self._decoder = DataDecoder()
        self.state = ServerState.DATA  # the stage stays RCPT until the end of the message
        self._reply(Reply(354, None, "End data with <CR><LF>.<CR><LF>"))

    def _refuse_data(self, reply: Reply, text: str, arg: str) -> None:
        """DATA refused ends the session: what follows it may be a body sent before the
        354 (RFC 2920 6: DATA is the last command of a group), never commands. An
        argument is refused first, wherever DATA comes."""
        if arg:
            reply = _DATA_SYNTAX
        refusal = Reply(reply.code, reply.enhanced, f"{reply.text}; closing the connection")
        self._reply(refusal)
        self._close("DATA refused", refusal)

    def _bdat(self, text: str, arg: str) -> None:
        if self._stage is not _Stage.CHUNKS:  # the first chunk starts the message
            self._enter(_Stage.CHUNKS)
            self._start_body()
        self._chunk(None, text, arg)

    def _chunk(self, refusal: Reply | None, text: str, arg: str) -> None:
        """BDAT's size and LAST, read before anything else: the chunk comes next, into
        the message, or (refused by _TABLE) dropped before the refusal is sent."""
        match = BDAT.fullmatch(text)
        if match is None:  # the chunk's length is unknown: framing is lost
            closing = Reply(501, _SYNTAX, "Syntax: BDAT size [LAST]")
            self._reply(closing)
            return self._close("BDAT without a valid size", closing)
        self._bdat_left = int(match["size"])
        self._bdat_last = match["last"] is not None
        self._bdat_refused = refusal
        self.state = ServerState.BDAT  # back to the stage's state after the chunk

    def _rset(self, text: str, arg: str) -> None:
        if arg:
            return self._error(Reply(501, _SYNTAX, "Syntax: RSET"))
        self._reset_transaction()
        if self._stage is not _Stage.NEED_LHLO:
            self._enter(_Stage.READY)
        self._reply(_OK)
        self._events.append(Rset())

    def _noop(self, text: str, arg: str) -> None:
        self._reply(_OK)

    def _vrfy(self, text: str, arg: str) -> None:
        if not arg.strip():
            return self._error(Reply(501, _SYNTAX, "Syntax: VRFY address"))
        self._reply(Reply(252, "2.5.0", "Cannot VRFY user, but will accept message"))

    def _quit(self, text: str, arg: str) -> None:
        self._reply(Reply(221, "2.0.0", "Bye"))
        self._events.append(Quit())
        self._close("quit")

    def _starttls(self, text: str, arg: str) -> None:
        if arg:
            return self._error(Reply(501, _SYNTAX, "Syntax: STARTTLS"))
        if self._tls:
            return self._error(Reply(503, _BAD_SEQUENCE, "TLS is already active"))
        if not self._tls_available:
            return self._error(Reply(502, "5.5.1", "STARTTLS is not offered"))
        # RFC 3207 4.2 / CVE-2011-0411: nothing sent before the handshake may be used.
        self._buffer.clear()
        self._reset_transaction()
        self._reply(Reply(220, "2.0.0", "Ready to start TLS"))
        self.state = ServerState.TLS_HANDSHAKE
        self._events.append(StartTls())

    def _params(self, text: str | None, allowed: set[str]) -> Params | None:
        if not text:
            return ()
        params: list[tuple[str, str | None]] = []
        for word in text.split(" "):
            if not word:
                continue
            param = _param(word, allowed, params)
            if isinstance(param, Reply):
                self._error(param)
                return None
            params.append(param)
        utf8 = self._utf8 or any(key == "SMTPUTF8" for key, _ in params)
        if not utf8 and not text_is_ascii(text):
            self._error(Reply(501, _SYNTAX, "Non-ASCII parameters need SMTPUTF8"))
            return None
        return tuple(params)

    def _address_ok(self, address: str, utf8: bool, enhanced: str, what: str) -> bool:
        if not address.isascii() and not utf8:
            self._reply(Reply(553, "5.6.7", f"Non-ASCII {what} address needs SMTPUTF8"))
            return False
        if address in _VALID:
            return True
        match = (MAILBOX if address.isascii() else MAILBOX_UTF8).fullmatch(address)
        if match is None:
            self._error(Reply(501, enhanced, f"Invalid {what} address"))
            return False
        if len(match["local"].encode()) > MAX_LOCAL_PART or len(address.encode()) + 2 > MAX_PATH:
            self._error(Reply(501, enhanced, f"The {what} address is too long"))
            return False
        if len(_VALID) >= _VALID_MAX:
            _VALID.clear()
        _VALID.add(address)
        return True

    # ---- message bodies ------------------------------------------------------------

    def _start_body(self) -> None:
        self._size = 0
        self._long_line = False
        self._line_lengths = LineLengths(self._limits.text_line - 2)
        self._endings = LineEndingCheck()
        normalize = self._bare_policy is BareLineEndings.NORMALIZE
        self._normalizer = BodyEncoder(dot_stuff=False, allow_nul=True) if normalize else None

    def _read_data(self) -> bool:
        if not self._buffer:
            return False
        normalize = self._bare_policy is BareLineEndings.NORMALIZE
        piece, used, done = self._decoder.decode(self._buffer.peek(), normalize)
        if not used:
            return False
        self._buffer.drop(used)
        self._endings.bare = self._decoder.bare_line_ending
        self._body_piece(piece)
        if done:
            self._end_of_message()
        return True

    def _read_bdat(self) -> bool:
        if self._bdat_left:
            if not self._buffer:
                return False
            piece = self._buffer.take(self._bdat_left)
            self._bdat_left -= len(piece)
            if self._bdat_refused is None:
                if not self._binary:
                    self._endings.feed(piece)
                    if self._normalizer is not None:
                        piece = self._normalizer.encode(piece)
                self._body_piece(piece)
            if self._bdat_left:
                return True
        self._enter(self._stage)  # the stage the chunk came in (CHUNKS once one is taken)
        if self._bdat_refused is not None:
            self._error(self._bdat_refused)
        elif self._bdat_last:
            if not self._binary:
                # (No normalizer.finish(): a trailing CR already went out as CRLF, and a
                # message that ends without a line end is stored as it came.)
                self._endings.finish()
            self._end_of_message()
        else:
            self._reply(Reply(250, "2.0.0", "Chunk received"))
        return True

    def _body_piece(self, piece: bytes) -> None:
        if not piece:
            return
        self._size += len(piece)
        if not self._binary and not self._long_line and self._line_lengths.feed(piece):
            self._long_line = True
        if self._refusal() is None:
            self._events.append(MessageData(piece))

    def _refusal(self) -> Reply | None:
        """The core's own answer to the message so far, if any. Every condition is
        tracked to the end and ranked here, so the answer does not depend on how the
        input was split."""
        if self._size > self._limits.max_message_size:
            return Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
        if self._endings.bare and self._bare_policy is BareLineEndings.REJECT:
            return Reply(550, "5.6.0", "Message contains a bare CR or LF")
        if self._long_line:
            return Reply(500, "5.5.6", f"Message has a line over {self._limits.text_line} octets")
        return None

    def _end_of_message(self) -> None:
        if not self._binary and self._line_lengths.finish():
            self._long_line = True
        refusal = self._refusal()
        recipients = self._accepted
        self._reset_transaction()
        self._enter(_Stage.READY)
        if refusal is not None:
            for _ in range(recipients):
                self._reply(refusal)
            self._events.append(MessageRefused(refusal))
        else:
            self._owed.extend([_Owed.FINAL] * recipients)
            self._events.append(EndOfData())

    # ---- helpers -------------------------------------------------------------------

    def _enter(self, stage: _Stage) -> None:
        """Commands arrive in `stage` from now on; `state` shows its ServerState."""
        self._stage = stage
        self.state = _STATE_OF[stage]

    def _reset_transaction(self) -> None:
        self._accepted = 0
        self._utf8 = False
        self._binary = False

    def _reply(self, reply: Reply) -> None:
        self._out += write_reply(reply)

    def _error(self, reply: Reply) -> None:
        self._errors += 1
        if self._errors > self._limits.max_errors:
            closing = Reply(421, "4.7.0", "Too many errors, closing the connection")
            self._reply(closing)
            self._close("too many errors", closing)
        else:
            self._reply(reply)

    def _close(self, reason: str, reply: Reply | None = None) -> None:
        self.state = ServerState.CLOSED
        self._owed.clear()
        self._buffer.clear()
        self._events.append(ConnectionClosed(reason, reply))


def _printable(text: str) -> str:
    """Peer text fit to echo in a reply: non-ASCII as backslash escapes."""
    return text.encode("ascii", "backslashreplace").decode("ascii")


def text_is_ascii(text: str | None) -> bool:
    return text is None or text.isascii()


def _param(
    word: str, allowed: set[str], seen: list[tuple[str, str | None]]
) -> tuple[str, str | None] | Reply:
    """One ESMTP parameter (keyword upper-cased), or the reply that refuses it."""
    key, eq, value = word.partition("=")
    if not ESMTP_KEYWORD.fullmatch(key) or (eq and not ESMTP_VALUE.fullmatch(value)):
        return Reply(501, _SYNTAX, f"Invalid parameter {_printable(word[:40])}")
    key = key.upper()
    if key not in allowed:
        return Reply(555, _SYNTAX, f"Unsupported parameter {key}")
    if any(key == earlier for earlier, _ in seen):
        return Reply(501, _SYNTAX, f"Duplicate parameter {key}")
    if (key == "SMTPUTF8") == bool(eq):
        return Reply(501, _SYNTAX, f"Invalid parameter {key}")
    return key, (value if eq else None)


_Handler = Callable[[ServerConnection, str, str], None]
_Refuser = Callable[[ServerConnection, Reply, str, str], None]
# Each verb's handler, run where _TABLE says the verb is legal (HELO and EHLO are legal
# nowhere and have none).
_HANDLERS: dict[str, _Handler] = {
    "LHLO": ServerConnection._lhlo,
    "MAIL": ServerConnection._mail,
    "RCPT": ServerConnection._rcpt,
    "DATA": ServerConnection._data,
    "BDAT": ServerConnection._bdat,
    "RSET": ServerConnection._rset,
    "NOOP": ServerConnection._noop,
    "VRFY": ServerConnection._vrfy,
    "QUIT": ServerConnection._quit,
    "STARTTLS": ServerConnection._starttls,
}
# What a refusal from _TABLE does, where it is more than the reply counted against
# Limits.max_errors (ServerConnection._refuse): the two verbs that must settle what
# follows them (see _TABLE's comment).
_REFUSERS: dict[str, _Refuser] = {
    "DATA": ServerConnection._refuse_data,
    "BDAT": ServerConnection._chunk,
}
# What _read_command looks up: by verb, its refuser and its cells by _Stage, each the
# handler (legal there) or the Reply that refuses the command.
_COMMANDS: dict[str, tuple[_Refuser, tuple[_Handler | Reply, ...]]] = {
    verb: (
        _REFUSERS.get(verb, ServerConnection._refuse),
        tuple(_HANDLERS[verb] if cell is _RUN else cell for cell in row),
    )
    for verb, row in _TABLE.items()
}
