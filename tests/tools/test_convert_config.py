"""milter-manager-convert-config: every item of the original's Ruby configuration, converted and loaded.

Each configuration here is written in the original's Ruby; the converter's output must pass
``milter-manager --check-config`` and ``--show-config`` must give the children, order,
specs, timeouts, fallbacks and conditions the original would have used.
"""

from __future__ import annotations

import pytest

from convert_support import DEBIAN_MAIN, by_name, check_and_show, convert, milters, write_ruby

EVERY_ITEM = r'''
# every documented item of the original's configuration
security.privilege_mode = false
security.effective_user = "milter-manager"
security.effective_group = "milter-manager"

log.level = "default|info"
log.path = "/var/log/milter-manager.log"
log.use_syslog = false
log.syslog_facility = "local4"

manager.connection_spec = "inet:10025@[127.0.0.1]"
manager.unix_socket_mode = 0600
manager.unix_socket_group = "postfix"
manager.remove_unix_socket_on_create = false
manager.remove_unix_socket_on_close = false
manager.daemon = false
manager.pid_file = "/tmp/milter-manager.pid"
manager.maintenance_interval = 20
manager.suspend_time_on_unacceptable = 3
manager.max_connections = 200
manager.max_file_descriptors = 4096
manager.custom_configuration_directory = "/var/lib/milter-manager"
manager.fallback_status = "TEMPORARY_FAILURE"
manager.fallback_status_at_disconnect = "discard"
manager.event_loop_backend = "libev"
manager.n_workers = 2
manager.packet_buffer_size = 8192
manager.chunk_size = 100000
manager.max_pending_finished_sessions = 5
manager.connection_check_interval = 9
manager.use_netstat_connection_checker(3)
manager.report_memory_statistics

controller.connection_spec = "unix:/tmp/controller.sock"
controller.unix_socket_mode = 0660
controller.unix_socket_group = "adm"
controller.remove_unix_socket_on_create = true
controller.remove_unix_socket_on_close = "false"

s25r.add_whitelist(/\.mail\.example\.net\z/)
s25r.add_whitelist("mx.example.com")
s25r.add_blacklist /\.evil\.example\.com\z/i
s25r.add_blacklist("black.example.com")
s25r.check_only_ipv4 = false
remote_network.add_local_address("160.29.167.0/24")
remote_network.add_remote_address("2001:2f8:c2:201::fff0")
stress.threshold_n_connections = 75
trust.clear
trust.add_envelope_from_domain("Example.COM")
trust.add_envelope_from_domain(/\.example\.org\z/)
trust.load_envelope_from_domains("trusted-domains.txt")
dnsbl.add_service("zen.example.org", "127.0.0.2")
dnsbl.add_service("bl.example.net")
dnsbl.name_servers = ["192.0.2.53"]

define_milter("milter-greylist") do |milter|
  milter.connection_spec = "unix:/run/milter-greylist/milter-greylist.sock"
  milter.description = "greylisting"
  milter.enabled = true
  milter.fallback_status = "reject"
  milter.evaluation_mode = false
  milter.applicable_conditions = ["Sendmail Compatible", "Stress Notify", "Trust", "Remote Network", "S25R"]
  milter.add_applicable_condition("Unauthenticated")
  milter.command = "/usr/bin/systemctl"
  milter.command_options = ["start", "milter-greylist"]
  milter.user_name = "nobody"
  milter.connection_timeout = 60
  milter.writing_timeout = 15.5
  milter.reading_timeout = 20
  milter.end_of_message_timeout = 120
end

define_milter "clamav-milter" do |m|
  m.connection_spec = "unix:/run/clamav/clamav-milter.ctl"
  m.fallback_status = :temporary_failure
  m.evaluation_mode = true
  m.command_options = "start clamav-milter"
end

define_milter("milter-bcc") { |m| m.connection_spec = "inet:10030@[127.0.0.1]"; m.enabled = false }
define_milter("doomed") { |m| m.connection_spec = "inet:10031@[127.0.0.1]" }
remove_milter("doomed")

# a redefinition keeps the position and (as the original does) resets fallback_status
define_milter("clamav-milter") do |m|
  m.end_of_message_timeout = 200.0
end

defined_milters.each do |name|
  define_milter(name) do |milter|
    milter.add_applicable_condition("No Stress")
  end
end

restrict_accounts_by_list("bob@example.com", /@example\.co\.jp\z/,
                          condition_name: "Restrict Accounts", milters: ["milter-bcc"])
restrict_accounts_by_list("carol@example.com")
define_milter("late") { |m| m.connection_spec = "inet:10032@[127.0.0.1]" }
'''


def test_every_part_a_item_converts_loads_and_shows_as_the_original(tmp_path):
    source = write_ruby(tmp_path / "ruby", {"milter-manager.conf": EVERY_ITEM,
                                            "trusted-domains.txt": "example.net\n"}, builtin_files=False)
    result = convert(source, tmp_path / "toml")
    assert result.returncode == 0, result.stderr
    assert [problem for problem in result.problems if "custom_configuration_directory" not in problem] == []
    shown = check_and_show(result.out_dir)
    assert shown["security"] == {"privilege_mode": False, "effective_user": "milter-manager",
                                 "effective_group": "milter-manager"}
    assert shown["log"] == {"level": "default|info", "path": "/var/log/milter-manager.log", "use_syslog": False,
                            "syslog_facility": "local4"}
    manager = shown["manager"]
    expected = {"connection_spec": "inet:10025@[127.0.0.1]", "unix_socket_mode": 0o600,
                "unix_socket_group": "postfix", "remove_unix_socket_on_create": False,
                "remove_unix_socket_on_close": False, "daemon": False,
                "pid_file": "/tmp/milter-manager.pid", "maintenance_interval": 20,
                "suspend_time_on_unacceptable": 3, "max_connections": 200, "max_file_descriptors": 4096,
                "fallback_status": "temporary-failure",
                "fallback_status_at_disconnect": "discard", "event_loop_backend": "libev", "n_workers": 2,
                "packet_buffer_size": 8192, "chunk_size": 65535, "max_pending_finished_sessions": 5,
                "connection_check_interval": 3, "connection_checkers": ["netstat"],
                "report_memory_statistics": True}
    assert {key: manager[key] for key in expected} == expected
    if "custom_configuration_directory" in manager:
        assert manager["custom_configuration_directory"] == "/var/lib/milter-manager"
    else:  # a key milterman refuses is reported, never written
        assert any(": cannot convert: manager.custom_configuration_directory" in line for line in result.problems)
    assert shown["controller"] == {"connection_spec": "unix:/tmp/controller.sock",
                                   "unix_socket_mode": 0o660, "unix_socket_group": "adm",
                                   "remove_unix_socket_on_create": True, "remove_unix_socket_on_close": False}
    assert shown["s25r"]["whitelist"] == [r"\.mail\.example\.net\Z"]
    assert shown["s25r"]["whitelist_hosts"] == ["mx.example.com"]
    assert shown["s25r"]["blacklist"] == [r"(?i)\.evil\.example\.com\Z"]
    assert shown["s25r"]["blacklist_hosts"] == ["black.example.com"]
    assert shown["s25r"]["check_only_ipv4"] is False
    assert shown["remote_network"] == {"local_addresses": ["160.29.167.0/24"],
                                       "remote_addresses": ["2001:2f8:c2:201::fff0"]}
    assert shown["stress"] == {"threshold_n_connections": 75}
    assert shown["trust"]["use_default_domains"] is False
    assert shown["trust"]["envelope_from_domains"] == ["example.com"]
    assert shown["trust"]["envelope_from_domain_patterns"] == [r"\.example\.org\Z"]
    assert shown["trust"]["envelope_from_domain_files"] == [str(source / "trusted-domains.txt")]
    assert shown["dnsbl"]["services"] == [{"zone": "zen.example.org", "expect": "127.0.0.2"},
                                          {"zone": "bl.example.net"}]
    assert shown["dnsbl"]["name_servers"] == ["192.0.2.53"]

    assert [milter["name"] for milter in milters(shown)] == ["milter-greylist", "clamav-milter", "milter-bcc",
                                                             "late"]
    greylist, clamav, bcc, late = milters(shown)
    # without milters:, a restriction goes to the milters defined when it is called, not to "late"
    generated = "Restrict Accounts by List: [\"carol@example.com\"]"
    assert late["applicable_conditions"] == []
    assert greylist["applicable_conditions"][-1] == clamav["applicable_conditions"][-1] == generated
    assert greylist == {
        "name": "milter-greylist", "connection_spec": "unix:/run/milter-greylist/milter-greylist.sock",
        "description": "greylisting", "enabled": True, "evaluation_mode": False,
        # defined_milters.each redefines every milter: the original resets fallback_status ("reject") there
        "fallback_status": "accept",
        "applicable_conditions": ["Sendmail Compatible", "Stress Notify", "Trust", "Remote Network", "S25R",
                                  "Unauthenticated", "No Stress", generated],
        "command": "/usr/bin/systemctl", "command_options": ["start", "milter-greylist"], "user_name": "nobody",
        "connection_timeout": 60.0, "writing_timeout": 15.5, "reading_timeout": 20.0,
        "end_of_message_timeout": 120.0, "retry_delay": 5.0, "reuse_connection": False}
    # redefined: position kept, spec and options kept, fallback_status/evaluation_mode back to the defaults
    assert clamav["connection_spec"] == "unix:/run/clamav/clamav-milter.ctl"
    assert clamav["command_options"] == "start clamav-milter"
    assert clamav["fallback_status"] == "accept" and clamav["evaluation_mode"] is False
    assert clamav["end_of_message_timeout"] == 200.0 and clamav["applicable_conditions"] == ["No Stress", generated]
    assert bcc["enabled"] is False
    assert bcc["applicable_conditions"] == ["No Stress", "Restrict Accounts", generated]
    assert shown["restrict_accounts"][0]["condition_name"] == "Restrict Accounts"
    assert shown["restrict_accounts"][0]["accounts"] == ["bob@example.com"]
    assert shown["restrict_accounts"][0]["account_patterns"] == [r"@example\.co\.jp\Z"]


def test_items_that_need_code_are_reported_with_their_line_and_the_rest_loads(tmp_path):
    ruby = '''\
        manager.maintained do
          File.open("/tmp/x", "w") { |f| f.puts(Time.now) }
        end
        manager.event_loop_created { |loop| loop.watch }
        manager.define_connection_checker("smtp") do |context|
          true
        end
        manager.event_loop_backend = "glib"
        database.setup
        define_milter("a") { |m| m.connection_spec = "inet:10026@[127.0.0.1]" }
        s25r.add_whitelist do |host|
          (8..19).include?(Time.now.hour) and /\\.jp\\z/ === host
        end
        '''
    source = write_ruby(tmp_path / "ruby", {"milter-manager.conf": ruby}, builtin_files=False)
    result = convert(source, tmp_path / "toml")
    assert result.returncode == 0
    main = source / "milter-manager.conf"
    lines = {int(problem.split(":")[1]): problem for problem in result.problems}
    assert sorted(lines) == [1, 4, 5, 8, 9, 11], result.stderr
    assert "[hooks] maintained" in lines[1] and str(main) in lines[1]
    assert "[hooks] started" in lines[4]
    assert "connection_checkers" in lines[5]
    assert '"glib"' in lines[8]
    assert "database.setup" in lines[9]
    assert "`s25r.add_whitelist` with a block" in lines[11]
    for problem in result.problems:  # each is also a comment in the TOML, where it would have gone
        assert f"# {problem}" in result.toml
    shown = check_and_show(result.out_dir)
    assert [milter["name"] for milter in milters(shown)] == ["a"]
    assert convert(source, tmp_path / "toml2", "--strict").returncode == 1


def test_ruby_syntax_of_the_subset(tmp_path):
    ruby = r'''
        spec = "inet:10026@[127.0.0.1]"
        define_milter 'one' do |milter|
          milter.connection_spec = spec   # a local variable bound to a literal
          milter.description = "tab\there \"quoted\" \u00e9"
          milter.command_options = %w(--a --b)
          milter.applicable_conditions = [:S25R]
        end
        define_milter("two") {
          |m|
          m.connection_spec = "inet:10027@[127.0.0.1]"
          m.enabled = "no"
        }
        define_milter("three") do |m| m.connection_spec = "inet:#{20000 + 1}@[127.0.0.1]" end
        log.level = "all" if true
        log.level = "none" unless true
        log.use_syslog = false if ENV["X"]
        =begin
        manager.n_workers = 999
        =end
        manager.n_workers = 0x3
        manager.connection_spec = ENV["SPEC"]
        '''
    source = write_ruby(tmp_path / "ruby", {"milter-manager.conf": ruby}, builtin_files=False)
    result = convert(source, tmp_path / "toml")
    problems = result.problems
    assert any(":14: cannot convert: a string with #{...} interpolation" in line for line in problems), problems
    assert any(":17: cannot convert: a statement under `if` with a condition computed at run time" in line
               for line in problems), problems
    assert any(":22: cannot convert: a value computed by `[]`; write the resulting value" in line
               for line in problems), problems
    assert any(":14: cannot convert: the milter 'three' has no connection_spec" in line for line in problems), problems
    shown = check_and_show(result.out_dir)
    one, two, three = milters(shown)
    assert one["connection_spec"] == "inet:10026@[127.0.0.1]"
    assert one["description"] == 'tab\there "quoted" \u00e9'
    assert one["command_options"] == ["--a", "--b"] and one["applicable_conditions"] == ["S25R"]
    assert two["enabled"] is False
    assert "connection_spec" not in three and three["enabled"] is False  # no spec: skipped by the original
    assert shown["log"]["level"] == "all"
    assert shown["manager"]["n_workers"] == 3


SMALL_OFFICE = '''\
# milter-manager.local.conf of a small office: spamass-milter and clamav-milter
manager.connection_spec = "inet:10025@[127.0.0.1]"
manager.unix_socket_group = "postfix"
remote_network.add_local_address("192.168.10.0/24")

define_milter("spamass-milter") do |milter|
  milter.connection_spec = "unix:/run/spamass/spamass.sock"
  milter.applicable_conditions = ["Remote Network", "Unauthenticated", "No Stress"]
  milter.reading_timeout = 30
  milter.end_of_message_timeout = 120
end

define_milter("clamav-milter") do |milter|
  milter.connection_spec = "unix:/run/clamav/clamav-milter.ctl"
  milter.fallback_status = "temporary-failure"
end
'''

PROVIDER = '''\
# milter-manager.local.conf of a provider: greylisting of dynamic-looking clients, archive for some customers
manager.n_workers = 4
manager.max_connections = 300
manager.use_netstat_connection_checker
s25r.add_whitelist(/\\.outbound\\.partner\\.example\\z/)
s25r.add_blacklist("dyn.badisp.example")
stress.threshold_n_connections = 150
trust.add_envelope_from_domain("customer.example")

define_milter("milter-greylist") do |milter|
  milter.connection_spec = "unix:/run/milter-greylist/milter-greylist.sock"
  milter.applicable_conditions = ["Sendmail Compatible", "Stress Notify", "Trust",
                                  "Remote Network", "S25R", "Unauthenticated"]
  milter.command = "/usr/bin/systemctl"
  milter.command_options = ["start", "milter-greylist"]
end

define_milter("archiver") do |milter|
  milter.connection_spec = "inet:10040@[127.0.0.1]"
end

restrict_accounts_by_list("archive@customer.example", /@legal\\.customer\\.example\\z/,
                          :condition_name => "Archived accounts", :milters => ["archiver"])
'''

SIGNER = '''\
# milter-manager.local.conf of a DKIM/DMARC signer: verify and sign, DMARC for outside mail
manager.fallback_status = "accept"
define_milter("opendkim") do |milter|
  milter.connection_spec = "inet:8891@[127.0.0.1]"
  milter.end_of_message_timeout = 60
end
define_milter("opendmarc") do |milter|
  milter.connection_spec = "unix:/run/opendmarc/opendmarc.sock"
  milter.applicable_conditions = ["Unauthenticated", "Remote Network"]
  milter.fallback_status = "accept"
end
define_applicable_condition("Outgoing only") do |condition|
  condition.description = "mail our users send"
  condition.define_envelope_from_stopper do |context, from|
    not context.authenticated?
  end
end
define_milter("footer") do |milter|
  milter.connection_spec = "inet:10050@[127.0.0.1]"
  milter.applicable_conditions = ["Outgoing only"]
end
'''


@pytest.mark.parametrize("local, expected", [
    (SMALL_OFFICE, [
        ("spamass-milter", "unix:/run/spamass/spamass.sock", ["Remote Network", "Unauthenticated", "No Stress"],
         "accept", (297.0, 7.0, 30.0, 120.0)),
        ("clamav-milter", "unix:/run/clamav/clamav-milter.ctl", [], "temporary-failure", (297.0, 7.0, 7.0, 297.0)),
    ]),
    (PROVIDER, [
        ("milter-greylist", "unix:/run/milter-greylist/milter-greylist.sock",
         ["Sendmail Compatible", "Stress Notify", "Trust", "Remote Network", "S25R", "Unauthenticated"], "accept",
         (297.0, 7.0, 7.0, 297.0)),
        ("archiver", "inet:10040@[127.0.0.1]", ["Archived accounts"], "accept", (297.0, 7.0, 7.0, 297.0)),
    ]),
    (SIGNER, [
        ("opendkim", "inet:8891@[127.0.0.1]", [], "accept", (297.0, 7.0, 7.0, 60.0)),
        ("opendmarc", "unix:/run/opendmarc/opendmarc.sock", ["Unauthenticated", "Remote Network"], "accept",
         (297.0, 7.0, 7.0, 297.0)),
        ("footer", "inet:10050@[127.0.0.1]", ["Outgoing only"], "accept", (297.0, 7.0, 7.0, 297.0)),
    ]),
], ids=["small-office", "provider", "dkim-dmarc-signer"])
def test_three_kinds_of_site(tmp_path, local, expected):
    source = write_ruby(tmp_path / "ruby", {"milter-manager.conf": DEBIAN_MAIN, "milter-manager.local.conf": local})
    result = convert(source, tmp_path / "toml", "--strict")
    assert result.returncode == 0 and result.problems == [], result.stderr
    shown = check_and_show(result.out_dir)
    # the Debian package's defaults: detection of Debian's milters, privilege mode
    assert shown["package"]["platform"] == "debian" and shown["security"]["privilege_mode"] is True
    got = [(milter["name"], milter["connection_spec"], milter["applicable_conditions"], milter["fallback_status"],
            (milter["connection_timeout"], milter["writing_timeout"], milter["reading_timeout"],
             milter["end_of_message_timeout"])) for milter in milters(shown)]
    assert got == expected
    if local is PROVIDER:
        assert shown["manager"]["n_workers"] == 4 and shown["manager"]["connection_checkers"] == ["netstat"]
        assert shown["manager"]["connection_check_interval"] == 5
        assert shown["s25r"]["whitelist"] == [r"\.outbound\.partner\.example\Z"]
        assert shown["s25r"]["blacklist_hosts"] == ["dyn.badisp.example"]
        assert shown["stress"]["threshold_n_connections"] == 150
        assert shown["trust"]["envelope_from_domains"] == ["customer.example"]
        assert shown["restrict_accounts"][0]["accounts"] == ["archive@customer.example"]
        assert by_name(shown)["milter-greylist"]["command_options"] == ["start", "milter-greylist"]
    if local is SIGNER:
        condition = shown["condition"][0]
        assert condition["name"] == "Outgoing only" and condition["description"] == "mail our users send"
        assert condition["rule"] == [{"stage": "envelope-from", "match": {"authenticated": False},
                                      "action": "stop"}]
    if local is SMALL_OFFICE:
        assert shown["remote_network"]["local_addresses"] == ["192.168.10.0/24"]
        assert shown["manager"]["unix_socket_group"] == "postfix"


STOPPERS = r'''
define_applicable_condition("Simple") do |c|
  c.define_connect_stopper { |context, host, address| host == "relay.example.com" or address.local? }
  c.define_helo_stopper { |context, fqdn| fqdn =~ /\Alocalhost/ }
  c.define_envelope_recipient_stopper do |context, recipient|
    /@ml\.example\.com>\z/ =~ recipient
  end
  c.define_header_stopper { |context, name, value| name == "X-Spam-Flag" }
  c.define_body_stopper { |context, chunk| /^-----BEGIN PGP SIGNATURE-----$/ =~ chunk }
  c.define_data_stopper { |context| context.children["milter-greylist"].reject? }
  c.define_end_of_message_stopper { |context| false }
end
define_applicable_condition("Directory") do |c|
  c.description = "only for users in LDAP"
  c.define_envelope_recipient_stopper do |context, recipient|
    ldap = Net::LDAP.new(host: "ldap.example.com")
    ldap.search(filter: "mail=#{recipient}").empty?
  end
  c.define_data_stopper do |context|
    context.mail_transaction_shelf["skip"]
  end
end
define_milter("milter-greylist") { |m| m.connection_spec = "inet:10027@[127.0.0.1]" }
define_milter("m") do |m|
  m.connection_spec = "inet:10026@[127.0.0.1]"
  m.applicable_conditions = ["Simple", "Directory"]
end
'''


def test_stoppers_become_rules_or_python_with_a_skeleton(tmp_path):
    source = write_ruby(tmp_path / "ruby", {"milter-manager.conf": STOPPERS}, builtin_files=False)
    plain = convert(source, tmp_path / "plain")
    assert plain.returncode == 0
    assert [problem.split(":")[1] for problem in plain.problems] == ["15", "19"], plain.stderr
    assert "write it in Python" in plain.problems[0] and "Directory" in plain.problems[0]
    shown = check_and_show(plain.out_dir)  # without the skeleton the condition is empty: it never stops
    simple = next(condition for condition in shown["condition"] if condition["name"] == "Simple")
    assert simple["rule"] == [
        {"stage": "connect", "match": {"client_host_exact": ["relay.example.com"]}, "action": "stop"},
        {"stage": "connect", "match": {"client_local": True}, "action": "stop"},
        {"stage": "helo", "match": {"helo": [r"\Alocalhost"]}, "action": "stop"},
        {"stage": "envelope-recipient", "match": {"envelope_recipient": [r"@ml\.example\.com>\Z"]},
         "action": "stop"},
        {"stage": "header", "match": {"header": {"name": r"\AX\-Spam\-Flag\Z"}}, "action": "stop"},
        {"stage": "body", "match": {"body": ["^-----BEGIN PGP SIGNATURE-----$"]}, "action": "stop"},
        {"stage": "data", "match": {"milter_status": {"milter-greylist": ["reject"]}}, "action": "stop"},
    ]

    skeleton_dir = tmp_path / "with-python"
    result = convert(source, skeleton_dir, "--python-skeleton", str(skeleton_dir), "--strict")
    assert result.returncode == 1  # --strict: something was not converted
    module = (skeleton_dir / "milter_manager_conditions.py").read_text()
    assert "class Directory:" in module
    assert "def envelope_recipient(self, facts) -> bool:" in module and "def data(self, facts) -> bool:" in module
    assert '# Ruby:     ldap.search(filter: "mail=#{recipient}").empty?' in module
    assert 'python = "milter_manager_conditions:Directory"' in result.toml
    edited = module.replace("class Directory:", "class Directory:\n    edited = True")
    (skeleton_dir / "milter_manager_conditions.py").write_text(edited)
    again = convert(source, skeleton_dir, "--python-skeleton", str(skeleton_dir))
    assert "milter_manager_conditions.py: exists, not overwritten" in again.stderr
    assert "edited = True" in (skeleton_dir / "milter_manager_conditions.py").read_text()
    shown = check_and_show(skeleton_dir)  # the module beside the configuration is found
    directory = next(condition for condition in shown["condition"] if condition["name"] == "Directory")
    assert directory["python"] == "milter_manager_conditions:Directory"
    assert directory["description"] == "only for users in LDAP"


def test_load_follows_only_the_files_named(tmp_path):
    main = '''\
        load("applicable-conditions/*.conf")
        load_if_exist("missing.conf")
        load "conf.d"
        load_if_exist("milter-manager.local.conf")
        load("not-there.conf")
        '''
    files = {"milter-manager.conf": main,
             "applicable-conditions/site.conf": 'define_applicable_condition("Site") { |c| c.define_data_stopper '
                                                '{ |ctx| true } }\n',
             "conf.d/10-a.conf": 'define_milter("a") { |m| m.connection_spec = "inet:10026@[127.0.0.1]" }\n',
             "conf.d/20-b.conf": 'define_milter("b") { |m| m.connection_spec = "inet:10027@[127.0.0.1]"\n'
                                 '  m.applicable_conditions = ["Site", "Nowhere"] }\n',
             "milter-manager.local.conf": 'define_milter("a") { |m| m.enabled = false }\n',
             "unrelated.conf": 'define_milter("unrelated") { |m| m.connection_spec = "inet:1@[127.0.0.1]" }\n'}
    source = write_ruby(tmp_path / "ruby", files)
    result = convert(source, tmp_path / "toml")
    assert any(":5: cannot convert: load('not-there.conf') names no file" in line for line in result.problems)
    assert any("20-b.conf:2: cannot convert: the applicable condition 'Nowhere'" in line for line in result.problems)
    assert len(result.problems) == 2, result.stderr  # the built-in files were not read
    shown = check_and_show(result.out_dir)
    assert [(milter["name"], milter["enabled"]) for milter in milters(shown)] == [("a", False), ("b", True)]
    assert by_name(shown)["b"]["applicable_conditions"] == ["Site"]
    assert shown["condition"][0]["rule"] == [{"stage": "data", "action": "stop"}]


def test_a_single_file_and_the_usage(tmp_path):
    path = tmp_path / "site.conf"
    path.write_text('define_milter("a") { |m| m.connection_spec = "inet:10026@[127.0.0.1]" }\n')
    result = convert(path, tmp_path / "toml")
    assert result.returncode == 0 and 'name = "a"' in result.toml
    from tools_support import run_tool
    bad = run_tool("convert_config", "--bogus", str(path))
    assert bad.returncode == 1 and "--bogus" in bad.stdout and "Usage:" in bad.stdout
    version = run_tool("convert_config", "--version")
    assert version.returncode == 0 and version.stdout.startswith("milter-manager-convert-config ")
    missing = run_tool("convert_config", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "no such file or directory" in missing.stdout


def test_package_and_database_items(tmp_path):
    ruby = '''\
        package.platform = "debian"
        package.options = "prefix=/usr/pkg"
        database.type = "sqlite3"
        database.name = "/var/lib/milter-manager/site.db"
        database.host = "db.example.com"
        database.port = 5432
        database.path = "/run/db.sock"
        database.user = "milter"
        database.password = "secret"
        database.extra_options = {"timeout" => 5}
        load_default
        '''
    source = write_ruby(tmp_path / "ruby", {"milter-manager.conf": ruby}, builtin_files=False)
    result = convert(source, tmp_path / "toml")
    shown = check_and_show(result.out_dir)
    assert shown["package"]["platform"] == "debian"
    if "options" in shown["package"]:
        assert shown["package"]["options"] == "prefix=/usr/pkg"
    else:  # a key milterman refuses is reported, never written
        assert any(":2: cannot convert: package.options" in line for line in result.problems), result.stderr
    if "database" in shown:
        assert shown["database"] == {"type": "sqlite3", "name": "/var/lib/milter-manager/site.db",
                                     "host": "db.example.com", "port": 5432, "path": "/run/db.sock",
                                     "user": "milter", "password": "secret", "extra_options": {"timeout": 5}}
    else:
        assert sum(": cannot convert: database." in line for line in result.problems) == 8, result.stderr


def test_load_default_of_another_platform_is_reported(tmp_path):
    ruby = 'package.platform = "redhat9"\nload_default\n'
    source = write_ruby(tmp_path / "ruby", {"milter-manager.conf": ruby}, builtin_files=False)
    result = convert(source, tmp_path / "toml", "--strict")
    assert result.returncode == 1
    assert [line.split(": cannot convert: ")[1] for line in result.problems] == [
        "load_default for the platform 'redhat9'; milterman detects only Debian's milters: define the milters it "
        "found as [[milter]] tables"]
    shown = check_and_show(result.out_dir)
    assert "platform" not in shown.get("package", {})
