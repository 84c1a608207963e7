"""Bytes to events: the client's reply reader.

How it works: take_line() hands over one CRLF-terminated line at a time (bounded by
Limits.reply_line). Each line must be a three-digit code, then "-" (more lines
follow), " " or nothing (last line), then text: printable ASCII, tabs, and 8-bit bytes
read as UTF-8 (what is not valid UTF-8 becomes U+FFFD; a C1 control character is
refused like a C0 one). Every line of one reply must carry the same code, and a reply
may have at most Limits.reply_lines lines. Anything else raises RemoteProtocolError: a
server that breaks reply framing can no longer be trusted to pair replies with
commands; the code and the enhanced code carry the meaning, the text is kept as sent.
The enhanced status code (RFC 2034) is read from the first line and removed from every
line that repeats it.
"""

from __future__ import annotations

from ._buffer import LineTooLong, ReceiveBuffer
from ._errors import RemoteProtocolError
from ._events import Reply
from ._grammar import ENHANCED, REPLY_LINE, REPLY_TEXT
from ._limits import Limits


class ReplyReader:
    __slots__ = ("_limits", "_code", "_lines")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._code = b""
        self._lines: list[str] = []

    @property
    def partial(self) -> bool:
        """True while a multi-line reply has started but not ended."""
        return bool(self._lines)

    def read(self, buffer: ReceiveBuffer) -> Reply | None:
        """The next complete reply in ``buffer``, or None until one is complete."""
        limit = self._limits.reply_line
        while True:
            line = buffer.take_line(limit)
            if line is None:
                return None
            if line is LineTooLong.TOKEN:
                raise RemoteProtocolError(f"reply line longer than {limit} octets")
            match = REPLY_LINE.fullmatch(line)
            if match is None:
                raise RemoteProtocolError(f"malformed reply line {line[:80]!r}")
            code, sep, raw = match.group("code", "sep", "text")
            text = "" if raw is None else raw.decode("ascii") if raw.isascii() else _utf8(raw, line)
            lines = self._lines
            if not lines:
                if sep != b"-":  # the common case: a one-line reply
                    return _make_reply(code, [text])
                self._code = code
            elif code != self._code:
                raise RemoteProtocolError(
                    f"reply line with code {code.decode()} inside a {self._code.decode()} reply"
                )
            lines.append(text)
            if len(lines) > self._limits.reply_lines:
                raise RemoteProtocolError(f"reply of more than {self._limits.reply_lines} lines")
            if sep != b"-":
                self._lines = []
                return _make_reply(code, lines)


def _utf8(raw: bytes, line: bytes) -> str:
    """Reply text with 8-bit bytes: UTF-8 (U+FFFD where it is not), no control
    characters, C1 included (`line` is the whole line, for the message)."""
    text = raw.decode("utf-8", "replace")
    if not REPLY_TEXT.fullmatch(text):
        raise RemoteProtocolError(f"control character in reply line {line[:80]!r}")
    return text


def _make_reply(code: bytes, lines: list[str]) -> Reply:
    enhanced = None
    first = lines[0]
    if first[:1] == chr(code[0]):  # an enhanced code starts with the reply's class
        match = ENHANCED.match(first)
        if match is not None:
            enhanced = match["code"]
            prefix = enhanced + " "
            lines = [
                line[len(prefix) :] if line.startswith(prefix) else "" if line == enhanced else line
                for line in lines
            ]
    # REPLY_LINE checked the code's digits and every character of the text, and the
    # enhanced code matched ENHANCED and its class: nothing for Reply() to refuse.
    return Reply._parsed(int(code), enhanced, lines[0] if len(lines) == 1 else "\n".join(lines))
