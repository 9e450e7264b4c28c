"""The schema is the one declaration (design.md): it covers the spec's tables, agrees with the model
dataclasses, and the committed guide's reference is generated from it (B3, B4, B5.1, B7, A11)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path

import pytest
from spec_examples import EXAMPLE_1, EXAMPLE_2, EXAMPLE_3

from milterman.config import (PREDICATES, HeaderMatch, MilterSettings, RestrictAccounts, RuleSettings, TimeWindow,
                              load, load_string, model)
from milterman.config.cli import option_table
from milterman.config.guide import extract_reference, reference_markdown, replace_reference
from milterman.config.predicates import CONDITION_STAGES, STAGES
from milterman.config.schema import (CONDITION_RULE, MILTER, RESTRICT_ACCOUNTS, RULE, SECTION_CLASSES, SECTIONS,
                                     find_setting)

ROOT = Path(__file__).resolve().parents[2]
SPEC = Path("/work/shared/spec/configuration.md")
GUIDE = ROOT / "doc" / "configuration.md"


def compared_fields(cls: type) -> list[str]:
    return [field.name for field in dataclasses.fields(cls) if field.compare]


@pytest.mark.parametrize("section", list(SECTIONS))
def test_section_dataclass_matches_schema(section):
    assert compared_fields(SECTION_CLASSES[section]) == [setting.name for setting in SECTIONS[section]]


def test_array_dataclasses_match_schema():
    assert compared_fields(MilterSettings) == [setting.name for setting in MILTER]
    assert compared_fields(RestrictAccounts) == [s.name for s in RESTRICT_ACCOUNTS if s.name != "milters"]
    assert compared_fields(RuleSettings) == [setting.name for setting in RULE]
    assert compared_fields(model.ConditionRule) == [setting.name for setting in CONDITION_RULE]


def test_C_FILE_4_defaults_come_from_the_schema():
    configuration = load_string("version = 1\n")
    for section, settings in SECTIONS.items():
        values = getattr(configuration, section)
        for setting in settings:
            assert getattr(values, setting.name) == setting.default, setting.key
    assert configuration.milters == configuration.conditions == configuration.rules == ()


@pytest.mark.skipif(not SPEC.exists(), reason="the shared spec is not available")
def test_B3_every_key_of_the_spec_is_declared():
    text = SPEC.read_text()
    b3 = text[text.index("## B3."):text.index("`[[milter]]` keys:")]
    keys = set(re.findall(r"^\| `((?:security|log|manager|controller|hooks)\.\w+)`", b3, re.M))
    keys |= {key.replace("_on_create", "_on_close") for key in keys if key.endswith("_on_create")}
    assert keys and all(find_setting(key) for key in keys), sorted(key for key in keys if not find_setting(key))
    milter_table = text[text.index("`[[milter]]` keys:"):text.index("`[[milter_patch]]`:")]
    milter_keys = set(re.findall(r"`(\w+)`", "".join(re.findall(r"^\| ([^|]+)\|", milter_table, re.M))))
    assert milter_keys - {"key"} <= {setting.name for setting in MILTER}
    b4 = text[text.index("## B4."):text.index("## B5.")]
    tunables = re.findall(r"^(\w+) = ", b4, re.M)
    declared = {setting.name for name in ("s25r", "remote_network", "stress", "trust", "dnsbl")
                for setting in SECTIONS[name]} | {setting.name for setting in RESTRICT_ACCOUNTS}
    assert set(tunables) <= declared


@pytest.mark.skipif(not SPEC.exists(), reason="the shared spec is not available")
def test_B5_1_every_predicate_of_the_spec_is_declared():
    text = SPEC.read_text()
    table = text[text.index("### B5.1"):text.index("## B6.")]
    names = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert set(names) - {"recipients"} == set(PREDICATES)


def test_A11_every_option_is_declared():
    names = {name for option, _setting in option_table() for name in option.names}
    assert {"-s", "--connection-spec", "--pid-file", "-u", "--user", "--user-id", "--user-name", "-g", "--group",
            "--group-id", "--group-name", "--unix-socket-group", "--socket-group-name", "--unix-socket-mode",
            "--daemon", "--no-daemon", "--log-level", "-v", "--verbose", "-q", "--quiet", "--log-path", "--syslog",
            "--syslog-facility", "--event-loop-backend", "--n-workers", "--packet-buffer-size",
            "--max-pending-finished-sessions"} <= names


def test_C_TOML_5_stages():
    assert STAGES == ("connect", "helo", "envelope-from", "envelope-recipient", "data", "unknown", "header",
                      "end-of-header", "body", "end-of-message")
    assert "unknown" not in CONDITION_STAGES


def test_guide_reference_is_generated_from_the_schema():
    text = GUIDE.read_text()
    assert extract_reference(text) == reference_markdown(), "run: python -m milterman.config.guide"
    assert replace_reference(text) == text


def test_guide_examples_are_the_B10_examples_and_load(tmp_path):
    blocks = re.findall(r"```toml\n(.*?)```", GUIDE.read_text(), re.S)
    complete = [block for block in blocks if block.startswith("version = 1")]
    assert complete == [EXAMPLE_1, EXAMPLE_2, EXAMPLE_3]
    (local,) = [block for block in blocks if block not in complete]
    (tmp_path / "milter-manager.toml").write_text(EXAMPLE_2)
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "local.toml").write_text(local)
    configuration = load(tmp_path)
    assert configuration.milter("milter-bcc").enabled is True
    assert {milter.reading_timeout for milter in configuration.milters} == {15.0}


def test_predicates_are_typed_for_evaluation():
    configuration = load_string(r'''
version = 1
[[milter]]
name = "m"
connection_spec = "unix:/m"
[[condition]]
name = "typed"
  [[condition.rule]]
  stage = "end-of-message"
  set_macros = { "{stress}" = "yes" }
  [condition.rule.match]
  client_address = ["192.0.2.1", "2001:db8::/32"]
  client_family = ["INET6"]
  macro = { "{auth_type}" = true, i = '\A\w+\Z' }
  envelope_from_domain = ["Example.COM", ".example.org"]
  header = { name = '\ASubject\Z' }
  time = { hours = "22:00-06:30", days = ["sun", "mon"] }
  milter_status = { m = ["tempfail", "quitted"] }
  dnsbl_listed = ["bl.spamcop.net"]
  not_mta = "sendmail"
  recipients = "all"
  envelope_recipient_domain = ["example.net"]
''')
    rule = configuration.conditions[0].rules[0]
    values = {predicate.key: predicate.value for predicate in rule.match.predicates}
    assert values["client_address"] == (ipaddress.ip_network("192.0.2.1/32"), ipaddress.ip_network("2001:db8::/32"))
    assert values["client_family"] == ("inet6",)
    assert [(name, value if isinstance(value, bool) else value.text) for name, value in values["macro"]] == [
        ("auth_type", True), ("i", r"\A\w+\Z")]  # names kept without braces (M-AC-4)
    assert values["envelope_from_domain"] == ("example.com", ".example.org")  # lower-cased
    assert values["header"] == HeaderMatch(values["header"].name, None)
    assert values["time"] == TimeWindow(22 * 60, 6 * 60 + 30, ("mon", "sun"))  # wraps past midnight
    assert values["time"].hours == "22:00-06:30"
    assert values["milter_status"] == (("m", ("temporary-failure", "quitted")),)
    assert values["dnsbl_listed"] == ("bl.spamcop.net",)
    mta = next(predicate for predicate in rule.match.predicates if predicate.name == "mta")
    assert (mta.negated, mta.value, mta.key) == (True, "sendmail", "not_mta")
    assert rule.match.recipients == "all"
    assert rule.set_macros == (("stress", "yes"),)


def test_trust_patterns_case_insensitive_and_domains_lower_cased():
    trust = load_string("version = 1\n[trust]\nenvelope_from_domains = ['Example.COM']\n"
                        "envelope_from_domain_patterns = ['\\.example\\.net\\Z']\n").trust
    assert trust.envelope_from_domains == ("example.com",)
    assert trust.envelope_from_domain_patterns[0].flags == re.ASCII | re.IGNORECASE
    assert trust.envelope_from_domain_patterns[0].search("MAIL.EXAMPLE.NET")


def test_configuration_lookups():
    configuration = load_string(EXAMPLE_3)
    assert configuration.milter("nope") is None and configuration.condition("S25R") is None
    assert configuration.condition("Archive only sales").condition_name == "Archive only sales"
    assert [rule.name for rule in configuration.rules_for("helo")] == ["refuse localhost HELO from outside"]


def test_C_COND_1_rules_per_stage_in_file_order_default_stop():
    """C-COND-1: the rules of one stage, in file order, as the manager tries them; no action = stop."""
    condition = load_string('''
version = 1
[[condition]]
name = "ordered"
  [[condition.rule]]
  stage = "envelope-recipient"
  match = { envelope_recipient = ['\\Aa'] }
  action = "apply"
  [[condition.rule]]
  stage = "data"
  [[condition.rule]]
  stage = "envelope-recipient"
  set_flags = ["seen"]
''').condition("ordered")
    first, second = condition.rules_for("envelope-recipient")
    assert (first.action, second.action, second.set_flags) == ("apply", "stop", ("seen",))
    assert condition.rules_for("data")[0].action == "stop" and not condition.rules_for("data")[0].match
    assert condition.rules_for("connect") == ()
