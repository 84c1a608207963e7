"""Statements of the docs that a test can hold, beyond the examples (test_examples.py)
and what the docs build checks itself (settings defaults, help texts, public names).

- The testing guide: the pytest plugin needs pytest and this package, and no trio.
- The README's documentation list links to files that exist, and to every page of the
  site but the generated API reference.
- Paths named in the packages' docstrings and comments (docs/..., README sections)
  exist, and the core's docstrings point at receive_eof(), not receive_data(b"").
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*ROOT.glob("lmtp_core/*.py"), *ROOT.glob("transports/*.py")])


def test_the_plugin_needs_no_trio() -> None:
    code = """
import sys
sys.modules["trio"] = None  # import trio now fails, as where it is not installed
from transports import blocking
from transports.pytest_plugin import LMTPServerFactory
with LMTPServerFactory() as factory:
    server = factory()
    message = b"Subject: x\\r\\n\\r\\nx\\r\\n"
    result = blocking.deliver(message, "", ["a@example.org"], **server.settings)
print(result.all_delivered, [m.recipients for m in server.messages])
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "[['a@example.org']]"]


def test_the_testing_guide_says_so() -> None:
    guide = " ".join((ROOT / "docs" / "guide" / "testing.rst").read_text().split())
    assert "The plugin needs **pytest** installed alongside this package" in guide
    assert "It needs no trio" in guide


def readme_documentation() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Documentation", 1)[1].split("\n## ", 1)[0]


def test_the_readme_links_to_files_that_exist() -> None:
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert links
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert not missing


def test_the_readme_lists_every_page() -> None:
    linked = set(re.findall(r"\]\((docs/[^)]+\.rst)\)", readme_documentation()))
    pages = {
        str(page.relative_to(ROOT))
        for page in (ROOT / "docs").rglob("*.rst")
        if page.parent.name != "api" and page.name != "index.rst"
    }
    assert pages - linked == set(), "pages the README does not list"


def test_paths_named_in_the_sources_exist() -> None:
    named = {
        (source.name, path)
        for source in SOURCES
        for path in re.findall(
            r"\b((?:docs|tests|benchmarks|tools)/[\w/.-]+\.(?:rst|py|md))", source.read_text()
        )
    }
    assert named
    missing = sorted((source, path) for source, path in named if not (ROOT / path).exists())
    assert not missing


def test_the_core_points_at_receive_eof_and_no_readme_section() -> None:
    for source in ROOT.glob("lmtp_core/*.py"):
        text = source.read_text()
        assert 'receive_data(b"")' not in text, source.name
        assert "see the README" not in text, source.name


def test_defaults_the_prose_gives_are_the_codes() -> None:
    # "``grace`` seconds (30 by default)": the tables are checked by the docs build,
    # these sentences here.
    import dataclasses

    from lmtp_core import Limits
    from transports import Timeouts
    from transports._config import PoolConfig, ServerConfig

    defaults: dict[str, object] = {}
    for cls in (Limits, Timeouts, PoolConfig, ServerConfig):
        defaults.update({f.name: f.default for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
    said = [
        (page.name, name, float(value))
        for page in (ROOT / "docs").rglob("*.rst")
        for name, value in re.findall(
            r"``(\w+)``[^`.;]{0,40}?\b(\d+(?:\.\d+)?)(?: s)? by default",
            " ".join(page.read_text().split()),
        )
        if name in defaults
    ]
    assert len(said) >= 4
    wrong = [(page, name, value) for page, name, value in said if value != defaults[name]]
    assert not wrong
