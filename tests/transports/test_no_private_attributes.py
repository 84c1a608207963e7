"""The drivers read no private attribute of their runtimes (asyncio, trio, ssl, socket).

How it works: every module of transports/ is parsed, and every attribute whose name
starts with one underscore is looked at, with getattr()/setattr()/hasattr() calls whose
name is a string literal. Those on `self` or `cls` are the class's own. What remains must
be in ALLOWED, each with the reason it is not a runtime's private state; a new one fails
here (asyncio.StreamReader._buffer once did, behind a getattr()).
"""

from __future__ import annotations

import ast
from pathlib import Path

TRANSPORTS = Path(__file__).resolve().parents[2] / "transports"

ALLOWED = {
    "ClientConfig._create": "our own class's constructor helper (_config.py)",
    "os._exit": "a public function of os, whatever its name (a forked worker's exit)",
    "stream._sock": "blocking.py's own SocketStream, read by the same module's server",
    "super()._get_help_string": "argparse's documented hook for a HelpFormatter subclass",
}


def private_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            name = node.attr
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if name.startswith("_") and not name.startswith("__"):
                found.append(ast.unparse(node))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and node.args[1].value.startswith("_")
            and not node.args[1].value.startswith("__")
        ):
            found.append(ast.unparse(node))
    return found


def test_no_private_attribute_of_a_runtime_is_read() -> None:
    seen = {
        use: path.name
        for path in sorted(TRANSPORTS.glob("*.py"))
        if not path.name.startswith("_sync_")  # generated from the _async_ twins
        for use in private_uses(path)
    }
    unexplained = {use: where for use, where in seen.items() if use not in ALLOWED}
    assert not unexplained, f"private attributes read (add a reason or remove): {unexplained}"


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f(reader, self):\n"
        "    self._ok = 1\n"
        "    return reader._buffer, getattr(reader, '_buffer', None)\n"
    )
    assert private_uses(sample) == ["reader._buffer", "getattr(reader, '_buffer', None)"]
