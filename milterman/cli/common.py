"""Option handling shared by the commands: errors as the tools print them, typed values, logging set-up."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import NoReturn

from docopt import DocoptExit, docopt

from ..log import LogLevelError, logger, parse_level


class UsageError(Exception):
    """A bad option value; the message names the option and the value."""


def fail(message: str, status: int = 1) -> NoReturn:
    """Print an error on stdout, as the milter tools do, and exit."""
    sys.stdout.write(message.rstrip("\n") + "\n")
    sys.stdout.flush()
    raise SystemExit(status)


def parse_arguments(usage: str, argv: list[str] | None, version: str) -> dict:
    """docopt with our conventions: ``NAME: what is wrong``, then the usage, on stdout, exit status 1.

    docopt's own message shows its internals (``Option(None, '--bogus', 0, True)``); a new user
    needs the option they typed named in plain words.
    """
    arguments = sys.argv[1:] if argv is None else argv
    try:
        return docopt(usage, argv=arguments, version=version, default_help=True)
    except DocoptExit:
        section = usage_section(usage)
        problem = diagnose(usage, arguments) or f"cannot use these arguments together: {' '.join(arguments)}"
        fail(f"{program_name(usage)}: {problem}\n{section}")


@dataclass(frozen=True)
class _OptionForm:
    """One option as the usage text declares it: its names and the name of its value (None: a flag)."""

    names: tuple[str, ...]
    value: str | None


_OPTION_LINE = re.compile(r"^\s*(-\S.*?)(?:\s{2,}|$)")
_OPTION_WORD = re.compile(r"(--?[\w?][\w-]*)(?:[= ]([A-Z<][\w:<>-]*))?")


def usage_section(usage: str) -> str:
    """The ``Usage:`` paragraph of a usage text."""
    start = usage.index("Usage:")
    end = usage.find("\n\n", start)
    return usage[start:] if end < 0 else usage[start:end]


def program_name(usage: str) -> str:
    """The command's name: the first word of the first usage line."""
    return usage_section(usage).split()[1]


def declared_options(usage: str) -> list[_OptionForm]:
    """Every option of the ``Options:`` lines (``-s SPEC, --connection-spec=SPEC  text``)."""
    forms = []
    for line in usage[usage.index("Usage:"):].splitlines():
        match = _OPTION_LINE.match(line)
        if not match:
            continue
        names, value = [], None
        for word in _OPTION_WORD.finditer(match.group(1)):
            names.append(word.group(1))
            value = value or word.group(2)
        if names:
            forms.append(_OptionForm(tuple(names), value))
    return forms


def diagnose(usage: str, argv: list[str]) -> str | None:
    """What is wrong with ``argv`` in a user's words (unknown option, missing value…), or None."""
    forms = declared_options(usage)
    longs = {name: form for form in forms for name in form.names if name.startswith("--")}
    shorts = {name: form for form in forms for name in form.names if len(name) == 2 and name[1] != "-"}
    positional: list[str] = []
    index = 0
    while index < len(argv):
        argument = argv[index]
        index += 1
        if argument == "--":
            positional += argv[index:]
            break
        if argument.startswith("--"):
            name, equals, _value = argument.partition("=")
            form = longs.get(name)
            if form is None:
                candidates = sorted(long for long in longs if long.startswith(name))
                if len(candidates) > 1:
                    return f"ambiguous option {name}: {', '.join(candidates)}"
                if not candidates:
                    return f"unknown option {name}"
                form = longs[candidates[0]]
            if form.value is None and equals:
                return f"option {name} takes no value"
            if form.value is not None and not equals:
                if index >= len(argv) or argv[index] == "--":
                    return f"option {name} needs a value ({name}={form.value})"
                index += 1
        elif argument.startswith("-") and argument != "-":
            for position, letter in enumerate(argument[1:], start=1):
                form = shorts.get("-" + letter)
                if form is None:
                    return f"unknown option -{letter}"
                if form.value is not None:
                    if position == len(argument) - 1:
                        if index >= len(argv) or argv[index] == "--":
                            return f"option -{letter} needs a value (-{letter} {form.value})"
                        index += 1
                    break
        else:
            positional.append(argument)
    if positional and not _takes_arguments(usage):
        return f"unexpected argument {positional[0]}"
    return None


def _takes_arguments(usage: str) -> bool:
    """Whether a usage line names positional arguments (``[LOG_FILE...]``)."""
    lines = re.sub(r"\[?--?[^\s\]]*\]?(\.\.\.)?", " ", usage_section(usage))
    return re.search(r"\b[A-Z][A-Z_]+\b|<\w+>", lines) is not None


def integer(option: str, value: str | None, *, minimum: int | None = None, maximum: int | None = None,
            default: int = 0) -> int:
    """An integer option value; trailing garbage and out-of-range values are refused with the value named."""
    if value is None:
        return default
    text = value.strip()
    try:
        number = int(text, 10)
    except ValueError:
        raise UsageError(f"{option}: invalid integer value: <{value}>") from None
    if maximum is not None and number > maximum:
        raise UsageError(f"{option}: too big: <{value}>: parsed=<{number}>, max=<{maximum}>")
    if minimum is not None and number < minimum:
        raise UsageError(f"{option}: too small: <{value}>: parsed=<{number}>, min=<{minimum}>")
    return number


def number(option: str, value: str | None, default: float) -> float:
    """A non-negative number of seconds."""
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(f"{option}: invalid number: <{value}>") from None
    if seconds < 0:
        raise UsageError(f"{option}: must not be negative: <{value}>")
    return seconds


def configure_logging(arguments: dict) -> None:
    """Apply --log-level, --verbose, --quiet, --log-path and --syslog."""
    level = logger.level
    if arguments.get("--log-level"):
        try:
            level = parse_level(arguments["--log-level"], level)
        except LogLevelError as error:
            raise UsageError(f"--log-level: {error}") from None
    if arguments.get("--verbose"):
        level = parse_level("all")
    if arguments.get("--quiet"):
        level = parse_level("none")
    logger.set_level(level)
    path = arguments.get("--log-path")
    if path:
        try:
            logger.set_path(path)
        except OSError as error:
            raise UsageError(f"--log-path: {error}") from None
    if arguments.get("--syslog"):
        logger.use_syslog(facility=arguments.get("--syslog-facility") or "mail")


def served_config(arguments: dict, argv: list[str] | None, keys: tuple[str, ...], *, process_name: str,
                  report_memory: bool):
    """(ServerConfig, values of ``keys``) of a served command (milter-test-client, milter-run): ``-s`` (else
    $MILTER_DEFAULT_CONNECTION_SPEC) and the server settings of the one table, checked as in the files;
    logging is set up."""
    import os

    from ..config import ConfigurationError
    from ..config.cli import settings_from_options
    from ..config.schema import find_setting, server_fields
    from ..net import SpecError, parse_spec
    from ..server.app import ServerConfig
    from ..spec import DEFAULT_SPEC

    spec_text = arguments["--connection-spec"] or os.environ.get("MILTER_DEFAULT_CONNECTION_SPEC") or DEFAULT_SPEC
    try:
        spec = parse_spec(spec_text)
    except SpecError as error:
        raise UsageError(f"--connection-spec: {error}") from None
    try:
        values = settings_from_options(arguments, sys.argv[1:] if argv is None else argv, keys)
    except ConfigurationError as error:
        raise UsageError("\n".join(f"{issue.key}: {issue.message}" for issue in error.issues)) from None
    configure_logging(arguments)
    if arguments["--socket-group-name"]:
        logger.warning("[client][option][deprecated] --socket-group-name: use --unix-socket-group")
    fields = server_fields(lambda key: values[key] if key in values else find_setting(key).default)
    fields.update(spec=spec, report_memory_statistics=report_memory)
    return ServerConfig(**fields, process_name=process_name), values
