"""Helpers shared by the tools tests (imported by conftest.py and the test modules).

Kept out of conftest.py because ``from conftest import`` is ambiguous when several
test directories have a conftest.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: subprocesses start outside the checkout, so they import the installed package (issue 8)
RUN_DIR = "/"
# The scripted milter is shared with tests/manager (tests/support/scripted_milter.py).
SUPPORT = str(Path(__file__).resolve().parents[1] / "support")
if SUPPORT not in sys.path:
    sys.path.insert(0, SUPPORT)

from scripted_milter import STAGE_LETTERS, Script, short_dir  # noqa: E402,F401  (re-exported for the tests)

#: ``[TIMESTAMP]: `` prefix of a logger line (logging.md §2)
LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z\](?: \[\d+\])?: ")
ELAPSED_LINE = re.compile(r"^elapsed-time: [0-9.e+-]+ seconds$", re.MULTILINE)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for the tools: no MILTER_* settings, no TERM (colour decisions stay ours)."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MILTER_") and key not in ("TERM", "COLUMNS")}
    env.update(extra)
    return env


@dataclass
class Run:
    """A finished tool subprocess."""

    returncode: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def run_tool(module: str, *args: str, input: bytes | None = None, timeout: float = 30,
             env: dict[str, str] | None = None) -> Run:
    started = time.monotonic()
    completed = subprocess.run([sys.executable, "-m", f"milterman.cli.{module}", *args], input=input,
                               capture_output=True, timeout=timeout, env=env or clean_env(), cwd=RUN_DIR)
    return Run(completed.returncode, completed.stdout.decode("utf-8", "surrogateescape"),
               completed.stderr.decode("utf-8", "surrogateescape"), time.monotonic() - started)


