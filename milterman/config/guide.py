"""The key reference of ``doc/configuration.md``, generated from the schema (declared once).

``python -m milterman.config.guide [doc/configuration.md]`` rewrites the part of
the guide between the two markers; a test checks the committed guide matches.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from .builtins import BUILTIN_CONDITIONS
from .predicates import PREDICATES, STAGES
from .render import format_value
from .schema import (CONDITION, CONDITION_RULE, MILTER, MILTER_PATCH, RESTRICT_ACCOUNTS, RULE, SECTIONS, TOP_LEVEL,
                     Setting)
from .values import STATUS_ALIASES, STATUSES

BEGIN = "<!-- BEGIN GENERATED REFERENCE: python -m milterman.config.guide -->"
END = "<!-- END GENERATED REFERENCE -->"

_INTRODUCTIONS = {
    "package": "`platform = \"debian\"` asks for the detection of Debian's milters (D-9).",
    "security": "Privileges (A3, D-5, D-10).",
    "log": "Logging (A4).",
    "manager": "The manager process and its MTA-facing socket (A5, B3).",
    "controller": "The controller socket (A6, D-7).",
    "hooks": "Python entry points, `\"package.module:function\"` (C-TOML-1).",
    "database": "Handed to the `[hooks]` functions as `context.database`; the manager itself never connects "
                "(A10).",
    "s25r": "Tunables of the built-in `S25R` condition (M-AC-B1).",
    "remote_network": "Tunables of `Remote Network` (M-AC-B2).",
    "stress": "Tunables of `Stress Notify` / `No Stress` (M-AC-B5).",
    "trust": "Tunables of `Trust` (M-AC-B6).",
    "dnsbl": "Tunables of `DNSBL Listed` / `Not DNSBL Listed` (M-AC-B7).",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(setting: Setting) -> str:
    if setting.required:
        return "required"
    if setting.default is None:
        return "unset"
    return f"`{format_value(setting.kind.dump(setting.default))}`"


def _options(setting: Setting) -> str:
    parts = []
    for option in setting.options:
        text = ", ".join(f"`{name}`" for name in option.names)
        if option.metavar:
            text = text[:-1] + f"={option.metavar}`"
        if option.constant is not None:
            text += f" (= `{format_value(option.constant)}`)"
        parts.append(text + (" (deprecated)" if option.deprecated else ""))
    return "<br>".join(parts)


def _table(settings: Iterable[Setting], with_options: bool = False) -> list[str]:
    header = "| key | type | default | " + ("command line | " if with_options else "") + "meaning |"
    lines = [header, "|" + "---|" * (5 if with_options else 4)]
    for setting in settings:
        cells = [f"`{setting.name}`", setting.kind.label, _default(setting)]
        if with_options:
            cells.append(_options(setting))
        cells.append(setting.help + (" Arrays from several files are concatenated (B6)." if setting.accumulate else ""))
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return lines


def reference_markdown() -> str:
    """The reference part of the guide: every key, type, default, option and help text."""
    lines = ["## Key reference", "", "Generated from `milterman/config/schema.py`; do not edit by hand.", "",
             "### Top-level keys", ""]
    lines += _table(TOP_LEVEL)
    for section, settings in SECTIONS.items():
        lines += ["", f"### `[{section}]`", "", _INTRODUCTIONS[section], ""]
        lines += _table(settings, with_options=any(setting.options for setting in settings))
    lines += ["", "### `[[milter]]`", "", "Child milters; the order of first appearance is the processing order.", ""]
    lines += _table(MILTER)
    lines += ["", "### `[[milter_patch]]`", "",
              "Bulk edits applied after every file is merged: any `[[milter]]` key except `name`, plus:", ""]
    lines += _table(MILTER_PATCH)
    lines += ["", "### `[[restrict_accounts]]`", "", "Each table generates one condition (M-AC-B8).", ""]
    lines += _table(RESTRICT_ACCOUNTS)
    lines += ["", "### `[[condition]]`", "", "User-defined applicable conditions (B5, C-COND-1).", ""]
    lines += _table(CONDITION)
    lines += ["", "### `[[condition.rule]]`", ""]
    lines += _table(CONDITION_RULE)
    lines += ["", "### `[[rule]]`", "", "The manager-level rule chain (B7).", ""]
    lines += _table(RULE)
    lines += ["", "### Predicates of `match`", "",
              "An array value holds if any element matches. Prefix a key with `not_` to negate it. "
              "A predicate used at a stage where it is not available is a load error.", "",
              "| key | value | available at | holds when |", "|---|---|---|---|"]
    for spec in PREDICATES.values():
        lines.append(f"| `{spec.name}` | {_cell(spec.kind.label)} | {spec.available_label} | {_cell(spec.help)} |")
    lines.append("| `recipients` | `\"any\"` \\| `\"all\"` | data → | quantifier of the recipient predicates "
                 "after the RCPT stage; needs one of them in the same `match`; cannot be negated |")
    aliases = ", ".join(f"`{alias}` = `{name}`" for alias, name in STATUS_ALIASES.items())
    lines += ["", "### Enumerations", "",
              "Stages: " + ", ".join(f"`{stage}`" for stage in STAGES) + ".", "",
              "Statuses: " + ", ".join(f"`{status}`" for status in STATUSES) + f" (alias {aliases}; case and `_` "
              "for `-` are accepted).", "",
              "Built-in conditions: " + ", ".join(f"`{name}`" for name in BUILTIN_CONDITIONS) + "."]
    return "\n".join(lines) + "\n"


def replace_reference(text: str) -> str:
    """The guide with its generated part replaced (the prose around it is kept)."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + reference_markdown() + text[end:]


def extract_reference(text: str) -> str:
    """The generated part of a guide, as committed."""
    return text[text.index(BEGIN) + len(BEGIN):text.index(END)].lstrip("\n")


def main(argv: list[str] | None = None) -> int:
    """Rewrite the generated part of the guide in place (default ``doc/configuration.md``)."""
    path = (argv if argv is not None else sys.argv[1:] or ["doc/configuration.md"])[0]
    with open(path, encoding="utf-8") as stream:
        text = stream.read()
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(replace_reference(text))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
