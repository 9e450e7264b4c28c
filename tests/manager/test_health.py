"""A child's health in one process (D-14, M-CON-*, M-LAU-1): down once, one attempt at a time, back-off, up.

In-process, with real sockets, the real launcher process and a real milter-test-client.
"""

from __future__ import annotations

import io
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import gevent
import pytest

from milterman.log import ALL, DEFAULT, Logger
from milterman.manager import health as health_module
from milterman.manager.child import ChildDefinition
from milterman.manager.health import ChildHealth, HealthBoard
from milterman.manager.launcher import CommandLaunch, LaunchClient, start_launcher
from milterman.net import Timeouts, parse_spec
from milterman.manager.status import Status

RUN_DIR = "/"  # subprocesses use the installed package, never the checkout


def definition(path: Path, retry_delay: float, launch=None, name: str = "c") -> ChildDefinition:
    return ChildDefinition(name=name, spec=parse_spec(f"unix:{path}"), fallback_status=Status.TEMPORARY_FAILURE,
                           timeouts=Timeouts(2.0, 2.0, 2.0, 2.0), retry_delay=retry_delay, launch=launch)


def lines(stream: io.StringIO, tag: str) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if tag in line]


def test_back_off_doubles_from_retry_delay_up_to_the_cap_one_launch_per_attempt(tmp_path, monkeypatch):
    monkeypatch.setattr(health_module, "MAX_RETRY_DELAY", 0.4)
    launcher_log = open(tmp_path / "launcher.log", "w")
    registration = start_launcher(Logger(ALL, stream=launcher_log))
    try:
        stream = io.StringIO()
        logger = Logger(ALL, stream=stream)
        launch = CommandLaunch(LaunchClient(registration), "/bin/true health-test", None, "c", logger)
        health = ChildHealth(definition(tmp_path / "nobody.sock", 0.05, launch), logger)
        health.failed("connect: refused")
        health.failed("connect: refused again")  # a second session's failure: no second line, no second greenlet
        gevent.sleep(2.2)
        health.close()
        retries = [float(re.search(r"next in ([0-9.]+) s", line).group(1))
                   for line in lines(stream, "[manager][child][retry] [c]")]
        # waits 0.05, 0.1, 0.2, 0.4, 0.4, ...: attempts ~ at 0.05, 0.15, 0.35, 0.75, 1.15, 1.55, 1.95 s
        assert retries[:4] == [0.1, 0.2, 0.4, 0.4], retries
        assert set(retries[3:]) == {0.4}
        assert 4 <= len(retries) <= 7, retries
        assert len(lines(stream, "[manager][child][down] [c]")) == 1
        assert health.last_error.startswith("connect: Failed to connect to unix:")
        assert health.state == "down" and health.attempts == len(retries)
    finally:
        registration.close()
    time.sleep(0.3)
    launcher_log.close()
    launches = (tmp_path / "launcher.log").read_text().count("[launcher][launch] </bin/true health-test>")
    assert launches in (len(retries), len(retries) + 1)  # once per attempt (the last one may be in flight)


def test_a_failed_negotiation_marks_down_and_a_listening_milter_brings_it_back(tmp_path):
    path = tmp_path / "child.sock"
    rude = socket.socket(socket.AF_UNIX)
    rude.bind(str(path))
    rude.listen(16)

    def close_every_connection() -> None:
        while True:
            try:
                connection, _ = rude.accept()
            except OSError:
                return
            connection.close()

    threading.Thread(target=close_every_connection, daemon=True).start()
    stream = io.StringIO()
    logger = Logger(DEFAULT, stream=stream)
    board = HealthBoard((definition(path, 0.1),), logger)
    health = board.children["c"]
    assert health.state == "unknown" and board.statistics()["c"]["last_error"] is None
    error = health_module.probe(health.definition, health_module.DEFAULT_OFFER)
    assert error.startswith("negotiation failed")
    health.failed(error)
    gevent.sleep(0.5)
    assert health.down and health.attempts >= 1
    status = board.statistics()["c"]
    assert status["state"] == "down" and status["last_error"].startswith("negotiation failed")
    assert status["next_attempt"] > status["since"]
    rude.close()
    path.unlink()
    client = subprocess.Popen([sys.executable, "-m", "milterman.cli.test_client", "-s", f"unix:{path}", "-q",
                               "--no-report-request"], cwd=RUN_DIR)
    try:
        deadline = time.monotonic() + 30
        while health.down and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert health.state == "up"
        ups = lines(stream, "[manager][child][up] [c]")
        assert len(ups) == 1 and "back after" in ups[0]
        status = board.statistics()["c"]
        assert status["state"] == "up" and "attempts" not in status
        # the last error stays visible (the negotiation, or a connect while the socket was being replaced)
        assert status["last_error"].startswith(("negotiation failed", "connect: "))
    finally:
        board.close()
        client.terminate()
        client.wait(10)


@pytest.mark.parametrize("first", ["unknown", "up"])
def test_a_session_that_connects_marks_up_without_a_line_unless_it_was_down(first):
    stream = io.StringIO()
    health = ChildHealth(definition(Path("/nonexistent.sock"), 5.0), Logger(DEFAULT, stream=stream))
    if first == "up":
        health.succeeded()
    health.succeeded()
    assert health.state == "up"
    assert stream.getvalue() == ""


def test_the_summary_over_workers_says_down_when_any_worker_has_it_down():
    from milterman.manager.health import summarize

    boards = [{"c": {"state": "up", "since": 10.0, "last_error": "connect: old", "last_error_at": 5.0}},
              {"c": {"state": "down", "since": 20.0, "last_error": "connect: refused", "last_error_at": 20.0}},
              {"c": {"state": "down", "since": 15.0, "last_error": "connect: earlier", "last_error_at": 15.0},
               "d": {"state": "unknown", "since": 1.0, "last_error": None, "last_error_at": None}}]
    summary = summarize(boards)
    assert summary["c"] == {"state": "down", "since": 15.0, "workers": {"up": 1, "down": 2, "unknown": 0},
                            "last_error": "connect: refused", "last_error_at": 20.0}
    assert summary["d"]["state"] == "unknown" and summary["d"]["last_error"] is None
