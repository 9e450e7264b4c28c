"""No silent import fallbacks in the product: a broken rule engine stops the start with the error.

Before, ``build_context`` caught ImportError around the condition and rule engine and ran on
without any condition or rule: mail passed unfiltered. The broken install here is real: a copy
of the package with one module of the engine missing, as a half-finished upgrade leaves it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import milterman

#: the package under test (the installed one under `make test`), copied and damaged below
PACKAGE = Path(milterman.__file__).resolve().parent

CONFIG = """version = 1
[manager]
connection_spec = "unix:{dir}/manager.sock"
[log]
use_syslog = false
[[milter]]
name = "child"
connection_spec = "unix:{dir}/child.sock"
"""


def run_manager(tmp_path: Path, package_root: Path) -> subprocess.CompletedProcess:
    config = tmp_path / "config"
    config.mkdir()
    (config / "milter-manager.toml").write_text(CONFIG.format(dir=tmp_path))
    return subprocess.run([sys.executable, "-m", "milterman.cli.manager", "-c", str(config), "--no-detect"],
                          cwd=package_root, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(package_root)},
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("module", ["rules.py", "builtin_conditions.py"])
def test_a_broken_rule_engine_stops_the_start_with_the_error(tmp_path, module):
    copy = tmp_path / "install"
    shutil.copytree(PACKAGE, copy / "milterman", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "milterman" / "manager" / module).unlink()
    run = run_manager(tmp_path, copy)
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert "the condition and rule engine cannot be loaded" in output, output
    assert f"No module named 'milterman.manager.{module[:-3]}'" in output, output
    assert "Traceback" not in output
    assert not (tmp_path / "manager.sock").exists()


def test_the_intact_copy_starts(tmp_path):
    """The same copy without the damage listens (so the test above fails for the damage alone)."""
    copy = tmp_path / "install"
    shutil.copytree(PACKAGE, copy / "milterman", ignore=shutil.ignore_patterns("__pycache__"))
    config = tmp_path / "config"
    config.mkdir()
    (config / "milter-manager.toml").write_text(CONFIG.format(dir=tmp_path))
    process = subprocess.Popen([sys.executable, "-m", "milterman.cli.manager", "-c", str(config), "--no-detect"],
                               cwd=copy, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(copy)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import time

        deadline = time.monotonic() + 30
        while not (tmp_path / "manager.sock").exists():
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(20)
    assert process.returncode == 0


def test_no_silent_import_fallback_in_the_product():
    """Every required dependency is imported plainly; an optional one (the graphs extra) may be caught only
    to raise an error that says what is missing and what to install, never to go on quietly."""
    silent = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if re.search(r"except\s*\(?[^:]*ImportError", line):
                handler = lines[number:number + 3]
                if not any(re.match(r"\s*raise\s+\w", text) for text in handler):
                    silent.append(f"{path.relative_to(PACKAGE.parent)}:{number}")
    assert silent == []
