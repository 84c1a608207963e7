"""CPU work in instructions (valgrind's callgrind): the same comparisons as bench_core.py
and bench_delivery.py section 1, without the noise of a shared machine's clock.

How it works. Each workload runs in a child process under `valgrind --tool=callgrind`
twice, with a small and a large repeat count; the difference of the two instruction
totals divided by the difference of the counts is the work of one repeat, start-up
and imports cancelled out. PYTHONHASHSEED is fixed, so a rerun gives the same figures
to within a fraction of a percent. Workloads: DATA encoding of bench_core's 1 MiB corpus
(ours through ClientConnection.send_body/data_to_send, the stdlib way, the floor's one
bytes.replace pass); one delivery of a 2 KiB message on a reused UNIX connection to
benchmarks/sink.py (which runs natively and is not counted), with 1 and 10 recipients:
smtplib.LMTP, our blocking client (PIPELINING + BDAT), and the floor (the same bytes
written, replies counted), and our asyncio and trio clients on the same connection.
Then the drivers' own work, against our asyncio server in a child process (not
counted): a contended asyncio Pool(8) (64 deliveries in flight), per delivery; and each
of our servers (asyncio, trio, blocking; default Handler, which stores nothing) under
callgrind while this process, not counted, delivers to it on one connection with the
blocking client, per message received. Instructions are not time (a system call or a cache miss
costs more than its count), so the wall-clock tables stay the reference; these show
where CPU goes and how much a change saved. --tree runs another checkout's lmtp_core
and transports (for example benchmarks/compiled_tree.py's output: mypyc's build).

    python benchmarks/bench_instructions.py [--tree DIR]      # about 6 minutes
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DELIVERIES = (20, 120)  # the small and the large repeat count
ENCODINGS = (1, 4)


def child(workload: str, count: int, path: str) -> None:
    """The workload `count` times (after one untimed run), in this process."""
    import bench_core
    import bench_delivery as bd

    if workload.startswith("encode-"):
        data = bench_core.corpus()
        way = workload.removeprefix("encode-")
        if way == "ours":
            function = bench_core.DataSession()
        else:
            function = bench_core.stdlib if way == "stdlib" else bench_core.floor
        for _ in range(count):
            function(data)
        return
    if workload == "pool-asyncio":
        pool_asyncio(path, count)
        return
    if workload.startswith("server-"):
        serve_until_stopped(workload.removeprefix("server-"), path)
        return
    name, rcpts = workload.rsplit("-", 1)
    contender = bd.CLIENTS[name][1]
    contender(path, bd.message(), bd.recipients(int(rcpts)), count)


IN_FLIGHT = 64


def pool_asyncio(path: str, count: int) -> None:
    """count deliveries (after as many untimed) through an asyncio Pool(8), IN_FLIGHT at
    a time."""
    import asyncio

    import bench_delivery as bd

    from transports import asyncio as lmtp_asyncio

    async def main() -> None:
        async with lmtp_asyncio.Pool(socket_path=path, max_connections=8) as pool:
            msg, rcpts = bd.message(), bd.recipients(1)
            work = iter(range(count))

            async def worker() -> None:
                for _ in work:
                    assert (await pool.deliver(msg, bd.SENDER, rcpts)).all_delivered

            await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))

    asyncio.run(main())


def serve_until_stopped(runtime: str, path: str) -> None:
    """One of our servers on `path` until SIGTERM (it stops gracefully)."""
    from transports import Handler

    if runtime == "asyncio":
        import asyncio

        from transports import asyncio as driver

        asyncio.run(driver.serve(Handler(), socket_path=path))
    elif runtime == "trio":
        import trio

        from transports import trio as tdriver

        trio.run(lambda: tdriver.serve(Handler(), socket_path=path))
    else:
        from transports import blocking

        blocking.serve(Handler(), socket_path=path)


def server_instructions(runtime: str, count: int, directory: str, tree: str | None) -> int:
    """The server's instructions for `count` deliveries on one connection (plus one),
    the client (this process, the blocking Client) not counted."""
    import signal

    from transports import blocking

    path = os.path.join(directory, f"server-{runtime}-{count}.sock")
    env = dict(os.environ, PYTHONHASHSEED="0")
    if tree:
        env["PYTHONPATH"] = tree
    args = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
    proc = subprocess.Popen(
        [*args, __file__, "--child", f"server-{runtime}", "0", path],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=HERE,
    )
    try:
        wait_for(path, 60.0)  # valgrind takes a while to start Python
        import bench_delivery as bd

        with blocking.Client(socket_path=path, timeout=60) as client:
            for _ in range(count + 1):
                result = client.deliver(bd.message(), bd.SENDER, bd.recipients(1))
                assert result.all_delivered, result
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    match = re.search(r"Collected : (\d+)", stderr)
    if match is None:
        raise RuntimeError(f"server-{runtime} failed:\n{stderr[-2000:]}")
    return int(match.group(1))


def instructions(workload: str, count: int, path: str, tree: str | None) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0")
    if tree:
        env["PYTHONPATH"] = tree
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            workload,
            str(count),
            path,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=HERE,
        check=False,
    )
    match = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode or match is None:
        raise RuntimeError(f"{workload} failed:\n{done.stderr[-2000:]}")
    return int(match.group(1))


def per_repeat(workload: str, counts: tuple[int, int], path: str, tree: str | None) -> float:
    small, large = (instructions(workload, n, path, tree) for n in counts)
    return (large - small) / (counts[1] - counts[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", help="a directory holding lmtp_core and transports")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    import bench_delivery as bd

    tree = str(Path(args.tree).resolve()) if args.tree else None
    print(
        f"instructions (callgrind), Python {sys.version.split()[0]}, PYTHONHASHSEED=0; "
        f"lmtp from {tree or 'this checkout'}\n"
    )
    with tempfile.TemporaryDirectory(prefix="lmtp-bench-") as directory:
        print(f"{'DATA encoding, 1 MiB corpus, 64 KiB pieces':48}{'Minstr':>10}{'ours/it':>10}")
        enc = {
            way: per_repeat(f"encode-{way}", ENCODINGS, "-", tree)
            for way in ("ours", "stdlib", "floor")
        }
        for way, label in [
            ("ours", "ours (send_body + data_to_send)"),
            ("stdlib", "stdlib (EOL regex + _quote_periods)"),
            ("floor", "floor (one bytes.replace pass)"),
        ]:
            print(f"  {label:46}{enc[way] / 1e6:10.2f}{enc[way] / enc['ours']:9.2f}x")
        with bd.start_sink(directory, "sink") as sink:
            path = bd.sock_path(sink, directory)
            for rcpts in (1, 10):
                print(
                    f"\n{f'one delivery, 2 KiB, {rcpts} rcpt(s), client process only':48}"
                    f"{'kinstr':>10}{'ours/it':>10}"
                )
                work = {}
                for name in ("smtplib", "blocking", "asyncio", "trio", "floor"):
                    work[name] = per_repeat(f"{name}-{rcpts}", DELIVERIES, path, tree)
                    for _ in range(2):  # the sink's line for each of the two runs
                        sink.stats()
                for name in ("smtplib", "blocking", "asyncio", "trio", "floor"):
                    label = bd.CLIENTS[name][0]
                    ratio = work[name] / work["blocking"]
                    print(f"  {label:46}{work[name] / 1e3:10.1f}{ratio:9.2f}x")
        server = os.path.join(directory, "ours.sock")
        peer = subprocess.Popen(
            [sys.executable, __file__, "--child", "server-asyncio", "0", server], cwd=HERE
        )
        try:
            wait_for(server)
            pooled = per_repeat("pool-asyncio", DELIVERIES, server, tree)
        finally:
            peer.terminate()
            peer.wait()
        print(f"\n{'asyncio Pool(8), 64 in flight, into our server':48}{'kinstr':>10}")
        print(f"  {'client process, per delivery':46}{pooled / 1e3:10.1f}")
        print(f"\n{'our servers, 2 KiB, 1 rcpt, one connection':48}{'kinstr':>10}")
        for runtime in ("asyncio", "trio", "blocking"):
            small, large = (server_instructions(runtime, n, directory, tree) for n in DELIVERIES)
            per = (large - small) / (DELIVERIES[1] - DELIVERIES[0])
            print(f"  {f'{runtime} server, per message':46}{per / 1e3:10.1f}")


def wait_for(path: str, seconds: float = 30.0) -> None:
    """Until a server listens on `path` (bounded by `seconds`)."""
    import socket
    import time

    for _ in range(int(seconds / 0.05)):
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(path)
                return
            except OSError:
                time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {path}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        workload, count, path = sys.argv[2:5]
        child(workload, int(count), path)
    else:
        main()
