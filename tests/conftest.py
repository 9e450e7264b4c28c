"""Checks for the whole suite.

Under ``CI=true`` the suite must test the installed package, not the checkout (issue 8): a file
missing from the wheel then fails CI instead of being read from the source tree. ``make test``
installs the wheel into ``.venv`` and runs pytest from ``tests/``, where the checkout is not
importable; this refuses to start a CI session that imports ``milterman`` from anywhere else.
"""

from __future__ import annotations

import os
import site
import sysconfig
from pathlib import Path

import pytest


def site_packages_directories() -> list[Path]:
    """Every directory this interpreter installs packages into."""
    directories = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    directories.update(site.getsitepackages())
    return [Path(directory).resolve() for directory in directories]


def installed_location(module_file: str) -> Path | None:
    """The site-packages directory that holds ``module_file``, or None when none does."""
    path = Path(module_file).resolve()
    for directory in site_packages_directories():
        if path.is_relative_to(directory):
            return directory
    return None


def pytest_configure(config: pytest.Config) -> None:
    """Under CI=true: stop before any test unless milterman comes from a site-packages directory."""
    if os.environ.get("CI") != "true":
        return
    import milterman

    if installed_location(milterman.__file__) is None:
        raise pytest.UsageError(
            f"CI=true: milterman is imported from {Path(milterman.__file__).resolve().parent}, not from an installed "
            f"package (site-packages: {', '.join(map(str, site_packages_directories()))}); run the suite with "
            "`make test`, which installs the wheel and starts pytest in tests/ where the checkout is not importable")
