"""RFC 5321 / 2033 / 6531 syntax as regular expressions, compiled once at import.

How it works: the patterns are built from the ABNF names of RFC 5321 section 4.1.2
(with RFC 6531's UTF8-non-ascii added where SMTPUTF8 allows it) so that each can be
checked against the RFC by eye. They work on `str`; the server decodes a command
line as UTF-8 only after checking it holds no control bytes. Nothing here keeps state.
"""

from __future__ import annotations

import re

# RFC 5321 4.5.3.1.1 and 4.5.3.1.3: the longest local part, and path (with "<>").
# (The domain's 255 of 4.5.3.1.2 can never bind: the path limit is tighter.)
MAX_LOCAL_PART = 64
MAX_PATH = 256

# Every code point beyond ASCII except lone surrogates (they cannot be UTF-8).
_UTF8_NON_ASCII = "\u0080-\ud7ff\ue000-\U0010ffff"
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"


def _mailbox(utf8: bool) -> str:
    extra = _UTF8_NON_ASCII if utf8 else ""
    atom = f"[{_ATEXT}{extra}]+"
    dot_string = rf"{atom}(?:\.{atom})*"
    # qtextSMTP = %d32-33 / %d35-91 / %d93-126; quoted-pairSMTP = "\" %d32-126
    quoted = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{extra}]|\\[\x20-\x7e])*"'
    let_dig = f"[A-Za-z0-9{extra}]"
    sub_domain = rf"{let_dig}(?:[A-Za-z0-9\-{extra}]*{let_dig})?"
    domain = rf"{sub_domain}(?:\.{sub_domain})*"
    # address-literal: "[" ( IPv4 / IPv6 / General-address-literal ) "]"; dcontent
    # is %d33-90 / %d94-126, which already excludes "[", "\" and "]".
    literal = r"\[[\x21-\x5a\x5e-\x7e]+\]"
    return rf"(?P<local>{dot_string}|{quoted})@(?P<domain>{domain}|{literal})"


MAILBOX = re.compile(_mailbox(utf8=False))
MAILBOX_UTF8 = re.compile(_mailbox(utf8=True))

# The LHLO argument: a Domain or an address-literal (RFC 2033 4.1, RFC 5321 4.1.1.1).
LHLO_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*"
    r"|\[[\x21-\x5a\x5e-\x7e]+\])"
)

# esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
# esmtp-value   = 1*(%d33-60 / %d62-126), with UTF-8 allowed under SMTPUTF8 (RFC 6531 3.3)
ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
ESMTP_VALUE = re.compile(rf"[\x21-\x3c\x3e-\x7e{_UTF8_NON_ASCII}]+")

# "MAIL FROM:" Reverse-path [SP Mail-parameters] and "RCPT TO:" Forward-path [...].
# A source route ("@a,@b:") must be accepted and may be ignored (RFC 5321 4.1.1.3, C).
# One space after the colon is tolerated, as nearly every server does.
_ROUTE = r"(?:@[^,:<>\s]+(?:,@[^,:<>\s]+)*:)?"
# The path inside <>: a quoted string or an address literal may hold "<" and ">".
_PATH = r'(?P<path>(?:"(?:[^"\\]|\\.)*"|\[[^\[\]]*\]|[^<>"\[\]])*)'

MAIL_FROM = re.compile(
    rf"MAIL FROM: ?<{_ROUTE}{_PATH}>(?: (?P<params>.*))?", re.IGNORECASE | re.ASCII
)
RCPT_TO = re.compile(rf"RCPT TO: ?<{_ROUTE}{_PATH}>(?: (?P<params>.*))?", re.IGNORECASE | re.ASCII)
# "BDAT" SP chunk-size [ SP end-marker ] (RFC 3030 3)
BDAT = re.compile(r"BDAT (?P<size>[0-9]{1,18})(?P<last> LAST)?", re.IGNORECASE | re.ASCII)

# Reply-line = *( Reply-code "-" [ textstring ] CRLF ) Reply-code [ SP textstring ] CRLF
# Reply-code = %x32-35 %x30-35 %x30-39; textstring = 1*(%d09 / %d32-126), plus UTF-8
# (RFC 6531 3.7.4 allows it in some replies; servers echo UTF-8 addresses in others).
REPLY_LINE = re.compile(
    rb"(?P<code>[2-5][0-5][0-9])(?:(?P<sep>[ \-])(?P<text>[\t\x20-\x7e\x80-\xff]*))?"
)
# status-code = class "." subject "." detail (RFC 3463 2; RFC 2034 4)
ENHANCED = re.compile(r"(?P<code>[245]\.[0-9]{1,3}\.[0-9]{1,3})(?: (?P<rest>.*)|$)", re.DOTALL)
ENHANCED_CODE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")

# A command line may hold only these bytes before it is decoded: no NUL, no other
# control byte, no bare CR or LF (those are what injection is made of).
COMMAND_BYTES_OK = re.compile(rb"[\x20-\x7e\x80-\xff]*")
# Reply text: HT and printable characters, ASCII or not; no C0 or C1 control, no DEL,
# no lone surrogate (it cannot be written as UTF-8).
REPLY_TEXT = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]*")
