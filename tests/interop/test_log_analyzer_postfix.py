"""milter-manager-log-analyzer on a log written by milter-manager behind a real Postfix (tools.md §4, D-11).

A private Postfix (tests/interop/postfix_harness.py) hands a few hundred SMTP sessions to
milter-manager (this repository's, two worker processes, its own log file via ``log.path`` at
the default levels, statistics included). The manager's children give mixed outcomes:

* ``reject`` — ``milterman.tools.example_milters reject``: 550 for ``spam@`` recipients;
* ``gatekeeper`` — the scripted milter of tests/support: 451 for ``busy@`` recipients, and at
  end of message adds ``X-Spam-Flag: YES`` to every third message, ``X-Virus-Status: Infected``
  to every fifth and ``X-Greylist: Delayed for …`` to every seventh;
* ``stamp`` — ``milterman.tools.example_milters header``: adds a header of no report interest.

The analyzer then reads milter-manager's log file; its per-minute rows must equal an independent
count of the log's lines, its PNGs must be valid and index.html must name every one of them.
"""

from __future__ import annotations

import datetime
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from manager_processes import ManagerProcess, milter_table, toml_value, wait_listening_quietly
from milter_processes import RUN_DIR, free_port, stop
from postfix_harness import require_real  # noqa: F401  (postfix_factory skips/fails through it)

SUPPORT = str(Path(__file__).resolve().parents[1] / "support")
if SUPPORT not in sys.path:
    sys.path.insert(0, SUPPORT)
from scripted_milter import ScriptedMilter  # noqa: E402

from milterman.cli import log_analyzer  # noqa: E402
from milterman.protocol import ReplyCode, format_reply_text  # noqa: E402
from milterman.tools.log_analyzer_graph import RANGES  # noqa: E402
from milterman.tools.log_analyzer_parse import MANAGER, REPORT, SESSION, STATUS  # noqa: E402
from milterman.tools.log_analyzer_store import Store, items_of  # noqa: E402

pytestmark = pytest.mark.interop

N_MAILS = 300
UTC = datetime.timezone.utc
LINE = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?Z\](?: \[(\d+)\])?: (.*)$")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPORT_HEADERS = {("X-Spam-Flag", "YES"): "spam", ("X-Virus-Status", "Infected (Test)"): "virus",
                  ("X-Greylist", "Delayed for 00:01:00 by gatekeeper"): "greylisting-pass"}


class LogFileManager(ManagerProcess):
    """:class:`ManagerProcess` with its log in a file of its own (``log.path``) at the default
    levels: what an installation's milter-manager writes and the analyzer reads (D-11)."""

    def __init__(self, directory: Path, milters, *, n_workers: int = 2) -> None:
        self.port = free_port()
        self.n_workers = n_workers
        self.config_dir = Path(directory) / f"manager-{self.port}"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.config_dir / "manager.out"
        self.log_file = self.config_dir / "milter-manager.log"
        self.config_path = self.config_dir / "milter-manager.toml"
        self.config_path.write_text(
            "version = 1\n\n[log]\nuse_syslog = false\nlevel = \"default\"\n"
            f"path = {toml_value(str(self.log_file))}\n\n"
            f"[manager]\nconnection_spec = \"inet:{self.port}@[127.0.0.1]\"\nfallback_status = \"accept\"\n"
            "graceful_timeout = 5.0\n\n" + "\n".join(milter_table(milter) for milter in milters))
        self._output = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "milterman.cli.manager", "-c", str(self.config_dir), "--no-detect",
             "--n-workers", str(n_workers)],
            stdout=self._output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=RUN_DIR)
        try:
            wait_listening_quietly(self.port, self.process, 20.0, "milter-manager", self.log_path)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        try:
            return self.log_file.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""


class ExampleMilter:
    """``python -m milterman.tools.example_milters KIND inet:PORT@[127.0.0.1] NAME``."""

    def __init__(self, kind: str, name: str) -> None:
        self.port = free_port()
        self.spec = f"inet:{self.port}@[127.0.0.1]"
        self.process = subprocess.Popen([sys.executable, "-m", "milterman.tools.example_milters", kind, self.spec,
                                         name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=RUN_DIR)
        wait_listening_quietly(self.port, self.process, 15.0, f"example milter {kind}")

    def stop(self) -> None:
        stop(self.process, signal.SIGTERM, timeout=10)


@pytest.fixture
def children(tmp_path):
    started: list = []
    try:
        started.append(ExampleMilter("reject", "reject"))
        started.append(ExampleMilter("header", "stamp"))
        yield started
    finally:
        for child in started:
            child.stop()


@pytest.fixture
def gatekeeper(reachable_dir):
    milter = ScriptedMilter(reachable_dir / "gatekeeper.sock")
    lock = threading.Lock()
    ends = [0]

    def recipient(session, command):
        if command.address.strip("<>").lower().startswith("busy@"):
            return ReplyCode(format_reply_text(451, "4.7.1", "Busy, try later"))
        return None

    def end_of_message(session, command):
        with lock:
            ends[0] += 1
            number = ends[0]
        if number % 3 == 0:
            session.add_header("X-Spam-Flag", "YES")
        if number % 5 == 0:
            session.add_header("X-Virus-Status", "Infected (Test)")
        if number % 7 == 0:
            session.add_header("X-Greylist", "Delayed for 00:01:00 by gatekeeper")
        return None

    milter.script.replies = {"R": recipient, "E": end_of_message}
    yield milter
    milter.stop()


def recipients(index: int) -> list[str]:
    if index % 10 == 0:
        return ["spam@example.net"]
    if index % 10 == 1:
        return ["busy@example.net"]
    if index % 10 == 2:
        return ["ok@example.net", "spam@example.net"]
    return [f"user{index}@example.net"]


def independent_counts(text: str) -> tuple[dict, Counter]:
    """The log's statistics lines counted by hand (regex + string splitting)."""
    counts: dict = defaultdict(lambda: defaultdict(Counter))
    kinds: Counter = Counter()
    for line in text.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        stamp, pid, content = match.groups()
        kinds["pid" if pid else "no-pid"] += 1
        minute = int(datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()) // 60 * 60
        tags = content.split("]")
        if content.startswith("[session][end]["):
            counts[(SESSION, MANAGER)][minute]["smtp"] += 1
            counts[(STATUS, MANAGER)][minute][tags[3][1:]] += 1
            kinds["session"] += 1
        elif content.startswith("[milter][end]["):
            name = content.rsplit(": ", 1)[1]
            counts[(SESSION, MANAGER)][minute]["child"] += 1
            counts[(STATUS, name)][minute][tags[3][1:]] += 1
        elif content.startswith("[session][disconnected]"):
            counts[(SESSION, MANAGER)][minute]["disconnected"] += 1
        elif content.startswith("[sessions][finished] "):
            bucket = counts[(SESSION, MANAGER)][minute]
            bucket["concurrent"] = max(bucket["concurrent"], int(content.rsplit(" ", 1)[1]))
        elif content.startswith("[milter][header][add]"):
            header, value = content.split(": <", 1)[1].split(">: ", 1)[0].split(">=<", 1)
            key = REPORT_HEADERS.get((header, value))
            if key:
                name = content.rsplit(">: ", 1)[1]
                counts[(REPORT, MANAGER)][minute][key] += 1
                counts[(REPORT, name)][minute][key] += 1
    return counts, kinds


def wait_sessions(manager: LogFileManager, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if manager.log().count("[session][end][") >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} [session][end] lines after {timeout} s\n{manager.describe()}")


def test_LA_AGG_1_D11_analyzer_counts_a_postfix_run_of_milter_manager(tmp_path, postfix_factory, smtp_sink, children,
                                                            gatekeeper):
    reject, stamp = children
    manager = LogFileManager(tmp_path, [{"name": "reject", "connection_spec": reject.spec},
                                        {"name": "gatekeeper", "connection_spec": gatekeeper.spec},
                                        {"name": "stamp", "connection_spec": stamp.spec}], n_workers=2)
    try:
        mta = postfix_factory(manager.postfix_spec, milter_default_action="tempfail")

        def send(index: int):
            message = (f"From: <sender{index}@example.org>\r\nTo: <{recipients(index)[0]}>\r\n"
                       f"Subject: mail {index}\r\n\r\nBody of mail {index}.\r\n").encode()
            return mta.send(f"sender{index}@example.org", recipients(index), message, timeout=30)

        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(send, range(N_MAILS)))
        codes = Counter(code for result in results for code, _ in result.rcpts.values())
        assert codes[550] >= N_MAILS // 5 and codes[451] >= N_MAILS // 10 and codes[250] >= N_MAILS // 2, codes
        wait_sessions(manager, N_MAILS)
    finally:
        assert manager.stop() == 0, manager.describe()
    text = manager.log()
    counts, kinds = independent_counts(text)
    assert kinds["session"] == N_MAILS and kinds["pid"] > 0, kinds  # two workers: the [PID] form

    stamps = [LINE.match(line).group(1) for line in text.splitlines() if LINE.match(line)]
    last = max(datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC) for stamp in stamps)
    now = last.timestamp() + 120  # every minute of the run is complete
    output = tmp_path / "html"
    assert log_analyzer.main([f"--log={manager.log_file}", f"--output-directory={output}"], now=now) == 0

    store = Store.in_directory(output, readonly=True)
    series = store.series()
    assert {(SESSION, MANAGER), (STATUS, MANAGER), (REPORT, MANAGER), (STATUS, "reject"), (STATUS, "gatekeeper"),
            (STATUS, "stamp"), (REPORT, "gatekeeper")} == series
    for family, name in series:
        rows = store.rows(family, name)
        minutes = [minute for minute, _ in rows]
        assert minutes == list(range(minutes[0], minutes[-1] + 60, 60)), (family, name)
        for minute, values in rows:
            expected = counts[(family, name)].get(minute, Counter())
            assert values == {item: expected.get(item, 0) for item in items_of(family, name)}, (family, name, minute)
    totals = Counter()
    for _, values in store.rows(STATUS, MANAGER):
        totals.update(values)
    assert sum(totals.values()) == N_MAILS
    assert len([status for status, count in totals.items() if count]) >= 2, totals  # mixed outcomes
    report = Counter()
    for _, values in store.rows(REPORT, MANAGER):
        report.update(values)
    assert report["spam"] > 0 and report["virus"] > 0 and report["greylisting-pass"] > 0, report
    assert sorted(store.milters()) == ["gatekeeper", "reject", "stamp"]

    stems = ["milter-manager.status", "milter-manager.report", "milter.status.reject", "milter.status.gatekeeper",
             "milter.report.gatekeeper", "milter.status.stamp"]
    pngs = sorted(path.name for path in output.glob("*.png"))
    assert pngs == sorted(f"{stem}.{time_range.tag}.png" for stem in stems for time_range in RANGES)
    for name in pngs:
        data = (output / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", name
    page = (output / "index.html").read_text()
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == pngs
