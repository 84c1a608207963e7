"""Size and count limits, one frozen object passed to each connection.

How it works: every limit the core enforces lives here with its default and the
source of that default. The client and the server read the same object; a limit that
only one role uses says so. Each limit is named after what it protects against.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Every limit of both roles, each with its source; pass one to either connection."""

    #: Longest command line, CRLF included (RFC 5321 4.5.3.1.4: 512 octets).
    #: Server: a longer line is discarded up to its CRLF, in bounded memory, and
    #: answered 500 once. Client: a command that would be longer is refused locally.
    command_line: int = 512
    #: Longest reply line, CRLF included (RFC 5321 4.5.3.1.5: 512 octets). Client: a
    #: longer line from the server is a RemoteProtocolError, so a server that never
    #: sends CRLF cannot make the client buffer without bound.
    reply_line: int = 512
    #: Longest line of one reply, counting continuation lines. RFC 5321 sets no
    #: number; a LHLO reply has about a dozen. Stops endless "250-" streams.
    reply_lines: int = 100
    #: Longest text line in a message body, CRLF included (RFC 5321 4.5.3.1.6:
    #: 1000 octets). Client: a longer body line is refused (see long_lines).
    #: Server: a message with a longer line is refused after its end with 500 5.5.6.
    text_line: int = 1000
    #: Recipients accepted per transaction (RFC 5321 4.5.3.1.8: at least 100 must
    #: be accepted). Server: RCPT past this gets 452 4.5.3.
    max_recipients: int = 100
    #: Largest message the server takes, counted after dot-unstuffing; advertised
    #: as SIZE. 32 MiB, the figure aiosmtpd and many MTAs use by default. A larger
    #: message is read to its end, nothing of it is kept, and it gets 552 5.3.4.
    max_message_size: int = 32 * 1024 * 1024
    #: Bad commands a server tolerates in one session before it answers
    #: 421 4.7.0 and closes (the error budget; Postfix's smtpd_hard_error_limit
    #: is 20, sendmail's is 25).
    max_errors: int = 20
    #: Body bytes the client gathers into one BDAT chunk. 1 MiB keeps memory flat
    #: and round trips few; RFC 3030 sets no size.
    bdat_chunk: int = 1024 * 1024

    def __post_init__(self) -> None:
        for field in fields(self):
            name = field.name
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive int, not {value!r}")
        if self.command_line < 64 or self.reply_line < 64 or self.text_line < 64:
            raise ValueError("line limits below 64 octets cannot carry the protocol")
