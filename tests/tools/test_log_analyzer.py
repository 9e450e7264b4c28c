"""Behaviour tests of milter-manager-log-analyzer (tools.md §4, logging.md §6–7, D-1, D-11).

Most tests call the library in-process with a fixed ``now`` and time zone (UTC) so that
syslog's wall-clock timestamps mean one thing; a few run the command as a subprocess with the
real clock. Per-minute counts are checked against an independent, deliberately simple parse of
the same log lines written in this file. One module-scoped run over a synthetic log draws all
the graphs; the PNG, HTML and headless-Chromium tests share it.
"""

from __future__ import annotations

import datetime
import functools
import gzip
import http.server
import io
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from milterman.cli import log_analyzer as cli
from milterman.tools.log_analyzer import FILE_NAME, analyze, open_inputs, update_database
from milterman.tools.log_analyzer_graph import (IMAGE_WIDTH, PLOT_HEIGHT, PLOT_LEFT, PLOT_TOP, PLOT_WIDTH, RANGES,
                                                file_part, graphs_of, image_height, manager_status_graph, render)
from milterman.tools.log_analyzer_html import generate, graph_id
from milterman.tools.log_analyzer_parse import (MANAGER, REPORT, SESSION, STATUS, LineParser, LogSource, SyslogYear,
                                                report_keys)
from milterman.tools.log_analyzer_store import ITEMS, Store, fetch_max, items_of

from tools_support import REPO, RUN_DIR, clean_env

INTEROP = str(Path(__file__).resolve().parents[1] / "interop")
if INTEROP not in sys.path:
    sys.path.append(INTEROP)
from postfix_harness import require_real  # noqa: E402  (standard library only)

UTC = datetime.timezone.utc
DATA = Path(__file__).resolve().parent / "data" / "log_analyzer"
WORKED_EXAMPLE = DATA / "worked-example.log"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def at(*fields: int) -> float:
    return datetime.datetime(*fields, tzinfo=UTC).timestamp()


def hhmm(minute: int) -> str:
    return datetime.datetime.fromtimestamp(minute, UTC).strftime("%H:%M")


def syslog(moment: datetime.datetime, content: str, host: str = "mail", program: str = "milter-manager",
           mark: str = "[statistics] ") -> str:
    """A BSD syslog line as rsyslog writes it (day padded with a space)."""
    return f"{moment:%b} {moment.day:2d} {moment:%H:%M:%S} {host} {program}[4242]: {mark}{content}"


def own_log(moment: datetime.datetime, content: str, pid: int | None = None) -> str:
    """A line of milter-manager's own log file (logging.md §2, default items; ``[PID]`` with workers)."""
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{moment.microsecond:06d}" if moment.microsecond else "")
    return f"[{stamp}Z]" + (f" [{pid}]" if pid is not None else "") + f": {content}"


def run_update(directory: Path, data: bytes | str, *, now: float, reference: float | None = None,
               strict: bool = False, name: str = "mail.log", zone=UTC) -> Store:
    """Count ``data`` (written to a file whose mtime is ``reference``, default ``now``) into the
    database of ``directory``; returns the store (read-only) for inspection."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory.parent / f"{directory.name}-{name}"
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    reference = now if reference is None else reference
    os.utime(path, (reference, reference))
    sources = open_inputs([str(path)])
    store = Store.in_directory(directory)
    try:
        update_database(store, sources, now=now, zone=zone, strict_original=strict)
    finally:
        store.close()
        for source in sources:
            source.close()
    return Store.in_directory(directory, readonly=True)


def table(store: Store) -> dict[tuple[str, str], dict[str, str]]:
    """Every series as ``{HH:MM: "v1:v2:…"}`` in item order (the notation of logging.md §7.5)."""
    return {series: {hhmm(minute): ":".join(str(value) for value in values.values())
                     for minute, values in store.rows(*series)}
            for series in sorted(store.series())}


def dump(store_path: Path) -> list[str]:
    import sqlite3
    connection = sqlite3.connect(store_path)
    try:
        return list(connection.iterdump())
    finally:
        connection.close()


# ============================================================================ the worked example (§7.5)

Z8, Z9, Z13 = ":".join("0" * 8), ":".join("0" * 9), ":".join("0" * 13)
#: logging.md §7.5 as printed (verified against the original analyzer)
ORIGINAL_7_5 = {
    (REPORT, MANAGER): {"10:00": "1:0:1:1:0:0:0:0:0:0:0:0:0", "10:01": Z13, "10:02": "0:0:0:0:1:0:0:0:0:1:0:0:0"},
    (REPORT, "milter-greylist"): {"10:02": "0:0:0:0:1:0:0:0:0:1:0:0:0"},
    (SESSION, MANAGER): {"10:00": "2:4:0:1", "10:01": "0:0:0:0", "10:02": "0:0:0:0", "10:03": "1:1:1:0"},
    (STATUS, MANAGER): {"10:00": "1:0:0:0:1:0:0:0", "10:01": Z8, "10:02": Z8, "10:03": "0:0:0:0:1:0:0:0"},
    (STATUS, "milter-greylist"): {"10:00": "1:0:0:0:1:0:0:0:0", "10:01": Z9, "10:02": Z9,
                                  "10:03": "0:0:0:0:0:0:1:0:0"},
    (STATUS, "spamass-milter"): {"10:00": "0:1:0:0:0:0:0:0:1"},
}
NOW_7_5 = at(2009, 7, 15, 10, 5, 30)


def test_LG_AN_1_LA_AGG_1_worked_example_reproduces_the_original_exactly(tmp_path):
    """With the original's limitations restored, §7.5's rows come out exactly (and nothing else)."""
    store = run_update(tmp_path / "out", WORKED_EXAMPLE.read_bytes(), now=NOW_7_5, strict=True)
    assert table(store) == ORIGINAL_7_5


def test_LA_AGG_1_worked_example_with_the_fixes_of_tools_md_7_12(tmp_path):
    """The default run differs from §7.5 exactly by the fixed defects (D-1, tools.md §7 item 12):
    the FQDN host's reject line counts, and each milter's header lines before its first
    [milter][end] count in its own report."""
    expected = {series: dict(rows) for series, rows in ORIGINAL_7_5.items()}
    # the line from host mail.example.com at 10:03:05: one more SMTP session, ended with reject
    expected[(SESSION, MANAGER)]["10:03"] = "2:1:1:0"
    expected[(STATUS, MANAGER)]["10:03"] = "0:0:1:0:1:0:0:0"
    # milter-greylist's X-Greylist "Delayed for" at 10:00, before its first [milter][end]
    expected[(REPORT, "milter-greylist")] = {"10:00": "0:0:0:1:0:0:0:0:0:0:0:0:0", "10:01": Z13,
                                             "10:02": "0:0:0:0:1:0:0:0:0:1:0:0:0"}
    # spamass-milter's X-Spam-Flag: YES and X-Spam-Status with URIBL_BLACK at 10:00
    expected[(REPORT, "spamass-milter")] = {"10:00": "1:0:1:0:0:0:0:0:0:0:0:0:0"}
    store = run_update(tmp_path / "out", WORKED_EXAMPLE.read_bytes(), now=NOW_7_5)
    assert table(store) == dict(sorted(expected.items()))
    assert store.milters() == ["milter-greylist", "spamass-milter"]


def test_LA_FIX_1_fetch_max_rows_of_the_worked_example(tmp_path):
    """``rrdtool fetch FILE MAX`` of the day archive = per 480-s row the largest per-minute count,
    NaN where nothing was written (logging.md §7.6 consequence 1). The original's 2009 fixtures
    are not part of this repository; the worked example stands in for them."""
    store = run_update(tmp_path / "out", WORKED_EXAMPLE.read_bytes(), now=NOW_7_5, strict=True)
    rows = fetch_max(store, SESSION, MANAGER, int(at(2009, 7, 15, 9, 52)), int(at(2009, 7, 15, 10, 16)))
    assert [hhmm(row) for row, _ in rows] == ["09:52", "10:00", "10:08"]
    assert all(value != value for value in rows[0][1].values())  # NaN before the first minute
    assert rows[1][1] == {"smtp": 2.0, "child": 4.0, "disconnected": 1.0, "concurrent": 1.0}
    assert all(value != value for value in rows[2][1].values())  # NaN after the last minute


# ============================================================================ a synthetic log, counted independently

BASE = datetime.datetime(2009, 7, 15, 9, 0, tzinfo=UTC)
MILTERS = ("milter-greylist", "spamass-milter", "clamav-milter")
#: header lines the synthetic milters add, with the report keys each must yield (logging.md §7.3)
HEADERS = [
    ("X-Spam-Flag", "YES", ["spam"]),
    ("X-Spam-Flag", "NO", []),
    ("X-Spam-Status", "Yes, score=9.1 required=5.0 tests=BAYES_99,URIBL_BLACK autolearn=no", ["uribl"]),
    ("X-Greylist", "Delayed for 00:05:12 by milter-greylist-4.6.2 (mail.example.com [192.0.2.10])",
     ["greylisting-pass"]),
    ("X-Greylist", "Sender is SPF-compliant, not delayed by milter-greylist-4.6.2", ["spf-pass"]),
    ("Authentication-Results", "mx.example.net; spf=pass smtp.mailfrom=a@example.org; dkim=fail header.d=x",
     ["spf-pass", "dkim-fail"]),
    ("X-Virus-Status", "Infected (Eicar-Test-Signature)", ["virus"]),
    ("X-Virus-Status", "Clean", []),
]
EXPECTED_KEYS = {(name, value): keys for name, value, keys in HEADERS}
STATUSES = ["pass"] * 6 + ["reject", "temporary-failure", "accept", "discard", "quarantine"]


def synthetic_events(seed: int = 7, minutes: int = 90, gap: range = range(40, 46)):
    """``[(time, CONTENT)]`` of a busy hour and a half: sessions with mixed outcomes, three children
    (one stopped now and then), header lines, disconnects, finished-sessions lines and a gap."""
    rng = random.Random(seed)
    events: list[tuple[datetime.datetime, str]] = []
    session = 100
    finished = 0
    for minute in range(minutes):
        if minute in gap:
            continue
        start = BASE + datetime.timedelta(minutes=minute)
        count = rng.randint(0, 6)
        for _ in range(count):
            session += 10
            moment = start + datetime.timedelta(seconds=rng.randint(0, 58), microseconds=rng.randint(0, 999999))
            if rng.random() < 0.1:
                events.append((moment, f"[session][disconnected][15.2]({session})"))
            for offset, name in enumerate(MILTERS, start=1):
                if rng.random() < 0.4:
                    header, value, _ = rng.choice(HEADERS)
                    events.append((moment, f"[milter][header][add]({session + offset}): <{header}>=<{value}>: {name}"))
            events.append((moment, f"[session][end][end-of-message][{rng.choice(STATUSES)}][2.5]({session})"))
            for offset, name in enumerate(MILTERS, start=1):
                status = "stop" if rng.random() < 0.15 else rng.choice(STATUSES)
                events.append((moment, f"[milter][end][end-of-message][{status}][0.25]({session + offset}): {name}"))
        finished += count
        events.append((start + datetime.timedelta(seconds=59), f"[sessions][finished] {finished}(+{count}) "
                                                                 f"{rng.randint(0, 4)}"))
    events.sort(key=lambda event: event[0])
    return events


NOISE = [
    "{b} {d:2d} {t} mail postfix/smtpd[812]: connect from unknown[192.0.2.1]",
    "{b} {d:2d} {t} mail milter-manager[4242]: [29] [agent][error][decode] Decode error",
    "{b} {d:2d} {t} mail other-program[1]: [statistics] [session][end][end-of-message][pass][1](3)",
    "{b} {d:2d} {t} mail milter-manager[4242]: [session][end][end-of-message][reject][0.6](98)",
]


def synthetic_syslog(events, *, fqdn_every: int = 17) -> str:
    lines = []
    for index, (moment, content) in enumerate(events):
        host = "mail.example.com" if index % fqdn_every == 0 else "mail"
        lines.append(syslog(moment, content, host=host))
        if index % 11 == 0:
            lines.append(NOISE[index % len(NOISE)].format(b=f"{moment:%b}", d=moment.day, t=f"{moment:%H:%M:%S}"))
    return "\n".join(lines) + "\n"


def independent_counts(text: str) -> dict[tuple[str, str], dict[int, Counter]]:
    """A simple parse written for the tests: split the lines by hand, look up the known headers."""
    counts: dict[tuple[str, str], dict[int, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for line in text.splitlines():
        if line.startswith("["):  # own log file: [TIME]: or [TIME] [PID]:
            stamp, _, content = line[1:].partition("]")
            content = content.split(": ", 1)[1]
            moment = datetime.datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        else:  # syslog: a fixed-width timestamp, then HOST PROGRAM[PID]: [statistics] CONTENT
            _host, program, message = line[16:].split(" ", 2)
            if not (program.startswith("milter-manager[") and message.startswith("[statistics] ")):
                continue
            moment = datetime.datetime.strptime(f"2009 {line[:15]}", "%Y %b %d %H:%M:%S").replace(tzinfo=UTC)
            content = message[len("[statistics] "):]
        minute = int(moment.timestamp()) // 60 * 60
        tags = content.split("]")
        if content.startswith("[session][end]["):
            counts[(SESSION, MANAGER)][minute]["smtp"] += 1
            counts[(STATUS, MANAGER)][minute][tags[3][1:]] += 1
        elif content.startswith("[milter][end]["):
            name = content.rsplit(": ", 1)[1]
            counts[(SESSION, MANAGER)][minute]["child"] += 1
            counts[(STATUS, name)][minute][tags[3][1:]] += 1
        elif content.startswith("[session][disconnected]"):
            counts[(SESSION, MANAGER)][minute]["disconnected"] += 1
        elif content.startswith("[sessions][finished] "):
            processing = int(content.rsplit(" ", 1)[1])
            bucket = counts[(SESSION, MANAGER)][minute]
            bucket["concurrent"] = max(bucket["concurrent"], processing)
        elif content.startswith("[milter][header][add]"):
            header, value = content.split(": <", 1)[1].split(">: ", 1)[0].split(">=<", 1)
            name = content.rsplit(">: ", 1)[1]
            for key in EXPECTED_KEYS[(header, value)]:
                counts[(REPORT, MANAGER)][minute][key] += 1
                counts[(REPORT, name)][minute][key] += 1
    return counts


def assert_counts_match(store: Store, expected: dict[tuple[str, str], dict[int, Counter]]) -> None:
    """Database rows = the independent counts for data minutes, zeros for the minutes between."""
    data_series = {series for series, minutes in expected.items() if any(sum(c.values()) for c in minutes.values())}
    assert store.series() >= data_series
    for series in store.series():
        minutes = expected.get(series, {})
        rows = store.rows(*series)
        assert rows, series
        written = [minute for minute, _ in rows]
        assert written == list(range(written[0], written[-1] + 60, 60)), f"{series}: a minute is missing"
        for minute, values in rows:
            wanted = {item: minutes.get(minute, Counter()).get(item, 0) for item in items_of(*series)}
            assert values == wanted, f"{series} at {hhmm(minute)}"
        data_minutes = [minute for minute, counter in minutes.items() if sum(counter.values())]
        assert written[0] == min(data_minutes) and written[-1] == max(data_minutes), series


NOW_SYNTHETIC = (BASE + datetime.timedelta(minutes=92, seconds=5)).timestamp()


@pytest.fixture(scope="module")
def synthetic():
    events = synthetic_events()
    return events, synthetic_syslog(events)


def test_LA_AGG_1_per_minute_counts_equal_an_independent_count(tmp_path, synthetic):
    events, text = synthetic
    store = run_update(tmp_path / "out", text, now=NOW_SYNTHETIC)
    expected = independent_counts(text)
    assert_counts_match(store, expected)
    assert store.milters() == list(MILTERS)
    # the gap (minutes 40-45) holds all-zero rows, not holes
    gap_rows = [values for minute, values in store.rows(SESSION, MANAGER)
                if (BASE + datetime.timedelta(minutes=40)).timestamp() <= minute
                < (BASE + datetime.timedelta(minutes=46)).timestamp()]
    assert len(gap_rows) == 6 and all(not any(values.values()) for values in gap_rows)
    totals = Counter()
    for _, values in store.rows(STATUS, MANAGER):
        totals.update(values)
    assert sum(totals.values()) == sum(1 for _, content in events if content.startswith("[session][end]"))
    assert len([status for status, count in totals.items() if count]) >= 5  # mixed outcomes


def test_LA_AGG_repeated_run_over_the_same_log_adds_nothing(tmp_path, synthetic):
    _, text = synthetic
    store = run_update(tmp_path / "out", text, now=NOW_SYNTHETIC)
    before = dump(store.path)
    store.close()
    store = run_update(tmp_path / "out", text, now=NOW_SYNTHETIC + 300)
    assert dump(store.path) == before
    assert_counts_match(store, independent_counts(text))


def test_LA_AGG_cron_runs_over_a_growing_log_equal_one_run(tmp_path, synthetic):
    """Every 5 minutes over the log written so far (the original's cron use): same rows as one run."""
    events, _ = synthetic
    end = BASE + datetime.timedelta(minutes=92)
    moment = BASE + datetime.timedelta(minutes=3, seconds=20)
    while moment < end:
        written = [event for event in events if event[0] <= moment]
        run_update(tmp_path / "cron", synthetic_syslog(written), now=moment.timestamp()).close()
        moment += datetime.timedelta(minutes=5)
    cron = run_update(tmp_path / "cron", synthetic_syslog(events), now=NOW_SYNTHETIC)
    once = run_update(tmp_path / "once", synthetic_syslog(events), now=NOW_SYNTHETIC)
    assert table(cron) == table(once)


def test_LA_FIX_2_slices_with_a_fresh_run_each(tmp_path, synthetic):
    """Slices cut at minute boundaries give the single run's rows; a slice cut inside a minute
    loses the rest of that minute (it was written by the previous run — as the original)."""
    events, text = synthetic
    cut = (BASE + datetime.timedelta(minutes=30)).timestamp()
    first = [event for event in events if event[0].timestamp() < cut]
    second = [event for event in events if event[0].timestamp() >= cut]
    run_update(tmp_path / "sliced", synthetic_syslog(first), now=NOW_SYNTHETIC).close()
    sliced = run_update(tmp_path / "sliced", synthetic_syslog(second), now=NOW_SYNTHETIC)
    assert_counts_match(sliced, independent_counts(text))

    middle = (BASE + datetime.timedelta(minutes=30, seconds=30)).timestamp()
    before = [event for event in events if event[0].timestamp() < middle]
    after = [event for event in events if event[0].timestamp() >= middle]
    run_update(tmp_path / "mid", synthetic_syslog(before), now=NOW_SYNTHETIC).close()
    mid = run_update(tmp_path / "mid", synthetic_syslog(after), now=NOW_SYNTHETIC)
    expected = independent_counts(text)
    boundary = int(cut)
    smtp_first_half = sum(1 for moment, content in before
                          if moment.timestamp() >= cut and content.startswith("[session][end]"))
    assert dict(mid.rows(SESSION, MANAGER, boundary, boundary + 60))[boundary]["smtp"] == smtp_first_half
    later = {series: {minute: counter for minute, counter in minutes.items() if minute > boundary}
             for series, minutes in expected.items()}
    for series in later:
        rows = {minute: values for minute, values in mid.rows(*series, boundary + 60)}
        for minute, counter in later[series].items():
            assert rows[minute] == {item: counter.get(item, 0) for item in items_of(*series)}


def test_LA_FIX_3_a_later_log_continues_the_database(tmp_path, synthetic):
    """Starting from an existing database, a later log adds its minutes after the last one
    (zero rows fill the time between)."""
    events, _ = synthetic
    early = [event for event in events if event[0] < BASE + datetime.timedelta(minutes=20)]
    late = [event for event in events if event[0] >= BASE + datetime.timedelta(minutes=60)]
    run_update(tmp_path / "out", synthetic_syslog(early), now=NOW_SYNTHETIC).close()
    store = run_update(tmp_path / "out", synthetic_syslog(late), now=NOW_SYNTHETIC)
    minutes = [minute for minute, _ in store.rows(SESSION, MANAGER)]
    assert minutes == list(range(minutes[0], minutes[-1] + 60, 60))
    between = [values for minute, values in store.rows(SESSION, MANAGER)
               if (BASE + datetime.timedelta(minutes=20)).timestamp() <= minute
               < (BASE + datetime.timedelta(minutes=60)).timestamp()]
    assert len(between) == 40 and all(not any(values.values()) for values in between)


def test_LA_AGG_2_the_current_minute_waits_for_the_next_run(tmp_path):
    log = "\n".join([
        syslog(datetime.datetime(2009, 7, 15, 10, 3, 5), "[session][end][end-of-message][reject][0.6](1)"),
        syslog(datetime.datetime(2009, 7, 15, 10, 5, 1), "[session][end][end-of-message][pass][0.6](2)"),
    ]) + "\n"
    store = run_update(tmp_path / "out", log, now=at(2009, 7, 15, 10, 5, 30))
    assert table(store)[(SESSION, MANAGER)] == {"10:03": "1:0:0:0"}
    store.close()
    store = run_update(tmp_path / "out", log, now=at(2009, 7, 15, 10, 6, 10))
    assert table(store)[(SESSION, MANAGER)] == {"10:03": "1:0:0:0", "10:04": "0:0:0:0", "10:05": "1:0:0:0"}
    assert table(store)[(STATUS, MANAGER)]["10:05"] == "1:0:0:0:0:0:0:0"


def test_LA_AGG_counts_do_not_depend_on_line_order(tmp_path, synthetic):
    """Lines of several worker processes may interleave out of order; the original dropped the
    open minute when an older line came (logging.md §7.4 step 5), we count every line."""
    events, text = synthetic
    shuffled = list(events)
    random.Random(3).shuffle(shuffled)
    store = run_update(tmp_path / "out", synthetic_syslog(shuffled), now=NOW_SYNTHETIC)
    assert_counts_match(store, independent_counts(text))


def test_LA_AGG_concurrent_is_the_maximum_of_the_minute(tmp_path):
    lines = [syslog(datetime.datetime(2009, 7, 15, 10, 0, second), f"[sessions][finished] {n}(+1) {p}")
             for second, n, p in ((1, 1, 3), (20, 2, 7), (40, 3, 2))]
    store = run_update(tmp_path / "out", "\n".join(lines) + "\n", now=NOW_7_5)
    assert table(store)[(SESSION, MANAGER)] == {"10:00": "0:0:0:7"}


# ============================================================================ line selection (LA-PARSE-1, LA-ENC-1)

CONTENT = b"[session][end][end-of-message][pass][0.6](97)"


FIFTEENTH = at(2009, 7, 15, 10, 0, 2)


@pytest.mark.parametrize("line, when", [
    (b"Jul 15 10:00:02 mail milter-manager[4242]: [statistics] " + CONTENT, FIFTEENTH),
    (b"Jul  5 10:00:02 mail milter-manager[4242]: [statistics] " + CONTENT, at(2009, 7, 5, 10, 0, 2)),
    (b"Jul 15 10:00:02 mail.example.com milter-manager[4242]: [statistics] " + CONTENT, FIFTEENTH),
    (b"Jul 15 10:00:02 192.0.2.1 milter-manager[4242]: [statistics] " + CONTENT, FIFTEENTH),
    (b"Jul 15 10:00:02 mail milter-manager[4242]: [ID 123456 mail.notice] [statistics] " + CONTENT, FIFTEENTH),
    (b"Jul 15 10:00:02 mail milter-manager: [statistics] " + CONTENT, None),
    (b"Jul 15 10:00:02 mail milter-manager[4242]: " + CONTENT, None),
    (b"Jul 15 10:00:02 mail milter-manager[4242]: [statistics]" + CONTENT, None),
    (b"Jul 15 10:00:02 mail milter-managers[4242]: [statistics] " + CONTENT, None),
    (b"Jul 15 10:00:02 mail postfix/smtpd[4242]: [statistics] " + CONTENT, None),
    (b"Jux 15 10:00:02 mail milter-manager[4242]: [statistics] " + CONTENT, None),
    (b"Feb 30 10:00:02 mail milter-manager[4242]: [statistics] " + CONTENT, None),
    (b"2009-07-15T19:00:02.123456+09:00 mail milter-manager[4242]: [statistics] " + CONTENT, FIFTEENTH),
    (b"2009-07-15T10:00:02Z mail.example.com milter-manager[4242]: [statistics] " + CONTENT, FIFTEENTH),
    (b"[2009-07-15T10:00:02.812345Z]: " + CONTENT, FIFTEENTH),
    (b"[2009-07-15T10:00:02Z] [4242]: " + CONTENT, FIFTEENTH),
    (b"[statistics][2009-07-15T10:00:02Z]: " + CONTENT, FIFTEENTH),
    (b"[statistics][milter-manager][2009-07-15T10:00:02Z] [milter-manager][4242]: " + CONTENT, FIFTEENTH),
    (b"[info][2009-07-15T10:00:02Z]: " + CONTENT, None),
    (b"[2009-07-15 10:00:02Z]: " + CONTENT, None),
    (b"random text " + CONTENT, None),
], ids=lambda value: value.decode()[:48] if isinstance(value, bytes) else None)
def test_LA_PARSE_1_which_lines_count(line, when):
    """Syslog lines of milter-manager with [PID] and the [statistics] mark (dotted hosts and
    RFC 3339 timestamps too), and lines of milter-manager's own log file (D-11)."""
    parsed = LineParser(at(2009, 7, 20), UTC).parse(line + b"\n")
    assert parsed == (None if when is None else (when, CONTENT))


def test_LA_PARSE_1_fqdn_hosts_count_and_the_original_ignored_them(tmp_path):
    line = syslog(datetime.datetime(2009, 7, 15, 10, 3, 5), CONTENT.decode(), host="mail.example.com") + "\n"
    assert table(run_update(tmp_path / "fixed", line, now=NOW_7_5))[(SESSION, MANAGER)] == {"10:03": "1:0:0:0"}
    assert run_update(tmp_path / "strict", line, now=NOW_7_5, strict=True).series() == set()


def test_LA_ENC_1_invalid_utf8_is_processed(tmp_path):
    log = (b"Jul 15 10:00:01 mail milter-manager[1]: [statistics] [milter][header][add](8): <X-Spam-Flag>=<YES>: "
           b"m\xffilter\n"
           b"Jul 15 10:00:02 mail postfix/cleanup[2]: \xfe\xff garbage \xc3\n"
           b"Jul 15 10:00:03 mail milter-manager[1]: [statistics] [milter][end][end-of-message][pass][0.1](8): "
           b"m\xffilter\n")
    store = run_update(tmp_path / "out", log, now=NOW_7_5)
    assert table(store)[(REPORT, MANAGER)]["10:00"].startswith("1:")
    assert store.milters() == ["m\ufffdilter"]
    assert table(store)[(STATUS, "m\ufffdilter")] == {"10:00": "1:0:0:0:0:0:0:0:0"}


# ============================================================================ inputs: forms, gzip, years

def test_D11_own_log_file_forms_count_like_syslog(tmp_path, synthetic):
    """milter-manager's own log file, with and without [PID], gives the syslog form's rows."""
    events, text = synthetic
    reference = table(run_update(tmp_path / "syslog", text, now=NOW_SYNTHETIC))
    plain = "\n".join(own_log(moment, content) for moment, content in events) + "\n"
    workers = "\n".join(own_log(moment, content, pid=4000 + index % 3)
                        for index, (moment, content) in enumerate(events)) + "\n"
    noise = own_log(BASE, "[12] [manager][child][end] [milter-greylist]") + "\n"
    assert table(run_update(tmp_path / "plain", noise + plain, now=NOW_SYNTHETIC)) == reference
    assert table(run_update(tmp_path / "pid", workers + noise, now=NOW_SYNTHETIC)) == reference
    assert_counts_match(run_update(tmp_path / "again", workers, now=NOW_SYNTHETIC), independent_counts(workers))


def test_LA_4_2_gzip_input_counts_like_plain(tmp_path, synthetic):
    _, text = synthetic
    plain = table(run_update(tmp_path / "plain", text, now=NOW_SYNTHETIC))
    compressed = table(run_update(tmp_path / "gzip", gzip.compress(text.encode()), now=NOW_SYNTHETIC,
                                  name="mail.log.1.gz"))
    assert compressed == plain


def test_LA_4_2_truncated_gzip_counts_what_was_read_and_warns(tmp_path, synthetic):
    _, text = synthetic
    data = gzip.compress(text.encode())
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    os.utime(path, (NOW_SYNTHETIC, NOW_SYNTHETIC))
    warnings: list[str] = []
    store = Store.in_directory(tmp_path)
    result = update_database(store, open_inputs([str(path)]), now=NOW_SYNTHETIC, zone=UTC, warn=warnings.append)
    assert result.lines > 0 and len(warnings) == 1 and "input ends early" in warnings[0]
    assert store.rows(SESSION, MANAGER)


def test_LG_8_2_year_rule_unit_cases():
    january = SyslogYear(datetime.datetime(2010, 1, 1, 0, 9))
    assert [january.year_of(month) for month in (12, 12, 1, 12, 1, 2)] == [2009, 2009, 2010, 2009, 2010, 2010]
    july = SyslogYear(datetime.datetime(2009, 7, 20))
    assert [july.year_of(month) for month in (7, 7)] == [2009, 2009]
    march = SyslogYear(datetime.datetime(2010, 3, 2))
    assert [march.year_of(month) for month in (2, 3)] == [2010, 2010]
    straggler = SyslogYear(datetime.datetime(2009, 8, 1))
    assert [straggler.year_of(month) for month in (7, 8, 7, 8)] == [2009, 2009, 2009, 2009]


NEW_YEAR_LOG = "\n".join([
    syslog(datetime.datetime(2009, 12, 31, 23, 58, 10), "[session][end][end-of-message][pass][1](1)"),
    syslog(datetime.datetime(2009, 12, 31, 23, 59, 59), "[session][end][end-of-message][reject][1](2)"),
    "Jan  1 00:00:00 mail postfix/smtpd[1]: connect from unknown[192.0.2.1]",
    syslog(datetime.datetime(2010, 1, 1, 0, 0, 1), "[session][end][end-of-message][pass][1](3)"),
    syslog(datetime.datetime(2009, 12, 31, 23, 59, 58), "[session][end][end-of-message][pass][1](4)"),
    syslog(datetime.datetime(2010, 1, 1, 0, 2, 30), "[session][end][end-of-message][discard][1](5)"),
]) + "\n"


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_LG_8_2_a_log_spanning_new_year_counts_both_years(tmp_path, monkeypatch, source):
    """Dec 31 23:5x → Jan 1 00:0x: December lines in 2009, January lines in 2010 (the reference
    is the file's mtime, or now for standard input)."""
    now = at(2010, 1, 1, 0, 10, 30)
    if source == "file":
        store = run_update(tmp_path / "out", NEW_YEAR_LOG, now=now, reference=at(2010, 1, 1, 0, 9))
    else:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(NEW_YEAR_LOG.encode()))))
        monkeypatch.setattr(time, "time", lambda: now)
        sources = open_inputs([])
        store = Store.in_directory(tmp_path)
        update_database(store, sources, now=now, zone=UTC)
    rows = {datetime.datetime.fromtimestamp(minute, UTC).strftime("%Y-%m-%d %H:%M"): values["smtp"]
            for minute, values in store.rows(SESSION, MANAGER)}
    assert rows == {"2009-12-31 23:58": 1, "2009-12-31 23:59": 2, "2010-01-01 00:00": 1,
                    "2010-01-01 00:01": 0, "2010-01-01 00:02": 1}


def test_LG_7_1_syslog_times_are_the_process_local_time_zone(tmp_path, monkeypatch):
    """Without an explicit zone, syslog's wall clock is the process's time zone (TZ)."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        line = syslog(datetime.datetime(2009, 7, 15, 19, 0, 2), CONTENT.decode()) + "\n"
        store = run_update(tmp_path / "out", line, now=NOW_7_5, zone=None)
        assert [hhmm(minute) for minute, _ in store.rows(SESSION, MANAGER)] == ["10:00"]
    finally:
        monkeypatch.undo()
        time.tzset()


# ============================================================================ report keys (LA-RPT-*)

def test_LA_RPT_1_authentication_results():
    value = ("mail.example.com; spf=none smtp.mailfrom=sender@example.com; sender-id=none "
             "header.From=sender@example.com; dkim=pass; dkim-adsp=pass header.From=sender@example.com")
    assert report_keys("Authentication-Results", value) == ["dkim-pass", "dkim-adsp-pass"]
    assert report_keys("authentication-results", "x; spf=hardfail a; sender-id=fail b; dkim=neutral "
                       "(verification failed) c; dkim-adsp=neutral d") == ["spf-fail", "sender-id-fail", "dkim-fail"]


@pytest.mark.parametrize("value, keys", [
    ("Sender is SPF-compliant, not delayed by milter-greylist-4.2.3", ["spf-pass"]),
    ("Sender succeeded SMTP AUTH authentication, not delayed by milter-greylist-4.2.3", []),
    ("IP, sender and recipient auto-whitelisted, not delayed by milter-greylist-4.2.3", []),
    ("Delayed for 00:31:56 by milter-greylist-4.2.3 (mail.example.com)", ["greylisting-pass"]),
    ("Message whitelisted by tarpit 125s by milter-greylist-4.6", ["tarpitting-pass"]),
    ("Sender passed SPF test, not delayed", ["spf-pass"]),
])
def test_LA_RPT_2_x_greylist(value, keys):
    assert report_keys("X-Greylist", value) == keys


@pytest.mark.parametrize("name, value, keys", [
    ("X-Spam-Flag", "YES", ["spam"]), ("x-spam-flag", "yes", ["spam"]), ("X-Spam-Flag", "NO", []),
    ("X-Spam", "Yes", ["spam"]), ("X-Spam-Flag", "YES, really", []),
    ("X-Spam-Status", "Yes, score=7.2 required=5.0 tests=BAYES_99,URIBL_BLACK,URIBL_SBL autolearn=no", ["uribl"]),
    ("X-Spam-Status", "Yes, score=7.2 tests=BAYES_99, uribl_dbl autolearn=no", ["uribl"]),
    ("X-Spam-Status", "No, score=0.1 required=5.0 tests=BAYES_00 autolearn=ham", []),
    ("X-Spam-Status", "No, score=0.1 required=5.0 autolearn=ham URIBL_BLACK", []),
    ("X-Virus-Status", "Infected (Eicar)", ["virus"]), ("X-Virus-Status", "Clean", []),
    ("X-Other", "YES", []),
])
def test_LA_RPT_report_keys_of_logging_md_7_3(name, value, keys):
    assert report_keys(name, value) == keys


# ============================================================================ the rendered output (LA-OUT-*)

@pytest.fixture(scope="module")
def rendered(tmp_path_factory, synthetic):
    """One full run over the synthetic log (plus the worked example's milters' names), graphs drawn."""
    _, text = synthetic
    directory = tmp_path_factory.mktemp("rendered") / "out"
    path = directory.parent / "mail.log"
    path.write_text(text)
    os.utime(path, (NOW_SYNTHETIC, NOW_SYNTHETIC))
    result = analyze([str(path)], directory, now=NOW_SYNTHETIC, zone=UTC)
    return directory, result


def expected_pngs() -> list[str]:
    stems = ["milter-manager.status", "milter-manager.report"]
    for name in MILTERS:
        stems += [f"milter.status.{name}", f"milter.report.{name}"]
    return [f"{stem}.{time_range.tag}.png" for time_range in RANGES for stem in stems]


def test_LA_OUT_1_files_and_png_names_per_range(rendered):
    directory, result = rendered
    names = sorted(path.name for path in directory.iterdir())
    assert names == sorted(expected_pngs() + ["index.html", FILE_NAME])
    assert [path.name for path in result.images] == expected_pngs()


def read_png(path: Path) -> tuple[int, int, bytes]:
    """Check the PNG structure by hand (signature, IHDR first, every chunk's CRC, IEND last)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    offset, chunks = 8, []
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        crc, = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, f"{path}: bad CRC in {kind!r}"
        chunks.append((kind, body))
        offset += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND", path
    width, height = struct.unpack(">II", chunks[0][1][:8])
    return width, height, data


def pixels(path: Path):
    from PIL import Image  # matplotlib depends on Pillow

    with Image.open(path) as image:
        return image.convert("RGB")


def test_LA_OUT_1_pngs_are_valid_with_the_original_geometry(rendered, tmp_path):
    """Every PNG: valid, ``IMAGE_WIDTH`` × ``image_height(legend lines)``; and the plot area is the
    original's ``--width 600 --height 200`` canvas: the image's pure-white pixels are exactly a
    600×200 box at (PLOT_LEFT, PLOT_TOP), with the axes just left of and below it."""
    directory, _ = rendered
    legend_lines = {"milter-manager.status": 11, "milter-manager.report": 13}
    for name in expected_pngs():
        width, height, _ = read_png(directory / name)
        stem = name.rsplit(".", 2)[0]
        lines = legend_lines.get(stem, 12 if stem.startswith("milter.status.") else 13)
        assert (width, height) == (IMAGE_WIDTH, image_height(lines)), name
    # the worked example drawn 6 hours later: its data sits in the middle, the canvas corners are free
    store = run_update(tmp_path / "out", WORKED_EXAMPLE.read_bytes(), now=NOW_7_5)
    path = render(store, manager_status_graph(), RANGES[0], NOW_7_5 + 6 * 3600, tmp_path, UTC)
    image = pixels(path)
    mask = image.point(lambda value: 255 if value == 255 else 0).convert("L").point(
        lambda value: 255 if value == 255 else 0)
    assert mask.getbbox() == (PLOT_LEFT, PLOT_TOP, PLOT_LEFT + PLOT_WIDTH, PLOT_TOP + PLOT_HEIGHT)
    axis = (16, 16, 16)
    assert {image.getpixel((PLOT_LEFT - 1, y)) for y in range(PLOT_TOP, PLOT_TOP + PLOT_HEIGHT)} == {axis}
    assert {image.getpixel((x, PLOT_TOP + PLOT_HEIGHT)) for x in range(PLOT_LEFT, PLOT_LEFT + PLOT_WIDTH)} == {axis}
    assert colour_count(image, "#0000ff", (PLOT_LEFT, PLOT_TOP, PLOT_LEFT + PLOT_WIDTH, PLOT_TOP + PLOT_HEIGHT))


def colour_count(image, colour: str, box: tuple[int, int, int, int]) -> int:
    rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    cropped = image.crop(box)
    return sum(count for count, value in cropped.getcolors(maxcolors=1 << 20) if value == rgb)


def test_LA_OUT_1_graphs_show_their_series(rendered):
    """The series colours fill the plot area: the stacked statuses and reports are drawn."""
    directory, _ = rendered
    area = (PLOT_LEFT, PLOT_TOP, PLOT_LEFT + PLOT_WIDTH, PLOT_TOP + PLOT_HEIGHT)
    status = pixels(directory / "milter-manager.status.day.png")
    for colour in ("#0000ff", "#ff0000", "#888888", "#00ff00"):  # pass, reject, temp-fail, accept
        assert colour_count(status, colour, area) > 20, colour
    assert colour_count(status, "#000000", area) > 20  # the SMTP line
    milter = pixels(directory / "milter.status.milter-greylist.day.png")
    assert colour_count(milter, "#99ffff", area) > 5  # stop
    report = pixels(directory / "milter-manager.report.day.png")
    for colour in ("#ff0000", "#ddbb00", "#dd00bb", "#888888", "#33cc33"):  # spam virus uribl greylisting spf
        assert colour_count(report, colour, area) > 5, colour
    empty = pixels(directory / "milter-manager.status.day.png").crop((0, 0, PLOT_LEFT - 2, PLOT_TOP - 2))
    assert empty.getcolors()  # the background is there


def test_LA_OUT_1_index_html_references_every_png_with_the_original_ids(rendered):
    directory, _ = rendered
    page = (directory / "index.html").read_text()
    assert page.startswith('<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"')
    assert '<meta http-equiv="Refresh" content="300" />' in page
    assert "<title>milter-manager statistics</title>" in page and "<h1>milter-manager statistics</h1>" in page
    assert re.findall(r'<img src="([^"]+)"', page) == expected_pngs()
    assert re.findall(r'<h2 id="([^"]+)">', page) == ["last-day", "last-week", "last-month", "last-year"]
    ids = re.findall(r'<p id="([^"]+)">', page)
    assert ids[:4] == ["last-day-milter-manager-status", "last-day-milter-manager-report",
                       "last-day-milter-status-milter-greylist", "last-day-milter-report-milter-greylist"]
    for anchor in re.findall(r'<a href="#([^"]+)">', page):
        assert f'id="{anchor}"' in page
    import xml.dom.minidom
    xml.dom.minidom.parseString(page.split("\n", 2)[2])  # well-formed XHTML after the DOCTYPE


def test_LA_4_6_html_escapes_odd_milter_names():
    assert file_part("a/b c") == "a%2Fb%20c" and file_part("milter-greylist") == "milter-greylist"
    page = generate([("Last Day", [("milter.status.a%2Fb.day.png", "milter: status: <a&b>")])])
    assert '<img src="milter.status.a%252Fb.day.png" alt="milter: status: &lt;a&amp;b&gt;" />' in page
    assert graph_id("Last Day", "milter: status: x") == "last-day-milter-status-x"


def test_LA_OUT_2_no_update_db_only_renders_and_keeps_milters(tmp_path, synthetic, capsys):
    """--no-update-db reads no log, leaves the database as it is and draws every graph again —
    the child milters' graphs too, found in the database (tools.md §4.7 item 5 fixed)."""
    _, text = synthetic
    directory = tmp_path / "out"
    store = run_update(directory, text, now=NOW_SYNTHETIC)
    before = dump(store.path)
    store.close()
    stamp = os.stat(directory / FILE_NAME).st_mtime_ns
    assert cli.main(["--no-update-db", f"--output-directory={directory}", "/nonexistent/log"],
                    now=NOW_SYNTHETIC) == 0
    assert dump(directory / FILE_NAME) == before and os.stat(directory / FILE_NAME).st_mtime_ns == stamp
    assert sorted(path.name for path in directory.glob("*.png")) == sorted(expected_pngs())
    assert re.findall(r'<img src="([^"]+)"', (directory / "index.html").read_text()) == expected_pngs()
    assert capsys.readouterr().out == ""


def test_LA_OUT_2_milters_absent_from_a_later_log_stay_in_the_page(tmp_path, synthetic):
    events, _ = synthetic
    early = [event for event in events if event[0] < BASE + datetime.timedelta(minutes=30)]
    manager_only = [event for event in events if event[0] >= BASE + datetime.timedelta(minutes=30)
                    and not event[1].startswith("[milter]")]
    run_update(tmp_path / "out", synthetic_syslog(early), now=NOW_SYNTHETIC).close()
    store = run_update(tmp_path / "out", synthetic_syslog(manager_only), now=NOW_SYNTHETIC)
    assert store.milters() == list(MILTERS)
    assert [graph.stem for graph in graphs_of(store)][2:4] == ["milter.status.milter-greylist",
                                                                 "milter.report.milter-greylist"]


def test_LG_7_6_retention_drops_minutes_older_than_the_year_graph(tmp_path):
    old = own_log(datetime.datetime(2008, 5, 1, 10, 0), CONTENT.decode())  # 440 days before now
    recent = own_log(datetime.datetime(2009, 7, 15, 10, 0), CONTENT.decode())
    store = run_update(tmp_path / "out", old + "\n" + recent + "\n", now=NOW_7_5, reference=NOW_7_5)
    assert [hhmm(minute) for minute, _ in store.rows(SESSION, MANAGER)] == ["10:00"]


def test_LG_7_2_items_of_every_family():
    assert items_of(STATUS, MANAGER) == ITEMS[STATUS][:-1] and items_of(STATUS, "x")[-1] == "stop"
    assert len(items_of(REPORT, MANAGER)) == 13 and items_of(SESSION, MANAGER)[-1] == "concurrent"


def test_LA_4_2_log_source_from_a_stream_counts(tmp_path):
    """The library also reads any binary stream (what the command does with standard input)."""
    stream = io.BytesIO((syslog(datetime.datetime(2009, 7, 15, 10, 1, 0), CONTENT.decode()) + "\n").encode())
    store = Store.in_directory(tmp_path)
    update_database(store, [LogSource("memory", stream, NOW_7_5)], now=NOW_7_5, zone=UTC)
    assert [hhmm(minute) for minute, _ in store.rows(SESSION, MANAGER)] == ["10:01"]
    store.close()


# ============================================================================ the command (real clock)

def run_command(*args: str, input: bytes | None = None, env: dict | None = None,
                launcher: bool = False) -> subprocess.CompletedProcess:
    command = ([sys.executable, str(REPO / "bin" / "milter-manager-log-analyzer")] if launcher
               else [sys.executable, "-m", "milterman.cli.log_analyzer"])
    return subprocess.run([*command, *args], input=input, capture_output=True, timeout=60,
                          env=env or clean_env(TZ="UTC"), cwd=RUN_DIR)


def recent_log(minutes_ago: range) -> bytes:
    now = datetime.datetime.now(UTC)
    lines = []
    for index, ago in enumerate(minutes_ago):
        moment = (now - datetime.timedelta(minutes=ago)).replace(second=10)
        lines.append(syslog(moment, f"[session][end][end-of-message][pass][0.5]({index})"))
        lines.append(syslog(moment, f"[milter][end][end-of-message][reject][0.5]({index + 1}): child"))
    return ("\n".join(lines) + "\n").encode()


def test_LA_OUT_3_command_reads_gzip_on_stdin_and_creates_the_directory(tmp_path):
    directory = tmp_path / "a" / "b"
    completed = run_command(f"--output-directory={directory}", input=gzip.compress(recent_log(range(8, 3, -1))))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout == b""
    store = Store.in_directory(directory, readonly=True)
    assert sum(values["smtp"] for _, values in store.rows(SESSION, MANAGER)) == 5
    assert store.milters() == ["child"]
    assert sorted(path.name for path in directory.glob("*.png")) == sorted(
        f"{stem}.{time_range.tag}.png" for stem in ("milter-manager.status", "milter.status.child")
        for time_range in RANGES)
    page = (directory / "index.html").read_text()
    assert all(f'src="{path.name}"' in page for path in directory.glob("*.png"))


def test_LA_4_2_command_log_option_and_positional_files(tmp_path):
    first, second = tmp_path / "one.log", tmp_path / "two.log"
    first.write_bytes(recent_log(range(9, 7, -1)))
    second.write_bytes(recent_log(range(6, 4, -1)))
    completed = run_command(f"--log={first}", str(second), f"--output-directory={tmp_path / 'out'}",
                            "--no-update-db", "--update-db", launcher=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    store = Store.in_directory(tmp_path / "out", readonly=True)
    assert sum(values["smtp"] for _, values in store.rows(SESSION, MANAGER)) == 4


def test_LA_4_8_missing_log_file_fails_before_touching_the_database(tmp_path):
    completed = run_command("--log=/nonexistent/mail.log", f"--output-directory={tmp_path}")
    assert completed.returncode == 1
    assert completed.stdout.decode().startswith(
        "milter-manager-log-analyzer: failed to open log file: </nonexistent/mail.log>: No such file")
    assert not (tmp_path / FILE_NAME).exists() and not (tmp_path / "index.html").exists()


def test_LA_4_8_help_version_and_a_bad_option():
    completed = run_command("--help")
    assert completed.returncode == 0 and b"--no-update-db" in completed.stdout
    completed = run_command("--version", launcher=True)
    assert completed.returncode == 0 and completed.stdout.startswith(b"milter-manager-log-analyzer ")
    assert run_command("--bogus").returncode == 1


def test_LA_4_3_matplotlib_is_imported_only_to_draw():
    """matplotlib is imported by the drawing code only (the other commands do not pay for it)."""
    code = ("import sys, milterman.cli.log_analyzer, milterman.tools.log_analyzer, milterman.cli.manager; "
            "print('matplotlib' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, cwd=RUN_DIR)
    assert completed.stdout.strip() == b"False", completed.stderr


# ============================================================================ headless Chromium

class RecordingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the output directory and records every request with its status."""

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def send_response(self, code, message=None) -> None:
        self.server.requests.append((self.path, code))
        super().send_response(code, message)

    def do_GET(self) -> None:
        if self.path == "/favicon.ico":  # asked for by the browser itself, not by the page
            self.send_response(204)
            self.end_headers()
            return
        super().do_GET()


def test_LA_OUT_1_chromium_loads_index_html_with_every_image(rendered, tmp_path):
    """Headless Chromium loads index.html over loopback HTTP: every PNG the page names is fetched
    with 200, nothing is missing, and the screenshot shows the graphs' colours."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    require_real("chromium", browser is not None, "Debian package chromium, see .ci/system-packages")
    directory, _ = rendered
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(RecordingHandler, directory=str(directory)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    screenshot = tmp_path / "screenshot.png"
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        process = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
             "--force-device-scale-factor=1", "--window-size=1000,1300", f"--screenshot={screenshot}", url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            output, errors = process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise AssertionError("chromium did not finish within 90 s") from None
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert process.returncode == 0, errors.decode(errors="replace")[-3000:]
    requests = server.requests
    assert ("/index.html", 200) in requests
    assert [entry for entry in requests if entry[1] >= 400] == [], requests
    fetched = {path.lstrip("/") for path, code in requests if code == 200}
    assert set(expected_pngs()) <= fetched, sorted(set(expected_pngs()) - fetched)
    width, height, _ = read_png(screenshot)
    assert (width, height) == (1000, 1300)
    shot = pixels(screenshot)
    assert colour_count(shot, "#0000ff", (0, 0, width, height)) > 100  # the status graph's Pass area
    assert colour_count(shot, "#ff0000", (0, 0, width, height)) > 100  # Reject, spam
