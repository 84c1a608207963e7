"""Delivering at volume: a Pool against a connection per message and one shared Client.

How it works. The load is N deliveries in flight at once: N tasks (asyncio.gather, a
trio nursery) that each deliver the next message as soon as their last one is done,
or a thread pool (at most 64 threads) for the blocking runtime; each is a 2 KiB
message to one recipient over a UNIX socket. (Until 2026-11-29 evening the async
runtimes started one task per message behind a semaphore of N: the same N in flight,
plus about 15 us per message of task creation and semaphore waits that belong to the
benchmark, not to the library, paid by every contender alike.) Three ways to carry
them, per runtime:
- pool: one Pool(max_connections=8) shared by every delivery;
- per message: deliver() for each message, i.e. connect, LHLO, one transaction, QUIT;
- shared client: one Client, its deliveries taking turns on its one connection.
Two servers: ours (the asyncio Server in its own process, discarding mail) and, when
Dovecot is installed, a private Dovecot (tests/interop/_dovecot.py) storing every
message, where stdlib smtplib.LMTP from 8 threads (one connection each) is the peer
a user would otherwise pick. Each contender first runs WARM_UP messages untimed (on
this VM the first round after a pause ran up to 40 % slower, client and server alike);
then contenders alternate within each round, and the median of the rounds is printed
as messages per second with the ratio of the pool to each other.

    python benchmarks/bench_pool.py [--in-flight 200] [--messages 2000] [--rounds 3]
        [--no-dovecot] [--cpus split|any]

Like bench_delivery.py's concurrent sections, the client (this process) and our server
are pinned to one CPU each by default: unpinned, the scheduler moves them about and
single rounds swing by a third.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_delivery as bd

from transports import asyncio as lmtp_asyncio
from transports import blocking

HERE = Path(__file__).resolve().parent
CONNECTIONS = 8
WARM_UP = 500  # messages per contender, untimed, before the rounds


def _trio() -> Any:
    import trio  # imported where needed

    from transports import trio as lmtp_trio

    return trio, lmtp_trio


# ---- the ways to deliver: (path, messages, in flight, recipients) -> seconds ---------


def asyncio_way(way: str) -> Callable[[str, int, int, list[str]], float]:
    def run(path: str, count: int, in_flight: int, rcpts: list[str]) -> float:
        msg = bd.message()

        async def main() -> float:
            pool = lmtp_asyncio.Pool(socket_path=path, max_connections=CONNECTIONS)
            client = lmtp_asyncio.Client(socket_path=path)
            work = iter(range(count))

            async def worker() -> None:
                for _ in work:
                    if way == "pool":
                        result = await pool.deliver(msg, bd.SENDER, rcpts)
                    elif way == "shared":
                        result = await client.deliver(msg, bd.SENDER, rcpts)
                    else:
                        result = await lmtp_asyncio.deliver(msg, bd.SENDER, rcpts, socket_path=path)
                    assert result.all_delivered, result

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(min(in_flight, count))))
            seconds = time.perf_counter() - start
            await pool.close()
            await client.close()
            return seconds

        return asyncio.run(main())

    return run


def trio_way(way: str) -> Callable[[str, int, int, list[str]], float]:
    def run(path: str, count: int, in_flight: int, rcpts: list[str]) -> float:
        trio, lmtp_trio = _trio()
        msg = bd.message()

        async def main() -> float:
            pool = lmtp_trio.Pool(socket_path=path, max_connections=CONNECTIONS)
            client = lmtp_trio.Client(socket_path=path)
            work = iter(range(count))

            async def worker() -> None:
                for _ in work:
                    if way == "pool":
                        result = await pool.deliver(msg, bd.SENDER, rcpts)
                    elif way == "shared":
                        result = await client.deliver(msg, bd.SENDER, rcpts)
                    else:
                        result = await lmtp_trio.deliver(msg, bd.SENDER, rcpts, socket_path=path)
                    assert result.all_delivered, result

            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(min(in_flight, count)):
                    nursery.start_soon(worker)
            seconds = time.perf_counter() - start
            await pool.close()
            await client.close()
            return float(seconds)

        return float(trio.run(main))

    return run


def blocking_way(way: str) -> Callable[[str, int, int, list[str]], float]:
    def run(path: str, count: int, in_flight: int, rcpts: list[str]) -> float:
        msg = bd.message()
        with (
            blocking.Pool(socket_path=path, max_connections=CONNECTIONS) as pool,
            blocking.Client(socket_path=path) as client,
        ):

            def one(_: int) -> None:
                if way == "pool":
                    result = pool.deliver(msg, bd.SENDER, rcpts)
                elif way == "shared":
                    result = client.deliver(msg, bd.SENDER, rcpts)
                else:
                    result = blocking.deliver(msg, bd.SENDER, rcpts, socket_path=path)
                assert result.all_delivered, result

            with concurrent.futures.ThreadPoolExecutor(min(in_flight, 64)) as workers:
                start = time.perf_counter()
                list(workers.map(one, range(count)))
                return time.perf_counter() - start

    return run


def smtplib_threads(path: str, count: int, in_flight: int, rcpts: list[str]) -> float:
    """smtplib.LMTP from CONNECTIONS threads, one connection each (one recipient: its
    one-reply-after-DATA behaviour is right then)."""
    msg = bd.message()
    share = [count // CONNECTIONS + (i < count % CONNECTIONS) for i in range(CONNECTIONS)]
    ready = threading.Barrier(CONNECTIONS + 1)

    def worker(n: int) -> None:
        with smtplib.LMTP(path) as lmtp:
            ready.wait()
            for _ in range(n):
                refused = lmtp.sendmail(bd.SENDER, rcpts, msg)
                assert not refused, refused

    threads = [threading.Thread(target=worker, args=(n,)) for n in share]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


CONTENDERS: dict[str, Callable[[str, int, int, list[str]], float]] = {
    "asyncio pool (8)": asyncio_way("pool"),
    "asyncio connection per message": asyncio_way("per-message"),
    "asyncio shared Client": asyncio_way("shared"),
    "trio pool (8)": trio_way("pool"),
    "trio connection per message": trio_way("per-message"),
    "trio shared Client": trio_way("shared"),
    "blocking pool (8)": blocking_way("pool"),
    "blocking connection per message": blocking_way("per-message"),
    "blocking shared Client": blocking_way("shared"),
}


def measure(
    names: list[str], path: str, count: int, in_flight: int, rcpts: list[str], *, rounds: int
) -> dict[str, float]:
    rates: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # untimed: the first round after a pause ran up to 40 % slower
        CONTENDERS[name](path, min(count, WARM_UP), in_flight, rcpts)
    for _ in range(rounds):
        for name in names:
            rates[name].append(count / CONTENDERS[name](path, count, in_flight, rcpts))
    return {name: statistics.median(values) for name, values in rates.items()}


def table(title: str, rates: dict[str, float], against: dict[str, str]) -> None:
    print(f"\n{title}\n{'contender':36} {'msgs/s':>9}   pool / it")
    for name, rate in rates.items():
        pool = against.get(name)
        ratio = f"{rates[pool] / rate:8.2f}x" if pool and pool != name else ""
        print(f"  {name:34} {rate:9.0f}   {ratio}")


def ours(directory: str, args: argparse.Namespace, rcpts: list[str], pools: dict[str, str]) -> None:
    path = os.path.join(directory, "ours.sock")
    with bd.running(
        [str(HERE / "bench_delivery.py"), "--child", "server", "asyncio", path], "ours"
    ):
        rates = measure(
            list(CONTENDERS), path, args.messages, args.in_flight, rcpts, rounds=args.rounds
        )
    table("Into our asyncio server (discards mail)", rates, pools)
    per_message = rates["asyncio pool (8)"] / rates["asyncio connection per message"]
    verdict = "met" if per_message >= 3 else "MISSED"
    print(f"\ntarget: asyncio pool >= 3x connection per message: {per_message:.2f}x, {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-dovecot", action="store_true")
    parser.add_argument("--no-ours", action="store_true", help="only the Dovecot table")
    parser.add_argument(
        "--cpus",
        choices=["split", "any"],
        default="split",
        help="split (default): this process on one CPU, our server on the other; any: "
        "unpinned (run-to-run spread about twice as wide)",
    )
    args = parser.parse_args()
    bd.raise_file_limit()
    bd.CPUS_MODE = args.cpus
    placement = bd.place(bulk=True)
    rcpts = bd.recipients(1)
    pools = {name: name.split(" ")[0] + " pool (8)" for name in CONTENDERS}
    print(
        f"lmtp pool benchmark: {args.messages} x 2 KiB, 1 recipient, {args.in_flight} in "
        f"flight, UNIX socket, median of {args.rounds} rounds; Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
        f"{placement}"
    )
    with tempfile.TemporaryDirectory(prefix="lmtp-bench-") as directory:
        if not args.no_ours:
            ours(directory, args, rcpts, pools)
    if args.no_dovecot:
        return
    sys.path.insert(0, str(HERE.parent))
    from tests.interop._dovecot import DovecotLMTP, dovecot_available

    if dovecot_available() is not None:
        print(f"\nDovecot not measured: {dovecot_available()}")
        return
    with (
        tempfile.TemporaryDirectory(prefix="lmtp-dovecot-") as base,
        DovecotLMTP(Path(base)) as dovecot,
    ):
        dpath = str(dovecot.socket_path)
        users = [DovecotLMTP.address("alice")]
        CONTENDERS["smtplib, 8 threads x 1 connection"] = smtplib_threads
        names = [
            "asyncio pool (8)",
            "trio pool (8)",
            "blocking pool (8)",
            "asyncio connection per message",
            "smtplib, 8 threads x 1 connection",
        ]
        count = max(200, args.messages // 4)
        rates = measure(names, dpath, count, args.in_flight, users, rounds=args.rounds)
        against = {name: "asyncio pool (8)" for name in names}
        table(
            f"Into Dovecot {dovecot.version} (stores every message; {count} messages)",
            rates,
            against,
        )


if __name__ == "__main__":
    main()
