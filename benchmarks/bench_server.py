"""Server benchmark: messages per second with 1 and 2 worker processes against aiosmtpd,
and the memory an idle (and a stalled) connection costs in each runtime.

How it works. Every server runs in its own process on a UNIX socket in a temporary
directory. Throughput: ours discard the mail (Handler(): a 250 for everyone) and run as
`lmtp serve` does, through transports._serve: run() for one process, run_workers() for
N workers forked around one shared listening socket; aiosmtpd's LMTP server runs with a
handler that answers once per recipient (what LMTP needs), in one process; and `lmtp
serve` itself runs for real, storing into a Maildir on tmpfs (/dev/shm, where fsync is
cheap, so the row shows our storing code rather than the disk), next to the same
MaildirHandler storing on the event loop (as before issue 13: every other session waits
while it stores) to show what the handler threads cost. The load is one process
(benchmarks are plain scripts: no asyncio client in the way) holding CONNECTIONS
connections, each sending one whole transaction per write (MAIL, 3 RCPTs, DATA, the 2 KiB
message, the dot; every recipient is accepted, so a server may read the body right after
its 354) and waiting for its 8 replies before the next. Messages are counted for
--seconds after a warm-up; the median of --rounds rounds is printed, with the load
process's CPU share (if it nears 100% the load, not the server, is the limit). Nothing is
pinned: two workers need both CPUs.

Memory: for each runtime (and aiosmtpd) a one-process server; IDLE connections each get
the greeting and an LHLO reply and then stay silent; the server's RSS (VmRSS) before and
after, divided by IDLE. Then STALLED connections each pipeline 1 MB of NOOPs and never
read a reply: the RSS growth per connection once the server has stopped reading (what it
holds for a peer it cannot write to). Usage (about 3 minutes):

    python benchmarks/bench_server.py [--rounds 3] [--seconds 3] [--sections 1,2]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONNECTIONS = 16
RECIPIENTS = 3
MESSAGE = b"Subject: bench\r\n\r\n" + (b"y" * 62 + b"\r\n") * 32  # 2 KiB
TRANSACTION = (
    b"MAIL FROM:<bench@example.net>\r\n"
    + b"".join(b"RCPT TO:<r%d@example.org>\r\n" % n for n in range(RECIPIENTS))
    + b"DATA\r\n"
    + MESSAGE
    + b".\r\n"
)
LINES_PER_MESSAGE = 1 + RECIPIENTS + 1 + RECIPIENTS  # MAIL, RCPTs, 354, one per recipient
IDLE = 1000
STALLED = 100
NOOPS = b"NOOP\r\n" * (1024 * 1024 // 6)


# ---- children ----------------------------------------------------------------------------


def child_server(kind: str, runtime: str, workers: int, path: str) -> None:
    """Serve on `path` until SIGTERM; prints "ready" once listening."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sys.path.insert(0, str(ROOT))
    from transports import Handler, blocking
    from transports._serve import run, run_workers

    settings = {"socket_path": path, "max_connections": 5000}

    def ready(address: Any) -> None:
        print("ready", flush=True)

    if kind == "aiosmtpd":
        import asyncio

        from aiosmtpd.lmtp import LMTP

        class PerRecipient:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                return "\r\n".join(["250 2.0.0 OK"] * len(envelope.rcpt_tos))

        async def serve_aiosmtpd() -> None:
            loop = asyncio.get_running_loop()
            server = await loop.create_unix_server(lambda: LMTP(PerRecipient(), loop=loop), path)
            stop = asyncio.Event()
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            async with server:
                ready(path)
                await stop.wait()

        asyncio.run(serve_aiosmtpd())
    elif runtime == "blocking":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        with blocking.Server(Handler(), **settings):
            ready(path)
            signal.sigwait({signal.SIGTERM})
    elif kind == "maildir-loop":  # MaildirHandler storing on the event loop, as before
        from transports.maildir import MaildirHandler

        class OnTheLoop(MaildirHandler):
            async def deliver(self, envelope: Any) -> Any:  # async: awaited on the loop
                return MaildirHandler.deliver(self, envelope)

        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.TemporaryDirectory(prefix="lmtp-bench-", dir=shm) as maildir:
            run(runtime, OnTheLoop(maildir), settings, ready)
    elif workers > 1:
        run_workers(workers, runtime, Handler(), settings, ready=ready, say=lambda _: None)
    else:
        run(runtime, Handler(), settings, ready)


def child_load(path: str, connections: int, seconds: float) -> dict[str, float]:
    """Deliver on `connections` connections for `seconds` (after a 0.5 s warm-up)."""
    socks = []
    for _ in range(connections):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        _expect(sock, 1)
        sock.sendall(b"LHLO bench.example\r\n")
        _expect(sock, 1)
        sock.setblocking(False)
        socks.append(sock)
    owed = {sock: 0 for sock in socks}
    done = 0
    counting_from = time.monotonic() + 0.5
    end = counting_from + seconds
    cpu_start = 0.0
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.sendall(TRANSACTION)
            owed[sock] = LINES_PER_MESSAGE
            selector.register(sock, selectors.EVENT_READ)
        counted = False
        while (now := time.monotonic()) < end:
            if not counted and now >= counting_from:
                counted, done, cpu_start = True, 0, time.process_time()
            for key, _ in selector.select(1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                data = sock.recv(65536)
                assert data, "the server closed a connection"
                assert b"\r\n4" not in b"\r\n" + data and b"\r\n5" not in b"\r\n" + data, data
                owed[sock] -= data.count(b"\r\n")
                if owed[sock] == 0:
                    done += 1
                    sock.sendall(TRANSACTION)
                    owed[sock] = LINES_PER_MESSAGE
    cpu = time.process_time() - cpu_start
    for sock in socks:
        sock.close()
    return {"messages": done, "seconds": seconds, "cpu": cpu}


def _expect(sock: socket.socket, replies: int) -> bytes:
    """Read (blocking) until `replies` complete replies arrived."""
    data = b""
    while sum(1 for line in data.split(b"\r\n")[:-1] if line[3:4] != b"-") < replies:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


# ---- the parent ---------------------------------------------------------------------------


@contextlib.contextmanager
def server(args: list[str], label: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            if not selector.select(20) or proc.stdout.readline() != b"ready\n":
                raise RuntimeError(f"{label} did not start")
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def ours(runtime: str, workers: int, path: str) -> list[str]:
    return [sys.executable, __file__, "--child", "server", "ours", runtime, str(workers), path]


def aiosmtpd_server() -> list[str]:
    return [sys.executable, __file__, "--child", "server", "aiosmtpd", "asyncio", "1", ""]


def maildir_on_the_loop() -> list[str]:
    return [sys.executable, __file__, "--child", "server", "maildir-loop", "asyncio", "1", ""]


def section_throughput(directory: str, rounds: int, seconds: float) -> None:
    print(
        f"\n## 1. Server throughput: {CONNECTIONS} connections, {RECIPIENTS} recipients, 2 KiB\n"
        f"One load process, each connection one whole transaction per write; median of "
        f"{rounds} rounds of {seconds:g} s; load CPU = the load process's share of one CPU."
    )
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else directory
    contenders: dict[str, list[str]] = {
        "ours asyncio, 1 process, Handler() (discards)": ours("asyncio", 1, ""),
        "ours asyncio, 2 workers, Handler() (discards)": ours("asyncio", 2, ""),
        "ours trio, 1 process, Handler() (discards)": ours("trio", 1, ""),
        "ours trio, 2 workers, Handler() (discards)": ours("trio", 2, ""),
        "aiosmtpd LMTP, 1 process, one 250 per rcpt": aiosmtpd_server(),
        "lmtp serve (asyncio), 1 process, Maildir on tmpfs": ["lmtp-serve", "1"],
        "  the same, storing on the event loop (before issue 13)": maildir_on_the_loop(),
        "lmtp serve (asyncio), --workers 2, Maildir on tmpfs": ["lmtp-serve", "2"],
    }
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    load_cpu: dict[str, list[float]] = {name: [] for name in contenders}
    with contextlib.ExitStack() as stack:
        paths = {}
        for n, (name, args) in enumerate(contenders.items()):
            path = os.path.join(directory, f"server{n}.sock")
            if args[0] == "lmtp-serve":
                maildir = tempfile.mkdtemp(prefix="lmtp-bench-", dir=shm)
                stack.callback(shutil.rmtree, maildir, True)
                command = [sys.executable, "-m", "transports", "serve", "--maildir", maildir]
                command += ["--socket", path, "--workers", args[1], "--max-connections", "5000"]
                stack.enter_context(lmtp_serve(command, name))
            else:
                stack.enter_context(server([*args[:-1], path], name))
            paths[name] = path
        for _ in range(rounds):
            for name, path in paths.items():
                result = load(path, seconds)
                rates[name].append(result["messages"] / result["seconds"])
                load_cpu[name].append(result["cpu"] / result["seconds"])
    med = {name: statistics.median(values) for name, values in rates.items()}
    base = med["ours asyncio, 1 process, Handler() (discards)"]
    aiosmtpd = med["aiosmtpd LMTP, 1 process, one 250 per rcpt"]
    print(f"\n{'server':56} {'msgs/s':>8} {'vs 1 proc':>9} {'vs aiosmtpd':>11} {'load CPU':>8}")
    for name in contenders:
        one = med.get(
            name.replace("2 workers", "1 process").replace("--workers 2", "1 process"), med[name]
        )
        print(
            f"  {name:54} {med[name]:8.0f} {med[name] / one:8.2f}x {med[name] / aiosmtpd:10.2f}x "
            f"{statistics.median(load_cpu[name]):7.0%}"
        )
    print(f"  (ours asyncio, 1 process = {base:.0f} msgs/s)")


@contextlib.contextmanager
def lmtp_serve(command: list[str], label: str) -> Iterator[subprocess.Popen[bytes]]:
    """The real `lmtp serve`; ready once it prints its "ready on" line. A thread reads
    its stderr all along: its log (a line per recipient) must never fill the pipe."""
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stderr is not None
    ready, seen = threading.Event(), bytearray()

    def drain() -> None:
        assert proc.stderr is not None
        while chunk := os.read(proc.stderr.fileno(), 65536):
            if not ready.is_set():
                seen.extend(chunk)
                if b" ready on " in seen:
                    ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        if not ready.wait(20):
            raise RuntimeError(f"{label} did not start: {bytes(seen)!r}")
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(10)
        proc.stderr.close()


def load(path: str, seconds: float) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", "load", path, str(CONNECTIONS), str(seconds)],
        capture_output=True,
        check=True,
        cwd=ROOT,
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def section_memory(directory: str) -> None:
    print(
        f"\n## 2. Memory per connection: {IDLE} idle (greeting and LHLO, then silent), then "
        f"{STALLED} stalled (1 MB of NOOPs pipelined, no reply read)\n"
        "RSS growth of the one server process (VmRSS), per connection."
    )
    kinds = {
        "ours blocking": ("ours", "blocking"),
        "ours asyncio": ("ours", "asyncio"),
        "ours trio": ("ours", "trio"),
        "aiosmtpd LMTP": ("aiosmtpd", "asyncio"),
    }
    print(f"\n{'server':30} {'idle KiB/conn':>14} {'stalled KiB/conn':>17}")
    for label, (kind, runtime) in kinds.items():
        path = os.path.join(directory, f"memory-{runtime}-{kind}.sock")
        args = [sys.executable, __file__, "--child", "server", kind, runtime, "1", path]
        with server(args, label) as proc, contextlib.ExitStack() as stack:
            time.sleep(0.5)  # let the process settle after start
            before = rss_kib(proc.pid)
            for _ in range(IDLE):
                sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
                sock.connect(path)
                _expect(sock, 1)
                sock.sendall(b"LHLO bench.example\r\n")
                _expect(sock, 1)
            time.sleep(0.5)
            idle = (rss_kib(proc.pid) - before) / IDLE
            before = rss_kib(proc.pid)
            for _ in range(STALLED):
                sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
                sock.connect(path)
                _expect(sock, 1)
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.send(NOOPS)  # as much as the kernel takes: the rest never goes
            time.sleep(2.0)  # the server reads, answers, and stops when it cannot write
            stalled = (rss_kib(proc.pid) - before) / STALLED
        print(f"  {label:28} {idle:14.1f} {stalled:17.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--sections", default="1,2")
    parser.add_argument("--child", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.child:
        mode, rest = args.child[0], args.child[1:]
        if mode == "server":
            child_server(rest[0], rest[1], int(rest[2]), rest[3])
        else:
            print(json.dumps(child_load(rest[0], int(rest[1]), float(rest[2]))))
        return
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = time.monotonic()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"lmtp server benchmark, {now}, Python {sys.version.split()[0]}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.2f} at the start\n"
        f"command: python benchmarks/bench_server.py {' '.join(sys.argv[1:])}".rstrip()
    )
    sections = {int(s) for s in args.sections.split(",")}
    with tempfile.TemporaryDirectory(prefix="lmtp-bench-") as directory:
        if 1 in sections:
            section_throughput(directory, args.rounds, args.seconds)
        if 2 in sections:
            section_memory(directory)
    print(f"\n(took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
