"""The analyzer's database: per-minute counters in SQLite (the original kept RRDtool files).

Why SQLite: the standard library has it, one file holds every series, a transaction makes a
run all-or-nothing, and exact per-minute rows let the graphs print exact totals. The rules
are those of the original's RRD updates: one row per minute with every item
of the series (items without a count are 0), all-zero rows for the minutes without data
between two data minutes and after the series' previous last minute, nothing after the last
data minute, and a minute already written is never written again — so a cron job over the
whole current log adds only the new minutes.

Tables: ``session``, ``status`` and ``report`` (one column per item, ``-`` → ``_``), keyed by
``(name, minute)`` where name is ``''`` for the manager's own series and the child milter's
name otherwise; ``series`` remembers each series' last written minute (it outlives pruning);
``milter`` keeps the order in which child milters were first seen (the order of the graphs).
Rows older than :data:`RETENTION` (the year graph's 420 days and one more) are pruned,
as a round-robin database forgets them.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .log_analyzer_parse import MANAGER, REPORT, SESSION, STATUS, Tally

FILE_NAME = "milter-manager-log-analyzer.sqlite3"
SCHEMA_VERSION = "1"
STEP = 60
RETENTION = 421 * 86400

#: items per family, in the column order of the manual
ITEMS: dict[str, tuple[str, ...]] = {
    SESSION: ("smtp", "child", "disconnected", "concurrent"),
    STATUS: ("pass", "accept", "reject", "discard", "temporary-failure", "quarantine", "abort", "error", "stop"),
    REPORT: ("spam", "virus", "uribl", "greylisting-pass", "spf-pass", "spf-fail", "sender-id-pass",
             "sender-id-fail", "dkim-pass", "dkim-fail", "dkim-adsp-pass", "dkim-adsp-fail", "tarpitting-pass"),
}


def items_of(family: str, name: str) -> tuple[str, ...]:
    """The stored items of a series: the manager's status has no ``stop`` (only children are stopped)."""
    items = ITEMS[family]
    if family == STATUS and name == MANAGER:
        return items[:-1]
    return items


def column(item: str) -> str:
    """The column of an item: ``-`` → ``_`` (as the original's RRD data-source names)."""
    return item.replace("-", "_")


@dataclass(frozen=True)
class Summary:
    """One item over a time range: exact total, mean and maximum per minute (NaN without data)."""

    total: float
    average: float
    maximum: float


class StoreError(RuntimeError):
    """The database cannot be opened or has an unknown layout."""


class Store:
    """The SQLite database of one output directory.

    ``readonly`` opens an existing file without creating or changing anything
    (``--no-update-db`` must leave the database untouched, LA-OUT-2).
    """

    def __init__(self, path: Path, *, readonly: bool = False, timeout: float = 600.0) -> None:
        self.path = Path(path)
        self.readonly = readonly
        try:
            if readonly:
                self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout,
                                          isolation_level=None)
            else:
                self.db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
                self._create()
            self._check()
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: {error}") from None

    @classmethod
    def in_directory(cls, directory: Path, *, readonly: bool = False) -> Store | None:
        """The store of an output directory; None when reading and there is none yet."""
        path = Path(directory) / FILE_NAME
        if readonly and not path.exists():
            return None
        return cls(path, readonly=readonly)

    def close(self) -> None:
        """Close the connection (a transaction not committed is rolled back by SQLite)."""
        self.db.close()

    def _create(self) -> None:
        statements = [
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS milter (name TEXT PRIMARY KEY, position INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS series (family TEXT NOT NULL, name TEXT NOT NULL, "
            "last_minute INTEGER NOT NULL, PRIMARY KEY (family, name))",
        ]
        for family, items in ITEMS.items():
            columns = ", ".join(f"{column(item)} INTEGER NOT NULL DEFAULT 0" for item in items)
            statements.append(f"CREATE TABLE IF NOT EXISTS {family} (name TEXT NOT NULL, minute INTEGER NOT NULL, "
                              f"{columns}, PRIMARY KEY (name, minute)) WITHOUT ROWID")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                self.db.execute(statement)
            self.db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def _check(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None or row[0] != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: unknown database layout (schema {row[0] if row else None!r})")

    # ------------------------------------------------------------------------------ writing

    def begin(self) -> None:
        """Take the write lock before the last minutes are read: two overlapping cron runs
        cannot both add the same minutes (the second waits for the first)."""
        self.db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        """Make the run's rows visible, all at once."""
        self.db.execute("COMMIT")

    def rollback(self) -> None:
        """Drop what a failed run wrote: the database stays as before the run."""
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def last_minutes(self) -> dict[tuple[str, str], int]:
        """Each series' last written minute (epoch seconds)."""
        return {(family, name): minute for family, name, minute
                in self.db.execute("SELECT family, name, last_minute FROM series")}

    def add(self, tally: Tally, *, oldest: int | None = None) -> dict[tuple[str, str], int]:
        """Write the tally's new minutes; returns rows written per series."""
        last = self.last_minutes()
        written: dict[tuple[str, str], int] = {}
        for series, minutes in tally.counts.items():
            family, name = series
            previous = last.get(series)
            fresh = sorted(minute for minute in minutes if previous is None or minute > previous)
            if not fresh:
                continue
            start = fresh[0] if previous is None else previous + STEP
            if oldest is not None:
                start = max(start, oldest - oldest % STEP)
            items = items_of(family, name)
            names = ", ".join(column(item) for item in items)
            marks = ", ".join("?" for _ in items)
            rows = []
            for minute in range(start, fresh[-1] + STEP, STEP):
                counts = minutes.get(minute, {})
                rows.append((name, minute, *(counts.get(item, 0) for item in items)))
            self.db.executemany(f"INSERT INTO {family} (name, minute, {names}) VALUES (?, ?, {marks})", rows)
            self.db.execute("INSERT INTO series (family, name, last_minute) VALUES (?, ?, ?) "
                            "ON CONFLICT (family, name) DO UPDATE SET last_minute = excluded.last_minute",
                            (family, name, fresh[-1]))
            written[series] = len(rows)
        self.add_milters(tally.milters)
        return written

    def add_milters(self, names: Iterable[str]) -> None:
        """Remember child milters in the order first seen (the order of their graphs)."""
        position = self.db.execute("SELECT COALESCE(MAX(position), 0) FROM milter").fetchone()[0]
        for name in names:
            if self.db.execute("SELECT 1 FROM milter WHERE name = ?", (name,)).fetchone() is None:
                position += 1
                self.db.execute("INSERT INTO milter (name, position) VALUES (?, ?)", (name, position))

    def prune(self, oldest: int) -> None:
        """Forget minutes older than ``oldest`` (the year graph never shows them)."""
        for family in ITEMS:
            self.db.execute(f"DELETE FROM {family} WHERE minute < ?", (oldest,))

    # ------------------------------------------------------------------------------ reading

    def milters(self) -> list[str]:
        """Every child milter ever seen, in first-seen order (also with ``--no-update-db``)."""
        return [name for (name,) in self.db.execute("SELECT name FROM milter ORDER BY position")]

    def series(self) -> set[tuple[str, str]]:
        """The series that have been written (a graph exists only for these)."""
        return {(family, name) for family, name in self.db.execute("SELECT family, name FROM series")}

    def last_update(self, family: str, name: str) -> int | None:
        """The series' last written minute: the time printed under its graphs."""
        row = self.db.execute("SELECT last_minute FROM series WHERE family = ? AND name = ?",
                              (family, name)).fetchone()
        return None if row is None else row[0]

    def rows(self, family: str, name: str, start: int | None = None,
             end: int | None = None) -> list[tuple[int, dict[str, int]]]:
        """The per-minute rows of a series in ``[start, end)``, oldest first."""
        items = items_of(family, name)
        names = ", ".join(column(item) for item in items)
        query = f"SELECT minute, {names} FROM {family} WHERE name = ? AND minute >= ? AND minute < ? ORDER BY minute"
        low = -(2**62) if start is None else start
        high = 2**62 if end is None else end
        return [(row[0], dict(zip(items, row[1:], strict=True))) for row in self.db.execute(query, (name, low, high))]

    def consolidate(self, family: str, name: str, items: Iterable[str], start: int, end: int,
                    width: int) -> dict[str, dict[int, tuple[float, float]]]:
        """Per item, ``{row start: (average, maximum)}`` of the per-minute counts in rows of ``width``
        seconds aligned on multiples of ``width``, for the rows in ``[start, end)`` that hold at
        least one written minute (what an RRD archive of that resolution would hold)."""
        items = list(items)
        stored = set(items_of(family, name))
        wanted = [item for item in items if item in stored]
        result: dict[str, dict[int, tuple[float, float]]] = {item: {} for item in items}
        if not wanted:
            return result
        aggregates = ", ".join(f"AVG({column(item)}), MAX({column(item)})" for item in wanted)
        query = (f"SELECT (minute / ?) * ? AS row, {aggregates} FROM {family} "
                 f"WHERE name = ? AND minute >= ? AND minute < ? GROUP BY row ORDER BY row")
        for row in self.db.execute(query, (width, width, name, start - start % width, end)):
            for index, item in enumerate(wanted):
                result[item][row[0]] = (float(row[1 + 2 * index]), float(row[2 + 2 * index]))
        return result

    def summarize(self, family: str, name: str, items: Iterable[str], start: int,
                  end: int) -> dict[str, Summary]:
        """Exact total, mean per written minute and maximum per minute of each item in ``[start, end)``."""
        items = list(items)
        stored = set(items_of(family, name))
        wanted = [item for item in items if item in stored]
        nan = math.nan
        result = {item: Summary(nan, nan, nan) for item in items}
        if not wanted:
            return result
        aggregates = ", ".join(f"SUM({column(item)}), MAX({column(item)})" for item in wanted)
        row = self.db.execute(f"SELECT COUNT(*), {aggregates} FROM {family} WHERE name = ? AND minute >= ? "
                              f"AND minute < ?", (name, start, end)).fetchone()
        minutes = row[0]
        if not minutes:
            return result
        for index, item in enumerate(wanted):
            total, maximum = row[1 + 2 * index], row[2 + 2 * index]
            result[item] = Summary(float(total), float(total) / minutes, float(maximum))
        return result


def fetch_max(store: Store, family: str, name: str, start: int, end: int,
              width: int = 480) -> list[tuple[int, Mapping[str, float]]]:
    """Rows like ``rrdtool fetch FILE MAX -s START -e END`` of the original's day archive:
    per ``width``-second row the maximum per-minute count,
    NaN for rows without any written minute. For comparing with the original's numbers."""
    items = items_of(family, name)
    data = store.consolidate(family, name, items, start, end, width)
    rows = []
    for row in range(start - start % width, end, width):
        rows.append((row, {item: data[item][row][1] if row in data[item] else math.nan for item in items}))
    return rows
