"""Option handling shared by the commands: errors as the tools print them, typed values, logging set-up."""

from __future__ import annotations

import sys
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
    """docopt with our conventions: usage errors on stdout and exit status 1."""
    try:
        return docopt(usage, argv=argv, version=version, default_help=True)
    except DocoptExit as error:
        fail(str(error) or usage)


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
