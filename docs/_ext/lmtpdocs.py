"""A small Sphinx extension that keeps the lmtp documentation true to the code.

How it works:

- ``.. lmtp-settings:: client`` (or pool, server, timeouts, limits) renders one table
  row per setting. The names, types and defaults are read from the code (the settings
  TypedDicts, the functions and dataclasses that apply the defaults); the meaning of
  each comes from the directive's content, a definition list whose terms give the
  default too, as a classifier (``handler_threads : 4``), so that the page says it
  where it is read as it is, in the repository. A setting the code has and the page
  does not describe, or the reverse, or a default the page gives other than the code's
  (or does not give), is a warning, so `sphinx-build -W` fails until the page is
  brought up to date.
- ``.. lmtp-help:: send`` shows the text of ``lmtp send --help`` as the parser prints
  it, 88 columns wide. Its content is that text as the page says it; a text other than
  the parser's (or none) is a warning, as above.
- ``.. lmtp-options:: send`` renders one row per option of that subcommand, with its
  default, from the parser; the meanings and the defaults come from the content,
  checked as above (``--port : 2424``).
- Type hints name classes by the private module that defines them
  (``transports._config.ClientSettings``); a missing-reference handler resolves those
  to the public name (``transports.ClientSettings``) when that is documented.
- After reading, every name in the ``__all__`` of the public modules must have been
  documented somewhere; a missing one is a warning.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import inspect
import io
import os
import re
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

log = logging.getLogger(__name__)

#: The modules whose __all__ the API reference must cover.
PUBLIC_MODULES = (
    "lmtp_core",
    "transports",
    "transports.blocking",
    "transports.asyncio",
    "transports.trio",
    "transports.maildir",
    "transports.pytest_plugin",
)

_MIB = 1024 * 1024


def _settings(kind: str) -> list[tuple[str, str, object]]:
    """(name, type, default) for each setting of `kind`, from the code."""
    from lmtp_core import Limits  # noqa: PLC0415
    from transports import Timeouts  # noqa: PLC0415
    from transports._config import (  # noqa: PLC0415
        ClientConfig,
        ClientSettings,
        PoolConfig,
        PoolSettings,
        ServerConfig,
        ServerSettings,
    )

    def annotated(typed_dict: Any, names: Any = None) -> list[tuple[str, str]]:
        items = typed_dict.__annotations__.items()
        return [
            (name, getattr(hint, "__forward_arg__", str(hint)))
            for name, hint in items
            if names is None or name in names
        ]

    if kind == "client":
        params = inspect.signature(ClientConfig._create).parameters
        return [(n, t, params[n].default) for n, t in annotated(ClientSettings)]
    if kind == "pool":
        own = PoolSettings.__annotations__.keys() - ClientSettings.__annotations__.keys()
        defaults = {f.name: f.default for f in dataclasses.fields(PoolConfig)}
        return [(n, t, defaults[n]) for n, t in annotated(PoolSettings, own)]
    if kind == "server":
        defaults = {f.name: f.default for f in dataclasses.fields(ServerConfig)}
        return [(n, t, defaults[n]) for n, t in annotated(ServerSettings)]
    if kind in ("timeouts", "limits"):
        cls = Timeouts if kind == "timeouts" else Limits
        return [(f.name, str(f.type), f.default) for f in dataclasses.fields(cls)]
    raise ValueError(f"unknown settings kind {kind!r}")


def _default_text(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int) and value >= _MIB and value % _MIB == 0:
        return f"{value} ({value // _MIB} MiB)"
    if hasattr(value, "name") and hasattr(type(value), "__members__"):  # an Enum member
        return f"{type(value).__name__}.{value.name}"  # type: ignore[attr-defined]
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _type_text(hint: str) -> str:
    return hint.replace("_ssl.", "ssl.")


class SettingsTable(SphinxDirective):
    """``.. lmtp-settings:: KIND`` with a definition list: setting -> meaning."""

    required_arguments = 1
    has_content = True
    option_spec: ClassVar = {"class": directives.class_option}

    def run(self) -> list[nodes.Node]:
        kind = self.arguments[0]
        try:
            settings = _settings(kind)
        except (ImportError, ValueError) as exc:
            raise self.error(f"lmtp-settings: {exc}") from exc
        meanings, written = _definitions(self)
        names = [name for name, _, _ in settings]
        _check(self, f"lmtp-settings {kind}", names, meanings)
        defaults = {name: _default_text(default) for name, _, default in settings}
        _check_defaults(self, f"lmtp-settings {kind}", defaults, written)
        rows = [
            (_literal_cell(name, _type_text(hint)), _literal_cell(_default_text(default)))
            for name, hint, default in settings
        ]
        return [_table("setting", rows, names, meanings, self.options.get("class", []))]


def _definitions(
    directive: SphinxDirective,
) -> tuple[dict[str, list[nodes.Node]], dict[str, str | None]]:
    """The directive's content, a definition list: term -> definition nodes, and term
    -> the default its classifier gives (``name : default``), or None."""
    holder = nodes.container()
    directive.state.nested_parse(directive.content, directive.content_offset, holder)
    meanings: dict[str, list[nodes.Node]] = {}
    written: dict[str, str | None] = {}
    for item in holder.findall(nodes.definition_list_item):
        term = item.next_node(nodes.term).astext().strip("` ")
        definition = item.next_node(nodes.definition)
        meanings[term] = list(definition.children)
        classifiers = [child for child in item.children if isinstance(child, nodes.classifier)]
        written[term] = classifiers[0].astext().strip("` ") if classifiers else None
    return meanings, written


def _check_defaults(
    directive: SphinxDirective, what: str, defaults: dict[str, str], written: dict[str, str | None]
) -> None:
    """Warn for each default the page does not give, or gives other than the code."""
    for name, default in defaults.items():
        if name not in written:
            continue  # _check() warned
        said = written[name]
        if said is None:
            log.warning(
                "%s: the page does not give the default of %s (write it as '%s : %s')",
                what,
                name,
                name,
                default,
                location=directive.get_location(),
            )
        elif said != default:
            log.warning(
                "%s: the page says %s defaults to %s; the code says %s",
                what,
                name,
                said,
                default,
                location=directive.get_location(),
            )


def _check(
    directive: SphinxDirective, what: str, names: list[str], meanings: dict[str, Any]
) -> None:
    missing = [name for name in names if name not in meanings]
    extra = [name for name in meanings if name not in names]
    if missing or extra:
        log.warning(
            "%s: the code has %s, which the page does not describe; the page describes %s, "
            "which the code does not have",
            what,
            ", ".join(missing) or "nothing more",
            ", ".join(extra) or "nothing more",
            location=directive.get_location(),
        )


def _literal_cell(text: str, kind: str | None = None) -> list[nodes.Node]:
    first = nodes.paragraph()
    first += nodes.literal(text=text)
    if kind is None:
        return [first]
    second = nodes.paragraph()
    second += nodes.emphasis(text=kind)
    return [first, second]


def _row(*cells: list[nodes.Node]) -> nodes.row:
    row = nodes.row()
    for content in cells:
        entry = nodes.entry()
        entry.extend(content)
        row += entry
    return row


def _table(
    first: str,
    rows: list[tuple[list[nodes.Node], list[nodes.Node]]],
    names: list[str],
    meanings: dict[str, list[nodes.Node]],
    classes: list[str],
) -> nodes.table:
    """A three-column table: name, default, meaning (from the content)."""
    table = nodes.table(classes=["lmtp-settings", *classes])
    group = nodes.tgroup(cols=3)
    table += group
    for width in (28, 18, 54):
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    head += _row(*([nodes.paragraph(text=text)] for text in (first, "default", "meaning")))
    group += head
    body = nodes.tbody()
    for name, (name_cell, default_cell) in zip(names, rows, strict=True):
        body += _row(name_cell, default_cell, meanings.get(name, [nodes.paragraph()]))
    group += body
    return table


def help_text(args: list[str]) -> str:
    """What `lmtp ARGS --help` prints, 88 columns wide."""
    from transports import cli  # noqa: PLC0415

    out = io.StringIO()
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            cli.main([*args, "--help"])
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return out.getvalue().rstrip()


class CliHelp(SphinxDirective):
    """``.. lmtp-help:: [SUBCOMMAND]``: the parser's own --help text; the content is
    the text as the page gives it, which must be the same."""

    optional_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        command = " ".join(["lmtp", *self.arguments, "--help"])
        text = help_text(list(self.arguments))
        if not text:
            raise self.error(f"{command} printed nothing")
        said = "\n".join(line.rstrip() for line in self.content).strip("\n")
        if said != "\n".join(line.rstrip() for line in text.splitlines()):
            log.warning(
                "lmtp-help: the page's text of `%s` is not what the parser prints; it is:\n%s",
                command,
                text,
                location=self.get_location(),
            )
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def _cli_actions(command: str) -> list[argparse.Action]:
    """The options and arguments of `lmtp COMMAND`, from the parser (help excluded)."""
    from transports import cli  # noqa: PLC0415

    parser = cli._parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub = action.choices[command]
            return [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]
    raise ValueError(f"lmtp has no subcommand {command!r}")


def _option_name(action: argparse.Action) -> str:
    """What the page calls an option: its first long name, or a positional's name."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    return longs[0] if longs else action.option_strings[0] if action.option_strings else action.dest


def _option_text(action: argparse.Action) -> str:
    if not action.option_strings:
        return action.metavar if isinstance(action.metavar, str) else action.dest
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    if action.metavar is not None:
        value = str(action.metavar)
    elif action.choices is not None:
        value = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        value = action.dest.upper()
    return ", ".join(f"{s} {value}" for s in action.option_strings)


def _option_default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if action.nargs == 0:
        return "off"
    default = action.default
    if default is None or default in ([], argparse.SUPPRESS):
        return "none"
    return str(default)


class CliOptions(SphinxDirective):
    """``.. lmtp-options:: SUBCOMMAND`` with a definition list: option -> meaning."""

    required_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        command = self.arguments[0]
        try:
            actions = _cli_actions(command)
        except (ImportError, ValueError) as exc:
            raise self.error(f"lmtp-options: {exc}") from exc
        meanings, written = _definitions(self)
        names = [_option_name(action) for action in actions]
        _check(self, f"lmtp-options {command}", names, meanings)
        defaults = {_option_name(action): _option_default(action) for action in actions}
        _check_defaults(self, f"lmtp-options {command}", defaults, written)
        rows = [
            (_literal_cell(_option_text(action)), _literal_cell(_option_default(action)))
            for action in actions
        ]
        return [_table("option", rows, names, meanings, [])]


_PRIVATE = re.compile(r"^(lmtp_core|transports)\.(?:_\w+\.)+(\w+)$")


def resolve_private(
    app: Sphinx, env: Any, node: nodes.Element, contnode: nodes.Element
) -> nodes.Element | None:
    """transports._config.ClientSettings -> transports.ClientSettings, if documented."""
    if node.get("refdomain") != "py":
        return None
    match = _PRIVATE.match(node.get("reftarget", ""))
    if match is None:
        return None
    public = f"{match[1]}.{match[2]}"
    domain = env.get_domain("py")
    if public not in domain.objects:
        return None
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], public, node, contnode
    )


def check_public_names(app: Sphinx, env: Any) -> None:
    """Every name a public module exports is documented somewhere."""
    documented = env.get_domain("py").objects
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            if f"{module_name}.{name}" not in documented:
                log.warning("%s.%s is public but not documented", module_name, name)


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("lmtp-settings", SettingsTable)
    app.add_directive("lmtp-help", CliHelp)
    app.add_directive("lmtp-options", CliOptions)
    app.connect("missing-reference", resolve_private)
    app.connect("env-check-consistency", check_public_names)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
