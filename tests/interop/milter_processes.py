"""Start and stop the milters the interop tests talk to, as real processes with bounded waits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

#: subprocesses start outside the checkout, so they import the installed package (issue 8)
RUN_DIR = "/"
PYMILTER_SCRIPT = Path(__file__).resolve().parent / "milters" / "pymilter_header_reject.py"
DEBIAN_PYTHON = "/usr/bin/python3"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Wait until 127.0.0.1:port accepts a connection (and close it at once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited early with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    """Signal a process and wait for it (killed after ``timeout``); returns its exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    return process.returncode


class LoopbackSpecs:
    """The specs of a milter listening on 127.0.0.1:``port`` in each syntax."""

    port: int

    @property
    def postfix_spec(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    @property
    def libmilter_spec(self) -> str:
        return f"inet:{self.port}@127.0.0.1"

    @property
    def manager_spec(self) -> str:
        return f"inet:{self.port}@[127.0.0.1]"


class TestClientProcess(LoopbackSpecs):
    """milter-test-client listening on a free loopback port, its stdout in a file."""

    __test__ = False

    def __init__(self, directory: Path, *args: str) -> None:
        self.port = free_port()
        self.output_path = directory / f"milter-test-client-{self.port}.out"
        self._output = open(self.output_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "milterman.cli.test_client", "-s", f"inet:{self.port}@[127.0.0.1]", *args],
            stdout=self._output, stderr=subprocess.STDOUT, cwd=RUN_DIR)
        wait_listening(self.port, self.process)

    def output(self) -> str:
        return self.output_path.read_bytes().decode("utf-8", "replace")  # keep CRLF as sent

    def wait_output(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            output = self.output()
            if text in output:
                return output
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not printed within {timeout} s; output:\n{self.output()}")

    def stop(self) -> int:
        status = stop(self.process)
        self._output.close()
        return status


def pymilter_usable() -> tuple[bool, str]:
    if not os.path.exists(DEBIAN_PYTHON):
        return False, f"{DEBIAN_PYTHON} (Debian's python3) is missing"
    probe = subprocess.run([DEBIAN_PYTHON, "-c", "import Milter"], capture_output=True, text=True)
    if probe.returncode != 0:
        return False, "Debian's python3-milter is not installed (apt-get install python3-milter)"
    return True, ""


class PymilterProcess:
    """tests/interop/milters/pymilter_header_reject.py under Debian's python3 (python3-milter)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.log_path = directory / f"pymilter-{self.port}.log"
        env = dict(os.environ, PYMILTER_LOG=str(self.log_path))
        self.process = subprocess.Popen([DEBIAN_PYTHON, str(PYMILTER_SCRIPT), f"inet:{self.port}@127.0.0.1"],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        wait_listening(self.port, self.process)

    @property
    def spec(self) -> str:
        return f"inet:{self.port}@[127.0.0.1]"

    def stop(self) -> int:
        return stop(self.process, timeout=10)


EDITS_SCRIPT = Path(__file__).resolve().parent / "milters" / "pymilter_edits.py"


class EditsMilterProcess(LoopbackSpecs):
    """tests/interop/milters/pymilter_edits.py under Debian's python3 doing scripted end-of-message
    edits (``delete:NAME:INDEX``, ``insert:INDEX:NAME:VALUE``, ``body-lf:TEXT``, ``record:PATH``, ...)."""

    def __init__(self, directory: Path, *edits: str) -> None:
        from postfix_harness import _listening

        self.port = free_port()
        self.output_path = directory / f"pymilter-edits-{self.port}.out"
        self._output = open(self.output_path, "wb")
        self.process = subprocess.Popen([DEBIAN_PYTHON, str(EDITS_SCRIPT), f"inet:{self.port}@127.0.0.1", *edits],
                                        stdout=self._output, stderr=subprocess.STDOUT, cwd=RUN_DIR)
        deadline = time.monotonic() + 15
        while not _listening("127.0.0.1", self.port):  # no probe connection: it would be a session
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pymilter_edits did not listen: {self.output_path.read_text(errors='replace')}")
            time.sleep(0.05)

    def stop(self) -> int:
        # SIGKILL: libmilter notices SIGTERM only at its next 5 s poll, and this milter keeps nothing
        status = stop(self.process, signal.SIGKILL, timeout=10)
        self._output.close()
        return status
