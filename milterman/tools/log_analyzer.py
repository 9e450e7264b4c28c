"""milter-manager-log-analyzer: milter-manager's statistics lines → per-minute counters → graphs + index.html.

The manual is doc/milter-manager-log-analyzer.1.md. One run:

1. open every input (a missing file stops the run before anything is written);
2. unless ``update_db`` is off: take the database's write lock, count the statistics lines of
   the inputs per minute (:mod:`log_analyzer_parse`), add the minutes that are new for each
   series and commit (:mod:`log_analyzer_store`) — all or nothing;
3. draw every graph of every range (:mod:`log_analyzer_graph`) and write ``index.html``
   (:mod:`log_analyzer_html`).

The pieces live in their own modules; this one ties them together and is what the command
line (:mod:`milterman.cli.log_analyzer`) and the tests call.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import log_analyzer_html
from .log_analyzer_graph import RANGES, GraphsUnavailable, graphs_of, render, require_graph_library
from .log_analyzer_parse import LineParser, LogSource, Tally, open_log, read_lines
from .log_analyzer_store import FILE_NAME, RETENTION, STEP, Store, StoreError

__all__ = ["AnalyzerError", "Result", "analyze", "open_inputs", "update_database", "render_all", "FILE_NAME"]


class AnalyzerError(RuntimeError):
    """A run cannot go on: an input cannot be opened, the directory or the database is unusable."""


@dataclass
class Result:
    """What a run did: lines counted, rows written per series, files produced."""

    lines: int = 0
    rows: dict[tuple[str, str], int] = field(default_factory=dict)
    images: list[Path] = field(default_factory=list)
    index: Path | None = None
    #: why no graph was drawn (matplotlib missing, with what to install); None when they were
    graphs_missing: str | None = None


def open_inputs(paths: Sequence[str]) -> list[LogSource]:
    """Open every input now (``-`` or nothing: standard input), closing those already opened
    if one fails."""
    sources: list[LogSource] = []
    try:
        for path in paths or ["-"]:
            try:
                sources.append(open_log(path))
            except OSError as error:
                raise AnalyzerError(f"failed to open log file: <{path}>: {error.strerror or error}") from None
    except BaseException:
        for source in sources:
            source.close()
        raise
    return sources


def update_limit(now: float) -> int:
    """``now`` floored to the minute: that minute and later are left for the next run (LA-AGG-2)."""
    return int(now) - int(now) % STEP


def update_database(store: Store, sources: Iterable[LogSource], *, now: float,
                    zone: datetime.tzinfo | None = None, strict_original: bool = False,
                    warn: Callable[[str], None] | None = None) -> Result:
    """Count the statistics lines of ``sources`` and add the new minutes to ``store`` in one
    transaction."""
    limit = update_limit(now)
    oldest = limit - RETENTION
    tally = Tally(limit, oldest=oldest, strict_original=strict_original)
    store.begin()
    try:
        for source in sources:
            parser = LineParser(source.reference, zone, strict_original)
            parse, feed = parser.parse, tally.feed
            for line in read_lines(source, warn):
                parsed = parse(line)
                if parsed is not None:
                    feed(*parsed)
        rows = store.add(tally, oldest=oldest)
        store.prune(oldest)
        store.commit()
    except BaseException:
        store.rollback()
        raise
    return Result(lines=tally.lines, rows=rows)


def _write_text(path: Path, text: str) -> None:
    """Write through a temporary file and a rename: a browser reloading never sees half a page."""
    handle, temporary = tempfile.mkstemp(prefix=".", suffix=".html", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as output:
            output.write(text)
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(temporary, 0o666 & ~mask)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def render_all(store: Store | None, directory: Path, *, now: float,
               zone: datetime.tzinfo | None = None) -> tuple[list[Path], Path]:
    """Draw every graph of every range and write ``index.html``; returns the images and the page."""
    directory = Path(directory)
    graphs = graphs_of(store) if store is not None else []
    images: list[Path] = []
    sections = []
    for time_range in RANGES:
        entries = []
        for graph in graphs:
            images.append(render(store, graph, time_range, now, directory, zone))
            entries.append((graph.file_name(time_range), graph.title))
        sections.append((time_range.label, entries))
    index = directory / "index.html"
    _write_text(index, log_analyzer_html.generate(sections))
    return images, index


def analyze(paths: Sequence[str], output_directory: str | os.PathLike[str], *, update_db: bool = True,
            now: float | None = None, zone: datetime.tzinfo | None = None, strict_original: bool = False,
            warn: Callable[[str], None] | None = None) -> Result:
    """One whole run: inputs → database → graphs and ``index.html``.

    Without matplotlib the database is still updated; no graph and no page is drawn and
    ``graphs_missing`` of the result says why and what to install.

    ``now`` (default: the current time) sets the update limit and the graphs' end; ``zone``
    is the time zone of syslog timestamps and graph labels (default: the process's).
    """
    now = time.time() if now is None else now
    directory = Path(output_directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AnalyzerError(f"failed to create output directory: <{directory}>: {error.strerror}") from None
    result = Result()
    try:
        if update_db:
            sources = open_inputs(paths)
            try:
                store = Store.in_directory(directory)
                try:
                    result = update_database(store, sources, now=now, zone=zone, strict_original=strict_original,
                                             warn=warn)
                finally:
                    store.close()
            finally:
                for source in sources:
                    source.close()
        try:
            require_graph_library()
        except GraphsUnavailable as error:
            result.graphs_missing = str(error)
            return result
        store = Store.in_directory(directory, readonly=True)
        try:
            result.images, result.index = render_all(store, directory, now=now, zone=zone)
        except OSError as error:
            raise AnalyzerError(f"failed to write the graphs or index.html in <{directory}>: "
                                f"{error.strerror or error}") from None
        finally:
            if store is not None:
                store.close()
    except (StoreError, sqlite3.Error) as error:
        raise AnalyzerError(f"database error: {directory / FILE_NAME}: {error}") from None
    return result
