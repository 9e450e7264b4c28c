"""Messages a new administrator can act on (issue 8, the admin's first hour; C-TOML-4).

A bad log level lists the valid ones, an unknown condition or milter name gets a
"did you mean", and errors inside a ``[[milter]]`` name the milter instead of its index.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from config_support import issues_of, one_issue

from milterman.log import LEVELS, LogLevelError, parse_level

HEAD = "version = 1\n"
VALID = "valid levels: all, default, " + ", ".join(LEVELS)


def test_log_level_error_lists_the_valid_levels():
    with pytest.raises(LogLevelError) as raised:
        parse_level("eror|loud")
    message = str(raised.value)
    assert message.startswith("unknown flag names: [<eror>|<loud>](<MilterLogLevelFlags>)")
    assert 'did you mean "error"?' in message
    assert VALID in message


def test_log_level_in_the_file_lists_the_valid_levels():
    issue = one_issue(HEAD + '[log]\nlevel = "loud"\n')
    assert issue.startswith('main.toml: log.level: invalid level "loud": unknown flag names: [<loud>]')
    assert VALID in issue


@pytest.mark.parametrize("module, expected", [
    ("milterman.cli.test_client", "--log-level: unknown flag names: [<loud>]"),
    ("milterman.cli.manager", "command line: --log-level: invalid level \"loud\": unknown flag names: [<loud>]"),
])
def test_log_level_option_lists_the_valid_levels(tmp_path, module, expected):
    (tmp_path / "milter-manager.toml").write_text(HEAD)
    run = subprocess.run([sys.executable, "-m", module, "-c", str(tmp_path), "--no-detect", "--check-config",
                          "--log-level=loud"] if module.endswith("manager") else
                         [sys.executable, "-m", module, "--log-level=loud"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 1, run
    assert run.stdout.startswith(expected), run.stdout
    assert VALID in run.stdout


def test_unknown_condition_gets_did_you_mean():
    text = HEAD + ('[[milter]]\nname = "opendkim"\nconnection_spec = "unix:/a"\n'
                   'applicable_conditions = ["S25r", "Nothing Like It"]\n'
                   '[[milter_patch]]\nnames = ["*"]\nadd_applicable_conditions = ["Trusted"]\n')
    assert issues_of(text) == [
        'main.toml: milter "opendkim": applicable_conditions[0]: unknown condition "S25r" (did you mean "S25R"?)',
        'main.toml: milter "opendkim": applicable_conditions[1]: unknown condition "Nothing Like It"',
        'main.toml: milter_patch[0].add_applicable_conditions[0]: unknown condition "Trusted" '
        '(did you mean "Trust"?)']


def test_unknown_milter_in_milter_status_gets_did_you_mean():
    text = HEAD + ('[[milter]]\nname = "opendkim"\nconnection_spec = "unix:/a"\n'
                   '[[rule]]\nstage = "end-of-message"\naction = "accept"\n'
                   'match = { milter_status = { opendkm = ["reject"] } }\n')
    assert one_issue(text) == ('main.toml: rule[0].match.milter_status: unknown milter "opendkm" '
                               '(did you mean "opendkim"?)')


def test_errors_inside_a_milter_name_the_milter():
    text = HEAD + ('[[milter]]\nname = "opendkim"\nconnection_spec = "bogus:x"\nreading_timeout = 0\n'
                   'falback_status = "reject"\n[[milter]]\nname = "spamass"\n')
    assert issues_of(text) == [
        'main.toml: milter "opendkim": connection_spec: invalid spec "bogus:x": protocol must be \'unix\', '
        '\'inet\' or \'inet6\': <bogus:x>: <bogus>',
        'main.toml: milter "opendkim": reading_timeout: must be > 0, got 0',
        'main.toml: milter "opendkim": falback_status: unknown key "falback_status" (did you mean "fallback_status"?)',
        'main.toml: milter "spamass": connection_spec (or python) is required when the milter is enabled']


def test_a_milter_without_a_usable_name_keeps_its_index():
    assert issues_of(HEAD + '[[milter]]\nconnection_spec = "unix:/a"\n') == ["main.toml: milter[0]: name is required"]
