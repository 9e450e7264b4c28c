"""Under CI=true the suite refuses to test the checkout instead of the installed package (issue 8)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def collect(cwd: Path) -> subprocess.CompletedProcess:
    """``python -m pytest --collect-only`` of this file, started in ``cwd`` with CI=true."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
                           str(Path(__file__).resolve())], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "CI": "true"})


def test_a_session_started_in_the_checkout_fails_at_start():
    completed = collect(REPO)  # python -m puts the checkout first on sys.path: milterman from the source tree
    assert completed.returncode == 4, completed.stdout + completed.stderr
    assert f"CI=true: milterman is imported from {REPO / 'milterman'}, not from an installed package" in (
        completed.stdout + completed.stderr)
    assert "make test" in completed.stderr


def test_a_session_started_in_tests_runs_when_milterman_is_installed():
    where = subprocess.run([sys.executable, "-c", "import milterman; print(milterman.__file__)"], capture_output=True,
                           text=True, timeout=60, cwd=REPO / "tests", check=True).stdout.strip()
    completed = collect(REPO / "tests")
    if "site-packages" in Path(where).parts:
        assert completed.returncode == 0, completed.stdout + completed.stderr
        assert "2 tests collected" in completed.stdout
    else:  # an editable install: refused too
        assert completed.returncode == 4 and "not from an installed package" in completed.stderr
