"""Configuration texts copied from configuration.md Part B (B4, B5, B7, B8, B10), for the tests."""

B4_TUNABLES = r'''[s25r]
check_only_ipv4 = true            # M-AC-B1 step 1
use_default_lists = true          # false = start with empty white/black lists
whitelist = []                    # regexes, appended after the defaults
whitelist_hosts = []              # exact host names
blacklist = []                    # regexes
blacklist_hosts = []              # exact host names ("unknown" is a default entry)

[remote_network]
local_addresses = []              # IPs or CIDRs, IPv4/IPv6
remote_addresses = []             # checked first

[stress]
threshold_n_connections = -1      # -1 = auto-detect (M-AC-B5); 0 = never stressed; n = threshold

[trust]
use_default_domains = true        # false = trust.clear
envelope_from_domains = []        # exact, compared with the lower-cased domain
envelope_from_domain_patterns = []   # regexes (case-insensitive)
envelope_from_domain_files = []   # files in the trust.load_envelope_from_domains format

[dnsbl]
use_default_services = true
services = []                     # [{ zone = "…", expect = "127.0.0.2" or "127.0.0.0/24" (optional) }]
name_servers = []                 # empty = system resolver
timeout = 5.0

[[restrict_accounts]]             # one table = one generated condition (M-AC-B8)
condition_name = "Restrict Accounts"          # default "Restrict Accounts by List: <accounts>"
accounts = []                     # exact addresses (angle brackets stripped before comparing)
account_patterns = []             # regexes
milters = ["*"]                   # globs; the condition is appended to these milters' applicable_conditions
'''

B5_CONDITION = r'''[[condition]]
name = "example"                 # unique; may not reuse a built-in name
description = "what it does"
attach_to = []                   # optional: globs of milters to append this condition to (applied after
                                 # all [[milter]] merging, before [[milter_patch]])

  [[condition.rule]]
  stage = "connect"              # one stage (C-TOML-5, "unknown" not allowed)
  match = { client_local = true }   # predicates, all must hold (B5.1); omitted/empty = always
  action = "stop"                # "stop" (child not applied) | "apply" (do not stop)
  set_macros = {}                # name = value, set on the child when the rule matches (M-MAC-4)
  set_flags = []                 # transaction-shelf flags set when the rule matches
'''

B7_RULE = r'''[[rule]]
name = "reject one bad recipient"  # for logs
stage = "envelope-recipient"
match = { envelope_recipient = ['\A<?abuse-test@example\.com>?\Z'] }   # B5.1 predicates
action = "reject"                # skip | only | accept | reject | temporary-failure | discard | set-macro
milters = []                     # globs, for skip / only
reply = { code = 550, xcode = "5.1.1", text = "No such user" }   # optional; reject / temporary-failure only
set_macros = {}                  # for set-macro (applied to every child)
final = false                    # true: later rules are not evaluated for this command
'''

B8_CONDITIONS = r'''[[condition]]                     # == "S25R" with defaults
name = "S25R (rules)"
  [[condition.rule]]
  stage = "connect"
  match = { not_client_family = ["inet"] }
  action = "stop"
  [[condition.rule]]
  stage = "connect"
  match = { client_host = ['\.google\.com\Z', '\.obsmtp\.com\Z', '\.smtp-out\.amazonses\.com\Z',
                           '\.slack\.com\Z', '\.mg\.gitlab\.com\Z', '\.sendgrid\.net\Z'] }
  action = "stop"
  [[condition.rule]]
  stage = "connect"
  match = { client_host_exact = ["unknown"] }
  action = "apply"
  [[condition.rule]]
  stage = "connect"
  match = { client_host = ['\A\[.+\]\Z', '\A[^.]*\d[^\d.]+\d.*\.', '\A[^.]*\d{5}',
                           '(?i)\A(?:[^.]+\.)?\d[^.]*\.[^.]+\..+\.[a-z]', '\A[^.]*\d\.[^.]*\d-\d',
                           '\A[^.]*\d\.[^.]*\d\.[^.]+\..+\.', '(?i)\A(?:dhcp|dialup|ppp|[achrsvx]?dsl)[^.]*\d'] }
  action = "apply"
  [[condition.rule]]
  stage = "connect"
  action = "stop"

[[condition]]                     # == "Remote Network"
name = "Remote Network (rules)"
  [[condition.rule]]
  stage = "connect"
  match = { client_local = false, not_client_family = ["unknown"] }
  action = "apply"
  [[condition.rule]]
  stage = "connect"
  action = "stop"

[[condition]]                     # == "Authenticated"; "Unauthenticated" uses authenticated = true
name = "Authenticated (rules)"
  [[condition.rule]]
  stage = "envelope-from"
  match = { authenticated = false }
  action = "stop"

[[condition]]                     # == "No Stress"
name = "No Stress (rules)"
  [[condition.rule]]
  stage = "connect"
  match = { stressed = true }
  action = "stop"

[[condition]]                     # == "Stress Notify"
name = "Stress Notify (rules)"
  [[condition.rule]]
  stage = "connect"
  match = { stressed = true }
  set_macros = { stress = "yes" }
  action = "apply"

[[condition]]                     # == "Trust"
name = "Trust (rules)"
  [[condition.rule]]
  stage = "envelope-from"
  match = { trusted_envelope_from_domain = true }
  set_macros = { trusted_domain = "yes" }
  action = "apply"

[[condition]]                     # == "DNSBL Listed"; "Not DNSBL Listed" uses dnsbl_listed = true → stop
name = "DNSBL Listed (rules)"
  [[condition.rule]]
  stage = "connect"
  match = { dnsbl_listed = false }
  action = "stop"

[[condition]]                     # == restrict_accounts_by_list("bob@example.com", /@example\.co\.jp\z/)
name = "Restrict Accounts (rules)"
  [[condition.rule]]
  stage = "envelope-recipient"
  match = { envelope_recipient = ['\A<?bob@example\.com>?\Z', '@example\.co\.jp>?\Z'] }
  action = "apply"
  [[condition.rule]]
  stage = "envelope-recipient"
  set_flags = ["have-not-restricted-account"]
  set_macros = { have-not-restricted-account = "true" }
  action = "stop"
  [[condition.rule]]
  stage = "data"
  match = { flag = ["have-not-restricted-account"] }
  action = "stop"
'''

EXAMPLE_1 = r'''version = 1

[manager]
connection_spec = "unix:/run/milter-manager/milter-manager.sock"
unix_socket_group = "postfix"

[[milter]]
name = "opendkim"
connection_spec = "unix:/run/opendkim/opendkim.sock"

[[milter]]
name = "clamav-milter"
connection_spec = "unix:/run/clamav/clamav-milter.ctl"
fallback_status = "temporary-failure"
end_of_message_timeout = 120.0
'''

EXAMPLE_2 = r'''version = 1
include = ["milter-manager.local.toml", "conf.d/*.toml"]

[security]
privilege_mode = true
effective_user = "milter-manager"
effective_group = "milter-manager"

[log]
level = "default|info"
use_syslog = true
syslog_facility = "mail"

[manager]
connection_spec = "unix:/run/milter-manager/milter-manager.sock"
unix_socket_mode = 0o660
unix_socket_group = "postfix"
pid_file = "/run/milter-manager/milter-manager.pid"
fallback_status = "accept"
n_workers = 4
max_connections = 200
connection_check_interval = 5
connection_checkers = ["netstat"]

[controller]
connection_spec = "unix:/run/milter-manager/milter-manager-controller.sock"
unix_socket_mode = 0o600

[remote_network]
local_addresses = ["203.0.113.0/24", "2001:db8:10::/48"]

[s25r]
whitelist = ['\.mail\.example\.net\Z']
blacklist_hosts = ["black.example.com"]

[stress]
threshold_n_connections = 75

[trust]
envelope_from_domains = ["example.com"]

[[milter]]
name = "milter-greylist"
connection_spec = "unix:/run/milter-greylist/milter-greylist.sock"
applicable_conditions = ["Sendmail Compatible", "Stress Notify", "Trust",
                         "Remote Network", "S25R", "Unauthenticated"]
command = "/usr/bin/systemctl"
command_options = ["start", "milter-greylist"]

[[milter]]
name = "spamass-milter"
connection_spec = "unix:/run/spamass/spamass.sock"
applicable_conditions = ["Remote Network", "Unauthenticated", "No Stress"]
reading_timeout = 30.0
end_of_message_timeout = 120.0

[[milter]]
name = "clamav-milter"
connection_spec = "unix:/run/clamav/clamav-milter.ctl"
fallback_status = "temporary-failure"

[[milter]]
name = "opendkim"
connection_spec = "inet:8891@[127.0.0.1]"

[[milter]]
name = "milter-bcc"
connection_spec = "inet:10030@[127.0.0.1]"
applicable_conditions = ["Authenticated"]
enabled = false
'''

EXAMPLE_3 = r'''version = 1

[manager]
connection_spec = "inet:10025@[127.0.0.1]"
fallback_status = "temporary-failure"

[[milter]]
name = "rspamd"
connection_spec = "inet:11332@[127.0.0.1]"
evaluation_mode = true                       # observe only (see M-EVAL-3 for the C caveat)

[[milter]]
name = "milter-greylist"
connection_spec = "unix:/run/milter-greylist/milter-greylist.sock"
applicable_conditions = ["Remote Network", "S25R", "skip-spam-flagged"]

[[milter]]
name = "archiver"
connection_spec = "inet:10040@[127.0.0.1]"

[[milter]]
name = "spam-quarantine"                     # runs after rspamd in the pipeline, so rspamd's EOM verdict is known
connection_spec = "inet:10041@[127.0.0.1]"
applicable_conditions = ["only-if-rspamd-rejected"]

[[restrict_accounts]]
condition_name = "Archive only sales"
accounts = ["sales@example.com"]
account_patterns = ['@sales\.example\.com\Z']
milters = ["archiver"]

[[condition]]
name = "skip-spam-flagged"
description = "do not greylist mail an upstream filter already flagged"
  [[condition.rule]]
  stage = "header"
  match = { header = { name = '(?i)\AX-Spam-Flag\Z', value = '(?i)\AYES\Z' } }
  action = "stop"

[[condition]]
name = "only-if-rspamd-rejected"
  [[condition.rule]]
  stage = "header"                           # first replayed header, after rspamd finished EOM
  match = { not_milter_status = { "rspamd" = ["reject", "discard"] } }
  action = "stop"

[[rule]]
name = "refuse localhost HELO from outside"
stage = "helo"
match = { helo = ['(?i)\Alocalhost(\.localdomain)?\Z'], client_local = false }
action = "reject"
reply = { code = 550, xcode = "5.7.1", text = "Bad HELO" }
final = true

[[rule]]
name = "internal relays bypass greylisting"
stage = "connect"
match = { client_address = ["10.0.0.0/8"] }
action = "skip"
milters = ["milter-greylist"]
'''
