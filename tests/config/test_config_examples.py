"""The examples of configuration.md Part B load, with the values they say (B8, B9, B10, C-TOML-1, C-TOML-5).

Every test here also checks D-8: ``render`` of the loaded configuration loads back equal.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from spec_examples import B4_TUNABLES, B5_CONDITION, B7_RULE, B8_CONDITIONS, EXAMPLE_1, EXAMPLE_2, EXAMPLE_3

from milterman.config import Configuration, Predicate, TimeWindow, load, load_string, render


def loads(text: str, **keywords) -> Configuration:
    """Load, and check the D-8 round trip on the way."""
    configuration = load_string(text, **keywords)
    assert load_string(render(configuration)) == configuration
    return configuration


def test_B10_example_1_minimal_site():
    configuration = loads(EXAMPLE_1)
    assert configuration.manager.connection_spec == "unix:/run/milter-manager/milter-manager.sock"
    assert configuration.manager.unix_socket_group == "postfix"
    assert configuration.manager.unix_socket_mode == 0o660  # default
    assert [milter.name for milter in configuration.milters] == ["opendkim", "clamav-milter"]
    clamav = configuration.milter("clamav-milter")
    assert clamav.fallback_status == "temporary-failure"
    assert clamav.end_of_message_timeout == 120.0
    assert clamav.reading_timeout == 7.0 and clamav.connection_timeout == 297.0  # B3 defaults
    opendkim = configuration.milter("opendkim")
    assert opendkim.enabled and opendkim.fallback_status == "accept" and opendkim.applicable_conditions == ()


def test_B10_example_2_classic_chain_with_missing_includes(tmp_path):
    # C-TOML-3: "milter-manager.local.toml" and "conf.d/*.toml" match nothing: silently ignored
    path = tmp_path / "milter-manager.toml"
    path.write_text(EXAMPLE_2)
    configuration = load(tmp_path)
    assert load_string(render(configuration)) == configuration
    assert configuration.security.privilege_mode is True
    assert configuration.security.effective_user == "milter-manager"
    assert configuration.log.level == "default|info" and configuration.log.syslog_facility == "mail"
    manager = configuration.manager
    assert manager.pid_file == "/run/milter-manager/milter-manager.pid"
    assert (manager.n_workers, manager.max_connections, manager.connection_check_interval) == (4, 200, 5)
    assert manager.connection_checkers == ("netstat",)
    assert configuration.controller.unix_socket_mode == 0o600
    assert configuration.remote_network.local_addresses == (ipaddress.ip_network("203.0.113.0/24"),
                                                            ipaddress.ip_network("2001:db8:10::/48"))
    assert [pattern.text for pattern in configuration.s25r.whitelist] == [r"\.mail\.example\.net\Z"]
    assert configuration.s25r.blacklist_hosts == ("black.example.com",)
    assert configuration.stress.threshold_n_connections == 75
    assert configuration.trust.envelope_from_domains == ("example.com",)
    names = [milter.name for milter in configuration.milters]
    assert names == ["milter-greylist", "spamass-milter", "clamav-milter", "opendkim", "milter-bcc"]
    greylist = configuration.milter("milter-greylist")
    assert greylist.applicable_conditions == ("Sendmail Compatible", "Stress Notify", "Trust", "Remote Network",
                                              "S25R", "Unauthenticated")
    assert greylist.command == "/usr/bin/systemctl" and greylist.command_options == ("start", "milter-greylist")
    assert configuration.milter("spamass-milter").reading_timeout == 30.0
    assert configuration.milter("milter-bcc").enabled is False


def test_B10_example_3_rules_conditions_restrict_accounts():
    configuration = loads(EXAMPLE_3)
    assert configuration.manager.fallback_status == "temporary-failure"
    assert configuration.milter("rspamd").evaluation_mode is True
    # M-AC-B8: the generated condition is appended to the milters named by its globs
    assert configuration.milter("archiver").applicable_conditions == ("Archive only sales",)
    assert configuration.milter("rspamd").applicable_conditions == ()
    restriction = configuration.condition("Archive only sales")
    assert restriction.accounts == ("sales@example.com",)
    assert restriction.account_patterns[0].search("bob@sales.example.com")
    skip = configuration.condition("skip-spam-flagged")
    (rule,) = skip.rules
    assert (rule.stage, rule.action) == ("header", "stop")
    header = rule.match.predicates[0].value
    assert header.name.search("x-spam-flag") and header.value.search("yes")
    only = configuration.condition("only-if-rspamd-rejected").rules[0]
    assert only.match.predicates == (Predicate("milter_status", True, (("rspamd", ("reject", "discard")),)),)
    first, second = configuration.rules
    assert (first.stage, first.action, first.final, first.ends_chain) == ("helo", "reject", True, True)
    assert (first.reply.code, first.reply.xcode, first.reply.text) == (550, "5.7.1", "Bad HELO")
    assert [predicate.key for predicate in first.match.predicates] == ["helo", "client_local"]
    assert (second.action, second.milters, second.terminal) == ("skip", ("milter-greylist",), False)
    assert second.match.predicates[0].value == (ipaddress.ip_network("10.0.0.0/8"),)
    assert configuration.rules_for("connect") == (second,)


def test_B8_builtin_conditions_as_rules_load():
    configuration = loads("version = 1\n" + B8_CONDITIONS)
    names = [condition.name for condition in configuration.conditions]
    assert names == ["S25R (rules)", "Remote Network (rules)", "Authenticated (rules)", "No Stress (rules)",
                     "Stress Notify (rules)", "Trust (rules)", "DNSBL Listed (rules)", "Restrict Accounts (rules)"]
    s25r = configuration.condition("S25R (rules)")
    assert [rule.action for rule in s25r.rules] == ["stop", "stop", "apply", "apply", "stop"]
    assert not s25r.rules[-1].match  # no match: always
    restrict = configuration.condition("Restrict Accounts (rules)")
    assert restrict.rules[1].set_flags == ("have-not-restricted-account",)
    assert restrict.rules[1].set_macros == (("have-not-restricted-account", "true"),)
    assert restrict.stages == {"envelope-recipient", "data"}
    notify = configuration.condition("Stress Notify (rules)")
    assert notify.rules[0].set_macros == (("stress", "yes"),)


def test_B5_and_B7_templates_load():
    condition = loads("version = 1\n" + B5_CONDITION).condition("example")
    assert condition.description == "what it does" and condition.rules[0].set_macros == ()
    (rule,) = loads("version = 1\n" + B7_RULE).rules
    assert rule.name == "reject one bad recipient" and rule.reply.code == 550 and rule.final is False


def test_B4_tunables_template_loads_with_an_account():
    text = "version = 1\n" + B4_TUNABLES.replace("accounts = []", 'accounts = ["bob@example.com"]', 1)
    configuration = loads(text)
    assert configuration.restrict_accounts[0].condition_name == "Restrict Accounts"
    assert configuration.dnsbl.timeout == 5.0 and configuration.stress.threshold_n_connections == -1


#: B9, one TOML document per row of the table (the Ruby column is the comment)
B9_SNIPPETS = {
    "define_milter": '[[milter]]\nname = "test-milter"\nconnection_spec = "inet:10026@localhost"',
    "command": '[[milter]]\nname = "m"\nconnection_spec = "inet:10026@[127.0.0.1]"\n'
               'command = "/etc/init.d/milter-greylist"\ncommand_options = "start"',
    "command_options_list": '[[milter]]\nname = "m"\nconnection_spec = "unix:/tmp/m.sock"\n'
                            'command_options = ["--option1", "--option2"]',
    "disable_all": '[[milter]]\nname = "m"\nconnection_spec = "unix:/tmp/m.sock"\n'
                   '[[milter_patch]]\nnames = ["*"]\nenabled = false',
    "remove_all": 'remove_milters = ["*"]\n[[milter]]\nname = "m"\nconnection_spec = "unix:/tmp/m.sock"',
    "add_condition_all": '[[milter]]\nname = "m"\nconnection_spec = "unix:/tmp/m.sock"\n'
                         '[[milter_patch]]\nnames = ["*"]\nadd_applicable_conditions = ["S25R"]',
    "s25r_whitelist": "[s25r]\nwhitelist = ['\\.google\\.com\\Z']",
    "s25r_whitelist_host": '[s25r]\nwhitelist_hosts = ["mx.example.com"]',
    "s25r_blacklist": "[s25r]\nblacklist = ['\\.evil\\.example\\.com\\Z']\nblacklist_hosts = [\"black.example.com\"]",
    "s25r_block_as_rule": "[[condition]]\nname = \"S25R with office hours\"\n[[condition.rule]]\n"
                          "stage = \"connect\"\nmatch = { client_host = ['\\.jp\\Z'], "
                          "time = { hours = \"08:00-19:59\" } }\naction = \"stop\"",
    "s25r_ipv6": "[s25r]\ncheck_only_ipv4 = false",
    "local_address": '[remote_network]\nlocal_addresses = ["160.29.167.0/24"]',
    "remote_address": '[remote_network]\nremote_addresses = ["2001:2f8:c2:201::fff0"]',
    "applicable_conditions": '[[milter]]\nname = "milter-bcc"\nconnection_spec = "unix:/tmp/b.sock"\n'
                             'applicable_conditions = ["Authenticated"]\n'
                             '[[milter]]\nname = "spamass-milter"\nconnection_spec = "unix:/tmp/s.sock"\n'
                             'applicable_conditions = ["Unauthenticated", "Remote Network", "No Stress"]\n'
                             '[[milter]]\nname = "milter-greylist"\nconnection_spec = "unix:/tmp/g.sock"\n'
                             'applicable_conditions = ["Sendmail Compatible", "Stress Notify", "Trust", "S25R"]',
    "stress": "[stress]\nthreshold_n_connections = 75",
    "trust": '[trust]\nenvelope_from_domains = ["example.com"]\nuse_default_domains = false\n'
             'envelope_from_domain_files = ["trusted-domains.txt"]',
    "restrict_accounts": "[[restrict_accounts]]\ncondition_name = \"Restrict Accounts\"\n"
                         "accounts = [\"bob@example.com\"]\naccount_patterns = ['@example\\.co\\.jp\\Z']",
    "connect_stopper": "[[condition]]\nname = \"c\"\n[[condition.rule]]\nstage = \"connect\"\n"
                       "match = { not_client_host = ['\\A\\[.+\\]\\Z'] }\naction = \"stop\"\n"
                       "[[condition.rule]]\nstage = \"connect\"\nmatch = { client_resolved = true }\naction = \"stop\"",
    "helo_stopper": "[[condition]]\nname = \"c\"\n[[condition.rule]]\nstage = \"helo\"\n"
                    "match = { helo = ['\\Alocalhost\\.localdomain\\Z'] }\naction = \"stop\"",
    "envelope_from_stopper": "[[condition]]\nname = \"c\"\n[[condition.rule]]\nstage = \"envelope-from\"\n"
                             "match = { envelope_from = ['@example\\.com>\\Z'] }",
    "envelope_recipient_stopper": "[[condition]]\nname = \"c\"\n[[condition.rule]]\nstage = \"envelope-recipient\"\n"
                                  "match = { envelope_recipient = ['@ml\\.example\\.com>\\Z'] }",
    "data_stopper": '[[condition]]\nname = "c"\n[[condition.rule]]\nstage = "data"\naction = "stop"\n'
                    '[[condition.rule]]\nstage = "end-of-header"\naction = "stop"\n'
                    '[[condition.rule]]\nstage = "end-of-message"\naction = "stop"',
    "header_stopper": "[[condition]]\nname = \"c\"\n[[condition.rule]]\nstage = \"header\"\n"
                      "match = { header = { name = '\\AX-Spam-Flag\\Z', value = '\\AYES\\Z' } }",
    "body_stopper": "[[condition]]\nname = \"c\"\n[[condition.rule]]\nstage = \"body\"\n"
                    "match = { body = ['^-----BEGIN PGP SIGNATURE-----$'] }",
    "shelf": '[[condition]]\nname = "c"\n[[condition.rule]]\nstage = "envelope-recipient"\n'
             'set_flags = ["stop-on-data"]\naction = "apply"\n'
             '[[condition.rule]]\nstage = "data"\nmatch = { flag = ["stop-on-data"] }\naction = "stop"',
    "milter_status": '[[milter]]\nname = "milter-greylist"\nconnection_spec = "unix:/tmp/g.sock"\n'
                     '[[condition]]\nname = "c"\n[[condition.rule]]\nstage = "end-of-message"\n'
                     'match = { milter_status = { "milter-greylist" = ["reject"] } }',
    "postfix": '[[condition]]\nname = "c"\n[[condition.rule]]\nstage = "connect"\nmatch = { mta = "postfix" }',
    "netstat_checker": "[manager]\nconnection_check_interval = 1\nconnection_checkers = [\"netstat\"]",
    "python_checker": '[manager]\nconnection_checkers = ["python:mysite.checks:still_connected"]',
    "memory": "[manager]\nreport_memory_statistics = true",
    "maintained": '[hooks]\nmaintained = ["mysite.hooks:on_maintain"]',
    "database": '[database]\ntype = "mysql2"\nname = "milter"\nhost = "localhost"\nport = 3306\n'
                'user = "milter"\npassword = "secret"\nextra_options = { encoding = "utf8", pool = 5 }',
}


@pytest.mark.parametrize("name", list(B9_SNIPPETS))
def test_B9_snippet_loads(name, tmp_path, monkeypatch):
    site = tmp_path / "site-code"
    (site / "mysite").mkdir(parents=True)
    (site / "mysite" / "__init__.py").write_text("")
    (site / "mysite" / "checks.py").write_text("def still_connected(facts):\n    return True\n")
    (site / "mysite" / "hooks.py").write_text("def on_maintain(context):\n    pass\n")
    monkeypatch.syspath_prepend(str(site))  # the functions hooks and checkers name are imported at load
    (tmp_path / "trusted-domains.txt").write_text("# trusted\nExample.ORG\n/\\.example\\.net$/\n")
    path = tmp_path / "milter-manager.toml"
    path.write_text("version = 1\n" + B9_SNIPPETS[name] + "\n")
    configuration = load(path)
    assert load_string(render(configuration)) == configuration


def test_B9_snippet_values(tmp_path):
    (tmp_path / "trusted-domains.txt").write_text("# trusted\n\nExample.ORG\n/\\.example\\.net$/\n")
    (tmp_path / "milter-manager.toml").write_text("version = 1\n" + B9_SNIPPETS["trust"] + "\n")
    trust = load(tmp_path).trust
    assert trust.use_default_domains is False
    assert trust.envelope_from_domain_files == (str(tmp_path / "trusted-domains.txt"),)  # C-TOML-2: relative
    assert trust.file_domains == ("example.org",)  # M-AC-B6: lower-cased
    assert trust.file_patterns[0].search("MX.EXAMPLE.NET") and trust.file_patterns[0].flags & re.IGNORECASE
    disabled = loads("version = 1\n" + B9_SNIPPETS["disable_all"]).milter("m")
    assert disabled.enabled is False
    assert loads("version = 1\n" + B9_SNIPPETS["remove_all"]).milters == ()
    assert loads("version = 1\n" + B9_SNIPPETS["add_condition_all"]).milter("m").applicable_conditions == ("S25R",)
    window = loads("version = 1\n" + B9_SNIPPETS["s25r_block_as_rule"]).conditions[0].rules[0].match.predicates[1]
    assert window == Predicate("time", False, TimeWindow(8 * 60, 19 * 60 + 59, ()))
    database = loads("version = 1\n" + B9_SNIPPETS["database"]).database
    assert (database.type, database.port, database.extra_options) == ("mysql2", 3306, {"encoding": "utf8", "pool": 5})
    envelope_from = loads("version = 1\n" + B9_SNIPPETS["envelope_from_stopper"]).conditions[0].rules[0]
    assert envelope_from.action == "stop"  # decision: a rule without action is a stopper


def test_C_TOML_5_regexes_compiled_ascii_search_multiline_body():
    configuration = loads("version = 1\n" + B9_SNIPPETS["body_stopper"] + "\n" + "[s25r]\nwhitelist = ['\\d\\Z']")
    body = configuration.conditions[0].rules[0].match.predicates[0].value[0]
    assert body.flags == re.ASCII | re.MULTILINE
    assert body.search("text\n-----BEGIN PGP SIGNATURE-----\nmore")  # ^…$ inside a chunk
    digit = configuration.s25r.whitelist[0]
    assert digit.flags == re.ASCII and digit.search("host1") and not digit.search("host\u0661")  # Arabic-Indic digit
    assert digit.search("a1") and not digit.compiled.match("a1")  # search semantics, not match
