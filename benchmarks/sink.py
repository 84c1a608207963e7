"""A minimal, fast LMTP sink for the client benchmarks: it accepts everything and keeps nothing.

How it works. One thread and a selectors loop over a UNIX socket; each connection has a
Session holding its input in a bytearray. Complete command lines are answered at once
(MAIL, RCPT, DATA, BDAT, RSET, NOOP, LHLO, QUIT; anything else gets 500). BDAT bodies are
skipped by exact octet count, DATA bodies end at the first CRLF.CRLF (a CRLF is put in
front of the body, so an empty message's lone ".\\r\\n" is found the same way). After the
end of a message there is one "250 2.0.0" per accepted recipient, as LMTP requires.
Replies are gathered and written in one write (one "flight") when the client may be
waiting for them: never in the middle of a BDAT chunk, and not while more input is
already readable (RFC 2920's advice to servers). --delay-ms sleeps before each such
write, to stand for a slower link (it stalls the whole loop: use one connection then).

Each flight holding a reply to a transaction command (MAIL, RCPT, DATA, a body, BDAT,
RSET) is counted: on a reused connection those flights are exactly the round trips the
client paid for its messages (greeting, LHLO, NOOP and QUIT flights are not counted).
When a connection ends the sink prints one JSON line on stdout:
{"flights": F, "messages": M, "replies": R}. It prints "ready" once listening.

    python benchmarks/sink.py --socket /tmp/x/sink.sock [--no-extensions] [--delay-ms N]

--no-extensions advertises neither PIPELINING nor CHUNKING (8BITMIME and
ENHANCEDSTATUSCODES stay). SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import sys
import time

READ_SIZE = 256 * 1024
MAX_LINE = 4096
COMMAND, BDAT, DATA = 0, 1, 2
END_OF_DATA = b"\r\n.\r\n"

OK_MAIL = b"250 2.1.0 OK\r\n"
OK_RCPT = b"250 2.1.5 OK\r\n"
OK_DATA = b"250 2.0.0 OK\r\n"
OK = b"250 2.0.0 OK\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
NO_RCPT = b"503 5.5.1 No valid recipients\r\n"
NO_MAIL = b"503 5.5.1 MAIL first\r\n"
UNKNOWN = b"500 5.5.2 Unknown command\r\n"
BYE = b"221 2.0.0 Bye\r\n"
GREETING = b"220 sink.invalid LMTP ready\r\n"


def lhlo_reply(extensions: bool) -> bytes:
    keywords = ["8BITMIME", "ENHANCEDSTATUSCODES"]
    if extensions:
        keywords += ["PIPELINING", "CHUNKING"]
    lines = ["sink.invalid", *keywords]
    return b"".join(
        f"250{'-' if i < len(lines) - 1 else ' '}{line}\r\n".encode()
        for i, line in enumerate(lines)
    )


def readable(conn: socket.socket) -> bool:
    """True if input is waiting (a peek that never blocks; no FD_SETSIZE limit)."""
    try:
        return bool(conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


class Session:
    """One connection's state: feed() what was read, and take the replies it owes."""

    def __init__(self, extensions: bool) -> None:
        self.buf = bytearray()
        self.out: list[bytes] = [GREETING]
        self.counted = False  # the pending replies include a transaction reply
        self.flights = self.messages = self.replies = 0
        self.mode, self.remaining, self.last = COMMAND, 0, False
        self.mail, self.rcpts = False, 0
        self.lhlo = lhlo_reply(extensions)
        self.closing = False

    @property
    def mid_chunk(self) -> bool:
        """Inside a BDAT chunk the client is not waiting for anything."""
        return self.mode == BDAT and self.remaining > 0

    def end_of_message(self) -> None:
        self.mode, self.counted = COMMAND, True
        if self.rcpts:
            self.out.append(OK_DATA * self.rcpts)  # one reply per accepted recipient
            self.replies += self.rcpts
            self.messages += 1
        else:
            self.out.append(NO_RCPT)
        self.mail, self.rcpts = False, 0

    def feed(self, data: bytes) -> bool:
        """Answer everything complete in the input; False when the session is over."""
        buf = self.buf
        buf += data
        while not self.closing:
            if self.mode == BDAT:
                take = min(self.remaining, len(buf))
                del buf[:take]
                self.remaining -= take
                if self.remaining:
                    return True
                if self.last:
                    self.end_of_message()
                else:
                    self.mode, self.counted = COMMAND, True
                    self.out.append(OK)
                continue
            if self.mode == DATA:
                end = buf.find(END_OF_DATA)
                if end < 0:
                    if len(buf) > 4:
                        del buf[: len(buf) - 4]  # keep what may start the terminator
                    return True
                del buf[: end + len(END_OF_DATA)]
                self.end_of_message()
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                return len(buf) <= MAX_LINE
            line = bytes(buf[:end])
            del buf[: end + 2]
            self.command(line)
        return True

    def command(self, line: bytes) -> None:
        verb = line[:4].upper()
        out = self.out
        if verb == b"RCPT":
            out.append(OK_RCPT if self.mail else NO_MAIL)
            self.rcpts += self.mail
            self.counted = True
        elif verb == b"MAIL":
            out.append(OK_MAIL)
            self.mail, self.rcpts, self.counted = True, 0, True
        elif verb == b"BDAT":
            words = line.split()
            self.remaining = int(words[1])
            self.last = len(words) > 2 and words[2].upper() == b"LAST"
            self.mode = BDAT
        elif verb == b"DATA":
            self.counted = True
            if self.rcpts:
                out.append(GO_AHEAD)
                self.mode = DATA
                self.buf[0:0] = b"\r\n"  # so ".\r\n" right away ends an empty message
            else:
                out.append(NO_RCPT if self.mail else NO_MAIL)
        elif verb == b"LHLO":
            out.append(self.lhlo)
        elif verb == b"RSET":
            out.append(OK)
            self.mail, self.rcpts, self.counted = False, 0, True
        elif verb == b"NOOP":
            out.append(OK)
        elif verb == b"QUIT":
            out.append(BYE)
            self.closing = True
        else:
            out.append(UNKNOWN)

    def flush(self, conn: socket.socket, delay: float) -> None:
        """Write the pending replies as one flight, if the client may be waiting for them."""
        if not self.out or self.mid_chunk:
            return
        if not self.closing and readable(conn):
            return  # more pipelined input is already here: answer it in the same flight
        if delay:
            time.sleep(delay)
        conn.sendall(b"".join(self.out))
        self.out.clear()
        self.flights += self.counted
        self.counted = False


def serve(listener: socket.socket, extensions: bool, delay: float) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(listener, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj is listener:
                    conn, _ = listener.accept()
                    session = Session(extensions)
                    session.flush(conn, 0)  # the greeting
                    selector.register(conn, selectors.EVENT_READ, session)
                    continue
                conn, session = key.fileobj, key.data
                assert isinstance(conn, socket.socket) and isinstance(session, Session)
                try:
                    data = conn.recv(READ_SIZE)
                    alive = bool(data) and session.feed(data)
                    session.flush(conn, delay)
                except OSError:
                    alive = False
                if not alive or session.closing:
                    selector.unregister(conn)
                    conn.close()
                    stats = {
                        "flights": session.flights,
                        "messages": session.messages,
                        "replies": session.replies,
                    }
                    print(json.dumps(stats), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="UNIX socket path to listen on")
    parser.add_argument(
        "--no-extensions", action="store_true", help="advertise neither PIPELINING nor CHUNKING"
    )
    parser.add_argument("--delay-ms", type=float, default=0.0, help="sleep before each write")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(args.socket)
    listener.listen(1024)
    print("ready", flush=True)
    try:
        serve(listener, not args.no_extensions, args.delay_ms / 1000)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        listener.close()
        os.unlink(args.socket)


if __name__ == "__main__":
    main()
