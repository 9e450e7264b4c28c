"""Configuration errors that name ``FILE: KEY`` and the bad value (C-TOML-4).

Every problem found while loading is collected as an :class:`Issue`; loading goes
on so that one run reports all of them, and :class:`ConfigurationError` is raised
at the end with one line per issue. The error type is this package's own: the
manager's loader hands it to the server as the server's ``ConfigurationError``, so
that the master's SIGHUP path logs it and keeps the previous configuration
(C-TOML-4, D-5), and ``config`` never imports ``server``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

#: the FILE part of issues about command-line overrides (B6 last row)
COMMAND_LINE = "command line"


@dataclass(frozen=True)
class Issue:
    """One problem: where (file and dotted key) and what, including the value."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        if self.key:
            return f"{self.file}: {self.key}: {self.message}"
        return f"{self.file}: {self.message}"


class ConfigurationError(Exception):
    """An invalid configuration; ``issues`` lists every problem, ``str()`` has one per line."""

    def __init__(self, issues: Iterable[Issue] | str):
        if isinstance(issues, str):
            issues = [Issue("<configuration>", "", issues)]
        self.issues: tuple[Issue, ...] = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class Invalid(ValueError):
    """Raised by value parsers; ``subkey`` (e.g. ``[2]`` or ``.zone``) is appended to the key reported."""

    def __init__(self, message: str, subkey: str = "", more: tuple[Invalid, ...] = ()):
        super().__init__(message)
        self.message = message
        self.subkey = subkey
        #: further problems found in the same value (every bad item of an array is reported)
        self.more = more

    def under(self, prefix: str) -> Invalid:
        """The same error one level deeper (for list items and table members)."""
        return Invalid(self.message, prefix + self.subkey, tuple(error.under(prefix) for error in self.more))

    def all(self) -> list[Invalid]:
        """This problem and the further ones, each without ``more``."""
        return [Invalid(self.message, self.subkey)] + [error for more in self.more for error in more.all()]


class Issues:
    """A collector: ``add`` many, then ``raise_if_any`` once (C-TOML-4: report them all)."""

    def __init__(self) -> None:
        self.items: list[Issue] = []

    def add(self, file: str, key: str, message: str) -> None:
        """Record one problem."""
        self.items.append(Issue(file, key, message))

    def invalid(self, file: str, key: str, error: Invalid) -> None:
        """Record a parser's problem (and the further ones it carries) under ``key``."""
        for each in error.all():
            self.add(file, key + each.subkey, each.message)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        """Raise one :class:`ConfigurationError` with every problem recorded, if any."""
        if self.items:
            raise ConfigurationError(self.items)


def show(value: object) -> str:
    """A value as it appears in an error message: TOML-like, so the user recognises what they wrote."""
    if isinstance(value, str):
        if "\\" in value and "'" not in value and value.isprintable():
            return f"'{value}'"  # as regexes are written in TOML
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {show(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(item) for item in value) + "]"
    return repr(value)


def type_name(value: object) -> str:
    """The TOML name of a value's type, for "expected X, got Y" messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean "S25R"?)`` for the closest known name (case-insensitive), or ``""``."""
    by_folded = {candidate.casefold(): candidate for candidate in sorted(known)}
    close = difflib.get_close_matches(name.casefold(), list(by_folded), n=1)
    return f" (did you mean {show(by_folded[close[0]])}?)" if close else ""
