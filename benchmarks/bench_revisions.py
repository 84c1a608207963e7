"""Client CPU per message of this tree against another revision, or against its own
compiled build (--compiled), side by side in one run.

How it works. The baseline revision is exported with `git archive` into a temporary
directory. One sink (benchmarks/sink.py) listens on a UNIX socket; for every round,
each (tree, runtime, recipients) contender runs in a fresh child process whose
sys.path starts with that tree, so `import transports` loads that revision's drivers.
The child delivers the same 2 KiB message `--count` times on one reused connection
(after one warm-up delivery) and reports its own CPU time per message; the sink checks
the message and reply counts. Contenders alternate within each round, and which tree
goes first alternates between rounds (the second of two runs is often faster on this
kind of VM); the median of the rounds is printed, with new/old as the ratio (below
1.00: the new code spends less). With --compiled, "old" is this tree as it is and
"new" the same tree built with lmtp_core compiled by mypyc (compiled_tree.py), so
new/old is what the optional compiled build saves.
Client and sink are pinned to one CPU, as in bench_delivery.py section 1.

    python benchmarks/bench_revisions.py [--baseline REV | --compiled] [--count N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    sys.path.insert(0, sys.argv[2])  # before anything imports transports

import bench_delivery as bd
import compiled_tree

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUNTIMES = ("blocking", "asyncio", "trio")


def export(rev: str, directory: str) -> str:
    """The tree at `rev` (lmtp_core and transports) under `directory`."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "lmtp_core", "transports"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    target = os.path.join(directory, "baseline")
    with tempfile.TemporaryFile() as tmp:
        tmp.write(archive)
        tmp.seek(0)
        with tarfile.open(fileobj=tmp) as tar:
            tar.extractall(target, filter="data")
    return target


def child(tree: str, runtime: str, path: str, rcpts: int, count: int) -> float:
    """Run one contender in a child process; its CPU microseconds per message."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", tree, runtime, path, str(rcpts), str(count)],
        capture_output=True,
        text=True,
        cwd=HERE,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"{runtime} from {tree} failed:\n{done.stderr}")
    return float(json.loads(done.stdout.splitlines()[-1])["cpu_us"])


def run_child(tree: str, runtime: str, path: str, rcpts: int, count: int) -> None:
    msg, to = bd.message(), bd.recipients(rcpts)

    def clock() -> float:
        return time.process_time()

    if runtime == "blocking":
        from transports import blocking

        with blocking.Client(socket_path=path) as client:
            assert client.deliver(msg, bd.SENDER, to).all_delivered
            start = clock()
            for _ in range(count):
                assert client.deliver(msg, bd.SENDER, to).all_delivered
            used = clock() - start
    else:
        import asyncio

        async def main(module: object) -> float:
            async with module.Client(socket_path=path) as client:  # type: ignore[attr-defined]
                assert (await client.deliver(msg, bd.SENDER, to)).all_delivered
                start = clock()
                for _ in range(count):
                    assert (await client.deliver(msg, bd.SENDER, to)).all_delivered
                return clock() - start

        if runtime == "asyncio":
            from transports import asyncio as lmtp_asyncio

            used = asyncio.run(main(lmtp_asyncio))
        else:
            import trio

            from transports import trio as lmtp_trio

            used = trio.run(main, lmtp_trio)
    import lmtp_core
    import transports

    assert Path(transports.__file__).resolve().is_relative_to(Path(tree).resolve())
    assert Path(lmtp_core.__file__ or "").resolve().is_relative_to(Path(tree).resolve())
    print(json.dumps({"cpu_us": used / count * 1e6}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="31e91c6", help="the revision to compare with")
    parser.add_argument(
        "--compiled", action="store_true", help="this tree, pure against compiled by mypyc"
    )
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cpu = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {cpu})  # children and the sink inherit it
    with tempfile.TemporaryDirectory() as directory:
        if args.compiled:
            built = compiled_tree.build(os.path.join(directory, "compiled"))
            trees = {"old": str(ROOT), "new": built}
            baseline = "this tree, pure Python; new = the same, lmtp_core compiled by mypyc"
        else:
            trees = {"old": export(args.baseline, directory), "new": str(ROOT)}
            baseline = args.baseline
        samples: dict[tuple[str, str, int], list[float]] = {}
        with bd.start_sink(directory, "sink") as sink:
            path = bd.sock_path(sink, directory)
            for round_ in range(args.rounds):
                order = list(trees.items())[:: 1 if round_ % 2 == 0 else -1]
                for runtime in RUNTIMES:
                    for rcpts in (1, 10):
                        for name, tree in order:  # who goes first alternates
                            samples.setdefault((name, runtime, rcpts), []).append(
                                child(tree, runtime, path, rcpts, args.count)
                            )
                            stats = sink.stats()
                            assert stats["messages"] == args.count + 1, stats
                            assert stats["replies"] == (args.count + 1) * rcpts, stats
    print(
        f"client CPU per message (us), {args.count} x 2 KiB on one UNIX connection, "
        f"median of {args.rounds} rounds, pinned to CPU {cpu}; old = {baseline}"
    )
    print(f"{'runtime':<10}{'rcpts':>6}{'old':>10}{'new':>10}{'new/old':>10}")
    for runtime in RUNTIMES:
        for rcpts in (1, 10):
            old = statistics.median(samples[("old", runtime, rcpts)])
            new = statistics.median(samples[("new", runtime, rcpts)])
            print(f"{runtime:<10}{rcpts:>6}{old:>10.1f}{new:>10.1f}{new / old:>10.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        tree, runtime, path, rcpts, count = sys.argv[2:7]
        run_child(tree, runtime, path, int(rcpts), int(count))
    else:
        main()
