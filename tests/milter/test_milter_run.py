"""milter-run MODULE:CLASS: served on the pre-forking server with its options; refusals at start; SIGHUP
imports the module again (a broken module is refused and the running one stays)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from milterman.testing import run_milter

#: the issue's file (tests/support/tag.py), its header value made VERSION to tell reloads apart
TAG = (Path(__file__).resolve().parents[1] / "support" / "tag.py").read_text().replace('"yes"', '"VERSION"')

SHADOWED = '''from milterman.milter import Milter, CONTINUE

class Collector(Milter):
    def __init__(self):
        self.body = []

    def body(self, chunk):
        return CONTINUE
'''


def milter_run(directory: Path, *arguments: str, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "milterman.cli.milter_run", *arguments], cwd=directory,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **options)


def wait_listening(path: Path, process: subprocess.Popen, timeout: float = 20.0) -> None:
    """Until a connection to the unix socket succeeds (the file exists a moment before the socket listens)."""
    def listening() -> bool:
        assert process.poll() is None, process.stdout.read() if process.stdout else process.returncode
        with socket.socket(socket.AF_UNIX) as probe:
            return probe.connect_ex(str(path)) == 0

    wait_for(listening, timeout, f"{path} to listen")


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("source,reference,message", [
    (SHADOWED, "mymilter:Collector", "attribute 'body' would hide the stage method of that name"),
    (SHADOWED, "mymilter:Missing", "module <mymilter> has no <Missing>"),
    ("import nowhere_to_be_found\n", "mymilter:X", "cannot import module <mymilter>: ModuleNotFoundError"),
    (TAG, "mymilter:CONTINUE", "is not a subclass of milterman.milter.Milter"),
])
def test_an_unusable_class_is_refused_at_start(tmp_path, source, reference, message):
    (tmp_path / "mymilter.py").write_text(source)
    process = milter_run(tmp_path, reference, "-s", f"unix:{tmp_path}/m.sock")
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 1, output
    assert message in output and output.startswith(f"{reference}: ")
    assert not (tmp_path / "m.sock").exists()


def test_served_with_workers_and_reloaded_on_sighup(tmp_path):
    (tmp_path / "mymilter.py").write_text(TAG.replace("VERSION", "one"))
    socket_path = tmp_path / "m.sock"
    log = tmp_path / "run.log"
    process = milter_run(tmp_path, "mymilter:Tag", "-s", f"unix:{socket_path}", "--n-workers", "2",
                         "--log-path", str(log), "--log-level", "all", "--pid-file", str(tmp_path / "pid"),
                         "--report-memory-profile", "--maintenance-interval", "1")
    try:
        wait_listening(socket_path, process)
        spec = f"unix:{socket_path}"
        outcome = run_milter(spec, recipients=["alice@example.test", "carol@example.test"])
        assert outcome.rejected_recipients == ["<carol@example.test>"]
        assert outcome.added_headers == [("X-Tagged", "one")]
        assert int((tmp_path / "pid").read_text()) == process.pid
        (tmp_path / "mymilter.py").write_text(TAG.replace("VERSION", "two"))
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: run_milter(spec).added_headers == [("X-Tagged", "two")], 20, "the reloaded class")
        (tmp_path / "mymilter.py").write_text(SHADOWED.replace("Collector", "Tag"))
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: "[server][reload][error]" in log.read_text(), 20, "the refused reload")
        assert "would hide the stage method" in log.read_text()
        assert run_milter(spec).added_headers == [("X-Tagged", "two")]  # the running version stays
        assert "[maintain][memory]" in log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert not socket_path.exists()


def test_daemon_exits_zero_once_listening(tmp_path):
    (tmp_path / "mymilter.py").write_text(TAG.replace("VERSION", "d"))
    socket_path = tmp_path / "m.sock"
    pid_file = tmp_path / "pid"
    process = milter_run(tmp_path, "mymilter:Tag", "-s", f"unix:{socket_path}", "--daemon", "--pid-file", str(pid_file),
                         "--log-path", str(tmp_path / "run.log"))
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 10, "the pid file")
    daemon = int(pid_file.read_text())
    try:
        assert daemon != process.pid
        assert run_milter(f"unix:{socket_path}").added_headers == [("X-Tagged", "d")]
    finally:
        os.kill(daemon, signal.SIGTERM)
    wait_for(lambda: not pid_file.exists(), 20, "the daemon to stop")
