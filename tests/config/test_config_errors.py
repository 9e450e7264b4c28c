"""C-TOML-4 strictness: every kind of error names ``FILE: KEY`` and the bad value; all errors are reported.

Also C-TOML-5 (enumerations), C-RULE-1…4 (rule shape), B5.1 ("available at") and D-15 (glib refused).
"""

from __future__ import annotations

import pytest
from config_support import issues_of, one_issue

from milterman.config import ConfigurationError, load, load_string
from milterman.server.app import ConfigurationError as ServerConfigurationError

HEAD = "version = 1\n"


def test_C_TOML_4_configuration_error_reaches_the_server_through_the_managers_loader(tmp_path):
    # config owns its error type (it imports nothing of the server); the manager's loader hands it to the
    # server as the server's, so the master's SIGHUP path logs it and keeps the old configuration (C-TOML-4, D-5)
    from milterman.manager.app import ManagerApplication

    assert not issubclass(ConfigurationError, ServerConfigurationError)
    path = tmp_path / "milter-manager.toml"
    path.write_text(HEAD + "[manager]\nn_workers = 5000\n")
    with pytest.raises(ConfigurationError) as raised:
        load(path)
    assert str(raised.value) == f"{path}: manager.n_workers: must be 0..1000, got 5000"
    with pytest.raises(ServerConfigurationError) as wrapped:
        ManagerApplication(str(tmp_path), {}, detect=False).load()
    assert str(wrapped.value) == f"{path}: manager.n_workers: must be 0..1000, got 5000"


@pytest.mark.parametrize("text, expected", [
    pytest.param("[manager]\nn_workers = 5000", "manager.n_workers: must be 0..1000, got 5000", id="n_workers"),
    pytest.param("[manager]\nchunk_size = 65536", "manager.chunk_size: must be 1..65535, got 65536",
                 id="chunk_size-not-clamped"),
    pytest.param("[manager]\nchunk_size = 0", "manager.chunk_size: must be 1..65535, got 0", id="chunk_size-0"),
    pytest.param("[manager]\nmax_connections = -1", "manager.max_connections: must be ≥ 0, got -1", id="negative"),
    pytest.param("[manager]\nunix_socket_mode = 0o10000",
                 "manager.unix_socket_mode: must be 0o0..0o7777, got 0o10000", id="mode"),
    pytest.param("[stress]\nthreshold_n_connections = -2", "stress.threshold_n_connections: must be ≥ -1, got -2",
                 id="stress"),
    pytest.param('[[milter]]\nname = "m"\nconnection_spec = "unix:/m"\nreading_timeout = 0',
                 'milter "m": reading_timeout: must be > 0, got 0', id="timeout"),
    pytest.param('[[milter]]\nname = "m"\nconnection_spec = "unix:/m"\nretry_delay = -1.5',
                 'milter "m": retry_delay: must be ≥ 0, got -1.5', id="retry_delay"),
    pytest.param("[dnsbl]\ntimeout = inf", "dnsbl.timeout: must be a finite number, got inf", id="inf"),
    pytest.param("[database]\nport = 70000", "database.port: must be 1..65535, got 70000", id="port"),
])
def test_C_TOML_4_out_of_range(text, expected):
    assert one_issue(HEAD + text) == f"main.toml: {expected}"


@pytest.mark.parametrize("text, expected", [
    pytest.param('[manager]\nn_workers = "4"', 'manager.n_workers: expected an integer, got "4" (string)', id="int"),
    pytest.param("[manager]\ndaemon = 1", "manager.daemon: expected a boolean (true or false), got 1 (integer)",
                 id="bool"),
    pytest.param("[manager]\nn_workers = true", "manager.n_workers: expected an integer, got true (boolean)",
                 id="bool-is-not-int"),
    pytest.param('[manager]\nconnection_checkers = "netstat"',
                 'manager.connection_checkers: expected an array, got "netstat" (string)', id="array"),
    pytest.param('manager = "x"', 'manager: expected a table, got "x" (string)', id="table"),
    pytest.param('[milter]\nname = "m"', "milter: expected an array of tables ([[milter]]), got {name = \"m\"}",
                 id="array-of-tables"),
    pytest.param('[[milter]]\nname = "m"\nconnection_spec = "unix:/m"\ncommand_options = ["a", 1]',
                 'milter "m": command_options[1]: expected a string, got 1 (integer)', id="command_options"),
    pytest.param('[manager]\nunix_socket_mode = "0660"',
                 'manager.unix_socket_mode: expected an octal integer such as 0o660, got "0660" (string)', id="mode"),
])
def test_C_TOML_4_wrong_types(text, expected):
    assert one_issue(HEAD + text) == f"main.toml: {expected}"


@pytest.mark.parametrize("text, expected", [
    pytest.param("foo = 1", 'foo: unknown key "foo"', id="top-level"),
    pytest.param("[managers]", 'managers: unknown key "managers" (did you mean "manager"?)', id="table"),
    pytest.param("[manager]\nn_worker = 4", 'manager.n_worker: unknown key "n_worker" (did you mean "n_workers"?)',
                 id="section"),
    pytest.param('[[milter]]\nname = "m"\nconnection_spec = "unix:/m"\nfalback_status = "accept"',
                 'milter "m": falback_status: unknown key "falback_status" (did you mean "fallback_status"?)',
                 id="milter"),
    pytest.param('[[milter_patch]]\nnames = ["*"]\nname = "x"',
                 'milter_patch[0].name: unknown key "name" (did you mean "names"?)', id="patch-name"),
    pytest.param('[[condition]]\nname = "c"\n[[condition.rule]]\nstage = "helo"\nmatch = { hello = ["x"] }',
                 'condition[0].rule[0].match.hello: unknown predicate "hello" (see B5.1)', id="predicate"),
    pytest.param('[[condition]]\nname = "c"\n[[condition.rule]]\nstage = "helo"\nfinal = true',
                 'condition[0].rule[0].final: unknown key "final"', id="condition-rule"),
    pytest.param('[[rule]]\nstage = "helo"\naction = "reject"\nreply = { code = 550, message = "x" }',
                 'rule[0].reply.message: unknown key "message"', id="reply"),
    pytest.param('[dnsbl]\nservices = [{ zone = "a.example", expected = "127.0.0.2" }]',
                 'dnsbl.services[0].expected: unknown key (accepted: zone, expect), got "expected"', id="service"),
])
def test_C_TOML_4_unknown_keys(text, expected):
    assert one_issue(HEAD + text) == f"main.toml: {expected}"


def test_C_TOML_4_invalid_regexes_every_item_reported():
    assert issues_of(HEAD + "[s25r]\nwhitelist = ['(', 'ok', 'a\\z']\n") == [
        'main.toml: s25r.whitelist[0]: invalid regex "(": missing ), unterminated subpattern at position 0',
        "main.toml: s25r.whitelist[2]: invalid regex 'a\\z': bad escape \\z at position 1 (Python writes Ruby's "
        "\\z as \\Z)"]


def test_C_TOML_4_invalid_regex_in_predicates():
    text = HEAD + "[[rule]]\nstage = \"header\"\naction = \"reject\"\nmatch = { header = { name = '[' } }\n"
    assert one_issue(text) == ('main.toml: rule[0].match.header.name: invalid regex "[": unterminated character '
                               'set at position 0')


def test_C_TOML_4_invalid_cidrs_and_addresses():
    assert issues_of(HEAD + '[remote_network]\nlocal_addresses = ["10.0.0.0/33", "fe80::zz"]\n'
                     '[dnsbl]\nname_servers = ["resolver"]\nservices = [{ zone = "z.example", expect = "1.2.3" }]\n'
                     '[[rule]]\nstage = "connect"\naction = "accept"\nmatch = { not_client_address = ["10/8"] }\n') == [
        'main.toml: remote_network.local_addresses[0]: invalid IP address or CIDR "10.0.0.0/33"',
        'main.toml: remote_network.local_addresses[1]: invalid IP address or CIDR "fe80::zz"',
        'main.toml: dnsbl.name_servers[0]: invalid IP address "resolver"',
        'main.toml: dnsbl.services[0].expect: invalid IP address or CIDR "1.2.3"',
        'main.toml: rule[0].match.not_client_address[0]: invalid IP address or CIDR "10/8"']


def test_C_TOML_4_invalid_connection_specs():
    text = HEAD + ''.join(f'[[milter]]\nname = "{name}"\nconnection_spec = "{spec}"\n' for name, spec in (
        ("a", "unix:/a"), ("b", "inet:10025@[::1]"), ("c", "inet:10x25@localhost"))) + \
        '[manager]\nconnection_spec = "tcp:25"\n[controller]\nconnection_spec = "inet:10026"\n'
    assert issues_of(text) == [
        'main.toml: milter "b": connection_spec: invalid spec "inet:10025@[::1]": invalid host address: '
        '<inet:10025@[::1]>: <::1>',
        'main.toml: milter "c": connection_spec: invalid spec "inet:10x25@localhost": port number has invalid '
        'character: <inet:10x25@localhost>: <x>',
        'main.toml: manager.connection_spec: invalid spec "tcp:25": protocol must be \'unix\', \'inet\' or '
        '\'inet6\': <tcp:25>: <tcp>',
        'main.toml: controller.connection_spec: must be a unix socket or a loopback address (D-7), got "inet:10026"']


def test_D_7_controller_accepts_unix_and_loopback():
    for spec in ("unix:/run/c.sock", "inet:10026@[127.0.0.1]", "inet6:10026@[::1]"):
        assert load_string(HEAD + f'[controller]\nconnection_spec = "{spec}"\n').controller.connection_spec == spec


def test_C_TOML_4_milter_without_spec_when_enabled():
    text = HEAD + '[[milter]]\nname = "a"\n[[milter]]\nname = "b"\nenabled = false\n'
    assert one_issue(text) == ('main.toml: milter "a": connection_spec (or python) is required when the milter '
                               'is enabled')


def test_C_TOML_4_unknown_condition_names():
    text = HEAD + ('[[milter]]\nname = "a"\nconnection_spec = "unix:/a"\napplicable_conditions = ["S25R", "Nope"]\n'
                   '[[milter_patch]]\nnames = ["*"]\nadd_applicable_conditions = ["Later", "Ghost"]\n'
                   '[[condition]]\nname = "Later"\n')
    assert issues_of(text) == ['main.toml: milter "a": applicable_conditions[1]: unknown condition "Nope"',
                               'main.toml: milter_patch[0].add_applicable_conditions[1]: unknown condition "Ghost"']


def test_C_TOML_4_duplicate_names_within_one_file():
    text = HEAD + ('[[milter]]\nname = "a"\nconnection_spec = "unix:/a"\n[[milter]]\nname = "a"\n'
                   'connection_spec = "unix:/b"\n[[condition]]\nname = "x"\n[[condition]]\nname = "x"\n'
                   '[[restrict_accounts]]\naccounts = ["a@example.com"]\n[[restrict_accounts]]\n'
                   'accounts = ["a@example.com"]\n[[milter]]\nname = "b"\nconnection_spec = "unix:/b"\n'
                   'applicable_conditions = ["S25R", "S25R"]\n')
    assert issues_of(text) == [
        'main.toml: milter[1].name: duplicate milter "a" (also milter[0])',
        'main.toml: milter "b": applicable_conditions[1]: "S25R" is listed twice',
        'main.toml: condition[1].name: duplicate condition "x" (also condition[0])',
        'main.toml: restrict_accounts[1].condition_name: duplicate condition_name "Restrict Accounts by List: '
        '[\\"a@example.com\\"]" (also restrict_accounts[0])']


def test_B5_condition_names_builtin_and_shared_namespace(write, tmp_path):
    assert one_issue(HEAD + '[[condition]]\nname = "Trust"\n') == (
        'main.toml: condition[0].name: "Trust" is a built-in condition name (B5: may not be reused)')
    main = write("milter-manager.toml", HEAD + 'include = ["b.toml"]\n[[restrict_accounts]]\ncondition_name = "R"\n'
                 'accounts = ["a@example.com"]\n')
    other = write("b.toml", '[[condition]]\nname = "R"\n')
    with pytest.raises(ConfigurationError) as raised:
        load(tmp_path)
    assert str(raised.value) == f'{other}: condition[0].name: "R" is already the condition_name of {main}: ' \
                                'restrict_accounts[0]'


def test_C_RULE_3_reply_code_class_must_match_status():
    text = HEAD + ('[[rule]]\nstage = "helo"\naction = "reject"\nreply = { code = 450, xcode = "4.7.1" }\n'
                   '[[rule]]\nstage = "helo"\naction = "tempfail"\nreply = { code = 451, xcode = "5.7.1" }\n'
                   '[[rule]]\nstage = "helo"\naction = "accept"\nreply = { code = 550 }\n'
                   '[[rule]]\nstage = "helo"\naction = "reject"\nreply = { code = 650 }\n'
                   '[[rule]]\nstage = "helo"\naction = "reject"\nreply = { xcode = "5.1.1" }\n')
    assert issues_of(text) == [
        'main.toml: rule[0].reply.code: 450 does not match status "reject" (needs 5xx, C-RULE-3)',
        'main.toml: rule[1].reply.xcode: must be "4.X.Y" (class.subject.detail, class = the code\'s first digit, '
        'M-RC-2), got "5.7.1"',
        'main.toml: rule[2].reply: only for reject and temporary-failure rules, not "accept" (C-RULE-3)',
        "main.toml: rule[3].reply.code: must be an integer 400..599, got 650",
        "main.toml: rule[4].reply.code: is required"]


def test_C_RULE_1_2_4_rule_shapes():
    text = HEAD + ('[[rule]]\nstage = "helo"\naction = "skip"\n'
                   '[[rule]]\nstage = "helo"\naction = "only"\nmilters = []\n'
                   '[[rule]]\nstage = "helo"\naction = "reject"\nmilters = ["a"]\n'
                   '[[rule]]\nstage = "helo"\naction = "set-macro"\n'
                   '[[rule]]\nstage = "helo"\naction = "accept"\nset_macros = { x = "1" }\n'
                   '[[rule]]\nstage = "unknown"\naction = "skip"\nmilters = ["*"]\n'
                   '[[rule]]\nstage = "helo"\naction = "stop"\n'
                   '[[rule]]\naction = "accept"\n')
    assert issues_of(text) == [
        'main.toml: rule[0].milters: needs at least one milter for action "skip" (C-RULE-2)',
        'main.toml: rule[1].milters: needs at least one milter for action "only" (C-RULE-2)',
        'main.toml: rule[2].milters: only for skip and only, not "reject" (C-RULE-2)',
        'main.toml: rule[3].set_macros: needs at least one macro for action "set-macro" (C-RULE-4)',
        'main.toml: rule[4].set_macros: only for set-macro, not "accept" (C-RULE-4)',
        'main.toml: rule[5].action: "skip" is not allowed at stage "unknown" (terminal actions and set-macro only, '
        'C-RULE-1)',
        'main.toml: rule[6].action: must be one of "skip", "only", "accept", "reject", "temporary-failure", '
        '"discard", "set-macro", "tempfail", got "stop"',
        "main.toml: rule[7]: stage is required"]


def test_C_TOML_5_stages_and_B5_1_available_at():
    text = HEAD + ('[[condition]]\nname = "x"\n[[condition.rule]]\nstage = "connect"\n'
                   'match = { body = ["x"], not_helo = ["y"], s25r = true, client_local = true }\n'
                   '[[condition.rule]]\nstage = "unknown"\n[[condition.rule]]\nstage = "end_of_message"\n'
                   'match = { body = ["z"], header = { value = "v" }, recipients = "all" }\n'
                   '[[rule]]\nstage = "unknown"\naction = "reject"\nmatch = { envelope_from = ["a"], stressed = true, '
                   'dnsbl_listed = false }\n'
                   '[[rule]]\nstage = "envelope-recipient"\naction = "accept"\nmatch = { recipients = "all", '
                   'envelope_recipient = ["x"] }\n'
                   '[[rule]]\nstage = "data"\naction = "accept"\nmatch = { recipients = "every", not_recipients = '
                   '"all" }\n')
    assert issues_of(text) == [
        'main.toml: condition[0].rule[0].match.body: not available at stage "connect" (available at: body)',
        'main.toml: condition[0].rule[0].match.not_helo: not available at stage "connect" (available at: helo →)',
        'main.toml: condition[0].rule[1].stage: must be one of "connect", "helo", "envelope-from", '
        '"envelope-recipient", "data", "header", "end-of-header", "body", "end-of-message", got "unknown"',
        'main.toml: condition[0].rule[2].match.body: not available at stage "end-of-message" (available at: body)',
        'main.toml: condition[0].rule[2].match.recipients: needs envelope_recipient or envelope_recipient_domain in '
        'the same match',
        'main.toml: rule[0].match.envelope_from: not available at stage "unknown" (available at: envelope-from →)',
        'main.toml: rule[1].match.recipients: not available at stage "envelope-recipient" (available at: data →)',
        'main.toml: rule[2].match.recipients: must be one of "any", "all", got "every"',
        'main.toml: rule[2].match.not_recipients: unknown predicate "not_recipients" (recipients cannot be '
        'negated) (see B5.1)']


def test_C_TOML_4_references_checked_after_merging():
    text = HEAD + ('[[condition]]\nname = "x"\n[[condition.rule]]\nstage = "connect"\n'
                   'match = { milter_status = { ghost = ["reject"] }, dnsbl_listed = ["zen.spamhaus.org", '
                   '"nowhere.example"] }\n[dnsbl]\nservices = [{ zone = "mine.example" }]\n'
                   '[[rule]]\nstage = "connect"\naction = "accept"\nmatch = { dnsbl_listed = ["mine.example"] }\n')
    assert issues_of(text) == [
        'main.toml: condition[0].rule[0].match.milter_status: unknown milter "ghost"',
        'main.toml: condition[0].rule[0].match.dnsbl_listed[1]: zone "nowhere.example" is not a [dnsbl] zone']
    without_defaults = text.replace("[dnsbl]\n", "[dnsbl]\nuse_default_services = false\n")
    assert issues_of(without_defaults)[1] == ('main.toml: condition[0].rule[0].match.dnsbl_listed[0]: zone '
                                              '"zen.spamhaus.org" is not a [dnsbl] zone')


def test_D_15_glib_refused_naming_the_accepted_values():
    assert one_issue(HEAD + '[manager]\nevent_loop_backend = "glib"\n') == (
        'main.toml: manager.event_loop_backend: "glib" is not available (the GLib loop of the original is not '
        'offered, D-15); accepted values: "default", "libev", "libuv"')
    assert load_string(HEAD + '[manager]\nevent_loop_backend = "libuv"\n').manager.event_loop_backend == "libuv"


def test_C_TOML_4_version_required_and_checked():
    assert one_issue("[manager]\nn_workers = 1\n") == "main.toml: version: is required (version = 1)"
    assert one_issue("version = 2\n") == "main.toml: version: must be 1, got 2"


def test_C_TOML_4_syntax_error_with_line():
    assert one_issue(HEAD + "[manager\n") == ("main.toml: invalid TOML: Expected ']' at the end of a table "
                                              "declaration (at line 2, column 9)")


@pytest.mark.parametrize("text, expected", [
    pytest.param('[log]\nlevel = "loud"', 'log.level: invalid level "loud": unknown flag names: [<loud>]'
                 '(<MilterLogLevelFlags>); valid levels: all, default, none, critical, error, warning, message, info, '
                 'debug, trace, statistics, profile (join with |, add or remove with + or -)', id="log-level"),
    pytest.param('[log]\nlevel = ["error", 3]', "log.level[1]: expected a level name, got 3 (integer)",
                 id="log-level-array"),
    pytest.param('[log]\nsyslog_facility = "mailx"', 'log.syslog_facility: must be one of "auth", "authpriv", '
                 '"cron", "daemon", "kern", "local0", "local1", "local2", "local3", "local4", "local5", "local6", '
                 '"local7", "lpr", "mail", "news", "user", "uucp", got "mailx"', id="facility"),
    pytest.param('[hooks]\nmaintained = ["not an entry"]', 'hooks.maintained[0]: must look like '
                 '"package.module:function", got "not an entry"', id="entry-point"),
    pytest.param('[hooks]\nstarted = ["milterman_no_such_module:run"]', 'hooks.started[0]: cannot import module '
                 '<milterman_no_such_module>: ModuleNotFoundError: No module named \'milterman_no_such_module\'',
                 id="entry-point-import"),
    pytest.param('[hooks]\nmaintained = ["json:no_such_function"]', 'hooks.maintained[0]: module <json> has no '
                 '<no_such_function>', id="entry-point-attribute"),
    pytest.param('[manager]\nconnection_checkers = ["python:milterman_no_such_module:alive"]',
                 'manager.connection_checkers[0]: cannot import module <milterman_no_such_module>: '
                 'ModuleNotFoundError: No module named \'milterman_no_such_module\'', id="checker-import"),
    pytest.param('[manager]\nconnection_checkers = ["python:x"]', 'manager.connection_checkers[0]: must be '
                 '"netstat" or "python:package.module:function", got "python:x"', id="checker"),
    pytest.param('[manager]\nfallback_status = "pass"', 'manager.fallback_status: must be one of "accept", '
                 '"temporary-failure", "reject", "discard", "tempfail", got "pass"', id="status"),
    pytest.param('[trust]\nenvelope_from_domains = ["user@example.com"]', 'trust.envelope_from_domains[0]: '
                 'invalid domain "user@example.com"', id="domain"),
    pytest.param('[manager]\npid_file = ""', "manager.pid_file: must not be empty", id="empty"),
    pytest.param('[[restrict_accounts]]\nmilters = ["*"]', "restrict_accounts[0]: needs accounts, account_patterns "
                 "or both", id="restrict-empty"),
    pytest.param('[[condition]]\nname = "c"\n[[condition.rule]]\nstage = "helo"\nmatch = { time = { hours = '
                 '"8-19" } }', 'condition[0].rule[0].match.time.hours: expected "HH:MM-HH:MM" (00:00-23:59), got '
                 '"8-19"', id="time"),
    pytest.param('[[condition]]\nname = "c"\n[[condition.rule]]\nstage = "helo"\nmatch = { flag = [] }',
                 "condition[0].rule[0].match.flag: must not be empty (an empty array never matches)", id="empty-any"),
    pytest.param('[[condition]]\nname = "c"\n[[condition.rule]]\nstage = "helo"\nset_macros = { x = 1 }',
                 "condition[0].rule[0].set_macros.x: expected a string, got 1 (integer)", id="set-macros"),
])
def test_C_TOML_4_other_values(text, expected):
    assert one_issue(HEAD + text) == f"main.toml: {expected}"


def test_C_TOML_4_trust_file_problems_name_the_file_and_line(tmp_path):
    trusted = tmp_path / "trusted.txt"
    trusted.write_text("example.com\n/(/\n")
    path = tmp_path / "milter-manager.toml"
    path.write_text(HEAD + '[trust]\nenvelope_from_domain_files = ["trusted.txt", "absent.txt"]\n')
    with pytest.raises(ConfigurationError) as raised:
        load(path)
    assert str(raised.value).splitlines() == [
        f'{trusted}: line 2: invalid regex "(": missing ), unterminated subpattern at position 0',
        f"{tmp_path / 'absent.txt'}: cannot read (trust.envelope_from_domain_files): [Errno 2] No such file or "
        f"directory: '{tmp_path / 'absent.txt'}'"]


def test_C_TOML_4_all_errors_of_all_files_reported_one_per_line(write, tmp_path):
    main = write("milter-manager.toml", HEAD + 'include = ["b.toml"]\n[manager]\nn_workers = -1\n')
    other = write("b.toml", '[manager]\nchunk_size = 70000\n[log]\nuse_syslog = "no"\n')
    with pytest.raises(ConfigurationError) as raised:
        load(tmp_path)
    assert str(raised.value) == "\n".join([
        f"{main}: manager.n_workers: must be 0..1000, got -1",
        f"{other}: manager.chunk_size: must be 1..65535, got 70000",
        f'{other}: log.use_syslog: expected a boolean (true or false), got "no" (string)'])
    assert [(issue.file, issue.key) for issue in raised.value.issues] == [
        (str(main), "manager.n_workers"), (str(other), "manager.chunk_size"), (str(other), "log.use_syslog")]


def test_C_TOML_5_status_normalisation():
    configuration = load_string(HEAD + '[manager]\nfallback_status = "TempFail"\nfallback_status_at_disconnect = '
                                '"Temporary_Failure"\n[[milter]]\nname = "m"\nconnection_spec = "unix:/m"\n'
                                'fallback_status = "REJECT"\n[[rule]]\nstage = "helo"\naction = "tempfail"\n')
    assert configuration.manager.fallback_status == "temporary-failure"
    assert configuration.manager.fallback_status_at_disconnect == "temporary-failure"
    assert configuration.milter("m").fallback_status == "reject"
    assert configuration.rules[0].action == "temporary-failure"
