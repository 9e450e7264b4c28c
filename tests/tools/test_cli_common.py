"""What every command does with a mistyped command line and with --version (issue 8, the admin's first hour).

Each of the six commands runs as a real subprocess (``python -m milterman.cli.MODULE``).
"""

from __future__ import annotations

import pytest

from milterman import __version__
from tools_support import run_tool

COMMANDS = [
    ("manager", "milter-manager"),
    ("test_server", "milter-test-server"),
    ("test_client", "milter-test-client"),
    ("performance_check", "milter-performance-check"),
    ("log_analyzer", "milter-manager-log-analyzer"),
    ("report_statistics", "milter-report-statistics"),
]


@pytest.mark.parametrize("module, name", COMMANDS)
def test_unknown_long_option_names_it_and_prints_the_usage(module, name):
    run = run_tool(module, "--bogus")
    assert run.returncode == 1, run
    first, _, rest = run.stdout.partition("\n")
    assert first == f"{name}: unknown option --bogus", run.stdout
    assert rest.startswith("Usage:\n") and f"  {name} " in rest, run.stdout
    assert "Warning" not in run.stdout and "Option(" not in run.stdout, run.stdout
    assert run.stderr == ""


@pytest.mark.parametrize("module, name", COMMANDS)
def test_unknown_short_option_and_unknown_long_option_with_value(module, name):
    run = run_tool(module, "-Z")
    assert run.returncode == 1 and run.stdout.startswith(f"{name}: unknown option -Z\nUsage:\n"), run
    run = run_tool(module, "--no-such-thing=3")
    assert run.returncode == 1 and run.stdout.startswith(f"{name}: unknown option --no-such-thing\n"), run


@pytest.mark.parametrize("module, name", COMMANDS)
def test_version_prints_name_and_version(module, name):
    run = run_tool(module, "--version")
    assert run.returncode == 0, run
    assert run.stdout == f"{name} {__version__}\n"


def test_missing_option_value_and_flag_with_value_are_explained():
    run = run_tool("test_client", "--n-workers")
    assert run.returncode == 1 and run.stdout.startswith(
        "milter-test-client: option --n-workers needs a value (--n-workers=N)\nUsage:\n"), run
    run = run_tool("test_client", "-s")
    assert run.returncode == 1 and run.stdout.startswith(
        "milter-test-client: option -s needs a value (-s SPEC)\nUsage:\n"), run
    run = run_tool("test_client", "--daemon=yes")
    assert run.returncode == 1 and run.stdout.startswith(
        "milter-test-client: option --daemon takes no value\n"), run


def test_ambiguous_abbreviation_and_stray_argument():
    run = run_tool("test_client", "--no")
    assert run.returncode == 1, run
    assert run.stdout.startswith("milter-test-client: ambiguous option --no: --no-daemon, --no-report-request\n"), run
    run = run_tool("test_client", "extra")
    assert run.returncode == 1 and run.stdout.startswith("milter-test-client: unexpected argument extra\n"), run


def test_a_correct_abbreviation_still_works():
    run = run_tool("test_server", "--vers")
    assert run.returncode == 0 and run.stdout == f"milter-test-server {__version__}\n", run
