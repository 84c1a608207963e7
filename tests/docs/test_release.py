"""The release files say the same things: the supported Python versions (noxfile.py,
pyproject.toml's classifiers and requires-python, .ci/run, docs/guide/versions.rst),
the licence (LICENSE and the metadata), the changelog's form, what the sdist holds, and
the public modules the versions page names (those the docs build checks).

How it works: the files are read as text (noxfile.py and docs/_ext/lmtpdocs.py through
ast, since nox and Sphinx are not installed where the tests run)."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def assigned(path: Path, name: str) -> Any:
    """The literal value assigned to `name` at the top of a Python file."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name} assigns no {name}")


PYTHONS = assigned(ROOT / "noxfile.py", "PYTHONS")


def test_the_supported_versions_are_a_list_oldest_first() -> None:
    assert isinstance(PYTHONS, list)
    assert sorted(PYTHONS, key=lambda v: tuple(map(int, v.split(".")))) == PYTHONS
    assert PYTHONS[0] == "3.11"


def test_classifiers_list_exactly_the_versions_tested() -> None:
    listed = [
        c.rsplit(" :: ", 1)[1]
        for c in PROJECT["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    assert listed == PYTHONS


def test_requires_python_is_the_oldest_version_tested() -> None:
    assert PROJECT["requires-python"] == f">={PYTHONS[0]}"
    assert PYPROJECT["tool"]["mypy"]["python_version"] == PYTHONS[0]
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py" + PYTHONS[0].replace(".", "")


def test_ci_makes_every_version_reachable() -> None:
    (line,) = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.startswith("PYTHONS=")
    ]
    assert line == f'PYTHONS="{" ".join(PYTHONS)}"'


def test_the_versions_page_lists_them() -> None:
    page = (ROOT / "docs" / "guide" / "versions.rst").read_text()
    section = page.split(".. _supported-pythons:", 1)[1].split("\n\n``requires-python``", 1)[0]
    assert re.findall(r"^- ``(3\.\d+)``$", section, re.MULTILINE) == PYTHONS
    assert f"``requires-python`` is ``>={PYTHONS[0]}``" in page


def test_the_versions_page_names_the_public_modules_the_docs_build_checks() -> None:
    page = (ROOT / "docs" / "guide" / "versions.rst").read_text()
    section = page.split(".. _public-modules:", 1)[1].split("\n\n- The documented", 1)[0]
    named = re.findall(r"^  - :mod:`([\w.]+)`$", section, re.MULTILINE)
    checked = assigned(ROOT / "docs" / "_ext" / "lmtpdocs.py", "PUBLIC_MODULES")
    assert tuple(named) == checked


def test_the_licence_is_the_mit_text_the_metadata_claims() -> None:
    assert PROJECT["license"] == {"text": "MIT"}
    assert "License :: OSI Approved :: MIT License" in PROJECT["classifiers"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) ")
    assert "Permission is hereby granted, free of charge, to any person obtaining a copy" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text


def test_the_changelog_keeps_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n")
    assert "[Keep a Changelog](https://keepachangelog.com/" in text
    releases = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert releases, "no release section"
    pattern = r"\[Unreleased\]|\[\d+\.\d+\.\d+\] - \d{4}-\d{2}-\d{2}"
    assert all(re.fullmatch(pattern, heading) for heading in releases), releases
    assert releases.count("[Unreleased]") <= 1
    # the newest first: what is not released yet, or the version pyproject.toml gives
    assert releases[0] == "[Unreleased]" or releases[0].startswith(f"[{PROJECT['version']}] ")
    kinds = set(re.findall(r"^### (.+)$", text, re.MULTILINE))
    assert kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, kinds


def test_the_sdist_holds_what_a_packager_needs() -> None:
    include = PYPROJECT["tool"]["hatch"]["build"]["targets"]["sdist"]["include"]
    for needed in ("lmtp_core", "transports", "tests", "docs", "LICENSE", "CHANGELOG.md"):
        assert needed in include


def test_the_typing_session_checks_the_examples() -> None:
    noxfile = (ROOT / "noxfile.py").read_text()
    assert '"docs/examples"' in noxfile
    assert "--python-version={version}" in noxfile
