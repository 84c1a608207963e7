"""The fuzz harnesses as ordinary tests: every seed file, then hypothesis-built inputs.

How it works: each target's TestOneInput (importable without atheris, which only the
``__main__`` block uses) runs over every file of its seed corpus, and over inputs that
hypothesis assembles from protocol tokens and stray bytes, with random option flags and
split lengths (tests/fuzz/_input.py). So the normal test run exercises every harness and
its invariants in a few seconds; run_all.py is the fuzzer proper. Seeds listed in
known_bugs.KNOWN_BUGS reproduce core bugs not fixed yet: they are strict xfails, so a fix
shows up as a failure that asks for the entry to be removed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz._input import seed
from tests.fuzz.known_bugs import KNOWN_BUGS

HERE = Path(__file__).resolve().parent
TARGETS: dict[str, ModuleType] = {
    path.stem: importlib.import_module(f"tests.fuzz.{path.stem}")
    for path in sorted(HERE.glob("fuzz_*.py"))
}
EXAMPLES = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def seed_cases() -> list[object]:
    cases: list[object] = []
    for target in TARGETS:
        for path in sorted((HERE / "corpus" / target).iterdir()):
            marks = []
            if path.name in KNOWN_BUGS:
                marks.append(pytest.mark.xfail(reason=KNOWN_BUGS[path.name], strict=True))
            cases.append(pytest.param(target, path, marks=marks, id=f"{target}/{path.name}"))
    return cases


def test_every_target_has_seeds() -> None:
    assert set(TARGETS) == {
        "fuzz_body_encoder",
        "fuzz_client_session",
        "fuzz_reply_reader",
        "fuzz_server",
    }
    for target, module in TARGETS.items():
        assert len(list((HERE / "corpus" / target).iterdir())) >= 3, target
        assert module.__doc__ and "Invariant:" in module.__doc__, target


def test_known_bugs_are_in_the_corpus() -> None:
    names = {path.name for path in (HERE / "corpus").glob("*/*")}
    assert set(KNOWN_BUGS) <= names


@pytest.mark.parametrize(("target", "path"), seed_cases())
def test_seed(target: str, path: Path) -> None:
    TARGETS[target].TestOneInput(path.read_bytes())


def fuzz_inputs(tokens: list[bytes], flag_bits: int) -> st.SearchStrategy[bytes]:
    """Inputs in the _input.py layout whose payload mixes ``tokens`` and stray bytes."""
    pieces = st.one_of(st.sampled_from(tokens), st.binary(max_size=6))
    return st.builds(
        lambda flags, lengths, parts: seed(b"".join(parts), flags, lengths),
        st.integers(0, 2**flag_bits - 1),
        st.lists(st.integers(0, 40), max_size=6),
        st.lists(pieces, max_size=40),
    )


REPLY_TOKENS = [
    b"\r\n", b"220 mx.example.org ready\r\n", b"250-mx.example.org\r\n", b"250-PIPELINING\r\n",
    b"250-CHUNKING\r\n", b"250-8BITMIME\r\n", b"250-SIZE 10\r\n", b"250-STARTTLS\r\n",
    b"250 ENHANCEDSTATUSCODES\r\n", b"250 2.1.0 OK\r\n", b"250 2.1.5 OK\r\n", b"354 go\r\n",
    b"250 2.0.0 Saved\r\n", b"452 4.2.2 Full\r\n", b"550-5.1.1 No\r\n", b"550 5.1.1 No\r\n",
    b"421 4.3.2 Bye\r\n", b"220 2.0.0 TLS\r\n", b"221 2.0.0 Bye\r\n", b"250", b"-", b" ",
]  # fmt: skip
COMMAND_TOKENS = [
    b"\r\n", b"LHLO c.example\r\n", b"MAIL FROM:<a@b.c>\r\n", b"MAIL FROM:<n@b.c>", b" SIZE=9",
    b" BODY=BINARYMIME", b" SMTPUTF8", b"RCPT TO:<a@b.c>\r\n", b"RCPT TO:<n@b.c>\r\n",
    b"DATA\r\n", b"\r\n.\r\n", b"\n.\n", b".", b"BDAT 5\r\n", b"BDAT 3 LAST\r\n", b"RSET\r\n",
    b"NOOP\r\n", b"STARTTLS\r\n", b"QUIT\r\n", b"HELO x\r\n", b"VRFY a\r\n", b"x" * 70,
]  # fmt: skip
BODY_TOKENS = [b"\r\n", b"\r", b"\n", b".", b"..", b"\r\n.\r\n", b"line", b"x" * 30]


@pytest.mark.parametrize(
    ("target", "inputs"),
    [
        ("fuzz_reply_reader", fuzz_inputs(REPLY_TOKENS, 1)),
        ("fuzz_client_session", fuzz_inputs(REPLY_TOKENS, 8)),
        ("fuzz_server", fuzz_inputs(COMMAND_TOKENS, 6)),
        ("fuzz_body_encoder", fuzz_inputs(BODY_TOKENS, 8)),
    ],
)
def test_hypothesis_inputs(target: str, inputs: st.SearchStrategy[bytes]) -> None:
    test_one: Callable[[bytes], None] = TARGETS[target].TestOneInput
    EXAMPLES(given(inputs)(test_one))()
