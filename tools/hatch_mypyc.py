"""Optional accelerated build: lmtp_core compiled with mypyc into the wheel.

How it works. hatchling calls this hook for every wheel build. Unless LMTP_MYPYC=1 is
in the environment it does nothing, so `pip install .` stays a pure-Python wheel that
needs no compiler. With LMTP_MYPYC=1, dependencies() asks the build environment for
mypy (which carries mypyc) and setuptools, and initialize() compiles every module of
lmtp_core in a temporary directory, then adds the extension modules to the wheel
beside the .py files (an extension module wins over a .py of the same name on import)
and marks the wheel platform-specific. transports/ is never compiled. Editable
installs are left pure: their .py files are edited in place.

    LMTP_MYPYC=1 python -m pip install .
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PACKAGE = "lmtp_core"


def wanted() -> bool:
    return os.environ.get("LMTP_MYPYC", "") == "1"


class MypycHook(BuildHookInterface):  # type: ignore[misc]
    PLUGIN_NAME = "custom"

    def dependencies(self) -> list[str]:
        return ["mypy>=1.10", "setuptools>=68"] if wanted() else []

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if not wanted() or version == "editable":
            return
        root = pathlib.Path(self.root)
        out = pathlib.Path(tempfile.mkdtemp(prefix="lmtp-mypyc-"))
        for path, name in compile_package(root, out).items():
            build_data["force_include"][str(path)] = name
        build_data["pure_python"] = False
        build_data["infer_tag"] = True


def compile_package(root: pathlib.Path, out: pathlib.Path) -> dict[pathlib.Path, str]:
    """Compile lmtp_core under `root`; the extension modules, by their name in the wheel."""
    # Imported here: hatchling imports this file before dependencies() are installed.
    from mypyc.build import mypycify  # noqa: PLC0415
    from setuptools import Distribution  # noqa: PLC0415
    from setuptools.command.build_ext import build_ext  # noqa: PLC0415

    sources = sorted(str(p.relative_to(root)) for p in (root / PACKAGE).glob("*.py"))
    cwd = os.getcwd()
    os.chdir(root)  # mypycify names modules by their paths relative to here
    try:
        extensions = mypycify(sources, opt_level="3", target_dir=str(out / "c"), group_name=PACKAGE)
        command = build_ext(Distribution({"name": "lmtp", "ext_modules": extensions}))
        command.build_lib = str(out / "lib")
        command.build_temp = str(out / "temp")
        command.ensure_finalized()
        command.run()
    finally:
        os.chdir(cwd)
    lib = out / "lib"
    built = {
        path: path.relative_to(lib).as_posix()
        for path in lib.rglob("*")
        if path.suffix in {".so", ".pyd"}
    }
    if not any(name.startswith(f"{PACKAGE}/") for name in built.values()):
        raise RuntimeError(f"mypyc built no module of {PACKAGE} (looked in {lib})")
    return built
