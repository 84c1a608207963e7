"""Benchmark of the sans-I/O core alone: body encoding, reply parsing, transactions.

How it works: a fixed corpus (seeded) of mail-like text, CRLF-clean, ~1 MiB, with a
line starting with a dot now and then. Each contender runs ROUNDS times, contenders
alternating within each round, and the median is printed with its ratio to ours.
Encoding contenders: ours through the public API (ClientConnection.send_body() of each
64 KiB piece, then data_to_send(), line-length checks on, as by default: DataSession);
the stdlib way (smtplib's CRLF-fixing regex, then smtplib._quote_periods); and the
floor, one bytes.replace(b"\\r\\n.", b"\\r\\n..") pass. Usage:
    python benchmarks/bench_core.py [--rounds N]
"""

from __future__ import annotations

import argparse
import random
import re
import smtplib
import statistics
import sys
import time
from collections.abc import Callable

from lmtp_core import (
    ClientConnection,
    EndOfData,
    Limits,
    MailFrom,
    RcptTo,
    Ready,
    Reply,
    ServerConnection,
    Signal,
    TransactionResult,
)
from lmtp_core._buffer import ReceiveBuffer
from lmtp_core._readers import ReplyReader

WORDS = [
    w.encode()
    for w in [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "mail",
        "lmtp",
        "delivery",
        "recipient",
        "message",
        "header",
        "body",
        "line",
        "reply",
        "server",
        "client",
    ]
]
PIECE = 64 * 1024


def corpus(size: int = 1 << 20, seed: int = 2033) -> bytes:
    rng = random.Random(seed)
    lines, total = [], 0
    while total < size:
        line = b" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12)))
        if rng.random() < 0.02:
            line = b"." + line
        lines.append(line)
        total += len(line) + 2
    return b"\r\n".join(lines) + b"\r\n"


class DataSession:
    """One client connection (PIPELINING, no CHUNKING: the body goes as DATA) that
    encodes one message per call through the public API: start_transaction(), the
    pipelined replies, send_body() of each 64 KiB piece with data_to_send() after it,
    end_body(), the final reply. What comes out after the 354 is the encoded body."""

    def __init__(self) -> None:
        self.conn = ClientConnection(chunking=False)
        self.conn.receive_data(b"220 mx\r\n")
        assert self.conn.next_event() is Signal.NEED_DATA  # the greeting: LHLO goes out
        self.conn.data_to_send()
        self.conn.receive_data(b"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        assert isinstance(self.conn.next_event(), Ready)

    def __call__(self, data: bytes) -> bytes:
        conn = self.conn
        conn.start_transaction("s@example.net", ["r@example.org"], size=len(data))
        assert conn.next_event() is Signal.NEED_DATA
        conn.data_to_send()  # MAIL, RCPT, DATA
        conn.receive_data(b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 go\r\n")
        assert conn.next_event() is Signal.NEED_BODY
        out = []
        for start in range(0, len(data), PIECE):
            conn.send_body(data[start : start + PIECE])
            out.append(conn.data_to_send())
        conn.end_body()
        out.append(conn.data_to_send())
        assert conn.next_event() is Signal.NEED_DATA
        conn.receive_data(b"250 2.0.0 Saved\r\n")
        assert isinstance(conn.next_event(), TransactionResult)
        return b"".join(out)


_EOLS = re.compile(rb"(?:\r\n|\n|\r(?!\n))")


def stdlib(data: bytes) -> bytes:
    quoted = smtplib._quote_periods(_EOLS.sub(b"\r\n", data))  # type: ignore[attr-defined]
    return quoted + b".\r\n" if quoted.endswith(b"\r\n") else quoted + b"\r\n.\r\n"


def floor(data: bytes) -> bytes:
    return data.replace(b"\r\n.", b"\r\n..")


def timed(function: Callable[[], object], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        function()
    return (time.perf_counter() - start) / repeat


def medians(
    contenders: dict[str, Callable[[], object]], repeat: int, rounds: int
) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, function in contenders.items():  # alternate within each round
            samples[name].append(timed(function, repeat))
    return {name: statistics.median(values) for name, values in samples.items()}


REPLIES = (
    b"250 2.1.5 OK\r\n" * 6 + b"250 2.0.0 <alice@example.org> 4nQBBi6XYmWsHQAA Saved\r\n"
    b"250-mx.example.org\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n"
)
REPLIES_PER_BLOCK = 8


def parse_replies(blocks: int = 500) -> int:
    buffer, reader = ReceiveBuffer(), ReplyReader(Limits())
    buffer.feed(REPLIES * blocks)
    count = 0
    while reader.read(buffer) is not None:
        count += 1
    return count


def transactions(count: int, recipients: int = 10) -> None:
    """`count` transactions of `recipients` recipients on one in-memory connection pair."""
    client, server = ClientConnection(), ServerConnection("mx.example.org")
    rcpts = [RcptTo(f"user{i}@example.org") for i in range(recipients)]
    message = corpus(2048, seed=1)
    done = 0
    while done < count:
        event = client.next_event()
        if event is Signal.NEED_DATA:
            server.receive_data(client.data_to_send())
            while (s := server.next_event()) is not Signal.NEED_DATA:
                if isinstance(s, MailFrom):
                    server.send(Reply(250, "2.1.0", "OK"))
                elif isinstance(s, RcptTo):
                    server.send(Reply(250, "2.1.5", "OK"))
                elif isinstance(s, EndOfData):
                    for _ in range(server.owed_replies):
                        server.send(Reply(250, "2.0.0", "Saved"))
            client.receive_data(server.data_to_send())
        elif event is Signal.NEED_BODY:
            client.send_body(message)
            client.end_body()
        elif isinstance(event, Ready | TransactionResult):
            if isinstance(event, TransactionResult):
                assert event.all_delivered
                done += 1
            client.start_transaction("sender@example.net", rcpts, size=len(message))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    data = corpus()
    ours = DataSession()
    assert ours(data) == stdlib(data), "contenders disagree on the output"
    mb = len(data) / 1e6
    enc = medians(
        {"ours": lambda: ours(data), "stdlib": lambda: stdlib(data), "floor": lambda: floor(data)},
        repeat=20,
        rounds=args.rounds,
    )
    print(
        f"lmtp_core benchmark, Python {sys.version.split()[0]}, corpus {len(data)} octets, "
        f"median of {args.rounds} rounds\n"
    )
    print(f"{'DATA encoding (CRLF-clean, 64 KiB pieces)':44} {'MB/s':>10} {'ours/it':>10}")
    for name, label in [
        ("ours", "ours (send_body + data_to_send)"),
        ("stdlib", "stdlib (EOL regex + _quote_periods)"),
        ("floor", "floor (one bytes.replace pass)"),
    ]:
        print(f"  {label:42} {mb / enc[name]:10.0f} {enc[name] / enc['ours']:10.2f}x")
    parse = medians({"parse": parse_replies}, repeat=3, rounds=args.rounds)["parse"]
    print(f"\n{'reply parsing':44} {500 * REPLIES_PER_BLOCK / parse:10.0f} replies/s")
    txn = medians({"txn": lambda: transactions(200)}, repeat=1, rounds=args.rounds)["txn"]
    print(f"{'in-memory client+server, 10 recipients':44} {200 / txn:10.0f} transactions/s")


if __name__ == "__main__":
    main()
