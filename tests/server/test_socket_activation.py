"""systemd socket activation: a socket passed as fd 3 with LISTEN_FDS/LISTEN_PID is used, not bound again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

#: subprocesses start outside the checkout, so they import the installed package (issue 8)
RUN_DIR = "/"

# exec keeps the pid, so LISTEN_PID can be set to our own pid just before exec-ing the server
WRAPPER = """
import os, sys
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.dup2(int(sys.argv[1]), 3)
os.execv(sys.executable, [sys.executable, "-m", "milterman.cli.test_client", *sys.argv[2:]])
"""


def test_socket_passed_by_systemd_is_served(tmp_path):
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    os.set_inheritable(listener.fileno(), True)
    # the spec names another path: with an activated socket the server must not bind it
    other = tmp_path / "never-bound.sock"
    server = subprocess.Popen([sys.executable, "-c", WRAPPER, str(listener.fileno()), "-s", f"unix:{other}",
                               "--no-report-request"], pass_fds=(listener.fileno(),), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=RUN_DIR)
    listener.close()
    try:
        time.sleep(1.0)
        run = subprocess.run([sys.executable, "-m", "milterman.cli.test_server", "-s", f"unix:{path}"],
                             capture_output=True, text=True, timeout=30, cwd=RUN_DIR)
        assert run.stdout.splitlines()[0] == "status: pass", run.stdout
        assert not other.exists()
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert path.exists()  # systemd owns the socket file: the server does not remove what it did not create
