"""milter-report-statistics (tools.md §5): RS-1 … RS-7, and a running milter-manager with CPU columns."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from milterman.tools.report_statistics import HEADER, program_names

#: subprocesses start outside the checkout, so they import the installed package (issue 8)
RUN_DIR = "/"
ROW = re.compile(r"^(?P<time>\d\d:\d\d:\d\d) +(?P<pid>\d+) +(?P<vss>\d+ kB) +(?P<rss>\d+ kB) +(?P<cpu>\d+\.\d) +"
                 r"(?P<cputime>\d+:\d\d\.\d\d) +(?P<fd>\d+) (?P<command>.*)$")


def report(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "milterman.cli.report_statistics", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=RUN_DIR)


@pytest.fixture
def sleeper(tmp_path):
    """A uniquely named process: a copy of sleep called lt-milterman-sleeper-N (RS-6 needs the lt- form)."""
    program = tmp_path / f"lt-milterman-sleeper-{os.getpid()}"
    shutil.copy(shutil.which("sleep"), program)
    process = subprocess.Popen([str(program), "100"])
    yield program.name, process
    process.kill()
    process.wait(timeout=10)


def rows(stdout: str) -> list[re.Match]:
    return [match for line in stdout.splitlines() if (match := ROW.match(line))]


def test_RS_1_header_and_rows_with_the_widths_of_the_original(sleeper):
    name, process = sleeper
    run = report(name[3:], "--count", "2", "--interval", "0.2")
    assert run.returncode == 0, run.stdout
    lines = run.stdout.splitlines()
    assert lines[0] == HEADER == "    Time    PID       VSS       RSS  %CPU CPU time   #FD command"
    found = rows(run.stdout)
    assert len(found) == 2
    for match in found:
        assert int(match["pid"]) == process.pid
        assert match["command"] == f"{sleeper[0]} 100" or match["command"].endswith(f"{name} 100")
        line = match.group(0)
        assert line.index(match["pid"]) + len(match["pid"]) == 15  # "%8s %6s": PID ends in column 15


def test_RS_6_lt_prefix_is_removed_for_matching(sleeper):
    name, process = sleeper
    assert name.startswith("lt-")
    assert {int(match["pid"]) for match in rows(report(name[3:], "--count", "1").stdout)} == {process.pid}


def test_RS_2_nothing_matches_prints_not_found_each_tick():
    run = report("no-such-program-anywhere", "--count", "2", "--interval", "0.1")
    lines = run.stdout.splitlines()
    assert lines[0] == HEADER
    assert len(lines) == 3
    for line in lines[1:]:
        assert re.fullmatch(r"\d\d:\d\d:\d\d not found", line)


def test_RS_3_filters_are_case_insensitive_and_anded(sleeper):
    name, process = sleeper
    assert rows(report(name[3:], "--filter", "MILTERMAN-SLEEPER", "--filter", "100", "--count", "1").stdout)
    assert not rows(report(name[3:], "--filter", "MILTERMAN-SLEEPER", "--filter", "999", "--count", "1").stdout)


def test_RS_4_pid_wins_over_targets_and_pid_directory_is_recursive(sleeper, tmp_path):
    name, process = sleeper
    other = subprocess.Popen(["sleep", "100"])
    try:
        only = rows(report("no-such-program", "--pid", str(other.pid), "--count", "1").stdout)
        assert [int(match["pid"]) for match in only] == [other.pid]
        nested = tmp_path / "run" / "deeper"
        nested.mkdir(parents=True)
        (nested / "a.pid").write_text(f"{process.pid}\n")
        (tmp_path / "run" / "b.pid").write_text(f"{other.pid}\n")
        (tmp_path / "run" / "ignored.txt").write_text("1\n")
        pids = {int(match["pid"]) for match in rows(report("--pid-directory", str(tmp_path / "run"),
                                                           "--count", "1").stdout)}
        assert pids == {process.pid, other.pid}
    finally:
        other.kill()
        other.wait(timeout=10)


def test_RS_5_no_target_and_no_pid_prints_usage_and_exits_1():
    run = report()
    assert run.returncode == 1
    assert run.stdout.startswith("Usage:")


def test_RS_7_descriptor_count_is_exact(tmp_path):
    script = "import os, sys, time\nfds = [os.open('/dev/null', os.O_RDONLY) for _ in range(7)]\ntime.sleep(100)\n"
    process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, close_fds=True)
    try:
        time.sleep(0.5)
        expected = len(os.listdir(f"/proc/{process.pid}/fd"))
        match = rows(report("--pid", str(process.pid), "--count", "1").stdout)[0]
        assert int(match["fd"]) == expected
        assert expected >= 10  # 0-2 and the seven opened here
    finally:
        process.kill()
        process.wait(timeout=10)


def test_program_names_cover_titles_and_interpreters():
    assert "milter-manager" in program_names(["milter-manager: worker [unix:/run/m.sock]"])
    assert "milter-manager" in program_names(["/usr/bin/python3", "/usr/local/bin/milter-manager", "-c", "/etc"])
    assert "milter-test-client" in program_names(["/usr/bin/lt-milter-test-client", "-s", "inet:1"])


def test_running_milter_manager_processes_with_cpu_columns(tmp_path):
    """Issue acceptance: a running milter-manager (master and workers) with non-empty CPU columns."""
    (tmp_path / "milter-manager.toml").write_text(f"""version = 1
[manager]
connection_spec = "unix:{tmp_path}/manager.sock"
n_workers = 2
[log]
use_syslog = false
[[milter]]
name = "client"
connection_spec = "unix:{tmp_path}/client.sock"
""")
    client = subprocess.Popen([sys.executable, "-m", "milterman.cli.test_client", "-s", f"unix:{tmp_path}/client.sock",
                               "--no-report-request", "-q"], cwd=RUN_DIR)
    manager = subprocess.Popen([sys.executable, "-m", "milterman.cli.manager", "-c", str(tmp_path), "--no-detect"],
                               stdout=subprocess.DEVNULL, cwd=RUN_DIR)
    load = None
    try:
        deadline = time.monotonic() + 15
        while not (tmp_path / "manager.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        load = subprocess.Popen([sys.executable, "-m", "milterman.cli.test_server", "-s",
                                 f"unix:{tmp_path}/manager.sock", "--n-sessions", "3000", "--concurrency", "10"],
                                stdout=subprocess.DEVNULL, cwd=RUN_DIR)
        run = report("milter-manager", "--filter", str(tmp_path), "--count", "3", "--interval", "0.5")
        found = rows(run.stdout)
        pids = {int(match["pid"]) for match in found}
        master_and_workers = {manager.pid, *(child.pid for child in __import__("psutil").Process(manager.pid)
                                            .children())}
        assert pids and pids <= master_and_workers, run.stdout
        assert len(pids) == 3, run.stdout  # the master and its two workers
        assert all(match["cpu"] and match["cputime"] for match in found)
        assert any(float(match["cpu"]) > 0 for match in found), run.stdout  # the workers were busy
    finally:
        if load is not None:
            load.kill()
            load.wait(timeout=10)
        for process in (manager, client):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
