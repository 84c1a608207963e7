"""Which build of lmtp_core is under test: the pure-Python reference, or the optional
mypyc build (nox -s compiled sets LMTP_EXPECT_COMPILED=1 after installing it). The
compiled run would otherwise pass just as well on the pure package by mistake."""

from __future__ import annotations

import os
import pathlib
import sys

import lmtp_core


def test_the_build_under_test_is_the_one_asked_for() -> None:
    expect = os.environ.get("LMTP_EXPECT_COMPILED", "") == "1"
    assert lmtp_core.COMPILED is expect
    modules = [m for name, m in sys.modules.items() if name.startswith("lmtp_core.")]
    assert len(modules) >= 10
    suffixes = {pathlib.Path(m.__file__ or "").suffix for m in modules}
    assert suffixes == ({".so"} if expect else {".py"})
