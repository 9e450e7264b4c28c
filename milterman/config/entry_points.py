"""Python functions named in the configuration (C-TOML-1): ``"package.module:function"``.

``[hooks] started`` / ``maintained`` and ``manager.connection_checkers = ["python:…"]``
name functions; they are imported when the configuration is loaded (at start, on
reload, by ``--check-config``), so a name that does not import is refused with the
file and key instead of failing later in a worker.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


class EntryPointError(ValueError):
    """The name does not resolve to a callable; the message says why."""


def resolve(name: str) -> Callable:
    """``"package.module:function"`` (or ``module:Class.method``) → the callable."""
    module_name, _, attribute = name.partition(":")
    try:
        target: object = importlib.import_module(module_name)
    except Exception as error:  # any failure while importing the user's module is that module's problem
        raise EntryPointError(f"cannot import module <{module_name}>: {type(error).__name__}: {error}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise EntryPointError(f"module <{module_name}> has no <{attribute}>") from None
    if not callable(target):
        raise EntryPointError(f"<{name}> is not callable")
    return target


def named_entry_points(sections: dict[str, dict]) -> list[tuple[str, str, str]]:
    """(section, key, name) of every function the sections name (hooks and python checkers)."""
    found = []
    for name in ("started", "maintained"):
        for index, entry in enumerate(sections.get("hooks", {}).get(name, ())):
            found.append(("hooks", f"hooks.{name}[{index}]", entry))
    for index, checker in enumerate(sections.get("manager", {}).get("connection_checkers", ())):
        if checker.startswith("python:"):
            found.append(("manager", f"manager.connection_checkers[{index}]", checker[len("python:"):]))
    return found
