"""Runs every atheris target (or one) for a bounded time and fails if any finds a crash.

How it works: each target runs in its own subprocess (``python -m tests.fuzz.<target>``
from the repository root) under libFuzzer's own bounds, -max_total_time=SECONDS and
-rss_limit_mb=2048, with its dictionary from dict/, on a fresh copy of its seed corpus
(in a temporary directory, or with --keep in tests/fuzz/corpus-work/<target>/, which is
gitignored) without the inputs listed in known_bugs.KNOWN_BUGS. Targets run one after
another, so the whole run takes about targets x seconds. Crashing inputs are written to
tests/fuzz/corpus-work/artifacts/ and each target's full log to corpus-work/logs/. The
table gives the executions from libFuzzer's final stats (-print_final_stats=1); the exit
status is 1 if any target crashed, hung or did not report its stats.

    python tests/fuzz/run_all.py [--seconds 30] [--target fuzz_server] [--keep] [-- -flag=..]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fuzz.known_bugs import KNOWN_BUGS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORK = HERE / "corpus-work"
TARGETS = sorted(path.stem for path in HERE.glob("fuzz_*.py"))
#: Seconds a target may take beyond -max_total_time (start-up, the seed corpus, final
#: stats) before it is killed and reported as hung.
GRACE = 120


@dataclass
class Outcome:
    target: str
    executions: int | None
    seconds: float
    result: str
    log: Path

    @property
    def ok(self) -> bool:
        return self.result == "ok"


def executions(log: str) -> int | None:
    """The number of inputs run, from libFuzzer's final stats or its DONE line."""
    stats = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    if stats:
        return int(stats[-1])
    done = re.findall(r"^#(\d+)\s+DONE", log, re.MULTILINE)
    return int(done[-1]) if done else None


def run_target(target: str, seconds: int, corpus: Path, extra: list[str]) -> Outcome:
    """Fuzz one target in a subprocess; its log goes to corpus-work/logs/<target>.log."""
    seeds = HERE / "corpus" / target
    if corpus.exists():
        shutil.rmtree(corpus)
    corpus.mkdir(parents=True)
    for path in seeds.iterdir() if seeds.is_dir() else ():
        if path.name not in KNOWN_BUGS:  # it would stop the fuzzer at once
            shutil.copy(path, corpus / path.name)
    artifacts = WORK / "artifacts"
    logs = WORK / "logs"
    artifacts.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{target}.log"
    command = [
        sys.executable,
        "-m",
        f"tests.fuzz.{target}",
        str(corpus),
        f"-max_total_time={seconds}",
        "-rss_limit_mb=2048",
        "-timeout=30",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/{target}-",
    ]
    dictionary = HERE / "dict" / f"{target}.dict"
    if dictionary.exists():
        command.append(f"-dict={dictionary}")
    command += extra
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    started = time.monotonic()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            code: int | None = process.wait(timeout=seconds + GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the group of the process we started
            process.wait()
            code = None
    elapsed = time.monotonic() - started
    log = log_path.read_text(errors="replace")
    count = executions(log)
    crash = re.search(r"Test unit written to (\S+)", log)
    if code is None:
        result = f"HUNG (killed after {seconds + GRACE} s)"
    elif crash:
        result = f"CRASH: {crash.group(1)}"
    elif code != 0:
        result = f"FAILED (exit status {code})"
    elif count is None:
        result = "FAILED (no final stats)"
    else:
        result = "ok"
    return Outcome(target, count, elapsed, result, log_path)


def print_table(outcomes: list[Outcome]) -> None:
    rows = [("target", "executions", "seconds", "exec/s", "result")]
    for o in outcomes:
        rate = f"{o.executions / o.seconds:.0f}" if o.executions and o.seconds else "-"
        count = "-" if o.executions is None else str(o.executions)
        rows.append((o.target, count, f"{o.seconds:.0f}", rate, o.result))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:4], widths[1:], strict=True)
        ]
        print("  ".join([*cells, row[4]]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30, help="per target (default 30)")
    parser.add_argument(
        "--target", action="append", choices=TARGETS, help="run only this target (repeatable)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="fuzz in corpus-work/<target>/ and keep it"
    )
    parser.add_argument("libfuzzer", nargs="*", help="extra libFuzzer flags, after --")
    args = parser.parse_args(argv)
    if args.seconds < 1:
        parser.error("--seconds must be at least 1")
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="lmtp-fuzz-") as temp:
        for target in args.target or TARGETS:
            corpus = (WORK if args.keep else Path(temp)) / target
            print(f"fuzzing {target} for {args.seconds} s ...", flush=True)
            outcome = run_target(target, args.seconds, corpus, args.libfuzzer)
            outcomes.append(outcome)
            if not outcome.ok:
                tail = outcome.log.read_text(errors="replace").splitlines()[-40:]
                print("\n".join(f"    {line}" for line in tail), flush=True)
    print()
    print_table(outcomes)
    failed = [o.target for o in outcomes if not o.ok]
    if failed:
        print(f"\nfailed: {', '.join(failed)} (logs in {WORK / 'logs'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
