"""Command-line options of milter-manager that set configuration values (A11), made from the schema.

:func:`overrides_from_options` turns a docopt result into the ``overrides`` that
:func:`~.loader.load` applies after the files, on every load (C-FILE-4, B6 last
row); :func:`options_help` writes the matching ``Options:`` lines for ``--help``.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence

from .errors import COMMAND_LINE, ConfigurationError, Invalid, Issues
from .schema import Option, Setting, all_settings, find_setting
from .values import Context


def option_table(keys: Collection[str] | None = None) -> list[tuple[Option, Setting]]:
    """Every option with the setting it sets, in schema order (A11); ``keys``: only those settings' options."""
    return [(option, setting) for setting in all_settings() for option in setting.options
            if keys is None or setting.key in keys]


def _given(options: Mapping[str, object], option: Option) -> object:
    """The docopt value of an option under any of its names (None when absent or a false flag)."""
    for name in option.names:
        value = options.get(name)
        if value not in (None, False, 0, []):
            return value
    return None


class Overrides(dict):
    """``{"manager.n_workers": 4, …}`` that also knows how each key was typed (``typed["security.effective_user"]
    == "-u"``), so that every later message about the value names the option the user wrote."""

    def __init__(self, values: Mapping[str, object] = (), typed: Mapping[str, str] | None = None) -> None:
        super().__init__(values)
        self.typed: dict[str, str] = dict(typed or {})


def typed_name(option: Option, argv: Sequence[str] | None) -> str:
    """The spelling of ``option`` on the command line (``-u``, ``--user``, an abbreviation); the last one wins."""
    found = option.names[-1]
    for argument in argv or ():
        if argument == "--":
            break
        for name in option.names:
            if name.startswith("--"):
                head = argument.partition("=")[0]
                if len(head) > 2 and name.startswith(head) and (head == name or head not in _EXACT):
                    found = head
            elif argument.startswith(name) and not argument.startswith("--"):
                found = name
    return found


#: every long option name (an argument equal to one of them is that option, never an abbreviation of another)
_EXACT: set[str] = set()


def overrides_from_options(options: Mapping[str, object], argv: Sequence[str] | None = None,
                           keys: Collection[str] | None = None) -> Overrides:
    """docopt options → ``{"manager.n_workers": 4, …}``; values are converted, ranges checked by ``load``.

    Options are applied in schema order, so the flag forms come after ``--log-level``
    (``--verbose``/``--quiet`` win) and ``--no-daemon`` after ``--daemon``. With ``argv``, messages
    name each option as it was typed (``-u``, not ``--user``). ``keys``: the settings a command offers
    (milter-test-client: the server settings); every option is checked the same way for every command.
    Raises :class:`ConfigurationError` (``command line: --n-workers: …``) for a value of the wrong type.
    """
    if not _EXACT:
        _EXACT.update(name for option, _setting in option_table() for name in option.names if name.startswith("--"))
    issues = Issues()
    overrides = Overrides()
    for option, setting in option_table(keys):
        value = _given(options, option)
        if value is None:
            continue
        typed = typed_name(option, argv)
        if option.metavar is None:
            overrides[setting.key] = option.constant
            overrides.typed[setting.key] = typed
            continue
        try:
            if option.check is not None:
                option.check.from_text(str(value))
            overrides[setting.key] = setting.kind.from_text(str(value))
            overrides.typed[setting.key] = typed
        except Invalid as error:
            issues.add(COMMAND_LINE, typed, error.message)
    if issues:
        raise ConfigurationError(issues.items)
    return overrides


def options_help(width: int = 32, keys: Collection[str] | None = None, name_keys: bool = True) -> str:
    """docopt ``Options:`` lines for every configuration option (the help text is the schema's); ``keys``:
    only those settings'; ``name_keys``: end each line with the setting's key (for a command with files)."""
    lines = []
    for option, setting in option_table(keys):
        names = ", ".join(option.names)
        if option.metavar:
            names += f"={option.metavar}"
        text = (option.help or setting.help).replace("`", "")
        if option.metavar and setting.default not in (None, ()):
            default = setting.kind.dump(setting.default)
            # not docopt's "[default: …]": a default there would override the files on every start
            text += f" (default: {oct(default) if setting.name.endswith('mode') else default})"
        if option.deprecated:
            text += " (deprecated)"
        if name_keys:
            text += f" ({setting.key})"
        lines.append(f"  {names:<{width}}  {text}" if len(names) <= width else f"  {names}\n  {'':<{width}}  {text}")
    return "\n".join(lines)


def settings_from_options(options: Mapping[str, object], argv: Sequence[str] | None,
                          keys: Collection[str]) -> dict[str, object]:
    """``keys`` → their values for a command without files (milter-test-client): the schema's defaults, and
    the options given, converted and checked by the same kinds as in the files (ranges, choices).

    Raises :class:`ConfigurationError` whose issues name the option as typed (``--n-workers``).
    """
    overrides = overrides_from_options(options, argv, keys)
    issues = Issues()
    values: dict[str, object] = {}
    context = Context(os.getcwd())
    for key in keys:
        setting = find_setting(key)
        assert setting is not None, key
        if key not in overrides:
            values[key] = setting.default
            continue
        try:
            values[key] = setting.kind.parse(overrides[key], context)
        except Invalid as error:
            issues.invalid(COMMAND_LINE, overrides.typed.get(key, key), error)
    issues.raise_if_any()
    return values
