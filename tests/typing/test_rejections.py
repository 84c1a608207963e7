"""mypy rejects misspelt and mistyped settings at the caller's line.

How it works: rejected/calls.py holds calls that must not type-check, each marked with
`# E: <error code>`; this test runs `mypy --strict` on that file and compares the
(line, code) pairs mypy reports with the marks, both ways: every mark gets its error,
and no unmarked line has one. check_public_api.py pins the calls that must pass.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api", reason="mypy is in the test extra")

CALLS = Path(__file__).parent / "rejected" / "calls.py"
ROOT = Path(__file__).resolve().parents[2]


def test_mypy_reports_each_bad_call_at_its_line() -> None:
    marks = {
        (number, match[1])
        for number, line in enumerate(CALLS.read_text().splitlines(), 1)
        if (match := re.search(r"# E: ([a-z-]+)", line))
    }
    stdout, stderr, status = api.run(
        ["--strict", "--no-incremental", "--show-error-codes", "--no-error-summary", str(CALLS)]
    )
    assert status == 1, stderr or stdout
    found = set()
    for line in stdout.splitlines():
        match = re.match(r".*calls\.py:(\d+): error: .*\[([a-z-]+)\]$", line)
        if match:
            found.add((int(match[1]), match[2]))
    assert found == marks, stdout
    assert len(marks) >= 15
