"""OpenDKIM's miltertest (Debian package) drives examples/recipient_policy.py served by milter-run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from postfix_harness import require_real
from test_milter_library_postfix import EXAMPLES, MilterRunProcess

SCRIPT = Path(__file__).resolve().parent / "miltertest" / "recipient_policy.lua"


@pytest.mark.interop
def test_miltertest_against_the_recipient_policy_example(tmp_path):
    require_real("miltertest", shutil.which("miltertest") is not None,
                 "OpenDKIM's miltertest is not installed (apt-get install miltertest)")
    shutil.copy(EXAMPLES / "recipient_policy.py", tmp_path)
    served = MilterRunProcess(tmp_path, "recipient_policy:RecipientPolicy")
    try:
        run = subprocess.run(["miltertest", "-s", str(SCRIPT)],
                             env=dict(os.environ, MILTER_SPEC=f"inet:{served.port}@127.0.0.1"),
                             capture_output=True, text=True, timeout=60, cwd="/")
    finally:
        assert served.stop() == 0
    assert run.returncode == 0, f"miltertest failed:\n{run.stdout}\n{run.stderr}\n{served.describe()}"
    assert "negotiate: RCPT and EOM only" in run.stdout
    assert "eom: add-header X-Recipients-Checked: alice@example.test" in run.stdout
    assert "recipient_policy: passed" in run.stdout
