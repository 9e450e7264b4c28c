"""Reading logs for milter-manager-log-analyzer: which lines count, when they happened, what they count.

The analyzer reads milter-manager's ``[statistics]`` lines from two kinds of
files (D-11): a syslog mail log (BSD ``MON DD HH:MM:SS HOST PROG[PID]: `` lines, or RFC 3339
timestamps as rsyslog's high-precision format writes them) and milter-manager's own log file
(``[ISO-UTC]: MESSAGE`` or ``[ISO-UTC] [PID]: MESSAGE``). Input is bytes from
start to end (LA-ENC-1): a log is not ours to reject for its encoding.

Counting follows the original's rules with its defects fixed (D-1):
dotted (FQDN) syslog hosts match, and a milter's lines count from the first line that names
it (its header lines before its first ``[milter][end]`` included). ``strict_original=True``
reproduces the original's behaviour exactly; it exists so the tests can show the worked
example of the manual byte for byte and what each fix changes.

Counts do not depend on line order (the original dropped a whole open minute when a line
older than it arrived): a log written by several worker processes
may interleave their lines slightly out of order.
"""

from __future__ import annotations

import calendar
import datetime
import gzip
import io
import os
import re
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

#: the graph families of the manual; the manager's own series have the name ``MANAGER``
SESSION, STATUS, REPORT = "session", "status", "report"
MANAGER = ""

#: English month names only, whatever the locale
MONTHS = {name: number for number, name in enumerate(
    (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"), start=1)}

_HOST = rb"[\w.:\-]+"
_STRICT_HOST = rb"[\w\-]+"
_BSD = rb"(\w{3}) +(\d{1,2}) (\d\d):(\d\d):(\d\d) (%s) ([\w\-]+)\[\d+\]: "
BSD_SYSLOG = re.compile(_BSD % _HOST)
BSD_SYSLOG_STRICT = re.compile(_BSD % _STRICT_HOST)
RFC3339_SYSLOG = re.compile(
    rb"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.\d+)?(Z|[+-]\d\d:?\d\d) (" + _HOST + rb") ([\w\-]+)\[\d+\]: ")
#: our own log file: optional [LEVEL]/[DOMAIN] items, the UTC time, optional " [NAME]" / " [PID]", ": "
OWN_LOG = re.compile(rb"((?:\[[\w\-]+\])*)\[(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.\d+)?Z\]"
                     rb"(?: ?\[[^\]\s]+\]){0,2}: ")
SOLARIS_ID = re.compile(rb"\[ID \d+ \w+\.\w+\] ")
STATISTICS_MARK = b"[statistics] "
PROGRAM = b"milter-manager"
_LEVEL_NAMES = {b"critical", b"error", b"warning", b"message", b"info", b"debug", b"trace", b"profile", b"none"}

# CONTENT patterns, anchored at both ends (fullmatch)
MILTER_END = re.compile(rb"\[milter\]\[end\]\[(.+?)\]\[(.+?)\]\[(.+?)\]\((.+?)\): (.+)")
MILTER_END_LEGACY = re.compile(rb"\[milter\]\[end\]\[(.+)\]\(.+\): (.+)")
SESSION_END = re.compile(rb"\[session\]\[end\]\[(.+)\]\[(.+)\]\[(.+)\]\((.+)\)")
SESSION_END_LEGACY = re.compile(rb"\[session\]\[end\]\[(.+)\]\(.+\)")
DISCONNECTED = re.compile(rb"\[session\]\[disconnected\]\[(.+)\]\(.+\)")
FINISHED = re.compile(rb"\[sessions\]\[finished\] (\d+)\(\+(\d+)\) (\d+)")
REPLY_LEGACY = re.compile(rb"\[reply\]\[(.+)\]\[(.+)\]")
ABORT_LEGACY = re.compile(rb"\[abort\]\[(.+)\]")
HEADER_ADD = re.compile(rb"\[milter\]\[header\]\[add\]\((.+)\): <(.+?)>=<(.+?)>: (.+)")


def _text(value: bytes) -> str:
    """Bytes of a log line as text: invalid UTF-8 becomes U+FFFD, never an error (LA-ENC-1)."""
    return value.decode("utf-8", "replace")


# ------------------------------------------------------------------------------------- report keys

_AUTH_RESULT = re.compile(r"(\S+?)=(\S+)\s*")
_TARPIT = re.compile(r"Message whitelisted by tarpit (\d+)s", re.I)
_DELAYED = re.compile(r"Delayed for", re.I)
_SPF_PASSED = re.compile(r"Sender is SPF-compliant|Sender passed SPF test", re.I)


def report_keys(name: str, value: str) -> list[str]:
    """The report keys one added header yields, in the order they are found.

    Why keys and not the header itself: the report graph counts outcomes (spam, SPF pass…)
    whichever milter produced them, so each known header is reduced to the outcomes it states.
    """
    header = name.lower()
    if header in ("x-spam-flag", "x-spam"):
        return ["spam"] if value.lower() == "yes" else []
    if header == "x-spam-status":
        if "tests=" not in value:
            return []
        tests = re.split(r"\s*\S+=", value.split("tests=", 1)[1], maxsplit=1)[0]
        uribl = any(test.upper().startswith("URIBL_") for test in re.split(r"\s*,\s*", tests))
        return ["uribl"] if uribl else []
    if header == "authentication-results":
        keys = []
        for part in re.split(r";\s*", value)[1:]:
            match = _AUTH_RESULT.match(part)
            if not match:
                continue
            kind, result, rest = match.group(1), match.group(2), part[match.end():]
            if result == "pass":
                keys.append(f"{kind}-pass")
            elif result in ("fail", "hardfail"):
                keys.append(f"{kind}-fail")
            elif result == "neutral" and rest.startswith("(verification failed)"):
                keys.append(f"{kind}-fail")
        return keys
    if header == "x-greylist":
        if _TARPIT.search(value):
            return ["tarpitting-pass"]
        if _DELAYED.match(value):
            return ["greylisting-pass"]
        if _SPF_PASSED.search(value):
            return ["spf-pass"]
        return []
    if header == "x-virus-status":
        return ["virus"] if value[:8].lower() == "infected" else []
    return []


# ------------------------------------------------------------------------------------- the year of syslog lines

class SyslogYear:
    """The year of BSD syslog timestamps, which carry none.

    Rule: the first dated line of an input gets the year of the input's reference time (its
    file's modification time, or now for standard input), minus one when the line's month is
    later than the reference's month (a log holds nothing newer than its last write, so a
    December line in a file last written in January is from the year before). From then on a
    line whose month is more than six months *earlier* than the previous dated line's (Dec →
    Jan) starts the next year, and one more than six months *later* (a December straggler
    after January lines) belongs to the year before without changing the current year. So a
    run over a log spanning New Year counts both years, and a log read in January no longer
    puts December's lines into the future (the original used the current year for every line).
    """

    def __init__(self, reference: datetime.datetime) -> None:
        self.reference = reference
        self.year: int | None = None
        self.month = 0

    def year_of(self, month: int) -> int:
        """The year of a line in ``month`` (1–12), given every dated line before it."""
        if self.year is None:
            self.year = self.reference.year - (1 if month > self.reference.month else 0)
        elif month < self.month - 6:
            self.year += 1
        elif month > self.month + 6:
            return self.year - 1
        self.month = month
        return self.year


def _epoch(year: int, month: int, day: int, hour: int, minute: int, second: int,
           zone: datetime.tzinfo | None) -> float | None:
    """Seconds since the epoch of a wall-clock time in ``zone`` (None: the process's time zone)."""
    try:
        moment = datetime.datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None
    if zone is None:
        return time.mktime(moment.timetuple())
    return moment.replace(tzinfo=zone).timestamp()


def _offset_seconds(text: bytes) -> int:
    if text == b"Z":
        return 0
    sign = -1 if text[:1] == b"-" else 1
    digits = text[1:].replace(b":", b"")
    return sign * (int(digits[:2]) * 3600 + int(digits[2:4]) * 60)


# ------------------------------------------------------------------------------------- inputs

@dataclass
class LogSource:
    """One opened input: a name for messages, a binary stream and the reference time of SyslogYear."""

    name: str
    stream: BinaryIO
    reference: float
    closable: bool = True

    def close(self) -> None:
        """Close the file (standard input is left open: it is not ours)."""
        if self.closable:
            self.stream.close()


def open_log(path: str) -> LogSource:
    """Open a log file (``-``: standard input), plain or gzip (recognised by its magic bytes).

    Opened before anything is read or written, so that a missing file stops the run before
    the database is touched (``--log`` opens at option time).
    """
    if path == "-":
        raw = sys.stdin.buffer
        reference = time.time()
        closable = False
    else:
        raw = open(path, "rb")
        reference = os.fstat(raw.fileno()).st_mtime
        closable = True
    buffered = raw if hasattr(raw, "peek") else io.BufferedReader(raw)
    stream: BinaryIO = buffered
    if buffered.peek(2)[:2] == b"\x1f\x8b":
        stream = gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[assignment]
    return LogSource(path, stream, reference, closable)


def read_lines(source: LogSource, warn: Callable[[str], None] | None = None) -> Iterator[bytes]:
    """The lines of ``source``; a truncated or corrupt gzip stream ends it with a warning
    (logrotate may be compressing the file right now) instead of losing the whole run."""
    try:
        yield from source.stream
    except (EOFError, OSError, zlib.error) as error:
        if warn is not None:
            warn(f"{source.name}: input ends early: {error}")


# ------------------------------------------------------------------------------------- lines → (time, content)

@dataclass
class LineParser:
    """Turns raw lines of one input into ``(epoch seconds, CONTENT)`` for the statistics lines.

    ``zone`` is the time zone of syslog's wall-clock timestamps (None: the process's, as the
    original). ``strict_original`` restores the original's host
    pattern (no dots), which rejects FQDN hosts.
    """

    reference: float
    zone: datetime.tzinfo | None = None
    strict_original: bool = False
    year: SyslogYear = field(init=False)

    def __post_init__(self) -> None:
        reference = datetime.datetime.fromtimestamp(self.reference, self.zone)
        self.year = SyslogYear(reference)
        self._bsd = BSD_SYSLOG_STRICT if self.strict_original else BSD_SYSLOG

    def parse(self, line: bytes) -> tuple[float, bytes] | None:
        """``(time, CONTENT)`` when ``line`` is a statistics line of milter-manager, else None."""
        month = MONTHS.get(line[:3])
        if month is not None:
            return self._bsd_line(line, month)
        first = line[:1]
        if first == b"[":
            return self._own_line(line)
        if first.isdigit():
            return self._rfc3339_line(line)
        return None

    def _bsd_line(self, line: bytes, month: int) -> tuple[float, bytes] | None:
        if line[3:4] != b" ":
            return None
        year = self.year.year_of(month)  # every dated line keeps the year rule informed
        match = self._bsd.match(line)
        if not match or match.group(7) != PROGRAM:
            return None
        content = _statistics_content(line[match.end():])
        if content is None:
            return None
        stamp = _epoch(year, month, int(match.group(2)), int(match.group(3)), int(match.group(4)),
                       int(match.group(5)), self.zone)
        return None if stamp is None else (stamp, content)

    def _rfc3339_line(self, line: bytes) -> tuple[float, bytes] | None:
        match = RFC3339_SYSLOG.match(line)
        if not match or match.group(9) != PROGRAM:
            return None
        content = _statistics_content(line[match.end():])
        if content is None:
            return None
        try:
            wall = datetime.datetime(*(int(match.group(n)) for n in range(1, 7)), tzinfo=datetime.timezone.utc)
        except ValueError:
            return None
        return wall.timestamp() - _offset_seconds(match.group(7)), content

    def _own_line(self, line: bytes) -> tuple[float, bytes] | None:
        match = OWN_LOG.match(line)
        if not match:
            return None
        items = match.group(1)
        if items:
            levels = [item for item in re.findall(rb"\[([\w\-]+)\]", items) if item in _LEVEL_NAMES]
            if levels:  # the level item is on and this is not a statistics line
                return None
        try:
            stamp = calendar.timegm((int(match.group(2)), int(match.group(3)), int(match.group(4)),
                                     int(match.group(5)), int(match.group(6)), int(match.group(7)), 0, 0, 0))
        except (ValueError, OverflowError):
            return None
        content = line[match.end():].rstrip(b"\r\n")
        if content.startswith(STATISTICS_MARK):
            content = content[len(STATISTICS_MARK):]
        return stamp, content


def _statistics_content(rest: bytes) -> bytes | None:
    """CONTENT of a syslog message: an optional Solaris ``[ID n fac.lvl] `` dropped, then the
    ``[statistics] `` mark required."""
    match = SOLARIS_ID.match(rest)
    if match:
        rest = rest[match.end():]
    if not rest.startswith(STATISTICS_MARK):
        return None
    return rest[len(STATISTICS_MARK):].rstrip(b"\r\n")


# ------------------------------------------------------------------------------------- counting

Counts = dict[str, int]


class Tally:
    """Per-minute counts of every series, from the CONTENT of statistics lines.

    A series is ``(family, name)``: ``(SESSION, MANAGER)``, ``(STATUS, MANAGER)``,
    ``(REPORT, MANAGER)``, and ``(STATUS, milter)`` / ``(REPORT, milter)`` per child milter.
    Lines in the minute of ``update_limit`` or later are left for a later run (that minute is
    not complete yet, LA-AGG-2); lines before ``oldest`` are past what the graphs keep.
    ``milters`` lists the child milters in the order their first line appeared.
    """

    def __init__(self, update_limit: int, *, oldest: int | None = None, strict_original: bool = False) -> None:
        self.update_limit = update_limit
        self.oldest = oldest
        self.strict_original = strict_original
        self.counts: dict[tuple[str, str], dict[int, Counts]] = {}
        self.milters: list[str] = []
        self._milters_seen: set[str] = set()
        self._milters_ended: set[str] = set()  # strict_original: per-milter counting starts at [milter][end]
        self.lines = 0

    def _add(self, family: str, name: str, minute: int, key: str, value: int = 1, maximum: bool = False) -> None:
        bucket = self.counts.setdefault((family, name), {}).setdefault(minute, {})
        if maximum:
            bucket[key] = max(bucket.get(key, 0), value)
        else:
            bucket[key] = bucket.get(key, 0) + value

    def _milter(self, name: str, ended: bool) -> bool:
        """Register a milter named by a line; True when its own series count this line."""
        if name not in self._milters_seen:
            self._milters_seen.add(name)
            self.milters.append(name)
        if ended:
            self._milters_ended.add(name)
        return not self.strict_original or name in self._milters_ended

    def feed(self, stamp: float, content: bytes) -> None:
        """Count one statistics line's CONTENT at time ``stamp`` (epoch seconds)."""
        minute = int(stamp // 60) * 60
        if minute >= self.update_limit or (self.oldest is not None and minute < self.oldest):
            return
        self.lines += 1
        if content.startswith(b"[milter][end]"):
            match = MILTER_END.fullmatch(content)
            if match:
                self._add(SESSION, MANAGER, minute, "child")
                name = _text(match.group(5))
                if self._milter(name, ended=True):
                    self._add(STATUS, name, minute, _text(match.group(2)))
            elif MILTER_END_LEGACY.fullmatch(content):
                self._add(SESSION, MANAGER, minute, "child")
        elif content.startswith(b"[session][end]"):
            match = SESSION_END.fullmatch(content)
            if match:
                self._add(SESSION, MANAGER, minute, "smtp")
                self._add(STATUS, MANAGER, minute, _text(match.group(2)))
            elif SESSION_END_LEGACY.fullmatch(content):
                self._add(SESSION, MANAGER, minute, "smtp")
        elif content.startswith(b"[session][disconnected]"):
            if DISCONNECTED.fullmatch(content):
                self._add(SESSION, MANAGER, minute, "disconnected")
        elif content.startswith(b"[sessions][finished]"):
            match = FINISHED.fullmatch(content)
            if match:
                self._add(SESSION, MANAGER, minute, "concurrent", int(match.group(3)), maximum=True)
        elif content.startswith(b"[milter][header][add]"):
            match = HEADER_ADD.fullmatch(content)
            if match:
                keys = report_keys(_text(match.group(2)), _text(match.group(3)))
                name = _text(match.group(4))
                counted = self._milter(name, ended=False)
                for key in keys:
                    self._add(REPORT, MANAGER, minute, key)
                    if counted:
                        self._add(REPORT, name, minute, key)
        elif content.startswith(b"[reply]"):
            match = REPLY_LEGACY.fullmatch(content)
            if match:
                state, status = _text(match.group(1)), _text(match.group(2))
                if status == "continue" and state != "end-of-message":
                    return
                self._add(STATUS, MANAGER, minute, "pass" if status == "continue" else status)
        elif content.startswith(b"[abort]"):
            if ABORT_LEGACY.fullmatch(content):
                self._add(STATUS, MANAGER, minute, "abort")
