"""Levels, level expressions, line format and sinks of the log.

A small logger of our own rather than :mod:`logging`: the levels are bit flags
(``error|critical`` selects exactly those two, LG-LVL-1), lines have a fixed
format that the log analyzer parses (D-11), and the hot path needs a cheap
"is this level on?" test before any formatting happens. It lives at the top of
the package because the network layer, the server and every tool log through
it; it uses the standard library only, so the master process may use it too.
"""

from __future__ import annotations

import datetime
import difflib
import os
import sys
import syslog as _syslog
import threading
import time
from typing import TextIO

NONE = 0x001
CRITICAL = 0x002
ERROR = 0x004
WARNING = 0x008
MESSAGE = 0x010
INFO = 0x020
DEBUG = 0x040
TRACE = 0x080
STATISTICS = 0x100
PROFILE = 0x200

LEVELS = {"none": NONE, "critical": CRITICAL, "error": ERROR, "warning": WARNING, "message": MESSAGE,
          "info": INFO, "debug": DEBUG, "trace": TRACE, "statistics": STATISTICS, "profile": PROFILE}
LEVEL_NAMES = {value: name for name, value in LEVELS.items()}
ALL = CRITICAL | ERROR | WARNING | MESSAGE | INFO | DEBUG | TRACE | STATISTICS | PROFILE
DEFAULT = CRITICAL | ERROR | WARNING | MESSAGE | STATISTICS

SYSLOG_PRIORITIES = {CRITICAL: _syslog.LOG_CRIT, ERROR: _syslog.LOG_ERR, WARNING: _syslog.LOG_WARNING,
                     MESSAGE: _syslog.LOG_NOTICE, INFO: _syslog.LOG_INFO, DEBUG: _syslog.LOG_DEBUG,
                     TRACE: _syslog.LOG_DEBUG, STATISTICS: _syslog.LOG_NOTICE, PROFILE: _syslog.LOG_DEBUG}
SYSLOG_FACILITIES = {
    "auth": getattr(_syslog, "LOG_AUTHPRIV", _syslog.LOG_AUTH),
    "authpriv": getattr(_syslog, "LOG_AUTHPRIV", _syslog.LOG_AUTH),
    "cron": _syslog.LOG_CRON, "daemon": _syslog.LOG_DAEMON, "kern": _syslog.LOG_KERN, "lpr": _syslog.LOG_LPR,
    "mail": _syslog.LOG_MAIL, "news": _syslog.LOG_NEWS, "user": _syslog.LOG_USER, "uucp": _syslog.LOG_UUCP,
    **{f"local{n}": getattr(_syslog, f"LOG_LOCAL{n}") for n in range(8)},
}
if hasattr(_syslog, "LOG_FTP"):
    SYSLOG_FACILITIES["ftp"] = _syslog.LOG_FTP


class LogLevelError(ValueError):
    """A level expression with unknown names (LG-LVL-2)."""


def parse_level(expression: str, base: int = DEFAULT) -> int:
    """Turn a level expression into a bit set.

    ``all``; ``a|b`` (from nothing); ``+a|b`` / ``-a|b`` (modify ``base``); each
    item may carry its own ``+``/``-``. Unknown names raise :class:`LogLevelError`
    naming all of them.
    """
    expression = expression.strip()
    if expression == "all":
        return ALL
    if expression in ("", "default"):
        return DEFAULT
    modifying = expression[0] in "+-"
    default_remove = expression[0] == "-"
    result = base if modifying else 0
    unknown = []
    for item in expression.split("|"):
        item = item.strip()
        remove = default_remove
        if item[:1] in ("+", "-"):
            remove = item[0] == "-"
            item = item[1:]
        if item == "all":
            bits = ALL
        elif item == "default":
            bits = DEFAULT
        elif item in LEVELS:
            bits = LEVELS[item]
        else:
            unknown.append(item)
            continue
        result = result & ~bits if remove else result | bits
    if unknown:
        names = "|".join(f"<{name}>" for name in unknown)
        raise LogLevelError(f"unknown flag names: [{names}](<MilterLogLevelFlags>){_level_hint(unknown)}")
    return result


def _level_hint(unknown: list[str]) -> str:
    """What the user could have meant, and every valid name: a bad level is usually a typo."""
    choices = ["all", "default", *LEVELS]
    guesses = [match for name in unknown for match in difflib.get_close_matches(name, choices, n=1)]
    quoted = ", ".join(f'"{name}"' for name in guesses)
    guess = f" (did you mean {quoted}?)" if guesses else ""
    return f"{guess}; valid levels: {', '.join(choices)} (join with |, add or remove with + or -)"


def timestamp(now: float | None = None) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC, the fraction omitted when zero."""
    moment = datetime.datetime.fromtimestamp(now if now is not None else time.time(), datetime.timezone.utc)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Logger:
    """The process logger: a level set per sink, formatting only when a sink wants the line.

    ``level`` is the stream sink's set; syslog has its own (``syslog_level``).
    ``with_pid`` adds ``[PID]`` after the time, which the pre-forked server turns on
    so each worker's lines can be told apart.
    """

    def __init__(self, level: int = DEFAULT, stream: TextIO | None = None) -> None:
        self.level = level
        self.path: str | None = None
        self._stream: TextIO | None = stream
        self._own_stream = False
        self.with_pid = False
        self.program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "milterman"
        self.syslog_level = 0
        self._lock = threading.Lock()
        self._update_mask()

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread of the parent may have held it)."""
        self._lock = threading.Lock()

    def _update_mask(self) -> None:
        self.mask = self.level | self.syslog_level

    def set_level(self, level: int) -> None:
        self.level = level
        self._update_mask()

    def enabled(self, level: int) -> bool:
        """Cheap test for the hot path: is any sink interested in ``level``?"""
        return bool(self.mask & level)

    def set_path(self, path: str | None) -> None:
        """Log to ``path`` in append mode (``None`` or ``-``: standard output), LG-FMT-3/4."""
        if path in (None, "-"):
            new_stream = None
            own = False
            path = None
        else:
            try:
                new_stream = open(path, "a", encoding="utf-8", errors="surrogateescape", buffering=1)
            except OSError as error:
                raise OSError(f"failed to set log output path: <{path}>: {error.strerror}") from None
            own = True
        self._close_stream()
        self._stream, self._own_stream, self.path = new_stream, own, path

    def _close_stream(self) -> None:
        if self._own_stream and self._stream is not None:
            try:
                self._stream.close()
            except OSError:
                pass
        self._stream = None
        self._own_stream = False

    def reopen(self) -> None:
        """Reopen the log file for rotation (SIGUSR1, LG-CFG-2); fall back to stdout on failure."""
        if self.path is None:
            return
        path = self.path
        self.info("[logger][reopen][close]")
        self._close_stream()
        try:
            self._stream = open(path, "a", encoding="utf-8", errors="surrogateescape", buffering=1)
            self._own_stream = True
            self.info("[logger][reopen][open]")
        except OSError as error:
            self.path = None
            self.warning(f"[logger][reopen][open][warning] <{path}>: {error.strerror}")

    def use_syslog(self, level: int | None = None, facility: str = "mail", ident: str | None = None) -> None:
        """Also send lines to syslog: LOG_PID, facility by name (unknown → mail)."""
        facility = os.environ.get("MILTER_LOG_SYSLOG_FACILITY", facility)
        code = SYSLOG_FACILITIES.get(facility.lower(), _syslog.LOG_MAIL)
        _syslog.openlog(ident or self.program, _syslog.LOG_PID, code)
        env_level = os.environ.get("MILTER_LOG_SYSLOG_LEVEL")
        if env_level:
            level = parse_level(env_level)
        self.syslog_level = self.level if level is None else level
        self._update_mask()

    def no_syslog(self) -> None:
        """Stop sending lines to syslog (a reload that turned ``log.use_syslog`` off)."""
        self.syslog_level = 0
        self._update_mask()

    def detached(self, ident: str | None = None) -> None:
        """After daemonizing standard output is /dev/null: keep the log file, or else log to syslog (D-11)."""
        if self.path is None:
            if not self.syslog_level:
                self.use_syslog(level=self.level, ident=ident)
            self.set_level(0)

    def log(self, level: int, message: str) -> None:
        """Write ``message`` at ``level`` to every sink that wants it."""
        if not self.mask & level:
            return
        if self.level & level:
            if self.with_pid:
                line = f"[{timestamp()}] [{os.getpid()}]: {message}\n"
            else:
                line = f"[{timestamp()}]: {message}\n"
            stream = self._stream or sys.stdout
            with self._lock:
                try:
                    stream.write(line)
                    stream.flush()
                except (OSError, ValueError):
                    pass
        if self.syslog_level & level:
            text = f"[statistics] {message}" if level == STATISTICS else message
            _syslog.syslog(SYSLOG_PRIORITIES.get(level, _syslog.LOG_NOTICE), text)

    def critical(self, message: str) -> None:
        self.log(CRITICAL, message)

    def error(self, message: str) -> None:
        self.log(ERROR, message)

    def warning(self, message: str) -> None:
        self.log(WARNING, message)

    def message(self, message: str) -> None:
        self.log(MESSAGE, message)

    def info(self, message: str) -> None:
        self.log(INFO, message)

    def debug(self, message: str) -> None:
        self.log(DEBUG, message)

    def trace(self, message: str) -> None:
        self.log(TRACE, message)

    def statistics(self, message: str) -> None:
        self.log(STATISTICS, message)


def level_from_environment(default: int = DEFAULT) -> int:
    """``MILTER_LOG_LEVEL`` if set and valid (LG-CFG-1), else ``default``."""
    value = os.environ.get("MILTER_LOG_LEVEL")
    if not value:
        return default
    try:
        return parse_level(value, default)
    except LogLevelError:
        return default


#: The process-wide logger; commands configure it from their options.
logger = Logger(level_from_environment())
