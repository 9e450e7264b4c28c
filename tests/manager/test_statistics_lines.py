"""The manager's [statistics] lines (logging.md §6, D-11): formats, one per child per session, order."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

#: subprocesses start outside the checkout, so they import the installed package (issue 8)
RUN_DIR = "/"
ELAPSED = r"\d[\d.e+-]*"


def wait_for_path(path: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_LG_ST_formats_and_order(tmp_path):
    (tmp_path / "milter-manager.toml").write_text(f"""version = 1
[manager]
connection_spec = "unix:{tmp_path}/manager.sock"
[log]
use_syslog = false
level = "statistics"

[[condition]]
name = "never for example.net clients"
  [[condition.rule]]
  stage = "connect"
  match = {{ client_host = ['\\.example\\.net\\Z'] }}
  action = "stop"

[[milter]]
name = "stopped-one"
connection_spec = "unix:{tmp_path}/stopped.sock"
applicable_conditions = ["never for example.net clients"]

[[milter]]
name = "header-one"
connection_spec = "unix:{tmp_path}/header.sock"
""")
    children = [subprocess.Popen([sys.executable, "-m", "milterman.cli.test_client", "-s",
                                  f"unix:{tmp_path}/stopped.sock", "--no-report-request", "-q"], cwd=RUN_DIR),
                subprocess.Popen([sys.executable, "-m", "milterman.tools.example_milters", "header",
                                  f"unix:{tmp_path}/header.sock", "header-one"], cwd=RUN_DIR)]
    manager = None
    try:
        wait_for_path(tmp_path / "stopped.sock")
        wait_for_path(tmp_path / "header.sock")
        manager = subprocess.Popen([sys.executable, "-m", "milterman.cli.manager", "-c", str(tmp_path),
                                    "--no-detect"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   cwd=RUN_DIR)
        wait_for_path(tmp_path / "manager.sock")
        run = subprocess.run([sys.executable, "-m", "milterman.cli.test_server", "-s", f"unix:{tmp_path}/manager.sock",
                              "--connect-host", "mx.example.net"], capture_output=True, text=True, timeout=30,
                             cwd=RUN_DIR)
        assert run.stdout.startswith("status: pass")
    finally:
        if manager is not None:
            manager.send_signal(signal.SIGTERM)
            output, _ = manager.communicate(timeout=30)
        for child in children:
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=30)
    lines = [line.split("]: ", 1)[1] for line in output.splitlines() if "]: [" in line]
    stopped = [i for i, line in enumerate(lines) if re.fullmatch(
        rf"\[milter\]\[end\]\[connect\]\[stop\]\[{ELAPSED}\]\((\d+)\): stopped-one", line)]
    milter_header = [i for i, line in enumerate(lines) if re.fullmatch(
        r"\[milter\]\[header\]\[add\]\(\d+\): <X-Milterman-Example>=<checked by header-one>: header-one", line)]
    session_header = [i for i, line in enumerate(lines) if re.fullmatch(
        r"\[session\]\[header\]\[add\]\(1\): <X-Milterman-Example>=<checked by header-one>", line)]
    session_end = [i for i, line in enumerate(lines) if re.fullmatch(
        rf"\[session\]\[end\]\[end-of-message\]\[pass\]\[{ELAPSED}\]\(1\)", line)]
    header_end = [i for i, line in enumerate(lines) if re.fullmatch(
        rf"\[milter\]\[end\]\[end-of-message\]\[pass\]\[{ELAPSED}\]\(\d+\): header-one", line)]
    finished = [i for i, line in enumerate(lines) if line == "[sessions][finished] 1(+1) 0"]
    assert all(len(found) == 1 for found in (stopped, milter_header, session_header, session_end, header_end,
                                             finished)), lines
    # LG-ST-4 and §6.1's order: an early end is logged at once; child header lines before the session's;
    # [session][end] before the [milter][end] of children alive at the end; [sessions][finished] last
    assert stopped[0] < milter_header[0] < session_header[0] < session_end[0] < header_end[0] < finished[0]
    assert sum(line.startswith("[milter][end]") for line in lines) == 2
    assert sum(line.startswith("[session][end]") for line in lines) == 1
