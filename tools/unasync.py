"""Generate the blocking twins of the async flows: transports/_sync_*.py.

How it works: each async module is rewritten token by token (async def -> def, await
dropped, async with -> with, AsyncX -> SyncX, aclose -> close, anext -> next, ...),
and the result is written next to it with a header saying where it came from. The
flow is written once and read twice; `--check` (run by the test suite) fails when a
generated file is out of date, so a hand edit to a twin cannot land.

Run: python tools/unasync.py          (write)
     python tools/unasync.py --check  (compare only; exit 1 if different)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAIRS = {
    "transports/_async_client.py": "transports/_sync_client.py",
    "transports/_async_server.py": "transports/_sync_server.py",
    "transports/_async_pool.py": "transports/_sync_pool.py",
}
# Whole words, in order; the async spelling on the left.
WORDS = [
    (r"async def ", "def "),
    (r"async with ", "with "),
    (r"async for ", "for "),
    (r"await ", ""),
    (r"__aenter__", "__enter__"),
    (r"__aexit__", "__exit__"),
    (r"\baclose\b", "close"),
    (r"\banext\b", "next"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\bAbstractAsyncContextManager\b", "AbstractContextManager"),
    (r"\bAsyncBody\b", "Body"),
    (r"\bAsync(?=[A-Z])", "Sync"),
    (r"\bprepare_async\b", "prepare"),
    (r"\b_async_(?=[a-z])", "_sync_"),
]


def generate(source: str, name: str) -> str:
    doc_end = source.index('"""', 3) + 3
    docstring, body = source[:doc_end], source[doc_end:]
    for pattern, replacement in WORDS:
        body = re.sub(pattern, replacement, body)
    header = (
        f'"""Generated from {name} by tools/unasync.py; do not edit. The blocking twin of:\n\n'
        + docstring[3:]
    )
    return header + body


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for src, dst in PAIRS.items():
        expected = generate((ROOT / src).read_text(), Path(src).name)
        target = ROOT / dst
        if check:
            if not target.exists() or target.read_text() != expected:
                stale.append(dst)
        else:
            target.write_text(expected)
    if stale:
        print("out of date (run python tools/unasync.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
