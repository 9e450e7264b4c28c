"""milter-run's socket and privilege options: --unix-socket-group, --unix-socket-mode, --user-name, --group-name.

(Serving as another user or group is not run here: this checkout's Python lives under /root, where a process
that dropped its privileges cannot import the standard library; an unknown user or group is refused.)"""

from __future__ import annotations

import grp
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from milterman.testing import run_milter
from test_milter_run import wait_listening

TAG = Path(__file__).resolve().parents[1] / "support" / "tag.py"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the socket a group needs root")
def test_the_socket_gets_its_group_and_mode(tmp_path):
    shutil.copy(TAG, tmp_path / "tag.py")
    socket_path = tmp_path / "m.sock"
    process = subprocess.Popen([sys.executable, "-m", "milterman.cli.milter_run", "tag:Tag",
                                "-s", f"unix:{socket_path}", "--n-workers", "1", "--unix-socket-group", "mail",
                                "--unix-socket-mode", "0660"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_listening(socket_path, process)
        info = os.stat(socket_path)
        assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == grp.getgrnam("mail").gr_gid
        assert run_milter(f"unix:{socket_path}", recipients=["carol@example.test"]).status == "reject"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
@pytest.mark.parametrize("option", ["--user-name", "--group-name"])
def test_an_unknown_user_or_group_is_refused_at_start(tmp_path, option):
    shutil.copy(TAG, tmp_path / "tag.py")
    run = subprocess.run([sys.executable, "-m", "milterman.cli.milter_run", "tag:Tag", "-s", f"unix:{tmp_path}/m.sock",
                          option, "no-such-name-here"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert run.returncode == 1 and "no-such-name-here" in run.stdout, run
