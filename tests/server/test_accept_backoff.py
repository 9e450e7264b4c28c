"""Out of descriptors on accept (M-ACC-2): accepting pauses without blocking sessions, then resumes."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

#: subprocesses start outside the checkout, so they import the installed package (issue 8)
RUN_DIR = "/"


def test_emfile_pauses_accepting_quietly_and_sessions_resume_M_ACC_2(tmp_path):
    path = tmp_path / "client.sock"
    server = subprocess.Popen([sys.executable, "-m", "milterman.cli.test_client", "-s", f"unix:{path}",
                               "--max-file-descriptors", "24", "--no-report-request"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=RUN_DIR)
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 15
        while not path.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # a session in progress before the descriptors run out
        busy = socket.socket(socket.AF_UNIX)
        busy.connect(str(path))
        for _ in range(40):  # more connections than the process has descriptors left
            connection = socket.socket(socket.AF_UNIX)
            connection.connect(str(path))
            held.append(connection)
        time.sleep(1.0)
        # the earlier connection is still served while accepting is paused
        busy.settimeout(10)
        busy.sendall(bytes.fromhex("0000000d4f00000006000001ff001fffff"))
        assert busy.recv(5)[4:5] == b"O"
        busy.close()
        for connection in held:
            connection.close()
        held.clear()
        time.sleep(1.5)
        run = subprocess.run([sys.executable, "-m", "milterman.cli.test_server", "-s", f"unix:{path}"],
                             capture_output=True, text=True, timeout=30, cwd=RUN_DIR)
        assert run.stdout.splitlines()[0] == "status: pass"
    finally:
        for connection in held:
            connection.close()
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0
    assert "[server][accept][backoff] Too many open files" in output
    assert "Traceback" not in output
