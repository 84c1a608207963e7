"""Sphinx configuration of the lmtp documentation site, built by `nox -s docs`.

How it works: plain reStructuredText pages, the alabaster theme that ships with Sphinx,
and sphinx.ext.autodoc for the API reference, which imports the packages from this
checkout. Nothing is fetched from the network (no intersphinx), so references to the
standard library and to trio or pytest are not links: nitpick_ignore_regex names them,
and every other reference must resolve (`sphinx-build -n`). The local extension in
_ext/lmtpdocs.py renders the settings and CLI option tables with their names and
defaults read from the code (warning when the page and the code disagree), prints the
`lmtp --help` texts from the parser, and warns when a public name is undocumented.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE / "_ext")]

project = "lmtp"
author = "the lmtp authors"
project_copyright = "the lmtp authors"
release = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
version = release

extensions = ["sphinx.ext.autodoc", "lmtpdocs"]

root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
pygments_style = "sphinx"
highlight_language = "text"  # literal blocks (::) are shell sessions and output

# ---- autodoc --------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
# A dataclass without a docstring gets "Name(field: 'type', ...)" as its __doc__, which
# autodoc would otherwise take for the signature (RecipientResult, Limits).
autodoc_docstring_signature = False
# No autodoc_type_aliases: Sphinx 9 prints an alias used inside a union or a generic
# (Decision | Awaitable[Decision], list[Params]) as its internal TypeAliasForwardRef, so
# signatures show the aliases expanded; the aliases are documented by hand.

# ---- cross-references -------------------------------------------------------------------
nitpicky = True
# Offline build: the standard library, trio and pytest have no inventory here, so their
# names stay plain text. Private modules are mapped to the public names by lmtpdocs.
nitpick_ignore_regex = [
    (r"py:.*", r"(collections\.abc|typing|typing_extensions|types)\..*"),
    (r"py:.*", r"(ssl|socket|email|os|io|enum|pathlib|logging|concurrent)(\..*)?"),
    (r"py:.*", r"(asyncio|contextlib|smtplib|atexit)(\..*)?"),
    (r"py:.*", r"(trio|pytest|_pytest)(\..*)?"),
    (r"py:.*", r"(Unpack|Self|ClassVar|IO|Any|TypeAlias|Awaitable)(\[.*)?"),
    # inline()'s type variable: the decorator returns the method it was given.
    (r"py:class", r"transports\._session\.F"),
    # LMTPTestServer.__init__ takes the plugin's private recorder; users never call it.
    (r"py:class", r"transports\.pytest_plugin\._Recorder"),
]

# ---- HTML --------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"lmtp {release}"
html_theme_options = {
    "description": "LMTP (RFC 2033) done right: a sans-I/O core and blocking, asyncio "
    "and trio drivers, one outcome per recipient.",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
    "show_relbars": True,
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
html_static_path: list[str] = []
html_show_sourcelink = False
