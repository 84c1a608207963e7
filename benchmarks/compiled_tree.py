"""The optional compiled build, unpacked where a benchmark can put it first on sys.path.

How it works. `pip wheel` builds this checkout with LMTP_MYPYC=1 (the wheel users get:
lmtp_core compiled by mypyc, transports pure), and the wheel is unpacked into a
directory. A process whose sys.path starts with that directory imports the compiled
core; bench_revisions.py --compiled uses it, and any benchmark runs on it with
PYTHONPATH. Needs a C compiler and the Python headers; about 30 seconds.

    python benchmarks/compiled_tree.py DIR     # then: PYTHONPATH=DIR python benchmarks/...
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(directory: str) -> str:
    """Unpack the compiled wheel into `directory`; returns it."""
    with tempfile.TemporaryDirectory() as wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, "."],
            cwd=ROOT,
            env=dict(os.environ, LMTP_MYPYC="1"),
            check=True,
        )
        (wheel,) = Path(wheels).glob("lmtp-*.whl")
        if wheel.name.endswith("-none-any.whl"):
            raise RuntimeError(f"{wheel.name} is not a compiled wheel")
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(directory)
    return directory


if __name__ == "__main__":
    print(build(sys.argv[1]))
