"""Ruby values of a milter manager 2.x configuration as TOML values, and the converted document.

:func:`value_of` turns a literal node into a Python value (never evaluating anything:
a name is only known when the configuration bound it to a literal before);
:func:`python_regex` rewrites a Ruby regex into Python ``re`` syntax. The
:class:`Document` collects what the converter produced, with the notes to write at
the place each untranslatable item would have gone, and renders it as TOML.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .. import __version__
from ..config.render import format_key, format_value
from ..config.schema import SECTIONS
from ..config.values import Octal
from .convert_config_ruby import ArrayNode, Call, HashNode, Literal, Name, Node, Operation, Unsupported


class NotConvertible(Exception):
    """A Ruby item without a TOML equivalent: ``what`` it is and what to do instead."""

    def __init__(self, what: str, instead: str = "write the equivalent by hand") -> None:
        super().__init__(what)
        self.what = what
        self.instead = instead


@dataclass(frozen=True)
class RubyRegex:
    """A Ruby regex literal: its source and flags (``i``, ``m``, ``x``)."""

    source: str
    flags: str = ""

    def python(self) -> str:
        return python_regex(self.source, self.flags)


def python_regex(source: str, flags: str = "") -> str:
    """Ruby regex → Python ``re`` text: ``\\z`` → ``\\Z``, ``\\h``, named groups, flags as ``(?imx)``."""
    text = source
    replacements = [(r"\z", r"\Z"), (r"\h", "[0-9a-fA-F]"), (r"\H", "[^0-9a-fA-F]")]
    out = []
    index = 0
    while index < len(text):
        if text[index] == "\\" and index + 1 < len(text):
            pair = text[index:index + 2]
            out.append(next((new for old, new in replacements if old == pair), pair))
            index += 2
            continue
        if text.startswith("(?<", index) and index + 3 < len(text) and text[index + 3] not in "=!":
            out.append("(?P<")
            index += 3
            continue
        out.append(text[index])
        index += 1
    result = "".join(out)
    inline = "".join(sorted({"i": "i", "m": "s", "x": "x"}[flag] for flag in flags if flag in "imx"))
    if inline:
        result = f"(?{inline}){result}"
    try:
        re.compile(result, re.ASCII)
    except re.error as error:
        raise NotConvertible(f"the regex /{source}/{flags} ({error})",
                             "write it in Python's re syntax") from None
    return result


def describe(node: Node) -> str:
    """A short name of a node for messages."""
    if isinstance(node, Unsupported):
        return node.what
    if isinstance(node, Name):
        return f"the value of `{node.name}`"
    if isinstance(node, Call):
        return f"a value computed by `{node.name}`"
    if isinstance(node, Operation):
        return f"a value computed with `{node.operator}`"
    return "a value computed at run time"


def value_of(node: Node, variables: dict[str, object] | None = None) -> object:
    """A literal node as a Python value (regexes as :class:`RubyRegex`, symbols as strings, nil as None)."""
    if isinstance(node, Literal):
        if node.interpolated:
            raise NotConvertible("a string with #{...} interpolation", "write the resulting value")
        if node.kind == "regex":
            return RubyRegex(str(node.value), node.flags)
        if node.kind == "words":
            return list(node.value)  # type: ignore[call-overload]
        return node.value
    if isinstance(node, ArrayNode):
        return [value_of(item, variables) for item in node.items]
    if isinstance(node, HashNode):
        return {str(value_of(key, variables)): value_of(item, variables) for key, item in node.pairs}
    if isinstance(node, Name) and variables is not None and node.name in variables:
        return variables[node.name]
    raise NotConvertible(describe(node), "write the resulting value")


def ruby_bool(value: object) -> object:
    """Ruby items that take booleans also accept "true"/"false"/"yes"/"no" strings (A3)."""
    if isinstance(value, str) and value.lower() in ("true", "yes", "false", "no"):
        return value.lower() in ("true", "yes")
    return value


@dataclass
class Problem:
    """One item not converted: where, what, and what to do instead."""

    file: str
    line: int
    what: str
    instead: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: cannot convert: {self.what}; {self.instead}"


@dataclass
class Table:
    """One ``[[milter]]``, ``[[milter_patch]]``, ``[[condition]]`` or ``[[restrict_accounts]]`` being built."""

    values: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rules: list[dict[str, object]] = field(default_factory=list)
    #: where it was first defined (file, line), for reports about the table as a whole
    origin: tuple[str, int] = ("", 0)


SECTION_ORDER = tuple(SECTIONS)


@dataclass
class Document:
    """The converted configuration: sections, arrays of tables, and the notes of what was not converted."""

    source: str
    sections: dict[str, dict[str, object]] = field(default_factory=dict)
    section_notes: dict[str, list[str]] = field(default_factory=dict)
    milters: dict[str, Table] = field(default_factory=dict)
    patches: list[Table] = field(default_factory=list)
    restrictions: list[Table] = field(default_factory=list)
    conditions: dict[str, Table] = field(default_factory=dict)
    remove_milters: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def set(self, section: str, key: str, value: object) -> None:
        self.sections.setdefault(section, {})[key] = value

    def unset(self, section: str, key: str) -> None:
        self.sections.get(section, {}).pop(key, None)

    def get(self, section: str, key: str, default: object = None) -> object:
        return self.sections.get(section, {}).get(key, default)

    def append(self, section: str, key: str, items: list) -> None:
        current = self.sections.setdefault(section, {}).setdefault(key, [])
        current.extend(item for item in items if item not in current)  # type: ignore[union-attr]

    def render(self) -> str:
        lines = [f"# Converted from {self.source} by milter-manager-convert-config {__version__}.",
                 "# Check it with: milter-manager --check-config -c DIRECTORY; compare with --show-config."]
        lines += [f"# {note}" for note in self.notes]
        lines += ["", "version = 1"]
        if self.remove_milters:
            lines.append(f"remove_milters = {format_value(self.remove_milters)}")
        for section in SECTION_ORDER:
            values = self.sections.get(section, {})
            notes = self.section_notes.get(section, [])
            if not values and not notes:
                continue
            lines += ["", f"[{section}]"] if values else [""]
            lines += [f"# {note}" for note in notes]
            lines += [f"{format_key(key)} = {format_value(toml_value(value))}" for key, value in values.items()]
        for milter in self.milters.values():
            lines += self._table("milter", milter)
        for patch in self.patches:
            lines += self._table("milter_patch", patch)
        for restriction in self.restrictions:
            lines += self._table("restrict_accounts", restriction)
        for condition in self.conditions.values():
            lines += self._table("condition", condition)
        return "\n".join(lines) + "\n"

    def _table(self, name: str, table: Table) -> list[str]:
        lines = ["", f"[[{name}]]"]
        lines += [f"# {note}" for note in table.notes]
        lines += [f"{format_key(key)} = {format_value(toml_value(value))}" for key, value in table.values.items()]
        for rule in table.rules:
            lines.append(f"  [[{name}.rule]]")
            lines += [f"  {format_key(key)} = {format_value(toml_value(value))}" for key, value in rule.items()]
        return lines


def toml_value(value: object) -> object:
    """Converted values as the TOML writer takes them (regexes as Python text)."""
    if isinstance(value, RubyRegex):
        return value.python()
    if isinstance(value, list):
        return [toml_value(item) for item in value]
    if isinstance(value, dict):
        return {key: toml_value(item) for key, item in value.items()}
    return value


__all__ = ["Document", "NotConvertible", "Octal", "Problem", "RubyRegex", "Table", "python_regex", "ruby_bool",
           "value_of"]
