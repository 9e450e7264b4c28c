"""Helpers of the milter-manager-convert-config tests: write a Ruby configuration, convert it, load the result."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tools_support import RUN_DIR, clean_env

#: what the Debian package of the original ships as milter-manager.conf
DEBIAN_MAIN = """\
# -*- ruby -*-

load("applicable-conditions/*.conf")
load_default
load_if_exist("milter-manager.local.conf")
"""
#: the built-in condition files of the original (never read by the converter: the names are built in)
BUILTIN_FILES = ("s25r.conf", "remote-network.conf", "authentication.conf", "sendmail-compatible.conf",
                 "stress.conf", "trust.conf", "restrict-accounts.conf")


@dataclass
class Converted:
    returncode: int
    toml: str
    stderr: str
    out_dir: Path

    @property
    def problems(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if ": cannot convert: " in line]


def write_ruby(directory: Path, files: dict[str, str], builtin_files: bool = True) -> Path:
    """A configuration directory of the original; the built-in condition files hold Ruby that must not be read."""
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    if builtin_files:
        for name in BUILTIN_FILES:
            path = directory / "applicable-conditions" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("# built-in\nclass Foo < Bar\n  def stop?(x) = system('false')\nend\n")
    return directory


def convert(source: Path, out_dir: Path, *options: str) -> Converted:
    """Run the command as installed, writing ``out_dir/milter-manager.toml``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / "milter-manager.toml"
    run = subprocess.run([sys.executable, "-m", "milterman.cli.convert_config", "--output", str(output), *options,
                          str(source)], capture_output=True, text=True, timeout=60, cwd=RUN_DIR, env=clean_env())
    text = output.read_text() if output.exists() else ""
    return Converted(run.returncode, text, run.stderr + run.stdout, out_dir)


def manager(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "milterman.cli.manager", *args], capture_output=True, text=True,
                          timeout=60, cwd=RUN_DIR, env=clean_env())


def check_and_show(out_dir: Path) -> dict:
    """``--check-config`` must pass; ``--show-config`` parsed as TOML (milters detected on this host left out)."""
    check = manager("--check-config", "-c", str(out_dir), "--no-detect")
    assert check.returncode == 0, (check.stdout, check.stderr, (out_dir / "milter-manager.toml").read_text())
    assert "configuration OK" in check.stdout
    shown = manager("--show-config", "-c", str(out_dir), "--no-detect")
    assert shown.returncode == 0, shown
    return tomllib.loads(shown.stdout)


def milters(shown: dict) -> list[dict]:
    return shown.get("milter", [])


def by_name(shown: dict) -> dict[str, dict]:
    return {milter["name"]: milter for milter in milters(shown)}
