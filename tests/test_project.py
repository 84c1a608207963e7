"""Checks on the project itself: the README's commands are the ones CI runs, the core
stays pure, and the public names are pinned."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", quick, re.DOTALL)


def test_quick_start_has_exactly_two_commands() -> None:
    assert len(readme_commands()) == 2


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = readme_commands()[1]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


FORBIDDEN = (
    "socket",
    "ssl",
    "select",
    "selectors",
    "asyncio",
    "trio",
    "threading",
    "time",
    "logging",
    "random",
    "email",
)


def test_importing_the_core_pulls_in_no_io_clock_or_logging() -> None:
    code = (
        "import sys; before = set(sys.modules); import lmtp_core; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    loaded = {name.split(".")[0] for name in out}
    assert not loaded & set(FORBIDDEN), sorted(loaded & set(FORBIDDEN))
    assert "lmtp_core" in loaded


def test_public_names_are_pinned() -> None:
    import lmtp_core

    assert sorted(lmtp_core.__all__) == sorted(
        [
            "COMPILED",
            "BareLineEndings",
            "Capabilities",
            "ClientConnection",
            "ClientState",
            "ConnectionClosed",
            "DeliveryPlan",
            "EndOfData",
            "Lhlo",
            "Limits",
            "LocalProtocolError",
            "LongLines",
            "MailFrom",
            "MessageData",
            "MessageRefused",
            "Params",
            "Phase",
            "ProtocolError",
            "Quit",
            "RcptTo",
            "Ready",
            "RecipientResult",
            "RemoteProtocolError",
            "Reply",
            "Rset",
            "ServerConnection",
            "ServerState",
            "Signal",
            "Stage",
            "StartTls",
            "Status",
            "TransactionResult",
            "normalized_size",
        ]
    )
    # Params is a type alias, COMPILED a bool
    for name in set(lmtp_core.__all__) - {"Params", "COMPILED"}:
        assert getattr(lmtp_core, name).__module__.startswith("lmtp_core")
    assert isinstance(lmtp_core.COMPILED, bool)


def test_both_packages_ship_py_typed() -> None:
    assert (ROOT / "lmtp_core" / "py.typed").is_file()
    assert (ROOT / "transports" / "py.typed").is_file()


def test_the_blocking_flows_are_generated_from_the_async_ones() -> None:
    out = subprocess.run(
        [sys.executable, "tools/unasync.py", "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_runtime_modules_hold_no_protocol_flow() -> None:
    # The pump and the server loop exist once (_async_*.py, and their generated twins);
    # a runtime module only adapts streams, so it never drives the core itself.
    for name in ("blocking", "asyncio", "trio"):
        text = (ROOT / "transports" / f"{name}.py").read_text()
        for call in ("next_event(", "data_to_send(", "receive_data(", "start_transaction("):
            assert call not in text, (name, call)
