"""A body that cannot be buffered is a manager error answered with its fallback (M-BODY-1, M-ERR-7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: subprocesses start outside the checkout, so they import the installed package (issue 8)
RUN_DIR = "/"


@pytest.fixture
def tiny_tmpdir(tmp_path):
    """A 1 MiB tmpfs: the 5 MiB spill file of M-BODY-1 cannot be written there."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", str(mountpoint)], capture_output=True)


def wait_for(path: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_spill_failure_answers_with_the_manager_fallback_and_the_manager_goes_on(tmp_path, tiny_tmpdir):
    (tmp_path / "milter-manager.toml").write_text(f"""version = 1
[manager]
connection_spec = "unix:{tmp_path}/manager.sock"
fallback_status = "temporary-failure"
[log]
use_syslog = false
[[milter]]
name = "first"
connection_spec = "unix:{tmp_path}/first.sock"
[[milter]]
name = "second"
connection_spec = "unix:{tmp_path}/second.sock"
""")
    children = [subprocess.Popen([sys.executable, "-m", "milterman.cli.test_client", "-s",
                                  f"unix:{tmp_path}/{name}.sock", "--no-report-request", "-q"], cwd=RUN_DIR)
                for name in ("first", "second")]
    manager = None
    try:
        for name in ("first", "second"):
            wait_for(tmp_path / f"{name}.sock")
        manager = subprocess.Popen([sys.executable, "-m", "milterman.cli.manager", "-c", str(tmp_path),
                                    "--no-detect"], env=dict(os.environ, TMPDIR=str(tiny_tmpdir)),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=RUN_DIR)
        wait_for(tmp_path / "manager.sock")
        mail = tmp_path / "big.eml"
        line = b"0123456789" * 7 + b"\n"
        mail.write_bytes(b"From: <a@example.org>\nTo: <b@example.org>\nSubject: big\n\n" + line * 90000)  # 6.4 MB
        command = [sys.executable, "-m", "milterman.cli.test_server", "-s", f"unix:{tmp_path}/manager.sock"]
        big = subprocess.run([*command, "--mail-file", str(mail)], capture_output=True, text=True, timeout=120,
                             cwd=RUN_DIR)
        assert big.stdout.splitlines()[0] == "status: temporary-failure", big.stdout
        small = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=RUN_DIR)
        assert small.stdout.splitlines()[0] == "status: pass"
    finally:
        if manager is not None:
            manager.send_signal(signal.SIGTERM)
            output, _ = manager.communicate(timeout=30)
        for child in children:
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=30)
    assert manager.returncode == 0
    assert "[manager][error] body buffer: No space left on device" in output
