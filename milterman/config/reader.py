"""Reading one TOML file into checked, typed pieces that :mod:`.loader` merges (C-TOML-4, B2).

Everything that can be checked inside one file is checked here, with the file and
the dotted key of each problem: unknown keys, types, ranges, regexes, CIDRs,
specs, stages and actions, "available at" of predicates, reply codes, duplicate
names inside the file. What needs all files (condition names used by milters,
milters named by ``milter_status``, DNSBL zones) is recorded as :class:`Reference`
and checked after merging.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field

from .builtins import BUILTIN_CONDITIONS, restrict_accounts_default_name
from .errors import Invalid, Issues, show, type_name
from .model import ConditionDefinition, ConditionRule, Reply, RestrictAccounts, RuleSettings
from .predicates import Match, parse_match, stage_problems, strip_braces
from .schema import (ARRAYS, CONDITION, CONDITION_RULE, MILTER, MILTER_PATCH, RESTRICT_ACCOUNTS, RULE, SECTIONS,
                     TOP_LEVEL, Setting)
from .values import Context

try:  # Python ≥ 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]


@dataclass
class Reference:
    """A name used in one place that must exist after merging: ``kind`` is condition, milter or zone."""

    kind: str
    name: str
    file: str
    key: str


@dataclass
class MilterEntry:
    """One ``[[milter]]`` table: only the keys present (B6: they override an earlier definition)."""

    file: str
    key: str
    name: str
    values: dict[str, object]
    #: keys present but invalid (already reported; not reported again as missing)
    failed: set[str] = field(default_factory=set)


@dataclass
class PatchEntry:
    """One ``[[milter_patch]]`` (B3): globs, overriding keys, conditions to add and remove."""

    file: str
    key: str
    names: tuple[str, ...]
    values: dict[str, object]
    add: tuple[str, ...]
    remove: tuple[str, ...]


@dataclass
class ConditionEntry:
    file: str
    key: str
    definition: ConditionDefinition
    attach_to: tuple[str, ...]


@dataclass
class RestrictEntry:
    file: str
    key: str
    restriction: RestrictAccounts
    milters: tuple[str, ...]


@dataclass
class Document:
    """What one file contributes, in file order."""

    path: str
    #: False when the text is not TOML (nothing else is reported for the file then)
    parsed: bool = True
    version: int | None = None
    includes: list[tuple[str, bool, str]] = field(default_factory=list)  # (pattern, required, key)
    remove_milters: list[tuple[str, str]] = field(default_factory=list)  # (glob, key)
    sections: dict[str, dict[str, object]] = field(default_factory=dict)
    milters: list[MilterEntry] = field(default_factory=list)
    patches: list[PatchEntry] = field(default_factory=list)
    conditions: list[ConditionEntry] = field(default_factory=list)
    restricts: list[RestrictEntry] = field(default_factory=list)
    rules: list[tuple[str, RuleSettings]] = field(default_factory=list)  # (key, rule)
    references: list[Reference] = field(default_factory=list)


def _unknown(key: str, name: str, accepted: list[str]) -> str:
    close = difflib.get_close_matches(name, accepted, n=1)
    hint = f" (did you mean {show(close[0])}?)" if close else ""
    return f"unknown key {show(name)}{hint}"


class _FileReader:
    """Reads one parsed TOML document, reporting into ``issues``."""

    def __init__(self, path: str, issues: Issues):
        self.path = path
        self.issues = issues
        # C-TOML-2: relative paths are relative to the file's directory ("<string>": the current directory)
        self.context = Context(os.getcwd() if path.startswith("<") else os.path.dirname(os.path.abspath(path)))
        self.document = Document(path)

    def report(self, key: str, message: str) -> None:
        self.issues.add(self.path, key, message)

    def table(self, raw: object, key: str, settings: tuple[Setting, ...], skip: tuple[str, ...] = (),
              separator: str = ".") -> dict[str, object]:
        """Parse the keys of one table that ``settings`` declare; report unknown keys and bad values.

        Keys are reported as ``KEY.NAME``, or ``KEY: NAME`` with ``separator=": "`` (``milter "a": name``).
        """
        if not isinstance(raw, dict):
            self.report(key, f"expected a table, got {show(raw)} ({type_name(raw)})")
            return {}
        known = {setting.name: setting for setting in settings}
        values: dict[str, object] = {}
        for name, value in raw.items():
            if name in skip:
                continue
            setting = known.get(name)
            where = f"{key}{separator}{name}" if key else name
            if setting is None:
                self.report(where, _unknown(key, name, list(known) + list(skip)))
                continue
            try:
                values[name] = setting.kind.parse(value, self.context)
            except Invalid as error:
                self.issues.invalid(self.path, where, error)
        for setting in settings:
            if setting.required and setting.name not in raw and setting.name not in skip:
                self.report(key, f"{setting.name} is required")
        return values

    def read(self, data: dict) -> Document:
        document = self.document
        tops = {setting.name: setting for setting in TOP_LEVEL}
        for name, raw in data.items():
            if name in tops:
                try:
                    value = tops[name].kind.parse(raw, self.context)
                except Invalid as error:
                    self.issues.invalid(self.path, name, error)
                    continue
                if name == "version":
                    document.version = value  # type: ignore[assignment]
                elif name in ("include", "include_required"):
                    document.includes += [(pattern, name == "include_required", f"{name}[{index}]")
                                          for index, pattern in enumerate(value)]  # type: ignore[arg-type]
                else:
                    document.remove_milters += [(glob, f"remove_milters[{index}]")
                                                for index, glob in enumerate(value)]  # type: ignore[arg-type]
            elif name in SECTIONS:
                document.sections[name] = self.table(raw, name, SECTIONS[name])
            elif name in ARRAYS:
                if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
                    self.report(name, f"expected an array of tables ([[{name}]]), got {show(raw)}")
                    continue
                reader = getattr(self, f"read_{name}")
                seen: dict[str, str] = {}
                for index, item in enumerate(raw):
                    reader(item, f"{name}[{index}]", seen)
            else:
                accepted = list(tops) + list(SECTIONS) + list(ARRAYS)
                self.report(name, _unknown("", name, accepted))
        return document

    def unique(self, seen: dict[str, str], name: str, key: str, what: str) -> bool:
        """C-TOML-4: duplicate names inside one file are errors."""
        if name in seen:
            self.report(f"{key}.name" if what != "condition_name" else f"{key}.condition_name",
                        f"duplicate {what} {show(name)} (also {seen[name]})")
            return False
        seen[name] = key
        return True

    def condition_references(self, names: object, file_key: str) -> None:
        for index, name in enumerate(names or ()):  # type: ignore[arg-type]
            self.document.references.append(Reference("condition", name, self.path, f"{file_key}[{index}]"))

    def read_milter(self, raw: dict, key: str, seen: dict[str, str]) -> None:
        """A ``[[milter]]``: problems name the milter (``milter "opendkim": connection_spec``) once it has a name."""
        named = isinstance(raw.get("name"), str) and raw["name"] and raw["name"] not in seen
        label = f"milter {show(raw['name'])}" if named else key
        values = self.table(raw, label, MILTER, separator=": " if named else ".")
        if "name" not in values or not self.unique(seen, values["name"], key, "milter"):  # type: ignore[arg-type]
            return
        self.condition_references(values.get("applicable_conditions"),
                                  f"{label}{': ' if named else '.'}applicable_conditions")
        if values.get("python") is not None and not self.importable(values["python"], f"{label}: python", milter=True):
            values.pop("python")  # type: ignore[arg-type]
        name = values.pop("name")
        failed = {k for k in raw if k not in values and k != "name"}
        self.document.milters.append(MilterEntry(self.path, label, name, values, failed))  # type: ignore[arg-type]

    def read_milter_patch(self, raw: dict, key: str, seen: dict[str, str]) -> None:
        overrides = tuple(setting for setting in MILTER if setting.name != "name")
        extra = self.table({k: v for k, v in raw.items() if k in {s.name for s in MILTER_PATCH}}, key, MILTER_PATCH)
        values = self.table({k: v for k, v in raw.items() if k not in {s.name for s in MILTER_PATCH}}, key,
                            overrides, skip=tuple(s.name for s in MILTER_PATCH))
        for name in ("applicable_conditions", "add_applicable_conditions", "remove_applicable_conditions"):
            self.condition_references(values.get(name, extra.get(name)), f"{key}.{name}")
        if "names" in extra:
            self.document.patches.append(PatchEntry(
                self.path, key, extra["names"], values,  # type: ignore[arg-type]
                extra.get("add_applicable_conditions", ()), extra.get("remove_applicable_conditions", ())))  # type: ignore

    def read_restrict_accounts(self, raw: dict, key: str, seen: dict[str, str]) -> None:
        values = self.table(raw, key, RESTRICT_ACCOUNTS)
        accounts = values.get("accounts", ())
        patterns = values.get("account_patterns", ())
        if "accounts" not in values and "account_patterns" not in values:
            if "accounts" not in raw and "account_patterns" not in raw:
                self.report(key, "needs accounts, account_patterns or both")
            return
        if not accounts and not patterns:
            self.report(key, "needs at least one account or account pattern")
            return
        name = values.get("condition_name") or restrict_accounts_default_name(accounts, patterns)  # type: ignore
        if name in BUILTIN_CONDITIONS:
            self.report(f"{key}.condition_name", f"{show(name)} is a built-in condition name")
            return
        if not self.unique(seen, name, key, "condition_name"):  # type: ignore[arg-type]
            return
        restriction = RestrictAccounts(name, accounts, patterns, source=f"defined in {self.path}")  # type: ignore
        self.document.restricts.append(RestrictEntry(self.path, key, restriction,
                                                     values.get("milters", ("*",))))  # type: ignore[arg-type]

    def match(self, raw: dict, key: str, stage: str | None) -> Match:
        """Parse ``match`` and check it against the stage (B5.1 "available at")."""
        if "match" not in raw:
            return Match()
        match, problems = parse_match(raw["match"], self.context)
        if stage is not None:
            problems += stage_problems(match, stage)
        for problem in problems:
            self.issues.invalid(self.path, f"{key}.match", problem)
        for predicate in match.predicates:
            where = f"{key}.match.{predicate.key}"
            if predicate.name == "milter_status":
                for milter_name, _statuses in predicate.value:  # type: ignore[attr-defined]
                    self.document.references.append(Reference("milter", milter_name, self.path, where))
            elif predicate.name == "dnsbl_listed" and not isinstance(predicate.value, bool):
                for index, zone in enumerate(predicate.value):  # type: ignore[attr-defined]
                    self.document.references.append(Reference("zone", zone, self.path, f"{where}[{index}]"))
        return match

    def macros(self, raw: dict, key: str) -> tuple[tuple[str, str], ...]:
        """``set_macros``: name → string, names kept without braces (M-MAC-4)."""
        if "set_macros" not in raw:
            return ()
        table = raw["set_macros"]
        if not isinstance(table, dict):
            self.report(f"{key}.set_macros", f"expected a table of macro name → string, got {show(table)}")
            return ()
        result: dict[str, str] = {}
        for name, value in table.items():
            macro = strip_braces(name)
            if not isinstance(value, str):
                self.report(f"{key}.set_macros.{name}", f"expected a string, got {show(value)} ({type_name(value)})")
            elif not macro:
                self.report(f"{key}.set_macros", "empty macro name")
            elif macro in result:
                self.report(f"{key}.set_macros.{name}", f"macro {show(macro)} is listed twice")
            else:
                result[macro] = value
        return tuple(result.items())

    def read_condition(self, raw: dict, key: str, seen: dict[str, str]) -> None:
        values = self.table(raw, key, CONDITION, skip=("rule",))
        rules = []
        raw_rules = raw.get("rule", [])
        if not isinstance(raw_rules, list) or not all(isinstance(item, dict) for item in raw_rules):
            self.report(f"{key}.rule", f"expected an array of tables ([[condition.rule]]), got {show(raw_rules)}")
            raw_rules = []
        for index, item in enumerate(raw_rules):
            where = f"{key}.rule[{index}]"
            fields = self.table(item, where, CONDITION_RULE, skip=("match", "set_macros"))
            stage = fields.get("stage")
            match = self.match(item, where, stage)  # type: ignore[arg-type]
            macros = self.macros(item, where)
            if stage is not None:
                rules.append(ConditionRule(stage, match, fields.get("action", "stop"), macros,  # type: ignore
                                           fields.get("set_flags", ())))  # type: ignore[arg-type]
        name = values.get("name")
        if name is None:
            return
        if name in BUILTIN_CONDITIONS:
            self.report(f"{key}.name", f"{show(name)} is a built-in condition name (B5: may not be reused)")
            return
        if not self.unique(seen, name, key, "condition"):  # type: ignore[arg-type]
            return
        python = values.get("python")
        if python is not None and rules:
            self.report(f"{key}.python", "a condition has either rules or python, not both")
            return
        if python is not None:
            self.importable(python, f"{key}.python")  # type: ignore[arg-type]  (reported; the name still exists)
        definition = ConditionDefinition(name, values.get("description"), tuple(rules),  # type: ignore[arg-type]
                                         source=f"defined in {self.path}", python=python)  # type: ignore[arg-type]
        self.document.conditions.append(ConditionEntry(self.path, key, definition,
                                                       values.get("attach_to", ())))  # type: ignore[arg-type]

    def importable(self, reference: str, key: str, milter: bool = False) -> bool:
        """``[[condition]] python``: the class must import now (at start and on reload), not at the first mail.

        Modules are looked for on Python's path, then in the directory of the file that names them.
        """
        import sys

        from ..manager.python_conditions import load_condition_object

        directory = os.path.dirname(os.path.abspath(self.path))
        if directory not in sys.path:
            sys.path.append(directory)
        try:
            if milter:  # [[milter]] python: a checked milterman.milter.Milter subclass
                from ..milter import load

                load(reference, fresh=True)
            else:
                load_condition_object(reference, fresh=True)
        except Exception as error:  # the site's module: any failure to import or instantiate refuses the file
            self.report(key, f"cannot use {show(reference)}: {type(error).__name__}: {error}")
            return False
        return True

    def reply(self, raw: object, key: str, action: str | None) -> Reply | None:
        """B7 ``reply``: code 400–599 whose class matches the status, ``class.subject.detail`` xcode (M-RC-2)."""
        if not isinstance(raw, dict):
            self.report(key, f"expected a table {{ code = …, xcode = …, text = … }}, got {show(raw)}")
            return None
        for name in raw:
            if name not in ("code", "xcode", "text"):
                self.report(f"{key}.{name}", _unknown(key, name, ["code", "xcode", "text"]))
        code, xcode, text = raw.get("code"), raw.get("xcode"), raw.get("text")
        valid = True
        wanted = {"reject": "5", "temporary-failure": "4"}.get(action or "")
        if action is not None and wanted is None:
            self.report(key, f"only for reject and temporary-failure rules, not {show(action)} (C-RULE-3)")
            valid = False
        if not isinstance(code, int) or isinstance(code, bool) or not 400 <= code <= 599:
            self.report(f"{key}.code", f"must be an integer 400..599, got {show(code)}" if code is not None
                        else "is required")
            return None
        if wanted and str(code)[0] != wanted:
            self.report(f"{key}.code", f"{code} does not match status {show(action)} (needs {wanted}xx, C-RULE-3)")
            valid = False
        if xcode is not None:
            parts = xcode.split(".") if isinstance(xcode, str) else []
            if len(parts) != 3 or not all(part.isdigit() and part.isascii() for part in parts) \
                    or parts[0] != str(code)[0]:
                self.report(f"{key}.xcode", f"must be \"{str(code)[0]}.X.Y\" (class.subject.detail, class = the "
                            f"code's first digit, M-RC-2), got {show(xcode)}")
                valid = False
        if text is not None and not isinstance(text, str):
            self.report(f"{key}.text", f"expected a string, got {show(text)} ({type_name(text)})")
            valid = False
        return Reply(code, xcode, text) if valid else None

    def read_rule(self, raw: dict, key: str, seen: dict[str, str]) -> None:
        values = self.table(raw, key, RULE, skip=("match", "reply", "set_macros"))
        stage, action = values.get("stage"), values.get("action")
        match = self.match(raw, key, stage)  # type: ignore[arg-type]
        macros = self.macros(raw, key)
        reply = self.reply(raw["reply"], f"{key}.reply", action) if "reply" in raw else None  # type: ignore
        milters = values.get("milters", ())
        if action in ("skip", "only") and not milters and ("milters" in values or "milters" not in raw):
            self.report(f"{key}.milters", f"needs at least one milter for action {show(action)} (C-RULE-2)")
        if action not in ("skip", "only", None) and milters:
            self.report(f"{key}.milters", f"only for skip and only, not {show(action)} (C-RULE-2)")
        if action == "set-macro" and not macros and raw.get("set_macros", {}) == {}:
            self.report(f"{key}.set_macros", "needs at least one macro for action \"set-macro\" (C-RULE-4)")
        if action not in ("set-macro", None) and macros:
            self.report(f"{key}.set_macros", f"only for set-macro, not {show(action)} (C-RULE-4)")
        if stage == "unknown" and action in ("skip", "only"):
            self.report(f"{key}.action", f"{show(action)} is not allowed at stage \"unknown\" (terminal actions "
                        "and set-macro only, C-RULE-1)")
        if stage is None or action is None:
            return
        rule = RuleSettings(values.get("name"), stage, match, action, milters, reply, macros,  # type: ignore
                            values.get("final", False))  # type: ignore[arg-type]
        self.document.rules.append((key, rule))


def parse_toml(text: str, path: str, issues: Issues) -> dict | None:
    """``tomllib`` with its error (line and column) reported against the file."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        issues.add(path, "", f"invalid TOML: {error}")
        return None


def read_document(text: str, path: str, issues: Issues) -> Document:
    """Check and convert one file's text; problems go to ``issues`` (reading continues past them)."""
    data = parse_toml(text, path, issues)
    if data is None:
        return Document(path, parsed=False)
    return _FileReader(path, issues).read(data)
