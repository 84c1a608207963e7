"""Delivery benchmark: our LMTP clients and servers against smtplib, aiosmtpd and the floor.

How it works. Every server runs in its own process on a UNIX socket in a temporary
directory: benchmarks/sink.py (a minimal LMTP sink that answers pipelined commands, BDAT
and DATA, keeps nothing and counts its reply "flights", i.e. the client's round trips),
our asyncio and trio servers, and aiosmtpd's LMTP server. A fixed 2 KiB message (seeded
corpus from bench_core) is delivered on one reused connection; each contender runs once
per round, contenders alternating within each round, and the median of the rounds is
printed with its ratio to ours (ours/it: how many times ours is faster) and the client
process's CPU time per message. The floor is the session our client would send, encoded
once in memory by lmtp_core, written and its replies counted (CRLFs) with no protocol
logic at all. Every result is checked (all recipients delivered, the sink's message and
reply counts). Sections:

1. client throughput (1 and 10 recipients): smtplib.LMTP, ours (blocking with BDAT, and
   with DATA; asyncio; trio) and the floor, against the sink;
2. round trips per message, from the sink's flight count, with and without PIPELINING;
3. section 1 again with the sink sleeping 1 ms before each reply write;
4. one large message (--large-mib, 1 GiB by default) streamed from a file: wall time
   and peak RSS (ru_maxrss) of each contender in its own subprocess;
5. server throughput: our asyncio and trio servers against aiosmtpd (handler answering
   once per recipient), loaded by our asyncio client with 8 connections, 3 recipients;
6. 1,000 deliveries in flight at once (one connection each) from asyncio and trio into
   our asyncio server: time, failures and peak RSS of the client process;
7. benchmarks/bench_core.py, run as a subprocess.

Each target from the issue is checked and printed as met or missed, with the margin.
Processes are pinned to CPUs (--cpus, see place()): on this kind of 2-core VM a round
trip costs ~3x more when client and server sit on different CPUs, and unpinned runs
swing between the two. Usage (about 3 minutes; add --scale 0.2 --large-mib 64
--large-rounds 1 for a quick look):

    python benchmarks/bench_delivery.py [--rounds N] [--scale X] [--large-mib MIB]
        [--sections 1,2,...] [--cpus auto|same|split|any]
    python benchmarks/bench_delivery.py --profile blocking --recipients 10
    python benchmarks/bench_delivery.py --profile server-trio
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime
import io
import json
import os
import pstats
import queue
import resource
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bench_core
import sink

from lmtp_core import ClientConnection, Ready, Signal
from transports import Handler, blocking
from transports import asyncio as lmtp_asyncio

HERE = Path(__file__).resolve().parent
SENDER = "bench@example.net"
MESSAGE_SIZE = 2048
# Messages per contender and round at --scale 1 (the whole run stays near 4 minutes).
THROUGHPUT_COUNT = 1500
DELAYED_COUNT = 150
NO_PIPELINING_COUNT = 300
SERVER_COUNT = 250  # per connection, 8 connections
SERVER_CONNECTIONS = 8
SERVER_RECIPIENTS = 3
BURST = 1000
BACKLOG = 1024
MIB = 1024 * 1024
# --cpus: where this process (the client, and the children it starts) and the server
# processes run. The default pins the ping-pong sections (1-3) to one CPU and gives each
# side its own CPU where both work at once (4-6); see place().
CPUS_MODE = "auto"
ALL_CPUS = sorted(os.sched_getaffinity(0))
SERVER_CPUS: set[int] = set()


class Stopwatch:
    """Wall time and this process's CPU time (user + system, all threads) since creation."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


#: (socket path, message, recipients, count) -> (wall seconds, client CPU seconds)
Contender = Callable[[str, bytes, list[str], int], tuple[float, float]]


# ---- the corpus --------------------------------------------------------------------


def recipients(count: int) -> list[str]:
    return [f"user{i}@example.org" for i in range(count)]


def message(size: int = MESSAGE_SIZE, seed: int = 2033) -> bytes:
    """A mail-like message of exactly `size` octets: headers, then seeded corpus text."""
    head = (
        f"From: <{SENDER}>\r\nTo: <user0@example.org>\r\nSubject: benchmark\r\n"
        "Message-ID: <bench@example.net>\r\n\r\n"
    ).encode()
    body = bench_core.corpus(size, seed=seed)
    cut = body.rfind(b"\r\n", 0, size - len(head) - 2) + 2
    text = head + body[:cut]
    return text + b"x" * (size - len(text) - 2) + b"\r\n"


def session_bytes(msg: bytes, rcpts: list[str]) -> bytes:
    """What our client writes for one transaction after LHLO (PIPELINING + CHUNKING),
    encoded once by lmtp_core in memory: the floor replays these bytes."""
    conn = ClientConnection()
    conn.receive_data(b"220 sink.invalid\r\n")
    assert conn.next_event() is Signal.NEED_DATA
    conn.data_to_send()  # LHLO
    conn.receive_data(sink.lhlo_reply(True))
    assert isinstance(conn.next_event(), Ready)
    conn.start_transaction(SENDER, rcpts, size=len(msg), eight_bit=False)
    out = bytearray()
    while (event := conn.next_event()) is Signal.NEED_BODY:
        conn.send_body(msg)
        conn.end_body()
    assert event is Signal.NEED_DATA
    out += conn.data_to_send()
    return bytes(out)


def large_file(directory: str, mib: int) -> str:
    """A message of about `mib` MiB (headers + the 1 MiB corpus repeated), written in pieces."""
    path = os.path.join(directory, "large.eml")
    piece = bench_core.corpus()
    with open(path, "wb") as file:
        file.write(b"From: <bench@example.net>\r\nSubject: large\r\n\r\n")
        for _ in range(mib):
            file.write(piece)
    return path


# ---- processes ---------------------------------------------------------------------


class Process:
    """A child process that prints "ready" once listening, then JSON lines; stopped on exit."""

    def __init__(self, args: list[str], name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=HERE,
        )
        if SERVER_CPUS:
            os.sched_setaffinity(self.proc.pid, SERVER_CPUS)  # its threads inherit it
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        if self.line(30) != "ready":
            self.stop()
            raise RuntimeError(f"{name} did not start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def line(self, timeout: float = 60) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.name}: no output in {timeout} s") from None

    def stats(self) -> dict[str, int]:
        """The sink's line for the connection that just ended."""
        return json.loads(self.line())  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextlib.contextmanager
def running(args: list[str], name: str) -> Iterator[Process]:
    process = Process(args, name)
    try:
        yield process
    finally:
        process.stop()


def start_sink(
    directory: str, name: str, *extra: str
) -> contextlib.AbstractContextManager[Process]:
    path = os.path.join(directory, f"{name}.sock")
    return running(["sink.py", "--socket", path, *extra], name)


def sock_path(process: Process, directory: str) -> str:
    return os.path.join(directory, f"{process.name}.sock")


def child(args: list[str], timeout: float = 600) -> dict[str, Any]:
    """Run this script in --child mode; its last stdout line is a JSON result.

    Linux carries ru_maxrss over fork and exec: a child forked from this process would
    start with this process's RSS as its "peak". sh forks it instead (the "; exit" keeps
    sh from exec'ing it), so the child's ru_maxrss starts from sh's few MiB. sh and the
    child get their own process group, killed whole if anything goes wrong."""
    proc = subprocess.Popen(
        ["sh", "-c", '"$0" "$@"; exit $?', sys.executable, __file__, "--child", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:  # a timeout, or Ctrl-C: stop sh and the child it forked
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed:\n{err}")
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def raise_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---- client contenders (section 1): each returns the seconds for `count` messages ------


def run_smtplib(path: str, msg: bytes, rcpts: list[str], count: int) -> tuple[float, float]:
    client = smtplib.LMTP(path)

    def one() -> None:
        assert not client.sendmail(SENDER, rcpts, msg)
        # smtplib reads ONE reply after the data, then would be out of step: read the
        # other recipients' replies ourselves (CPython issue 76984).
        for _ in rcpts[1:]:
            assert client.getreply()[0] == 250

    try:
        one()  # LHLO and a first transaction, untimed
        clock = Stopwatch()
        for _ in range(count):
            one()
        return clock.stop()
    finally:
        client.quit()


def run_blocking(
    path: str, msg: bytes, rcpts: list[str], count: int, chunking: bool
) -> tuple[float, float]:
    with blocking.Client(socket_path=path, chunking=chunking) as client:
        assert client.deliver(msg, SENDER, rcpts).all_delivered
        clock = Stopwatch()
        for _ in range(count):
            assert client.deliver(msg, SENDER, rcpts).all_delivered
        return clock.stop()


def run_asyncio(path: str, msg: bytes, rcpts: list[str], count: int) -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        async with lmtp_asyncio.Client(socket_path=path) as client:
            assert (await client.deliver(msg, SENDER, rcpts)).all_delivered
            clock = Stopwatch()
            for _ in range(count):
                assert (await client.deliver(msg, SENDER, rcpts)).all_delivered
            return clock.stop()

    return asyncio.run(main())


def run_trio(path: str, msg: bytes, rcpts: list[str], count: int) -> tuple[float, float]:
    import trio  # imported where needed: it would add ~3 MiB to every child's RSS

    from transports import trio as lmtp_trio

    async def main() -> tuple[float, float]:
        async with lmtp_trio.Client(socket_path=path) as client:
            assert (await client.deliver(msg, SENDER, rcpts)).all_delivered
            clock = Stopwatch()
            for _ in range(count):
                assert (await client.deliver(msg, SENDER, rcpts)).all_delivered
            return clock.stop()

    return trio.run(main)


def _read_until(sock: socket.socket, done: Callable[[bytes], bool]) -> None:
    data = b""
    while not done(data):
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError("the sink closed the connection")
        data += piece


def run_floor(path: str, msg: bytes, rcpts: list[str], count: int) -> tuple[float, float]:
    session = session_bytes(msg, rcpts)
    replies = 1 + 2 * len(rcpts)  # MAIL, each RCPT, one per recipient after the data
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        _read_until(sock, lambda d: d.endswith(b"\r\n"))
        sock.sendall(b"LHLO bench.invalid\r\n")
        _read_until(sock, lambda d: d.endswith(b"\r\n") and d.split(b"\r\n")[-2][3:4] == b" ")

        def one() -> None:
            sock.sendall(session)
            seen = 0
            while seen < replies:
                piece = sock.recv(65536)
                if not piece:
                    raise ConnectionError("the sink closed the connection")
                seen += piece.count(b"\r\n")

        one()
        clock = Stopwatch()
        for _ in range(count):
            one()
        elapsed = clock.stop()
        sock.sendall(b"QUIT\r\n")
        _read_until(sock, lambda d: d.endswith(b"\r\n"))
        return elapsed


CLIENTS: dict[str, tuple[str, Contender]] = {
    "smtplib": ("smtplib.LMTP (+ getreply() for replies 2..n)", run_smtplib),
    "blocking": (
        "ours blocking, PIPELINING+BDAT",
        lambda p, m, r, n: run_blocking(p, m, r, n, True),
    ),
    "blocking-data": (
        "ours blocking, PIPELINING+DATA",
        lambda p, m, r, n: run_blocking(p, m, r, n, False),
    ),
    "asyncio": ("ours asyncio, PIPELINING+BDAT", run_asyncio),
    "trio": ("ours trio, PIPELINING+BDAT", run_trio),
    "floor": ("floor (same bytes, CRLFs counted)", run_floor),
}
OURS = ["blocking", "blocking-data", "asyncio", "trio"]


def place(*, bulk: bool) -> str:
    """Pin the client (this process) and the servers started next, per --cpus; returns
    a description. On this kind of VM the floor's round trip (client, sink, back) takes
    ~35 us with both on one CPU and ~95 us across CPUs, and the scheduler moves
    ping-pong pairs between the two, so unpinned figures swing by 2-3x between runs."""
    mode = CPUS_MODE if CPUS_MODE != "auto" else ("split" if bulk else "same")
    if mode == "split" and len(ALL_CPUS) < 2:
        mode = "same"
    SERVER_CPUS.clear()
    if mode == "any":
        os.sched_setaffinity(0, ALL_CPUS)
        return "client and server placed by the scheduler"
    client, server = ALL_CPUS[0], ALL_CPUS[1 if mode == "split" else 0]
    os.sched_setaffinity(0, {client})
    SERVER_CPUS.add(server)
    if mode == "same":
        return f"client and server pinned to CPU {client}"
    return f"client pinned to CPU {client}, server to CPU {server}"


def client_rounds(
    sink_process: Process,
    directory: str,
    *,
    names: list[str],
    rcpts: list[str],
    count: int,
    rounds: int,
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Per contender: messages/s and client CPU microseconds per message (medians of the
    rounds), and round trips per message."""
    path = sock_path(sink_process, directory)
    msg = message()
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    trips: dict[str, float] = {}
    for _ in range(rounds):
        for name in names:  # alternate within each round
            seconds, cpu_seconds = CLIENTS[name][1](path, msg, rcpts, count)
            stats = sink_process.stats()
            assert stats["messages"] == count + 1, (name, stats)
            assert stats["replies"] == (count + 1) * len(rcpts), (name, stats)
            rates[name].append(count / seconds)
            cpu[name].append(cpu_seconds / count * 1e6)
            trips[name] = stats["flights"] / stats["messages"]
    median = statistics.median
    return (
        {name: median(values) for name, values in rates.items()},
        {name: median(values) for name, values in cpu.items()},
        trips,
    )


# ---- printing ----------------------------------------------------------------------

VERDICTS: list[str] = []


def target(
    label: str, value: float, goal: float, unit: str = "x", *, higher: bool = True, digits: int = 2
) -> None:
    """Print (and keep for the summary) whether a target is met, and by how much."""
    met = value >= goal if higher else value <= goal
    if higher:
        margin = f"{value / goal:.2f} of the target"
    elif met:
        margin = f"{(goal - value) / goal:.0%} under the limit"
    else:
        margin = f"{value / goal:.2f}x the limit"
    line = (
        f"  [{'met' if met else 'MISSED'}] {label}: {value:.{digits}f}{unit} "
        f"(target {'>=' if higher else '<='} {goal:g}{unit}; {margin})"
    )
    VERDICTS.append(line)
    print(line)


def rate_table(
    title: str,
    rates: dict[str, float],
    cpu: dict[str, float],
    trips: dict[str, float],
    reference: str = "blocking",
) -> None:
    print(f"\n{title:52} {'msgs/s':>9} {'ours/it':>8} {'trips':>6} {'CPU us':>7}")
    for name, rate in rates.items():
        label = CLIENTS[name][0]
        print(
            f"  {label:50} {rate:9.0f} {rates[reference] / rate:7.2f}x {trips[name]:6.2f} "
            f"{cpu[name]:7.0f}"
        )


# ---- sections ----------------------------------------------------------------------


def section_clients(
    directory: str, rounds: int, scale: float, delay_ms: float, number: int
) -> dict[int, dict[str, float]]:
    """Section 1 (or 3 with a delay); returns the round trips per message, by recipients."""
    count = max(20, int((DELAYED_COUNT if delay_ms else THROUGHPUT_COUNT) * scale))
    extra = ["--delay-ms", str(delay_ms)] if delay_ms else []
    what = f", sink sleeps {delay_ms:g} ms before each write" if delay_ms else ""
    where = place(bulk=False)
    print(
        f"\n## {number}. Client throughput, one reused connection, UNIX socket{what}\n"
        f"2 KiB message, {count} messages per contender and round, median of {rounds} "
        "rounds; ours/it = our blocking client's rate / its rate; trips = round trips per "
        "message (sink flights); CPU us = the client process's CPU time (user + system) per "
        f"message; {where}."
    )
    results: dict[int, dict[str, float]] = {}
    trips_by_n: dict[int, dict[str, float]] = {}
    with start_sink(directory, "sink-delay" if delay_ms else "sink", *extra) as process:
        for n in (1, 10):
            rates, cpu, trips = client_rounds(
                process,
                directory,
                names=list(CLIENTS),
                rcpts=recipients(n),
                count=count,
                rounds=rounds,
            )
            rate_table(f"{n} recipient{'s' if n > 1 else ''}", rates, cpu, trips)
            results[n], trips_by_n[n] = rates, trips
    print(
        "  smtplib reads ONE reply after the data: with 10 recipients it would pair its next "
        "command\n  with recipient 2's reply (CPython issue 76984); the contender reads the "
        "other 9 with getreply()."
    )
    if not delay_ms:
        print("\nTargets: ours >= 3x smtplib (1 rcpt), >= 6x (10 rcpts), >= half the floor")
        for name in OURS:
            label = CLIENTS[name][0]
            for n, goal in ((1, 3.0), (10, 6.0)):
                rates = results[n]
                target(f"{label} vs smtplib, {n} rcpt", rates[name] / rates["smtplib"], goal)
            for n in (1, 10):
                rates = results[n]
                target(f"{label} vs floor, {n} rcpt", rates[name] / rates["floor"], 0.5)
    return trips_by_n


def section_round_trips(
    directory: str, scale: float, trips1: dict[str, float], trips10: dict[str, float]
) -> None:
    count = max(20, int(NO_PIPELINING_COUNT * scale))
    print(
        "\n## 2. Round trips per message on a reused connection (sink flights / messages)\n"
        "PIPELINING rows come from section 1; 'no PIPELINING' is a sink advertising neither "
        f"PIPELINING nor CHUNKING ({count} messages); {place(bulk=False)}."
    )
    msg = message()
    plain: dict[str, dict[int, float]] = {"blocking": {}, "smtplib": {}}
    rates: dict[str, dict[int, float]] = {"blocking": {}, "smtplib": {}}
    with start_sink(directory, "sink-plain", "--no-extensions") as process:
        path = sock_path(process, directory)
        for n in (1, 10):
            for name in ("blocking", "smtplib"):
                seconds, _ = CLIENTS[name][1](path, msg, recipients(n), count)
                stats = process.stats()
                assert stats["messages"] == count + 1, (name, stats)
                plain[name][n] = stats["flights"] / stats["messages"]
                rates[name][n] = count / seconds
    rows = [
        ("ours, PIPELINING + CHUNKING (BDAT)", trips1["blocking"], trips10["blocking"], "1"),
        ("ours, PIPELINING + DATA", trips1["blocking-data"], trips10["blocking-data"], "2"),
        ("ours asyncio, PIPELINING + CHUNKING", trips1["asyncio"], trips10["asyncio"], "1"),
        ("ours trio, PIPELINING + CHUNKING", trips1["trio"], trips10["trio"], "1"),
        ("ours, no PIPELINING (DATA)", plain["blocking"][1], plain["blocking"][10], "n+3"),
        ("smtplib, server with PIPELINING", trips1["smtplib"], trips10["smtplib"], "-"),
        ("smtplib, server without", plain["smtplib"][1], plain["smtplib"][10], "-"),
        ("floor (one write, replies counted)", trips1["floor"], trips10["floor"], "1"),
    ]
    print(f"\n{'round trips per message':52} {'1 rcpt':>7} {'10 rcpts':>9} {'expected':>9}")
    for label, one, ten, expected in rows:
        print(f"  {label:50} {one:7.2f} {ten:9.2f} {expected:>9}")
    print(
        f"  (without PIPELINING: ours {rates['blocking'][1]:.0f} / {rates['blocking'][10]:.0f}"
        f" msgs/s, smtplib {rates['smtplib'][1]:.0f} / {rates['smtplib'][10]:.0f} msgs/s "
        "for 1 / 10 rcpts)"
    )
    for name, goal in (("blocking", 1), ("blocking-data", 2)):
        for n, trips in ((1, trips1), (10, trips10)):
            label = f"{CLIENTS[name][0]} round trips/msg, {n} rcpt"
            target(label, trips[name], goal, "", higher=False)


def section_large(directory: str, mib: int, rounds: int) -> None:
    print(
        f"\n## 4. One large message ({mib} MiB) streamed from a file on disk to the sink\n"
        f"Each contender in its own process; median of {rounds} rounds; RSS = ru_maxrss of "
        "that process (MiB), 'idle' = its RSS before the delivery started; "
        f"{place(bulk=True)}."
    )
    path = large_file(directory, mib)
    size = os.path.getsize(path)
    contenders = {
        "ours": "ours blocking, file object (BDAT, 1 MiB chunks)",
        "smtplib": "smtplib LMTP.sendmail(file read whole)",
        "floor": "floor: BDAT LAST header + socket.sendfile()",
    }
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    with start_sink(directory, "sink-large") as process:
        for _ in range(rounds):
            for name in contenders:
                results[name].append(child(["large", name, sock_path(process, directory), path]))
                stats = process.stats()
                assert stats["messages"] == 1, (name, stats)
    print(f"\n{'contender':52} {'seconds':>8} {'MB/s':>7} {'RSS MiB':>8} {'idle':>6}")
    med: dict[str, dict[str, float]] = {}
    for name, label in contenders.items():
        runs = results[name]
        med[name] = {
            key: statistics.median(r[key] for r in runs) for key in ("seconds", "rss", "idle")
        }
        m = med[name]
        print(
            f"  {label:50} {m['seconds']:8.2f} {size / 1e6 / m['seconds']:7.0f} "
            f"{m['rss']:8.1f} {m['idle']:6.1f}"
        )
    print(
        f"  ours/smtplib: time {med['ours']['seconds'] / med['smtplib']['seconds']:.2f}x, "
        f"peak RSS {med['ours']['rss'] / med['smtplib']['rss']:.3f}x"
    )
    target(f"ours peak RSS, {mib} MiB message", med["ours"]["rss"], 64, " MiB", higher=False)


def section_servers(directory: str, rounds: int, scale: float) -> None:
    count = max(10, int(SERVER_COUNT * scale))
    total = count * SERVER_CONNECTIONS
    print(
        f"\n## 5. Server throughput: {SERVER_CONNECTIONS} connections x {count} messages "
        f"(2 KiB, {SERVER_RECIPIENTS} recipients) from our asyncio client\n"
        f"Each server in its own process, discarding mail; median of {rounds} rounds; "
        "ours/it = our asyncio server's rate / its rate. The sink row is the ceiling of "
        f"this load generator (a server doing nothing); {place(bulk=True)}."
    )
    servers = {
        "asyncio": "ours asyncio Server, Handler() (discards)",
        "trio": "ours trio Server, Handler() (discards)",
        "aiosmtpd": "aiosmtpd LMTP, handler: one 250 per rcpt",
        "sink": "sink.py (ceiling of the load generator)",
    }
    msg, rcpts = message(), recipients(SERVER_RECIPIENTS)
    rates: dict[str, list[float]] = {name: [] for name in servers}
    with contextlib.ExitStack() as stack:
        paths = {}
        for name in servers:
            path = os.path.join(directory, f"server-{name}.sock")
            args = (
                ["sink.py", "--socket", path]
                if name == "sink"
                else [__file__, "--child", "server", name, path]
            )
            process = stack.enter_context(running(args, f"server-{name}"))
            paths[name] = (path, process)
        for _ in range(rounds):
            for name in servers:
                path, process = paths[name]
                seconds = asyncio.run(load(path, msg, rcpts, count))
                rates[name].append(total / seconds)
                if name == "sink":
                    for _ in range(SERVER_CONNECTIONS):
                        process.stats()
    med = {name: statistics.median(values) for name, values in rates.items()}
    print(f"\n{'server':52} {'msgs/s':>9} {'ours/it':>8}")
    for name, label in servers.items():
        print(f"  {label:50} {med[name]:9.0f} {med['asyncio'] / med[name]:7.2f}x")
    target("ours asyncio server vs aiosmtpd", med["asyncio"] / med["aiosmtpd"], 3.0)
    target("ours trio server vs aiosmtpd", med["trio"] / med["aiosmtpd"], 3.0)


async def load(path: str, msg: bytes, rcpts: list[str], count: int) -> float:
    """SERVER_CONNECTIONS clients at once, `count` messages each; the seconds it took."""

    async def one_connection() -> None:
        async with lmtp_asyncio.Client(socket_path=path) as client:
            for _ in range(count):
                result = await client.deliver(msg, SENDER, rcpts)
                assert result.all_delivered, result

    start = time.perf_counter()
    await asyncio.gather(*(one_connection() for _ in range(SERVER_CONNECTIONS)))
    return time.perf_counter() - start


def section_burst(directory: str, rounds: int) -> None:
    print(
        f"\n## 6. {BURST} deliveries in flight at once (one connection each) into our "
        "asyncio server\nEach client in its own process (2 KiB, 1 recipient, its file limit "
        f"raised to the hard limit); median of {rounds} rounds; RSS = ru_maxrss of the client "
        f"process. The server's backlog setting is {BACKLOG} (its default); the last two "
        "rows show one round against asyncio's own listen() backlog of 100; "
        f"{place(bulk=True)}."
    )
    runtimes = ["asyncio", "trio"]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in runtimes}
    default: dict[str, dict[str, Any]] = {}
    raised = os.path.join(directory, "burst.sock")
    plain = os.path.join(directory, "burst-default.sock")
    with (
        running([__file__, "--child", "server", "asyncio", raised, str(BACKLOG)], "burst"),
        running([__file__, "--child", "server", "asyncio", plain], "burst-default"),
    ):
        for _ in range(rounds):
            for name in runtimes:
                results[name].append(child(["burst", name, raised, str(BURST)]))
        for name in runtimes:
            default[name] = child(["burst", name, plain, str(BURST)])
    print(f"\n{'client':52} {'seconds':>8} {'ok':>6} {'failed':>7} {'RSS MiB':>8}")
    rows = [(f"ours {n} client, backlog {BACKLOG}", results[n]) for n in runtimes]
    rows += [(f"ours {n} client, default backlog (100)", [default[n]]) for n in runtimes]
    for label, runs in rows:
        seconds = statistics.median(r["seconds"] for r in runs)
        rss = statistics.median(r["rss"] for r in runs)
        ok = min(r["ok"] for r in runs)
        failed = max(r["failed"] for r in runs)
        print(f"  {label:50} {seconds:8.2f} {ok:6d} {failed:7d} {rss:8.1f}")
        for error in sorted({e for r in runs for e in r["errors"]})[:3]:
            print(f"      error: {error}")
    for name in runtimes:
        ok = min(r["ok"] for r in results[name])
        target(
            f"{name} client: {BURST} at once, backlog {BACKLOG}, succeeded", ok, BURST, "", digits=0
        )


def section_core(rounds: int) -> None:
    print("\n## 7. bench_core.py (the sans-I/O core alone)\n")
    done = subprocess.run(
        [sys.executable, str(HERE / "bench_core.py"), "--rounds", str(rounds)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    print(done.stdout.rstrip())


# ---- child processes ---------------------------------------------------------------


def child_large(name: str, path: str, file_path: str) -> dict[str, Any]:
    idle = max_rss_mib()
    start = time.perf_counter()
    if name == "ours":
        with open(file_path, "rb") as file, blocking.Client(socket_path=path) as client:
            assert client.deliver(file, SENDER, ["user0@example.org"]).all_delivered
    elif name == "smtplib":
        with open(file_path, "rb") as file:
            data = file.read()
        client = smtplib.LMTP(path)
        assert not client.sendmail(SENDER, ["user0@example.org"], data)
        client.quit()
    else:
        size = os.path.getsize(file_path)
        head = session_bytes(b"", ["user0@example.org"]).replace(
            b"BDAT 0 LAST", f"BDAT {size} LAST".encode()
        )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            _read_until(sock, lambda d: d.endswith(b"\r\n"))
            sock.sendall(b"LHLO bench.invalid\r\n")
            _read_until(sock, lambda d: d.endswith(b"\r\n") and d.split(b"\r\n")[-2][3:4] == b" ")
            sock.sendall(head)
            with open(file_path, "rb") as file:
                sock.sendfile(file)
            _read_until(sock, lambda d: d.count(b"\r\n") >= 3)
            sock.sendall(b"QUIT\r\n")
            _read_until(sock, lambda d: d.endswith(b"\r\n"))
    return {"seconds": time.perf_counter() - start, "rss": max_rss_mib(), "idle": idle}


def child_burst(runtime: str, path: str, count: int) -> dict[str, Any]:
    raise_file_limit()
    msg = message()
    errors: list[str] = []
    outcomes: list[bool] = []

    async def one(deliver: Any) -> None:
        try:
            result = await deliver(msg, SENDER, ["user0@example.org"], socket_path=path)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            outcomes.append(False)
            return
        if not result.all_delivered:
            errors.append(str(result.recipients[0]))
        outcomes.append(bool(result.all_delivered))

    start = time.perf_counter()
    if runtime == "asyncio":

        async def with_asyncio() -> None:
            await asyncio.gather(*(one(lmtp_asyncio.deliver) for _ in range(count)))

        asyncio.run(with_asyncio())
    else:
        import trio

        from transports import trio as lmtp_trio

        async def with_trio() -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(one, lmtp_trio.deliver)

        trio.run(with_trio)
    seconds = time.perf_counter() - start
    ok = sum(outcomes)
    return {
        "seconds": seconds,
        "ok": ok,
        "failed": count - ok,
        "rss": max_rss_mib(),
        "errors": sorted(set(errors))[:5],
    }


def child_server(kind: str, path: str, backlog: str = "") -> None:
    """Serve on `path` until SIGTERM; prints "ready" once listening."""
    raise_file_limit()
    if kind == "trio":
        import trio

        from transports import trio as lmtp_trio

        async def serve_trio() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(lmtp_trio.Server(Handler(), socket_path=path).serve)
                print("ready", flush=True)

        trio.run(serve_trio)
        return

    async def serve_asyncio() -> None:
        if kind == "aiosmtpd":
            from aiosmtpd.lmtp import LMTP

            class PerRecipient:
                async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                    return "\r\n".join(["250 2.0.0 OK"] * len(envelope.rcpt_tos))

            loop = asyncio.get_running_loop()
            server = await loop.create_unix_server(lambda: LMTP(PerRecipient(), loop=loop), path)
            async with server:
                print("ready", flush=True)
                await server.serve_forever()
        else:
            # "default" (no backlog given) is asyncio's own listen() backlog of 100, as
            # the section compares; the server's backlog setting gives the raised one.
            async with lmtp_asyncio.Server(
                Handler(), socket_path=path, backlog=int(backlog or 100), max_connections=BURST
            ) as ours:
                print("ready", flush=True)
                await ours.serve_forever()

    asyncio.run(serve_asyncio())


def run_child(args: list[str]) -> None:
    mode, rest = args[0], args[1:]
    if mode == "large":
        print(json.dumps(child_large(*rest)))
    elif mode == "burst":
        print(json.dumps(child_burst(rest[0], rest[1], int(rest[2]))))
    elif mode == "server":
        profile_out = os.environ.get("LMTP_BENCH_PROFILE")
        profiler = cProfile.Profile()

        def stop(*_: object) -> None:
            if profile_out:
                profiler.disable()
                profiler.dump_stats(profile_out)
            os._exit(0)

        signal.signal(signal.SIGTERM, stop)
        if profile_out:
            profiler.enable()
        child_server(*rest)
    else:
        raise SystemExit(f"unknown child mode {mode}")


# ---- main --------------------------------------------------------------------------


def profile(directory: str, name: str, n: int, scale: float) -> None:
    """cProfile one section-1 client against the sink (in this process), or one server
    under the section-5 load (in its process); print the top functions by own time."""
    out = io.StringIO()
    if name.startswith("server-"):
        kind, count = name.removeprefix("server-"), max(10, int(SERVER_COUNT * scale))
        path, dump = os.path.join(directory, "profiled.sock"), os.path.join(directory, "prof")
        os.environ["LMTP_BENCH_PROFILE"] = dump
        try:
            with running([__file__, "--child", "server", kind, path], name):
                asyncio.run(load(path, message(), recipients(SERVER_RECIPIENTS), count))
        finally:
            del os.environ["LMTP_BENCH_PROFILE"]
        stats = pstats.Stats(dump, stream=out)
        print(f"cProfile of the {kind} server, {SERVER_CONNECTIONS} x {count} messages")
    else:
        with start_sink(directory, "sink-profile") as process:
            profiler = cProfile.Profile()
            count = max(20, int(THROUGHPUT_COUNT * scale))
            args = (sock_path(process, directory), message(), recipients(n), count)
            profiler.runcall(CLIENTS[name][1], *args)
            process.stats()
        stats = pstats.Stats(profiler, stream=out)
        print(f"cProfile of {CLIENTS[name][0]}, {n} recipient(s), {count} messages")
    stats.sort_stats("tottime").print_stats(25)
    print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds for sections 1-3, 5")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    parser.add_argument("--large-mib", type=int, default=1024, help="section 4 message size")
    parser.add_argument("--large-rounds", type=int, default=3)
    parser.add_argument("--burst-rounds", type=int, default=3)
    parser.add_argument("--sections", default="1,2,3,4,5,6,7")
    parser.add_argument(
        "--cpus",
        choices=["auto", "any", "same", "split"],
        default="auto",
        help="same: client and server on one CPU; split: one CPU each; any: unpinned; "
        "auto (default): same for sections 1-3, split for 4-6",
    )
    parser.add_argument(
        "--profile",
        choices=[*CLIENTS, "server-asyncio", "server-trio", "server-aiosmtpd"],
        help="cProfile one client (section 1) or server (section 5) instead",
    )
    parser.add_argument("--recipients", type=int, default=1, help="with --profile")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child)
        return
    sections = {int(s) for s in args.sections.split(",")}
    global CPUS_MODE  # noqa: PLW0603
    CPUS_MODE = args.cpus
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lmtp-bench-") as directory:
        if args.profile:
            place(bulk=args.profile.startswith("server-"))
            profile(directory, args.profile, args.recipients, args.scale)
            return
        print(
            f"lmtp delivery benchmark, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
            f", Python {sys.version.split()[0]}, {os.cpu_count()} cores, "
            f"{sys.platform}; ulimit -n {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}; "
            f"--cpus {args.cpus}; load average {os.getloadavg()[0]:.2f} at the start\n"
            f"command: python benchmarks/bench_delivery.py {' '.join(sys.argv[1:])}".rstrip()
        )
        if sections & {1, 2}:
            results = section_clients(directory, args.rounds, args.scale, 0, 1)
            if 2 in sections:
                section_round_trips(directory, args.scale, results[1], results[10])
        if 3 in sections:
            section_clients(directory, args.rounds, args.scale, 1.0, 3)
        if 4 in sections:
            section_large(directory, args.large_mib, args.large_rounds)
        if 5 in sections:
            section_servers(directory, max(3, args.rounds - 2), args.scale)
        if 6 in sections:
            section_burst(directory, args.burst_rounds)
        if 7 in sections:
            section_core(7)
    print(f"\n## Targets ({time.perf_counter() - started:.0f} s in all)")
    for line in VERDICTS:
        print(line)


if __name__ == "__main__":
    main()
