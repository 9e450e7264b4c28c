"""milter-test-server against a real libmilter milter built on Debian's python3-milter.

The milter adds ``X-Pymilter: checked`` and rejects recipients containing "reject" with
``550 5.7.1 Recipient rejected by pymilter``; milter-test-server must report both exactly.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from milter_processes import RUN_DIR, PymilterProcess, pymilter_usable
from postfix_harness import require_real


@pytest.fixture(scope="module")
def pymilter(tmp_path_factory):
    usable, reason = pymilter_usable()
    require_real("python3-milter", usable, reason)
    milter = PymilterProcess(tmp_path_factory.mktemp("pymilter"))
    yield milter
    milter.stop()


def run_test_server(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "milterman.cli.test_server", *args], capture_output=True,
                          text=True, timeout=60, cwd=RUN_DIR)


@pytest.mark.interop
def test_header_and_one_rejected_recipient_reported_exactly(pymilter):
    run = run_test_server("-s", pymilter.spec, "-r", "reject@example.org", "-r", "ok@example.org",
                          "--output-message")
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    # one recipient remains, so the transaction goes on (tools.md §1.7) and the code is shown
    assert lines[0] == "status: pass [550]<5.7.1>(Recipient rejected by pymilter)"
    assert lines[1].startswith("elapsed-time: ")
    assert "- RCPT TO:<reject@example.org>" in run.stdout
    header_section = run.stdout.split("Header:", 1)[1].split("Body:", 1)[0]
    assert header_section.splitlines()[1:] == ["  From: <sender@example.com>", "  To: <reject@example.org>",
                                               "+ X-Pymilter: checked"]


@pytest.mark.interop
def test_only_recipient_rejected_ends_with_reject(pymilter):
    run = run_test_server("-s", pymilter.spec, "-r", "reject@example.org")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[0] == "status: reject [550]<5.7.1>(Recipient rejected by pymilter)"


@pytest.mark.interop
def test_accepted_recipient_gets_header_added(pymilter):
    run = run_test_server("-s", pymilter.spec, "-r", "ok@example.org", "--output-message")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[0] == "status: pass"
    assert "+ X-Pymilter: checked" in run.stdout
