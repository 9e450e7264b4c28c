"""Where a header added by a child lands in the mail real Postfix delivers (P-MOD-4, M-EOM-3)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from manager_processes import ManagerProcess
from milter_processes import RUN_DIR, free_port, wait_listening

MESSAGE = (b"From: <sender@example.org>\r\nTo: <alice@example.test>\r\nSubject: position\r\n"
           b"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <position@example.org>\r\n\r\nbody\r\n")


@pytest.fixture
def header_milter(tmp_path):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "milterman.tools.example_milters", "header",
                                f"inet:{port}@[127.0.0.1]", "header-one"], cwd=RUN_DIR)
    wait_listening(port, process)
    yield f"inet:{port}@[127.0.0.1]"
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.interop
def test_header_added_by_a_child_is_appended_after_the_original_headers(tmp_path, postfix_factory, smtp_sink,
                                                                        header_milter):
    manager = ManagerProcess(tmp_path, [{"name": "header-one", "connection_spec": header_milter}])
    try:
        postfix = postfix_factory(manager.postfix_spec)
        assert postfix.send("sender@example.org", ["alice@example.test"], MESSAGE).accepted
        delivered = smtp_sink.wait_for(1, timeout=20)[0]
    finally:
        manager.stop()
    names = [line.split(b":", 1)[0] for line in delivered.data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
             if line and line[:1] not in b" \t"]
    assert names[-1] == b"X-Milterman-Example", names
