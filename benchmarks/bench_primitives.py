"""Our hand-made primitives against the runtime's own: do they pay for themselves?

How it works. The drivers carry three pieces of their own where the runtime has one:
asyncio's Slots (transports/_slots.py) instead of asyncio.Semaphore under
asyncio.timeout(); the asyncio client's plain SocketStream (transports/_plain.py: a
send or receive tried at once, and a reader that stays registered and reads for
itself) instead of asyncio's StreamReader/StreamWriter; and trio's plain SocketStream
(tried at once, wait_readable when it would block) instead of trio.SocketStream. A
piece stays only if it saves at least 5 % of the client's or the server's CPU per
delivery (issue 23). Each alternative is a backend (Client and Pool take backend=),
defined here, so the library ships none of them:

- "semaphore": asyncio.Semaphore and asyncio.Lock, each timed wait under
  asyncio.timeout(), in place of Slots;
- "sock_recv": the asyncio fast path kept, but a wait for bytes is loop.sock_recv()
  under asyncio.timeout() instead of the reader that stays registered;
- "streams": asyncio's own StreamReader/StreamWriter for a plain connection too;
- "trio-stream": trio.SocketStream for a plain trio connection.

The server is our asyncio Server (default Handler: stores nothing) in a child process
pinned to one CPU, the client this process pinned to the other (the same placement
for every contender). A round delivers --messages 2 KiB messages to one recipient over
a UNIX socket, either on one Client one after the other ("sequential") or through a
Pool(8) with --in-flight tasks delivering at once ("pool"); contenders alternate
within each round, after one untimed warm-up round each. Measured per delivery: the
client's CPU (getrusage of this process) and the server's (its utime + stime from
/proc). Printed: the median of the rounds and each alternative's ratio to ours (above
1: ours is cheaper).

    python benchmarks/bench_primitives.py [--rounds 5] [--messages 3000] [--in-flight 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import trio

from transports import Handler
from transports import asyncio as lmtp_asyncio
from transports import trio as lmtp_trio
from transports.asyncio import AsyncioBackend, SocketStream, _pair
from transports.trio import TrioBackend, TrioStream

MESSAGE = b"From: <a@example.org>\r\nSubject: bench\r\n\r\n" + (b"x" * 74 + b"\r\n") * 26
SENDER, RECIPIENTS = "a@example.org", ["b@example.org"]
CLIENT_CPU, SERVER_CPU = 0, 1
TICKS = os.sysconf("SC_CLK_TCK")


# ---- the alternatives -------------------------------------------------------------


class SemaphoreBackend(AsyncioBackend):
    """asyncio.Semaphore / asyncio.Lock, each timed wait under asyncio.timeout()."""

    def lock(self) -> Any:
        return asyncio.Lock()

    def semaphore(self, value: int) -> Any:
        return asyncio.Semaphore(value)

    async def acquire(self, lock: Any, timeout: float | None) -> None:
        if timeout is None:
            await lock.acquire()
            return
        async with asyncio.timeout(timeout):
            await lock.acquire()


class SockRecvStream(SocketStream):
    """The fast path kept; a wait for bytes through loop.sock_recv()."""

    async def receive_waiting(self, timeout: float) -> bytes:
        async with asyncio.timeout(timeout):
            return await self._loop.sock_recv(self._sock, 65536)


class SockRecvBackend(AsyncioBackend):
    async def connect(self, config: Any, timeout: float) -> Any:
        stream = await super().connect(config, timeout)
        assert isinstance(stream, SocketStream)
        return SockRecvStream(stream._sock)


class StreamsBackend(AsyncioBackend):
    """asyncio's StreamReader/StreamWriter for a plain connection as well."""

    async def connect(self, config: Any, timeout: float) -> Any:
        stream = await super().connect(config, timeout)
        assert isinstance(stream, SocketStream)
        sock = stream._sock
        loop = asyncio.get_running_loop()
        return await _pair(lambda factory: loop.create_connection(factory, sock=sock))


class TrioStreamBackend(TrioBackend):
    """trio.SocketStream for a plain connection."""

    async def connect(self, config: Any, timeout: float) -> Any:
        stream = await super().connect(config, timeout)
        sock = stream._sock
        return TrioStream(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))


# ---- the server ---------------------------------------------------------------------


def serve(path: str) -> None:
    async def main() -> None:
        async with lmtp_asyncio.Server(Handler(), socket_path=path) as server:
            print("ready", flush=True)
            await server.serve_forever()

    asyncio.run(main())


@contextlib.contextmanager
def server(path: str) -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", path], stdout=subprocess.PIPE, text=True
    )
    try:
        os.sched_setaffinity(proc.pid, {SERVER_CPU})
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the server did not start")
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def server_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- the loads -------------------------------------------------------------------------


def asyncio_load(backend: Any, path: str, count: int, in_flight: int, pooled: bool) -> None:
    async def main() -> None:
        if pooled:
            target: Any = lmtp_asyncio.Pool(backend=backend, socket_path=path, max_connections=8)
        else:
            target = lmtp_asyncio.Client(backend=backend, socket_path=path)
        work = iter(range(count))

        async def worker() -> None:
            for _ in work:
                result = await target.deliver(MESSAGE, SENDER, RECIPIENTS)
                assert result.all_delivered, result

        await asyncio.gather(*(worker() for _ in range(in_flight if pooled else 1)))
        await target.close()

    asyncio.run(main())


def trio_load(backend: Any, path: str, count: int, in_flight: int, pooled: bool) -> None:
    async def main() -> None:
        if pooled:
            target: Any = lmtp_trio.Pool(backend=backend, socket_path=path, max_connections=8)
        else:
            target = lmtp_trio.Client(backend=backend, socket_path=path)
        work = iter(range(count))

        async def worker() -> None:
            for _ in work:
                result = await target.deliver(MESSAGE, SENDER, RECIPIENTS)
                assert result.all_delivered, result

        async with trio.open_nursery() as nursery:
            for _ in range(in_flight if pooled else 1):
                nursery.start_soon(worker)
        await target.close()

    trio.run(main)


Load = Callable[[str, int, int], None]


def contenders() -> dict[str, dict[str, Load]]:
    """Per table: the contenders, ours first."""

    def a(backend: Any, pooled: bool) -> Load:
        return lambda path, n, k: asyncio_load(backend, path, n, k, pooled)

    def t(backend: Any, pooled: bool) -> Load:
        return lambda path, n, k: trio_load(backend, path, n, k, pooled)

    ours_a, ours_t = AsyncioBackend(), TrioBackend()
    return {
        "asyncio Pool(8), contended": {
            "ours": a(ours_a, True),
            "semaphore": a(SemaphoreBackend(), True),
            "sock_recv": a(SockRecvBackend(), True),
            "streams": a(StreamsBackend(), True),
        },
        "asyncio Client, sequential": {
            "ours": a(ours_a, False),
            "sock_recv": a(SockRecvBackend(), False),
            "streams": a(StreamsBackend(), False),
        },
        "trio Pool(8), contended": {
            "ours": t(ours_t, True),
            "trio-stream": t(TrioStreamBackend(), True),
        },
        "trio Client, sequential": {
            "ours": t(ours_t, False),
            "trio-stream": t(TrioStreamBackend(), False),
        },
    }


def measure(load: Load, path: str, pid: int, count: int, in_flight: int) -> tuple[float, float]:
    """Client and server CPU per delivery, in microseconds."""
    c0, s0 = client_cpu(), server_cpu(pid)
    load(path, count, in_flight)
    c1, s1 = client_cpu(), server_cpu(pid)
    return (c1 - c0) / count * 1e6, (s1 - s0) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--only", help="run only the tables whose title contains this")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    os.sched_setaffinity(0, {CLIENT_CPU})
    print(
        f"{args.messages} messages of {len(MESSAGE)} bytes, 1 recipient, UNIX socket; "
        f"client on CPU {CLIENT_CPU}, our asyncio server on CPU {SERVER_CPU}; "
        f"median of {args.rounds} interleaved rounds; CPU per delivery in us"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.sock")
        with server(path) as pid:
            for title, loads in contenders().items():
                if args.only and args.only not in title:
                    continue
                for load in loads.values():  # warm-up, untimed
                    load(path, max(args.messages // 5, 200), args.in_flight)
                seen: dict[str, list[tuple[float, float]]] = {name: [] for name in loads}
                started = time.monotonic()
                for _ in range(args.rounds):
                    for name, load in loads.items():
                        seen[name].append(measure(load, path, pid, args.messages, args.in_flight))
                print(f"\n{title} ({time.monotonic() - started:.0f} s)")
                print(f"  {'contender':<12} {'client':>8} {'server':>8}   ours cheaper by")
                ours_c = statistics.median(c for c, _ in seen["ours"])
                ours_s = statistics.median(s for _, s in seen["ours"])
                for name, values in seen.items():
                    c = statistics.median(v[0] for v in values)
                    s = statistics.median(v[1] for v in values)
                    versus = (
                        ""
                        if name == "ours"
                        else (f"client {c / ours_c - 1:+6.1%}, server {s / ours_s - 1:+6.1%}")
                    )
                    spread = max(v[0] for v in values) / min(v[0] for v in values) - 1
                    print(
                        f"  {name:<12} {c:8.1f} {s:8.1f}   {versus}  (client spread {spread:.0%})"
                    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
