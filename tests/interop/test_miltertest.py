"""OpenDKIM's miltertest (Debian package) drives milter-test-client through a full session."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from milter_processes import TestClientProcess
from postfix_harness import require_real

SCRIPT = os.path.join(os.path.dirname(__file__), "miltertest", "session.lua")


@pytest.mark.interop
def test_miltertest_full_session_against_milter_test_client(tmp_path):
    require_real("miltertest", shutil.which("miltertest") is not None,
                 "OpenDKIM's miltertest is not installed (apt-get install miltertest)")
    client = TestClientProcess(tmp_path)
    try:
        run = subprocess.run(["miltertest", "-s", SCRIPT], env=dict(os.environ, MILTER_SPEC=client.libmilter_spec),
                             capture_output=True, text=True, timeout=60)
        output = client.wait_output("finished")
    finally:
        assert client.stop() == 0
    assert run.returncode == 0, f"miltertest failed:\n{run.stdout}\n{run.stderr}"
    for expected in ("negotiate: version=<6>", "connect: host=<", "helo: <", "envelope-from: <",
                     "envelope-recipient: <", "unknown: <HELP>", "\ndata\n", "header: <Subject: ",
                     "end-of-header", "body: <", "end-of-message", "finished"):
        assert expected in output, (expected, output)
