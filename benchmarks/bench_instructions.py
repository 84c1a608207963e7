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
written, replies counted). Instructions are not time (a system call or a cache miss
costs more than its count), so the wall-clock tables stay the reference; these show
where CPU goes and how much a change saved. --tree runs another checkout's lmtp_core
and transports (for example benchmarks/compiled_tree.py's output: mypyc's build).

    python benchmarks/bench_instructions.py [--tree DIR]      # about 3 minutes
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
    name, rcpts = workload.rsplit("-", 1)
    contender = bd.CLIENTS[name][1]
    contender(path, bd.message(), bd.recipients(int(rcpts)), count)


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
                for name in ("smtplib", "blocking", "floor"):
                    work[name] = per_repeat(f"{name}-{rcpts}", DELIVERIES, path, tree)
                    for _ in range(2):  # the sink's line for each of the two runs
                        sink.stats()
                for name in ("smtplib", "blocking", "floor"):
                    label = bd.CLIENTS[name][0]
                    ratio = work[name] / work["blocking"]
                    print(f"  {label:46}{work[name] / 1e3:10.1f}{ratio:9.2f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        workload, count, path = sys.argv[2:5]
        child(workload, int(count), path)
    else:
        main()
