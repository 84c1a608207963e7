"""Writes the seed corpora (corpus/<target>/) and libFuzzer dictionaries (dict/<target>.dict).

How it works: each seed is a real-looking transcript (Dovecot's and Cyrus's LMTP replies,
Postfix-style pipelined client sessions with DATA and BDAT, SMTP smuggling and STARTTLS
injection attempts, limit breakers) wrapped by tests.fuzz._input.seed() with the option
flags and the split lengths it should start from; for transcripts, the split lengths are
the lengths of the replies or commands, so the fuzzer's split starts at real boundaries.
The files are committed; run ``python -m tests.fuzz.make_corpus`` to write them again
after changing this script (it removes seeds it no longer makes).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.fuzz._input import seed

HERE = Path(__file__).resolve().parent

# ---- server replies, as Dovecot and Cyrus send them ----------------------------------------

DOVECOT_GREETING = b"220 mx.example.org Dovecot ready.\r\n"
DOVECOT_LHLO = (
    b"250-mx.example.org\r\n250-8BITMIME\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n"
    b"250-PIPELINING\r\n250 STARTTLS\r\n"
)
DOVECOT_LHLO_TLS = (
    b"250-mx.example.org\r\n250-8BITMIME\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n"
    b"250-PIPELINING\r\n250-SIZE 52428800\r\n250 XCLIENT ADDR PORT TRANS TIMEOUT\r\n"
)
MAIL_OK = b"250 2.1.0 OK\r\n"
RCPT_OK = b"250 2.1.5 OK\r\n"
NO_USER = b"550 5.1.1 <bob@example.org> User doesn't exist: bob@example.org\r\n"
SAVED_ALICE = b"250 2.0.0 <alice@example.org> 4nQBBiWqC2bKWgAAtr1Mzg Saved\r\n"
QUOTA = b"552 5.2.2 <alice@example.org> Quota exceeded (mailbox for user is full)\r\n"
TEMPFAIL = b"451 4.3.0 <alice@example.org> Temporary internal error\r\n"
BYE = b"221 2.0.0 Bye\r\n"
DATA_GO = b"354 OK\r\n"
TLS_GO = b"220 2.0.0 Begin TLS negotiation now.\r\n"
CYRUS_GREETING = b"220 imap.example.org LMTP Cyrus v3.4.3 server ready\r\n"
CYRUS_LHLO = (
    b"250-imap.example.org\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n"
    b"250-SIZE\r\n250-AUTH EXTERNAL\r\n250 IGNOREQUOTA\r\n"
)
CYRUS_MAIL = b"250 2.1.0 ok\r\n"
CYRUS_RCPT = b"250 2.1.5 ok\r\n"
CYRUS_DATA = b"354 go ahead\r\n"
CYRUS_SAVED = b"250 2.1.5 Ok SESSIONID=<cyrus-1234-1700000000-1-1234567890>\r\n"
CYRUS_MULTI = (
    b"550-5.1.1 Mailbox unknown.  Either there is no mailbox associated with this\r\n"
    b"550-5.1.1 name or you do not have authorization to see it.\r\n"
    b"550 5.1.1 User unknown\r\n"
)
CYRUS_OVERQUOTA = b"452 4.2.2 Over quota SESSIONID=<cyrus-1234-1700000000-1-1234567891>\r\n"
SHUTDOWN = b"421 4.3.2 Service shutting down\r\n"


def small_chunks() -> int:
    """How many 16-octet BDAT chunks the client session's body takes."""
    from tests.fuzz.fuzz_client_session import BODY

    encoded = BODY.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"
    return -(-len(encoded) // 16)


def reply_seeds() -> dict[str, list[bytes]]:
    """Server transcripts as lists of replies (each a split boundary)."""
    dovecot = [DOVECOT_GREETING, DOVECOT_LHLO, MAIL_OK, RCPT_OK, NO_USER, RCPT_OK]
    chunk_ok = b"250 2.0.0 OK\r\n"
    return {
        "dovecot_small_chunks": [
            *dovecot,
            chunk_ok * (small_chunks() - 1),
            SAVED_ALICE,
            SAVED_ALICE,
            BYE,
        ],
        "chunk_refused": [*dovecot, chunk_ok * 3, b"552 5.3.4 Message too big\r\n", MAIL_OK],
        "dovecot_bdat": [*dovecot, SAVED_ALICE, QUOTA, BYE],
        "dovecot_data": [*dovecot, DATA_GO, SAVED_ALICE, QUOTA, BYE],
        "dovecot_all_saved": [*dovecot[:4], RCPT_OK, RCPT_OK, SAVED_ALICE, SAVED_ALICE, BYE],
        "dovecot_starttls": [
            DOVECOT_GREETING,
            DOVECOT_LHLO,
            TLS_GO,
            DOVECOT_LHLO_TLS,
            MAIL_OK,
            RCPT_OK,
            RCPT_OK,
            RCPT_OK,
            SAVED_ALICE,
            TEMPFAIL,
            SAVED_ALICE,
            BYE,
        ],
        "cyrus_data": [
            CYRUS_GREETING,
            CYRUS_LHLO,
            CYRUS_MAIL,
            CYRUS_RCPT,
            CYRUS_MULTI,
            CYRUS_RCPT,
            CYRUS_DATA,
            CYRUS_SAVED,
            CYRUS_OVERQUOTA,
            BYE,
        ],
        "mail_refused": [DOVECOT_GREETING, DOVECOT_LHLO, b"451 4.3.0 Try again later\r\n"],
        "shutdown_after_data": [*dovecot, SAVED_ALICE, SHUTDOWN],
        "shutdown_at_greeting": [b"421 4.3.2 mx.example.org Too many connections\r\n"],
        "no_pipelining": [
            b"220 lmtp.example.org ESMTP\r\n",
            b"250-lmtp.example.org\r\n250 8BITMIME\r\n",
            MAIL_OK,
            RCPT_OK,
            RCPT_OK,
            NO_USER,
            DATA_GO,
            SAVED_ALICE,
            SAVED_ALICE,
            BYE,
        ],
        "data_refused": [*dovecot, b"554 5.5.1 Error: no valid recipients\r\n", MAIL_OK, BYE],
        "extra_reply": [DOVECOT_GREETING, DOVECOT_LHLO, MAIL_OK, MAIL_OK, RCPT_OK, RCPT_OK],
        "starttls_injection": [
            DOVECOT_GREETING,
            DOVECOT_LHLO,
            TLS_GO + b"250 2.1.0 injected\r\n",
            MAIL_OK,
        ],
        "bad_framing": [
            DOVECOT_GREETING,
            b"250-mx.example.org\r\n251 PIPELINING\r\n",
            b"250 ok\n",
            b"2500 x\r\n",
            b"250\x00\r\n",
        ],
        "code_only_and_tabs": [b"220\r\n", b"250-\r\n250-\tSIZE\t10\r\n250\r\n", b"250 2.1.0\r\n"],
        # issue 14: one more reply after the data than recipients accepted, in one read
        "surplus_same_read": [*dovecot, SAVED_ALICE + SAVED_ALICE + QUOTA, BYE],
        "surplus_same_read_data": [*dovecot, DATA_GO, SAVED_ALICE + SAVED_ALICE + QUOTA, BYE],
        # UTF-8 echoed in replies (RFC 6531 3.7.4 and servers in the field), invalid
        # UTF-8, and a C1 control character (refused) at the end
        "utf8_replies": [
            DOVECOT_GREETING,
            DOVECOT_LHLO,
            MAIL_OK,
            "250 2.1.5 <alice@example.org> ✓ geprüft\r\n".encode(),
            "550 5.1.1 <bob@example.org> unbekannt: 用户\r\n".encode(),
            RCPT_OK,
            b"250 2.0.0 <alice@example.org> saved caf\xe9 \xff\r\n",
            b"250 2.0.0 saved\xc2\x85\r\n",
        ],
        # a server SIZE below the message: refused here, nothing written (flags 8: size=)
        "over_size": [
            DOVECOT_GREETING,
            b"250-mx.example.org\r\n250-PIPELINING\r\n250 SIZE 10\r\n",
            BYE,
        ],
        "enhanced_mismatch": [b"220 ok\r\n", b"250-x\r\n250 y\r\n", b"550 2.1.0 odd\r\n"],
    }


# ---- client sessions, Postfix-style pipelined ----------------------------------------------

ENVELOPE = [
    b"LHLO client.example.net\r\n",
    b"MAIL FROM:<bounce@example.net> SIZE=180 BODY=8BITMIME\r\n"
    b"RCPT TO:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\n"
    b"RCPT TO:<nobody@example.org>\r\n",
]
MESSAGE = (
    b"Return-Path: <bounce@example.net>\r\nFrom: Bounce <bounce@example.net>\r\n"
    b"To: alice@example.org\r\nSubject: test\r\nMessage-ID: <1@example.net>\r\n\r\n"
    b"Hello Alice,\r\n..a stuffed leading dot\r\n\r\nBye.\r\n"
)


def session_seeds() -> dict[str, tuple[int, list[bytes]]]:
    """Client sessions as (option flags, list of writes)."""
    data = [*ENVELOPE, b"DATA\r\n", MESSAGE + b".\r\n", b"QUIT\r\n"]
    bdat = [
        *ENVELOPE[:1],
        ENVELOPE[1] + b"BDAT 50\r\n" + MESSAGE[:50],
        b"BDAT %d LAST\r\n" % (len(MESSAGE) - 50) + MESSAGE[50:],
        b"QUIT\r\n",
    ]
    smuggle = [
        *ENVELOPE,
        b"DATA\r\n",
        b"Subject: smuggling\r\n\r\nA\n.\nMAIL FROM:<evil@example.com>\n",
        b"B\r\n.\nRCPT TO:<victim@example.org>\r\nC\n.\r\nDATA\r\nD\r.\r\n",
        b"\r\n.\r\n",
        b"MAIL FROM:<a@example.net>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n",
        b"bare\rCR and bare\nLF\r\n.\r\nRSET\r\n",
    ]
    return {
        "pipelined_data": (0, data),
        "pipelined_data_eof": (8, data[:-1]),
        "bdat_two_chunks": (0, bdat),
        "bdat_binarymime": (
            0,
            [
                ENVELOPE[0],
                b"MAIL FROM:<> BODY=BINARYMIME\r\nRCPT TO:<postmaster>\r\n",
                b"BDAT 6 LAST\r\n\x00\r\n.\r\xff",
                b"DATA\r\nQUIT\r\n",
            ],
        ),
        "smuggling": (0, smuggle),
        "smuggling_normalize": (2, smuggle),
        "starttls_injection": (
            1,
            [
                b"LHLO c.example.net\r\n",
                b"STARTTLS\r\nMAIL FROM:<evil@example.com>\r\n",
                b"LHLO c.example.net\r\nSTARTTLS\r\n",
                *ENVELOPE[1:],
                b"DATA\r\n.\r\nQUIT\r\n",
            ],
        ),
        "mechanics": (
            0,
            [
                b"HELO x\r\nEHLO x\r\nMAIL FROM:<a@b.c>\r\nLHLO [192.0.2.1]\r\nNOOP\r\n",
                b"VRFY alice\r\nVRFY\r\nRSET\r\nRSET x\r\nDATA\r\nRCPT TO:<a@b.c>\r\n",
                b"STARTTLS\r\nBDAT 3\r\nabcNOOP\r\nfoo\r\nmail from:<a@b.c> smtputf8\r\n",
                "RCPT TO:<j\u00f6rg@b\u00fccher.example>\r\n".encode(),
                b"RCPT TO:<Postmaster>\r\nRCPT TO:<a@b.c> NOTIFY=NEVER\r\nDATA x\r\nQUIT\r\n",
            ],
        ),
        "bad_bytes": (
            0,
            [
                b"LHLO x\r\nNO\x00OP\r\nNOOP\xff\xfe\r\n\xc4\xb1LHLO x\r\n",
                b"MAIL FROM:<a@b.c> SIZE=12 SIZE=13\r\nMAIL FROM:<a@b.c> BODY=9BIT\r\n",
                b"MAIL FROM:<a@b.c> FOO=BAR\r\nMAIL FROM:<a@b.c> SIZE=x\r\n",
                b'MAIL FROM:<a@b.c> SIZE=99999999999\r\nMAIL FROM:<"a b"@[192.0.2.1]>\r\n',
                b"BDAT 2x\r\n",
            ],
        ),
        "limits_small": (
            4,
            [
                b"LHLO x\r\n" + b"NOOP " + b"x" * 100 + b"\r\nMAIL FROM:<a@b.c>\r\n",
                b"RCPT TO:<a@b.c>\r\n" * 5 + b"DATA\r\n",
                b"y" * 90 + b"\r\n" + b"z" * 300 + b"\r\n.\r\n",
                b"MAIL FROM:<a@b.c>\r\nRCPT TO:<a@b.c>\r\nBDAT 400 LAST\r\n" + b"q" * 400,
                b"BAD\r\n" * 7,
            ],
        ),
        "picky_policy": (
            16 | 8,
            [
                ENVELOPE[0],
                b"MAIL FROM:<nobody@example.net>\r\nRCPT TO:<a@b.c>\r\n",
                b"MAIL FROM:<a@b.c>\r\nRCPT TO:<n@b.c>\r\nRCPT TO:<a@b.c>\r\n",
                b"RCPT TO:<b@b.c>\r\nRCPT TO:<nobody@b.c>\r\nDATA\r\n",
                b"Subject: picky\r\n\r\nHi\r\n.\r\n",
                b"MAIL FROM:<a@b.c>\r\nRCPT TO:<n@b.c>\r\nRCPT TO:<a@b.c>\r\n",
                b"BDAT 5 LAST\r\nhello",
                b"MAIL FROM:<a@b.c>\r\nRCPT TO:<n@b.c>\r\nDATA\r\nBDAT 0 LAST\r\n",
                b"RSET\r\nQUIT\r\n",
            ],
        ),
    }


# ---- message bodies ------------------------------------------------------------------------


def body_seeds() -> dict[str, tuple[int, list[bytes]]]:
    """Bodies as (option flags, pieces)."""
    return {
        "email_crlf": (0, [MESSAGE[:40], MESSAGE[40:41], MESSAGE[41:]]),
        "email_unix": (0, [MESSAGE.replace(b"\r\n", b"\n")]),
        "leading_dots": (0, [b".\r\n", b"..\r", b"\n.x\n", b".", b"\r\n.\r\n"]),
        "smuggling": (0, [b"A\n.\nB\r\n.\nC\n.\r\nD\r.\r\nE\r\n.\r", b"\nF\r\n.\r\n"]),
        "cr_split": (0, [b"line\r", b"\n.dot\r", b"\r", b"\n", b"end"]),
        "empty": (0, []),
        "bdat": (1, [b"a\rb\nc\r\n.", b"d\r", b"\n"]),
        "long_lines": (2 | (4 << 2), [b"12345678901", b"2\r\nshort\r\n", b"x" * 40 + b"\r"]),
        "eight_bit": (0, [b"\xc3\xa9t\xc3\xa9\r\n\x00\xff.\r\n"]),
    }


# ---- writing -------------------------------------------------------------------------------


def lengths(pieces: list[bytes]) -> list[int]:
    """Split lengths that cut at the pieces' boundaries (up to 15 pieces, <= 255 each)."""
    sizes = [len(p) for p in pieces[:15]]
    return sizes if sizes and all(0 < s < 256 for s in sizes) else [7, 1, 30]


#: Client option flags (see fuzz_client_session) to seed each transcript with, if not 0:
#: 1 require_starttls, 2 no chunking (DATA), 8 | 4 size= and the body in pieces.
CLIENT_FLAGS = {
    "dovecot_data": [2],
    "dovecot_bdat": [0, 8 | 4],
    "dovecot_starttls": [1],
    "starttls_injection": [1],
    "cyrus_data": [2 | 16],
    "no_pipelining": [2, 0],
    "data_refused": [2],
    "shutdown_after_data": [0, 2],
    "dovecot_small_chunks": [32, 32 | 64 | 4],
    "chunk_refused": [32 | 64 | 4],
    "surplus_same_read_data": [2],
    "over_size": [8],
}


def corpora() -> dict[str, dict[str, bytes]]:
    replies = reply_seeds()
    out: dict[str, dict[str, bytes]] = {
        "fuzz_reply_reader": {},
        "fuzz_client_session": {},
        "fuzz_server": {},
        "fuzz_body_encoder": {},
    }
    for name, pieces in replies.items():
        payload = b"".join(pieces)
        out["fuzz_reply_reader"][name] = seed(payload, 0, lengths(pieces))
        for flags in CLIENT_FLAGS.get(name, [0]):
            suffix = f"_flags{flags}" if flags else ""
            out["fuzz_client_session"][name + suffix] = seed(payload, flags, lengths(pieces))
    out["fuzz_reply_reader"]["small_limits_long"] = seed(
        b"250-" + b"x" * 70 + b"\r\n" + b"250-a\r\n" * 4 + b"250 z\r\n", 1, [13]
    )
    out["fuzz_reply_reader"]["endless_line"] = seed(b"250 " + b"y" * 600, 0, [100, 3])
    for name, (flags, pieces) in session_seeds().items():
        out["fuzz_server"][name] = seed(b"".join(pieces), flags, lengths(pieces))
    for name, (flags, pieces) in body_seeds().items():
        out["fuzz_body_encoder"][name] = seed(b"".join(pieces), flags, lengths(pieces))
    return out


DICTIONARIES = {
    "fuzz_reply_reader": [
        b"\r\n", b"250-", b"250 ", b"220 ", b"354 ", b"421 ", b"452 ", b"550-", b"2.1.5 ",
        b"5.1.1 ", b"4.2.2", b"\t",
    ],
    "fuzz_client_session": [
        b"\r\n", b"220 ", b"250-", b"250 ", b"354 ", b"421 ", b"452 ", b"550 ", b"2.0.0 ",
        b"STARTTLS", b"PIPELINING", b"CHUNKING", b"8BITMIME", b"SIZE ", b"SMTPUTF8",
        b"ENHANCEDSTATUSCODES", b"BINARYMIME", b"DSN",
    ],
    "fuzz_server": [
        b"\r\n", b"\r\n.\r\n", b"LHLO x\r\n", b"MAIL FROM:<", b"RCPT TO:<", b"DATA\r\n",
        b"BDAT ", b" LAST\r\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n", b"STARTTLS\r\n",
        b"VRFY ", b"HELO ", b"a@b.c>", b"<>", b"SIZE=", b"BODY=8BITMIME", b"BODY=BINARYMIME",
        b"SMTPUTF8", b"postmaster", b"\"q\"@[1.2.3.4]",
    ],
    "fuzz_body_encoder": [b"\r\n", b"\r\n.\r\n", b"\n.\n", b"\r.\r", b".\r\n", b"..", b"\r"],
}  # fmt: skip


def escape(token: bytes) -> str:
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02X}"
                         for b in token) + '"'  # fmt: skip


def main() -> None:
    for target, seeds in corpora().items():
        directory = HERE / "corpus" / target
        directory.mkdir(parents=True, exist_ok=True)
        wanted = set()
        for name, data in seeds.items():
            # The name says what the seed is; the hash keeps libFuzzer's additions apart.
            filename = f"{name}-{hashlib.sha1(data).hexdigest()[:8]}"
            wanted.add(filename)
            (directory / filename).write_bytes(data)
        for path in directory.iterdir():
            if path.name not in wanted and not path.name.startswith("crash-"):
                path.unlink()
    (HERE / "dict").mkdir(exist_ok=True)
    for target, tokens in DICTIONARIES.items():
        text = "".join(f"{escape(token)}\n" for token in tokens)
        (HERE / "dict" / f"{target}.dict").write_text(text)


if __name__ == "__main__":
    main()
