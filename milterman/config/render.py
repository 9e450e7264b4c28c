"""A small TOML writer and ``render``: the effective configuration as TOML that loads back equal (D-8).

``render`` writes one flat document: no includes, patches already applied,
``remove_milters`` already applied (and written, for detected milters, D-9),
``attach_to`` and ``[[restrict_accounts]]`` attachments already in each milter's
``applicable_conditions`` (so generated conditions are written with
``milters = []``), every setting with its effective value. Comments say which
files were read, where each milter came from (``source``, D-9) and which values came
from the command line; they carry no meaning for loading.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from . import model
from .predicates import dump_match
from .schema import MILTER, RESTRICT_ACCOUNTS, SECTIONS, Setting
from .values import Octal

_BARE_KEY = re.compile(r"\A[A-Za-z0-9_-]+\Z")
_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


def format_key(key: str) -> str:
    """A bare key when TOML allows one, else a quoted key."""
    return key if _BARE_KEY.match(key) else format_string(key)


def _is_control(character: str) -> bool:
    return (ord(character) < 0x20 and character != "\t") or ord(character) == 0x7F


def format_string(text: str) -> str:
    """A literal string ``'…'`` when it has backslashes and can be one (regexes read better), else a basic string."""
    if "\\" in text and "'" not in text and not any(_is_control(character) for character in text):
        return f"'{text}'"
    parts = []
    for character in text:
        if character in _ESCAPES:
            parts.append(_ESCAPES[character])
        elif _is_control(character):
            parts.append(f"\\u{ord(character):04x}")
        else:
            parts.append(character)
    return '"' + "".join(parts) + '"'


def format_value(value: object) -> str:
    """One TOML value (inline tables for dicts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Octal):
        return f"0o{int(value):o}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(mark in text for mark in ".en") else text + ".0"
    if isinstance(value, str):
        return format_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{format_key(key)} = {format_value(item)}" for key, item in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML: {value!r}")


def dumps(document: dict) -> str:
    """A plain TOML writer for dicts (nested dicts become tables, lists of dicts arrays of tables)."""
    lines: list[str] = []
    _dump_table(document, (), lines)
    return "\n".join(lines) + "\n"


def _is_table_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def _dump_table(table: dict, path: tuple[str, ...], lines: list[str]) -> None:
    for key, value in table.items():
        if not isinstance(value, dict) and not _is_table_array(value):
            lines.append(f"{format_key(key)} = {format_value(value)}")
    for key, value in table.items():
        name = ".".join(format_key(part) for part in path + (key,))
        if isinstance(value, dict):
            lines.append(f"[{name}]")
            _dump_table(value, path + (key,), lines)
        elif _is_table_array(value):
            for item in value:
                lines.append(f"[[{name}]]")
                _dump_table(item, path + (key,), lines)


def _assign(key: str, value: object, comment: str = "", indent: str = "") -> str:
    line = f"{indent}{format_key(key)} = {format_value(value)}"
    return f"{line}  # {comment}" if comment else line


def _settings_lines(settings: Iterable[Setting], section: object, overridden: set[str]) -> list[str]:
    lines = []
    for setting in settings:
        value = getattr(section, setting.name)
        if value is None:
            continue
        comment = "from the command line" if setting.key in overridden else ""
        lines.append(_assign(setting.name, setting.kind.dump(value), comment))
    return lines


def render(configuration: model.Configuration) -> str:
    """D-8 ``--show-config``: TOML that :func:`~.loader.load_string` turns into an equal configuration."""
    lines = ["# Effective milter manager configuration, written by milterman (--show-config).",
             "# It loads back to the same configuration; includes, patches and removals are already applied."]
    lines += [f"# read: {path}" for path in configuration.files]
    lines += ["", f"version = {configuration.version}"]
    if configuration.remove_milters:
        lines.append(_assign("remove_milters", list(configuration.remove_milters), "already applied"))
    overridden = set(configuration.command_line)
    for section, settings in SECTIONS.items():
        body = _settings_lines(settings, getattr(configuration, section), overridden)
        if body:
            lines += ["", f"[{section}]"] + body
    for milter in configuration.milters:
        lines += ["", "[[milter]]"]
        lines += [f"# {line}" for line in (milter.source or "").split("; ") if line]
        lines += _settings_lines(MILTER, milter, set())
    for condition in configuration.conditions:
        lines += render_condition(condition)
    for restriction in configuration.restrict_accounts:
        lines += ["", "[[restrict_accounts]]"]
        lines += [f"# {restriction.source}"] if restriction.source else []
        lines += _settings_lines([s for s in RESTRICT_ACCOUNTS if s.name != "milters"], restriction, set())
        lines.append(_assign("milters", [], "already listed in the milters' applicable_conditions"))
    for rule in configuration.rules:
        lines += render_rule(rule)
    return "\n".join(lines) + "\n"


def render_condition(condition: model.ConditionDefinition) -> list[str]:
    """One ``[[condition]]`` with its ``[[condition.rule]]`` tables (B5)."""
    lines = ["", "[[condition]]"]
    lines += [f"# {condition.source}"] if condition.source else []
    lines.append(_assign("name", condition.name))
    if condition.description is not None:
        lines.append(_assign("description", condition.description))
    if condition.python is not None:
        lines.append(_assign("python", condition.python))
    for rule in condition.rules:
        lines += ["  [[condition.rule]]", _assign("stage", rule.stage, indent="  ")]
        if rule.match:
            lines.append(_assign("match", dump_match(rule.match), indent="  "))
        lines.append(_assign("action", rule.action, indent="  "))
        if rule.set_macros:
            lines.append(_assign("set_macros", dict(rule.set_macros), indent="  "))
        if rule.set_flags:
            lines.append(_assign("set_flags", list(rule.set_flags), indent="  "))
    return lines


def render_rule(rule: model.RuleSettings) -> list[str]:
    """One ``[[rule]]`` (B7)."""
    lines = ["", "[[rule]]"]
    if rule.name is not None:
        lines.append(_assign("name", rule.name))
    lines.append(_assign("stage", rule.stage))
    if rule.match:
        lines.append(_assign("match", dump_match(rule.match)))
    lines.append(_assign("action", rule.action))
    if rule.milters:
        lines.append(_assign("milters", list(rule.milters)))
    if rule.reply is not None:
        reply = {"code": rule.reply.code, "xcode": rule.reply.xcode, "text": rule.reply.text}
        lines.append(_assign("reply", {key: value for key, value in reply.items() if value is not None}))
    if rule.set_macros:
        lines.append(_assign("set_macros", dict(rule.set_macros)))
    if rule.final:
        lines.append(_assign("final", True))
    return lines
