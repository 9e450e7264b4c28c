"""Helpers shared by the tools tests (imported by conftest.py and the test modules).

Kept out of conftest.py because ``from conftest import`` is ambiguous when several
test directories have a conftest.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: command letters that carry stage macros (tools.md §1.4)
STAGE_LETTERS = "CHMRTLNBEU"
#: ``[TIMESTAMP]: `` prefix of a logger line (logging.md §2)
LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z\](?: \[\d+\])?: ")
ELAPSED_LINE = re.compile(r"^elapsed-time: [0-9.e+-]+ seconds$", re.MULTILINE)


def short_dir(tmp_path: Path) -> Path:
    """``tmp_path``, or a short directory when unix socket paths would get too long (sun_path is 108 bytes)."""
    if len(str(tmp_path)) < 80:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="mt-", dir="/tmp"))


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for the tools: no MILTER_* settings, no TERM (colour decisions stay ours)."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MILTER_") and key not in ("TERM", "COLUMNS")}
    env.update(extra)
    return env


@dataclass
class Script:
    """What the scripted milter does.

    ``replies`` maps a command letter to a reply, a list of replies (one per
    occurrence, ``None`` = continue; occurrences past the end continue) or a
    callable ``(session, command) -> reply`` (end-of-message modifications go
    through ``session``). ``hang`` is a letter (``O`` = negotiation) at which the
    milter never answers (until the fixture is torn down).
    """

    protocol: int = 0
    actions: int | None = None
    macro_lists: tuple[tuple[int, str], ...] = ()
    replies: dict[str, object] = field(default_factory=dict)
    hang: str | None = None


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
                               capture_output=True, timeout=timeout, env=env or clean_env(), cwd=REPO)
    return Run(completed.returncode, completed.stdout.decode("utf-8", "surrogateescape"),
               completed.stderr.decode("utf-8", "surrogateescape"), time.monotonic() - started)


