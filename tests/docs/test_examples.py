"""The documentation's runnable examples run: the framework adapter's self-test, its
pytest tests (written against the pytest plugin), and the sans-I/O delivery plan.

How it works: each example is run as a user would, in a subprocess from the repository
root, and must exit 0 with the output the docs promise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )


def test_adapter_self_test_logs_each_failed_recipient() -> None:
    done = run(str(EXAMPLES / "adapter.py"), "--self-test")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "self-test passed" in done.stdout
    logged = done.stdout + done.stderr
    assert "nobody@example.org: permanent at rcpt: 550" in logged
    assert "full@example.org: temporary at data: 452" in logged


def test_adapter_tests_pass_with_the_plugin() -> None:
    done = run("-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLES / "test_adapter.py"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout


def test_sansio_plan_example_delivers_everyone() -> None:
    done = run(str(EXAMPLES / "sansio_plan.py"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "user4@example.org delivered data 250" in done.stdout
