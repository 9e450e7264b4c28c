"""Applicable conditions: every B5.1 predicate, every built-in (M-AC-B1…B8), C-COND-1, B8 equivalence, D-2.

Pure unit tests: configurations come from ``load_string``, the leader and children are the
fakes of :mod:`conditions_support`, DNS answers come from a fake resolver.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import time

import pytest

from milterman.manager import builtin_conditions as builtin_module
from milterman.manager.builtin_conditions import (Condition, dns_query, parse_dns_reply, postfix_master_command,
                                                  postfix_process_limit)
from milterman.manager.conditions import ConditionChain, build
from milterman.manager.predicates import address_domain, in_window, mta_kind
from milterman.protocol import Connect, Header, Mail, Rcpt

from conditions_support import POSTFIX, Driver, FakeResolver, clock_at, configuration

# ============================================================================================ helpers

DEFAULT_RECIPIENTS = ("<bob@example.com>",)


def single_rule(stage: str, match: str, extra: str = "", action: str = "stop", **options) -> Driver:
    """A driver with one milter ``m`` carrying one condition ``c`` made of one rule."""
    text = f"""
[[condition]]
name = "c"
  [[condition.rule]]
  stage = "{stage}"
  match = {match}
  action = "{action}"
{extra}
"""
    return Driver(configuration(text, {"m": ["c"]}), **options)


def play(driver: Driver, stage: str, *, host: str = "mail.example.org", address: str = "192.0.2.10",
         helo: str = "mail.example.org", sender: str = "<alice@example.org>",
         recipients=DEFAULT_RECIPIENTS, headers=(("Subject", "hello"),), body: bytes = b"hello\r\n",
         macros: dict | None = None, child: str = "m") -> bool:
    """Play a new session up to ``stage`` and return whether ``child`` was stopped there (last RCPT/header)."""
    macros = macros or {}
    driver.new_session()
    result = driver.connect(host, address, macros=macros.get("C"))
    if stage == "connect":
        return result[child]
    result = driver.helo(helo, macros=macros.get("H"))
    if stage == "helo":
        return result[child]
    result = driver.mail(sender, macros=macros.get("M"))
    if stage == "envelope-from":
        return result[child]
    for recipient in recipients:
        result = driver.rcpt(recipient, macros=macros.get("R"))
    if stage == "envelope-recipient":
        return result[child]
    result = driver.data(macros=macros.get("T"))
    if stage == "data":
        return result[child]
    for name, value in headers:
        result = driver.header(name, value)
    if stage == "header":
        return result[child]
    result = driver.end_of_header()
    if stage == "end-of-header":
        return result[child]
    result = driver.body(body)
    if stage == "body":
        return result[child]
    return driver.end_of_message()[child]


def resolver_listing(ip: str, zone: str = "zen.spamhaus.org", answer: str = "127.0.0.10") -> FakeResolver:
    reversed_ip = ".".join(reversed(ip.split(".")))
    return FakeResolver({f"{reversed_ip}.{zone}": (answer,)})


# ============================================================================================ B5.1 predicates
# (id, stage, match, session facts, driver options, expected stop)

PREDICATE_CASES = [
    # client_address
    ("client_address-inside", "connect", '{ client_address = ["192.0.2.0/24"] }', {}, {}, True),
    ("client_address-outside", "connect", '{ client_address = ["192.0.2.0/24"] }',
     {"address": "198.51.100.1"}, {}, False),
    ("client_address-ipv6", "envelope-from", '{ client_address = ["2001:db8::/32"] }',
     {"address": "2001:db8::5"}, {}, True),
    ("client_address-unix-false", "connect", '{ client_address = ["0.0.0.0/0"] }',
     {"address": "/run/smtpd.sock"}, {}, False),
    # client_family
    ("client_family-inet6", "connect", '{ client_family = ["inet6"] }', {"address": "2001:db8::5"}, {}, True),
    ("client_family-not-inet6", "connect", '{ client_family = ["inet6"] }', {}, {}, False),
    ("client_family-unix", "helo", '{ client_family = ["unix"] }', {"address": "/run/smtpd.sock"}, {}, True),
    ("client_family-unknown", "connect", '{ client_family = ["unknown", "unix"] }', {"address": ""}, {}, True),
    # client_local (M-AC-B2)
    ("client_local-private", "connect", "{ client_local = true }", {"address": "10.1.2.3"}, {}, True),
    ("client_local-public", "connect", "{ client_local = true }", {}, {}, False),
    ("client_local-false-public", "connect", "{ client_local = false }", {}, {}, True),
    ("client_local-unknown-never", "connect", "{ client_local = false }", {"address": ""}, {}, False),
    ("client_local-unknown-never-true", "connect", "{ client_local = true }", {"address": ""}, {}, False),
    # client_host / client_host_exact / client_resolved
    ("client_host-match", "connect", r"""{ client_host = ['\.example\.org\Z'] }""", {}, {}, True),
    ("client_host-no-match", "connect", r"""{ client_host = ['\.example\.net\Z'] }""", {}, {}, False),
    ("client_host_exact-match", "data", '{ client_host_exact = ["x", "mail.example.org"] }', {}, {}, True),
    ("client_host_exact-no-match", "connect", '{ client_host_exact = ["example.org"] }', {}, {}, False),
    ("client_resolved-true", "connect", "{ client_resolved = true }", {}, {}, True),
    ("client_resolved-bracket", "connect", "{ client_resolved = true }", {"host": "[192.0.2.10]"}, {}, False),
    ("client_resolved-unknown", "connect", "{ client_resolved = false }", {"host": "unknown"}, {}, True),
    # helo
    ("helo-match", "helo", r"""{ helo = ['\Alocalhost\Z'] }""", {"helo": "localhost"}, {}, True),
    ("helo-no-match", "helo", r"""{ helo = ['\Alocalhost\Z'] }""", {}, {}, False),
    ("helo-later-stage", "envelope-from", r"""{ helo = ['(?i)\AMAIL\.'] }""", {}, {}, True),
    # envelope_from
    ("envelope_from-match", "envelope-from", r"""{ envelope_from = ['@example\.org>\Z'] }""", {}, {}, True),
    ("envelope_from-no-match", "envelope-from", r"""{ envelope_from = ['@example\.net>\Z'] }""", {}, {}, False),
    ("envelope_from-null-sender", "envelope-recipient", r"""{ envelope_from = ['\A<>\Z'] }""",
     {"sender": "<>"}, {}, True),
    # envelope_from_domain
    ("envelope_from_domain-exact", "envelope-from", '{ envelope_from_domain = ["example.org"] }',
     {"sender": "<a@EXAMPLE.org>"}, {}, True),
    ("envelope_from_domain-subdomain-not-exact", "envelope-from", '{ envelope_from_domain = ["example.org"] }',
     {"sender": "<a@sub.example.org>"}, {}, False),
    ("envelope_from_domain-dot-subdomain", "envelope-from", '{ envelope_from_domain = [".example.org"] }',
     {"sender": "<a@sub.example.org>"}, {}, True),
    ("envelope_from_domain-dot-itself", "data", '{ envelope_from_domain = [".example.org"] }', {}, {}, True),
    ("envelope_from_domain-dot-lookalike", "envelope-from", '{ envelope_from_domain = [".example.org"] }',
     {"sender": "<a@badexample.org>"}, {}, False),
    ("envelope_from_domain-null-sender", "envelope-from", '{ envelope_from_domain = ["example.org"] }',
     {"sender": "<>"}, {}, False),
    # envelope_recipient: current RCPT, then the quantifier
    ("envelope_recipient-current", "envelope-recipient", r"""{ envelope_recipient = ['\A<bob@'] }""", {}, {},
     True),
    ("envelope_recipient-current-no", "envelope-recipient", r"""{ envelope_recipient = ['\A<bob@'] }""",
     {"recipients": ("<bob@example.com>", "<carol@example.com>")}, {}, False),
    ("envelope_recipient-any", "data", r"""{ envelope_recipient = ['\A<bob@'] }""",
     {"recipients": ("<carol@example.com>", "<bob@example.com>")}, {}, True),
    ("envelope_recipient-any-none", "data", r"""{ envelope_recipient = ['\A<bob@'] }""",
     {"recipients": ("<carol@example.com>",)}, {}, False),
    ("envelope_recipient-all", "data", r"""{ envelope_recipient = ['@example\.com>\Z'], recipients = "all" }""",
     {"recipients": ("<carol@example.com>", "<bob@example.com>")}, {}, True),
    ("envelope_recipient-all-not", "end-of-message",
     r"""{ envelope_recipient = ['@example\.com>\Z'], recipients = "all" }""",
     {"recipients": ("<carol@example.com>", "<bob@example.net>")}, {}, False),
    ("envelope_recipient-not-all", "data", r"""{ not_envelope_recipient = ['\A<bob@'], recipients = "all" }""",
     {"recipients": ("<carol@example.com>", "<bob@example.com>")}, {}, True),
    # envelope_recipient_domain
    ("envelope_recipient_domain-current", "envelope-recipient", '{ envelope_recipient_domain = ["example.com"] }',
     {}, {}, True),
    ("envelope_recipient_domain-current-no", "envelope-recipient",
     '{ envelope_recipient_domain = ["example.net"] }', {}, {}, False),
    ("envelope_recipient_domain-all", "header",
     '{ envelope_recipient_domain = [".example.com"], recipients = "all" }',
     {"recipients": ("<a@example.com>", "<b@lists.example.com>")}, {}, True),
    ("envelope_recipient_domain-all-not", "data",
     '{ envelope_recipient_domain = [".example.com"], recipients = "all" }',
     {"recipients": ("<a@example.com>", "<b@example.net>")}, {}, False),
    # header: current at header, any so far later
    ("header-current", "header", r"""{ header = { name = '(?i)\AX-Spam-Flag\Z', value = '\AYES\Z' } }""",
     {"headers": (("X-Spam-Flag", "YES"),)}, {}, True),
    ("header-current-value-differs", "header", r"""{ header = { name = '(?i)\AX-Spam-Flag\Z', value = '\AYES' } }""",
     {"headers": (("X-Spam-Flag", "NO"),)}, {}, False),
    ("header-only-the-current-one", "header", r"""{ not_header = { name = '\ATo\Z' } }""",
     {"headers": (("To", "y"), ("Subject", "x"))}, {}, True),
    ("header-any-so-far", "end-of-header", r"""{ header = { name = '\ASubject\Z' } }""",
     {"headers": (("Subject", "x"), ("To", "y"))}, {}, True),
    ("header-none-so-far", "body", r"""{ header = { value = 'viagra' } }""", {}, {}, False),
    # body (re.MULTILINE, CRLF lines)
    ("body-match", "body", r"""{ body = ['^-----BEGIN PGP SIGNATURE-----$'] }""",
     {"body": b"text\r\n-----BEGIN PGP SIGNATURE-----\r\nabc\r\n"}, {}, True),
    ("body-no-match", "body", r"""{ body = ['^-----BEGIN PGP SIGNATURE-----$'] }""", {}, {}, False),
    # authenticated
    ("authenticated-auth_type", "envelope-from", "{ authenticated = true }",
     {"macros": {"M": {"auth_type": "PLAIN"}}}, {}, True),
    ("authenticated-empty-auth_authen", "data", "{ authenticated = true }",
     {"macros": {"M": {"auth_authen": ""}}}, {}, True),
    ("authenticated-absent", "envelope-from", "{ authenticated = true }", {"macros": {"M": {"i": "Q1"}}}, {}, False),
    ("authenticated-false", "envelope-from", "{ authenticated = false }", {}, {}, True),
    # macro
    ("macro-regex", "envelope-from", r"""{ macro = { "{daemon_name}" = '\AORIGINATING\Z' } }""",
     {"macros": {"C": {"daemon_name": "ORIGINATING"}}}, {}, True),
    ("macro-regex-no", "envelope-from", r"""{ macro = { daemon_name = '\AORIGINATING\Z' } }""",
     {"macros": {"C": {"daemon_name": "smtpd"}}}, {}, False),
    ("macro-present", "connect", "{ macro = { j = true } }", {"macros": {"C": {"j": "mx"}}}, {}, True),
    ("macro-absent-wanted", "connect", "{ macro = { j = false } }", {"macros": {"C": {"j": "mx"}}}, {}, False),
    ("macro-all-listed", "helo", "{ macro = { j = true, v = false } }", {"macros": {"C": {"j": "mx"}}}, {}, True),
    # mta
    ("mta-postfix", "connect", '{ mta = "postfix" }', {"macros": {"C": POSTFIX}}, {}, True),
    ("mta-postfix-no", "connect", '{ mta = "postfix" }', {"macros": {"C": {"v": "8.17.1"}}}, {}, False),
    ("mta-sendmail", "helo", '{ mta = "sendmail" }', {"macros": {"C": {"v": "Sendmail 8.17.1"}}}, {}, True),
    ("mta-other", "connect", '{ mta = "other" }', {"macros": {"C": {"v": "8.17.1"}}}, {}, True),
    ("mta-other-no-v", "connect", '{ mta = "other" }', {}, {}, True),
    # stressed (M-AC-B5)
    ("stressed-yes", "connect", "{ stressed = true }", {}, {"stress_threshold": 2, "sessions": 2}, True),
    ("stressed-no", "connect", "{ stressed = true }", {}, {"stress_threshold": 2, "sessions": 1}, False),
    ("stressed-zero-never", "connect", "{ stressed = true }", {}, {"stress_threshold": 0, "sessions": 999}, False),
    # s25r (M-AC-B1)
    ("s25r-dynamic", "connect", "{ s25r = true }", {"host": "p2034-ipbf1103funabasi.chiba.ocn.ne.jp"}, {}, True),
    ("s25r-static", "connect", "{ s25r = true }", {}, {}, False),
    ("s25r-false", "helo", "{ s25r = false }", {}, {}, True),
    # dnsbl_listed (M-AC-B7)
    ("dnsbl_listed-listed", "connect", "{ dnsbl_listed = true }", {},
     {"resolver": resolver_listing("192.0.2.10")}, True),
    ("dnsbl_listed-not", "connect", "{ dnsbl_listed = true }", {}, {}, False),
    ("dnsbl_listed-zone", "connect", '{ dnsbl_listed = ["zen.spamhaus.org"] }', {},
     {"resolver": resolver_listing("192.0.2.10")}, True),
    ("dnsbl_listed-other-zone", "connect", '{ dnsbl_listed = ["bl.spamcop.net"] }', {},
     {"resolver": resolver_listing("192.0.2.10")}, False),
    ("dnsbl_listed-failure-is-not-listed", "connect", "{ dnsbl_listed = false }", {},
     {"resolver": FakeResolver(fail=True)}, True),
    # trusted_envelope_from_domain (M-AC-B6)
    ("trusted_envelope_from_domain-yes", "envelope-from", "{ trusted_envelope_from_domain = true }",
     {"sender": "<alice@Gmail.COM>"}, {}, True),
    ("trusted_envelope_from_domain-no", "envelope-from", "{ trusted_envelope_from_domain = true }", {}, {}, False),
    ("trusted_envelope_from_domain-later", "data", "{ trusted_envelope_from_domain = false }", {}, {}, True),
    # flag
    ("flag-absent", "data", '{ flag = ["x", "y"] }', {}, {}, False),
    # time (local time, clock injected)
    ("time-inside", "connect", '{ time = { hours = "08:00-19:59" } }', {},
     {"clock": clock_at("2024-05-03 12:00")}, True),
    ("time-outside", "connect", '{ time = { hours = "08:00-19:59" } }', {},
     {"clock": clock_at("2024-05-03 20:00")}, False),
    ("time-end-inclusive", "connect", '{ time = { hours = "08:00-19:59" } }', {},
     {"clock": clock_at("2024-05-03 19:59")}, True),
    ("time-wraps", "connect", '{ time = { hours = "22:00-06:00" } }', {},
     {"clock": clock_at("2024-05-03 03:10")}, True),
    ("time-wraps-outside", "connect", '{ time = { hours = "22:00-06:00" } }', {},
     {"clock": clock_at("2024-05-03 07:10")}, False),
    ("time-days", "connect", '{ time = { days = ["fri"] } }', {}, {"clock": clock_at("2024-05-03 07:10")}, True),
    ("time-days-other", "connect", '{ time = { days = ["sat", "sun"] } }', {},
     {"clock": clock_at("2024-05-03 07:10")}, False),
    ("time-wrap-belongs-to-start-day", "connect", '{ time = { hours = "22:00-02:00", days = ["fri"] } }', {},
     {"clock": clock_at("2024-05-04 01:00")}, True),
    # not_ negation
    ("not_client_host", "connect", r"""{ not_client_host = ['\A\[.+\]\Z'] }""", {}, {}, True),
    ("not_client_host-no", "connect", r"""{ not_client_host = ['\A\[.+\]\Z'] }""", {"host": "[192.0.2.10]"}, {},
     False),
    ("not_helo-missing-data-holds", "helo", r"""{ not_helo = ['\Alocalhost\Z'] }""", {}, {}, True),
    ("two-predicates-all-must-hold", "connect", '{ client_local = true, client_family = ["inet6"] }',
     {"address": "10.0.0.1"}, {}, False),
]


@pytest.mark.parametrize("stage,match,facts,options,expected",
                         [case[1:] for case in PREDICATE_CASES], ids=[case[0] for case in PREDICATE_CASES])
def test_b5_1_predicate(stage, match, facts, options, expected):
    """B5.1: each predicate stops the child when it holds and lets it through when it does not."""
    driver = single_rule(stage, match, **options)
    assert play(driver, stage, **facts) is expected


def test_b5_1_every_predicate_is_covered():
    """Every predicate of B5.1 appears in the table above with a stop and a no-stop case."""
    from milterman.config.predicates import PREDICATES

    seen: dict[str, set[bool]] = {}
    for _id, _stage, match, _facts, _options, expected in PREDICATE_CASES:
        for name in PREDICATES:
            if f"{name} =" in match or f"not_{name} =" in match:
                seen.setdefault(name, set()).add(expected)
    missing = {name for name in PREDICATES if name not in ("milter_status", "flag")
               and seen.get(name) != {True, False}}
    assert not missing  # milter_status and flag have their own tests below


def test_b5_1_milter_status_sibling():
    """B5.1 milter_status: the sibling's last recorded status; "quitted" for a quitted child."""
    text = """
[[condition]]
name = "after-rspamd"
  [[condition.rule]]
  stage = "header"
  match = { not_milter_status = { "rspamd" = ["reject", "discard"] } }
  action = "stop"
"""
    driver = Driver(configuration(text, {"rspamd": [], "quarantine": ["after-rspamd"]}))
    play(driver, "data", child="quarantine")
    driver.child("rspamd").last_status = "accept"
    assert driver.header("Subject", "x")["quarantine"] is True
    driver.child("rspamd").last_status = "reject"
    assert driver.stop("quarantine", Header("Subject", "x")) is False


def test_b5_1_milter_status_quitted_and_missing():
    """B5.1 milter_status: "quitted" matches a quitted sibling; an absent sibling never matches."""
    text = """
[[condition]]
name = "c"
  [[condition.rule]]
  stage = "envelope-from"
  match = { milter_status = { "other" = ["quitted"] } }
  action = "stop"
[[condition]]
name = "ghost"
  [[condition.rule]]
  stage = "envelope-from"
  match = { milter_status = { "nobody" = ["accept", "quitted"] } }
  action = "stop"
"""
    text += '[[milter]]\nname = "nobody"\nconnection_spec = "inet:1@[127.0.0.1]"\nenabled = false\n'
    driver = Driver(configuration(text, {"other": [], "m": ["c"], "n": ["ghost"]}))
    play(driver, "helo")
    assert driver.mail()["m"] is False
    driver.child("other").quitted = True
    assert driver.mail()["m"] is True
    assert driver.mail()["n"] is False


def test_b5_1_flag_set_by_an_earlier_stage():
    """B5.1 flag / B5 set_flags: a flag set at RCPT is read at DATA; flags are per transaction."""
    text = r"""
[[condition]]
name = "c"
  [[condition.rule]]
  stage = "envelope-recipient"
  match = { envelope_recipient = ['\A<list@'] }
  set_flags = ["stop-on-data"]
  action = "apply"
  [[condition.rule]]
  stage = "data"
  match = { flag = ["other", "stop-on-data"] }
  action = "stop"
"""
    driver = Driver(configuration(text, {"m": ["c"]}))
    assert play(driver, "data", recipients=("<list@example.com>",)) is True
    assert driver.leader.flags == {"stop-on-data"}
    assert play(driver, "data") is False  # a new transaction starts without flags


def test_b5_1_recipients_of_a_condition_are_the_childs_own():
    """B5.1 recipients (conditions): the RCPTs sent to this child, not those it was stopped for."""
    text = r"""
[[condition]]
name = "skip-carol"
  [[condition.rule]]
  stage = "envelope-recipient"
  match = { envelope_recipient = ['\A<carol@'] }
  action = "stop"
  [[condition.rule]]
  stage = "data"
  match = { envelope_recipient = ['\A<carol@'] }
  action = "stop"
"""
    driver = Driver(configuration(text, {"m": ["skip-carol"]}))
    assert play(driver, "data", recipients=("<bob@example.com>", "<carol@example.com>")) is False
    assert driver.child("m").recipients == ["<bob@example.com>"]
    assert driver.leader.recipients == ["<bob@example.com>", "<carol@example.com>"]


# ============================================================================================ predicate helpers


@pytest.mark.parametrize("version,kind", [("Postfix 3.7.11", "postfix"), ("postfix", "postfix"),
                                          ("Postfixy", "other"), ("Sendmail 8.17", "sendmail"),
                                          ("8.17.1", "other"), (None, "other")])
def test_b5_1_mta_kind(version, kind):
    """B5.1 mta / M-AC-4 postfix?: a case-insensitive word match on ``v``."""
    assert mta_kind(version) == kind


@pytest.mark.parametrize("address,domain", [("<a@Example.ORG>", "example.org"), ("a@b.c", "b.c"), ("<>", None),
                                            ("<@relay:a@x.org>", "x.org"), (None, None), ("<a@x.org.>", "x.org")])
def test_b5_1_address_domain(address, domain):
    assert address_domain(address) == domain


def test_b5_1_time_window_wraps_and_days():
    """B5.1 time: the part after midnight of a wrapping window belongs to the day it started."""
    from milterman.config.predicates import TimeWindow

    window = TimeWindow(22 * 60, 2 * 60, ("fri",))
    assert in_window(window, clock_at("2024-05-03 23:00")()) is True    # Friday night
    assert in_window(window, clock_at("2024-05-04 01:59")()) is True    # Saturday morning, Friday's window
    assert in_window(window, clock_at("2024-05-03 01:00")()) is False   # Friday morning is Thursday's window
    assert in_window(TimeWindow(None, None, ("sat",)), clock_at("2024-05-04 12:00")()) is True


# ============================================================================================ built-ins


def builtin(name: str, text: str = "", **options) -> Driver:
    return Driver(configuration(text, {"m": [name]}), **options)


S25R_CASES = [
    ("ipv6-stop", {"host": "p2034-ipbf1103funabasi.chiba.ocn.ne.jp", "address": "2001:db8::1"}, True),
    ("unix-stop", {"host": "localhost", "address": "/run/x.sock"}, True),
    ("whitelist-google-stop", {"host": "mail-yw1-f1.google.com"}, True),
    ("unknown-apply", {"host": "unknown"}, False),
    ("bracket-apply", {"host": "[192.0.2.10]"}, False),
    ("rule1-apply", {"host": "p2034-ipbf1103funabasi.chiba.ocn.ne.jp"}, False),
    ("rule2-apply", {"host": "a12345.example.com"}, False),
    ("rule3-apply", {"host": "x.1.dsl.example.com"}, False),
    ("rule4-apply", {"host": "h1.a1-2.example.com"}, False),
    ("rule5-apply", {"host": "h1.b2.pool.example.com"}, False),
    ("rule6-apply", {"host": "DHCP-77.example.com"}, False),
    ("static-stop", {"host": "mail.example.org"}, True),
]


@pytest.mark.parametrize("facts,expected", [case[1:] for case in S25R_CASES], ids=[case[0] for case in S25R_CASES])
def test_m_ac_b1_s25r_defaults(facts, expected):
    """M-AC-B1: stop = not applied; whitelist first, then the blacklist, else stop."""
    assert play(builtin("S25R"), "connect", **facts) is expected


def test_m_ac_b1_s25r_tunables():
    """M-AC-B1 / B4 [s25r]: check_only_ipv4, added lists, use_default_lists = false."""
    ipv6 = builtin("S25R", "[s25r]\ncheck_only_ipv4 = false\n")
    assert play(ipv6, "connect", host="p2034-ipbf1103funabasi.chiba.ocn.ne.jp", address="2001:db8::1") is False
    lists = builtin("S25R", "[s25r]\nwhitelist_hosts = [\"p1.x.dsl.example.com\"]\n"
                            "blacklist = ['\\.bad\\.example\\Z']\nblacklist_hosts = [\"mx.black.example\"]\n")
    assert play(lists, "connect", host="p1.x.dsl.example.com") is True
    assert play(lists, "connect", host="mx.black.example") is False
    assert play(lists, "connect", host="host.bad.example") is False
    no_defaults = builtin("S25R", "[s25r]\nuse_default_lists = false\nwhitelist = ['\\Ap']\n")
    assert play(no_defaults, "connect", host="unknown") is True
    assert play(no_defaults, "connect", host="[192.0.2.1]") is True


REMOTE_CASES = [
    ("public-remote-apply", {}, "", False),
    ("loopback-stop", {"address": "127.0.0.1"}, "", True),
    ("private-10-stop", {"address": "10.9.8.7"}, "", True),
    ("private-172-stop", {"address": "172.20.0.1"}, "", True),
    ("private-192-stop", {"address": "192.168.1.1"}, "", True),
    ("ipv6-loopback-stop", {"address": "::1"}, "", True),
    ("ipv6-link-local-stop", {"address": "fe80::1"}, "", True),
    ("unix-stop", {"address": "/run/x.sock"}, "", True),
    ("unknown-stop", {"address": ""}, "", True),
    ("link-local-v4-is-remote", {"address": "169.254.1.1"}, "", False),
    ("cgnat-is-remote", {"address": "100.64.0.1"}, "", False),
    ("ula-is-remote", {"address": "fd00::1"}, "", False),
    ("mapped-is-remote", {"address": "::ffff:10.0.0.1"}, "", False),
    ("local_addresses", {"address": "203.0.113.9"}, '[remote_network]\nlocal_addresses = ["203.0.113.0/24"]\n',
     True),
    ("remote_addresses-first", {"address": "10.1.1.1"},
     '[remote_network]\nremote_addresses = ["10.1.0.0/16"]\nlocal_addresses = ["10.0.0.0/8"]\n', False),
]


@pytest.mark.parametrize("facts,text,expected", [case[1:] for case in REMOTE_CASES],
                         ids=[case[0] for case in REMOTE_CASES])
def test_m_ac_b2_remote_network(facts, text, expected):
    """M-AC-B2: stop unless the client is remote (unknown family: stop)."""
    assert play(builtin("Remote Network", text), "connect", **facts) is expected


@pytest.mark.parametrize("macros,stops_authenticated", [
    ({"auth_type": "PLAIN", "auth_authen": "alice"}, False), ({"auth_authen": ""}, False),
    ({"auth_type": "LOGIN"}, False), ({"i": "ABC"}, True), (None, True)])
def test_m_ac_b3_authenticated_and_unauthenticated(macros, stops_authenticated):
    """M-AC-B3: Authenticated stops when not authenticated?, Unauthenticated when authenticated?."""
    facts = {"macros": {"M": macros}}
    assert play(builtin("Authenticated"), "envelope-from", **facts) is stops_authenticated
    assert play(builtin("Unauthenticated"), "envelope-from", **facts) is (not stops_authenticated)


def test_m_ac_b4_sendmail_compatible_postfix():
    """M-AC-B4: never stops; with Postfix, if_addr/daemon_port/if_name from {daemon_addr}/{daemon_port}/j
    (no netstat, no DNS) and i = dummy-id at envelope-from when absent."""
    driver = builtin("Sendmail Compatible")
    connect = {**POSTFIX, "daemon_addr": "198.51.100.25", "daemon_port": "25", "j": "mx.example.org"}
    assert driver.connect(macros=connect) == {"m": False}
    assert driver.macros("m", "C") == {"if_addr": "198.51.100.25", "if_name": "mx.example.org"}
    driver.helo()
    assert driver.mail() == {"m": False}
    assert driver.macros("m", "M") == {"i": "dummy-id"}
    assert driver.mail(macros={"i": "4Vabc"}) == {"m": False}
    assert driver.macros("m", "M") == {}


def test_m_ac_b4_sendmail_compatible_keeps_existing_and_ignores_other_mtas():
    """M-AC-B4: macros already present are kept; nothing is set for an MTA that is not Postfix."""
    driver = builtin("Sendmail Compatible")
    driver.connect(macros={**POSTFIX, "daemon_addr": "198.51.100.25", "if_addr": "192.0.2.1"})
    assert driver.macros("m", "C") == {}
    sendmail = builtin("Sendmail Compatible")
    assert sendmail.connect(macros={"v": "8.17.1", "daemon_addr": "198.51.100.25"}) == {"m": False}
    assert sendmail.mail() == {"m": False}
    assert sendmail.macros("m", "C") == {} and sendmail.macros("m", "M") == {}


@pytest.mark.parametrize("sessions,stressed", [(1, False), (2, True), (5, True)])
def test_m_ac_b5_stress_notify_and_no_stress(sessions, stressed):
    """M-AC-B5: Stress Notify sets stress=yes and never stops; No Stress stops when stressed."""
    notify = builtin("Stress Notify", stress_threshold=2, sessions=sessions)
    assert play(notify, "connect") is False
    assert notify.macros("m", "C") == ({"stress": "yes"} if stressed else {})
    assert play(builtin("No Stress", stress_threshold=2, sessions=sessions), "connect") is stressed


def test_m_ac_b5_threshold_zero_never_stressed():
    assert play(builtin("No Stress", stress_threshold=0, sessions=10_000), "connect") is False


def test_m_ac_b5_threshold_from_configuration():
    """M-AC-B5: [stress] threshold_n_connections is used as is."""
    config = configuration("[stress]\nthreshold_n_connections = 3\n", {"m": ["No Stress"]})
    assert Driver(config, stress_threshold=None, sessions=3).connect()["m"] is True
    assert Driver(config, stress_threshold=None, sessions=2).connect()["m"] is False


def test_m_ac_b5_auto_detection_from_postfix_files(tmp_path):
    """M-AC-B5 -1: Postfix's master running → 75 % of the smtp service's maxproc (files only)."""
    proc = tmp_path / "proc"
    (proc / "812").mkdir(parents=True)
    config_dir = tmp_path / "postfix"
    config_dir.mkdir()
    (proc / "812" / "cmdline").write_bytes(b"/usr/lib/postfix/sbin/master\0-c\0" + str(config_dir).encode() + b"\0")
    (proc / "self").mkdir()
    (config_dir / "master.cf").write_text("# service type  private unpriv  chroot  wakeup  maxproc command\n"
                                          "smtp      inet  n       -       y       -       30       smtpd\n"
                                          "  -o smtpd_sasl_auth_enable=yes\n")
    assert postfix_master_command(str(proc))[0].endswith("master")
    assert builtin_module.detect_stress_threshold(str(proc)) == 22
    (config_dir / "master.cf").write_text("smtp      inet  n       -       y       -       -       smtpd\n")
    assert builtin_module.detect_stress_threshold(str(proc)) == 75  # Postfix's default_process_limit 100
    (config_dir / "main.cf").write_text("default_process_limit = 40\n")
    assert postfix_process_limit(str(config_dir)) == 40
    assert builtin_module.detect_stress_threshold(str(proc)) == 30


def test_m_ac_b5_auto_detection_without_postfix(tmp_path):
    """M-AC-B5: no Postfix master (an editor on master.cf does not count) → 0, never stressed."""
    proc = tmp_path / "proc"
    (proc / "99").mkdir(parents=True)
    (proc / "99" / "cmdline").write_bytes(b"vi\0/etc/postfix/master.cf\0")
    assert builtin_module.detect_stress_threshold(str(proc)) == 0
    assert builtin_module.detect_stress_threshold(str(tmp_path / "missing")) == 0


def test_m_ac_b5_auto_detection_once_per_process(monkeypatch):
    """M-AC-B5: -1 is detected once per process, on first use, and shared by every build."""
    calls = []
    monkeypatch.setattr(builtin_module, "detect_stress_threshold", lambda proc, logger: calls.append(1) or 2)
    builtin_module.reset_detected_stress_threshold()
    try:
        config = configuration("", {"m": ["No Stress"]})
        assert config.stress.threshold_n_connections == -1
        for _ in range(3):
            assert Driver(config, stress_threshold=None, sessions=2).connect()["m"] is True
        assert calls == [1]
    finally:
        builtin_module.reset_detected_stress_threshold()


@pytest.mark.parametrize("sender,trusted", [("<alice@gmail.com>", True), ("<a@GMAIL.com>", True),
                                            ("<a@ezweb.ne.jp>", True), ("<a@docomo.ne.jp>", True),
                                            ("<a@clear-code.com>", True), ("<a@sub.gmail.com>", False),
                                            ("alice@gmail.com", False), ("<>", False),
                                            ("<a@example.org>", False)])
def test_m_ac_b6_trust_defaults(sender, trusted):
    """M-AC-B6: never stops; trusted_domain=yes for ``<user@domain>`` with a trusted domain."""
    driver = builtin("Trust")
    assert play(driver, "envelope-from", sender=sender) is False
    assert driver.macros("m", "M") == ({"trusted_domain": "yes"} if trusted else {})


def test_m_ac_b6_trust_tunables(tmp_path):
    """M-AC-B6 / B4 [trust]: use_default_domains = false, domains, patterns, domain files."""
    (tmp_path / "domains.txt").write_text("# trusted\n\nPartner.example\n/\\.corp\\.example$/\n")
    main = tmp_path / "milter-manager.toml"
    main.write_text('version = 1\n[trust]\nuse_default_domains = false\nenvelope_from_domains = ["example.net"]\n'
                    "envelope_from_domain_patterns = ['\\Amail\\d+\\.example\\Z']\n"
                    'envelope_from_domain_files = ["domains.txt"]\n'
                    '[[milter]]\nname = "m"\nconnection_spec = "inet:1@[127.0.0.1]"\n'
                    'applicable_conditions = ["Trust"]\n')
    from milterman.config import load

    driver = Driver(load(str(main)))
    for sender, trusted in (("<a@gmail.com>", False), ("<a@example.net>", True), ("<a@MAIL7.example>", True),
                            ("<a@partner.example>", True), ("<a@x.corp.example>", True)):
        play(driver, "envelope-from", sender=sender)
        assert driver.macros("m", "M") == ({"trusted_domain": "yes"} if trusted else {}), sender


def test_m_ac_b7_dnsbl_listed_and_not_listed():
    """M-AC-B7: DNSBL Listed stops unless listed; Not DNSBL Listed stops when listed."""
    resolver = resolver_listing("192.0.2.10")
    assert play(builtin("DNSBL Listed", resolver=resolver), "connect") is False
    assert play(builtin("Not DNSBL Listed", resolver=resolver), "connect") is True
    assert play(builtin("DNSBL Listed"), "connect") is True
    assert play(builtin("Not DNSBL Listed"), "connect") is False


def test_m_ac_b7_queries_and_expectations():
    """M-AC-B7: ``<reversed-ip>.<zone>`` for every default zone; an answer outside ``expect`` is not a listing."""
    resolver = FakeResolver({"10.2.0.192.zen.spamhaus.org": ("127.0.0.4",),
                             "10.2.0.192.dnsbl.sorbs.net": ("127.0.0.11",)})
    assert play(builtin("Not DNSBL Listed", resolver=resolver), "connect") is False
    assert sorted(resolver.asked) == ["10.2.0.192.b.barracudacentral.org", "10.2.0.192.bl.spamcop.net",
                                      "10.2.0.192.dnsbl.sorbs.net", "10.2.0.192.zen.spamhaus.org"]
    listed = FakeResolver({"10.2.0.192.bl.spamcop.net": ("127.0.0.2",)})
    assert play(builtin("Not DNSBL Listed", resolver=listed), "connect") is True


def test_m_ac_b7_ipv4_only_failures_and_cache():
    """M-AC-B7: IPv6/unix are never listed (no query); a resolver failure is "not listed"; answers are cached."""
    resolver = FakeResolver()
    driver = builtin("Not DNSBL Listed", resolver=resolver)
    assert play(driver, "connect", address="2001:db8::1") is False
    assert play(driver, "connect", address="/run/s.sock") is False
    assert resolver.asked == []
    failing = builtin("DNSBL Listed", resolver=FakeResolver(fail=True))
    assert play(failing, "connect") is True
    cached = resolver_listing("192.0.2.10")
    driver = builtin("Not DNSBL Listed", resolver=cached)
    assert play(driver, "connect") is True
    asked = len(cached.asked)
    assert asked == 4
    assert driver.stop("m", Connect("other.example", "4", 25, "192.0.2.10")) is True
    assert len(cached.asked) == asked
    silent = FakeResolver()  # no zone answers in time: not listed, and not asked again right away
    driver = builtin("Not DNSBL Listed", resolver=silent)
    assert play(driver, "connect") is False
    assert driver.stop("m", Connect("other.example", "4", 25, "192.0.2.10")) is False
    assert len(silent.asked) == 4


def test_m_ac_b7_configured_services():
    """B4 [dnsbl]: use_default_services = false and own zones, with and without ``expect``."""
    text = ('[dnsbl]\nuse_default_services = false\nservices = [{ zone = "bl.example" }, '
            '{ zone = "strict.example", expect = "127.0.0.0/30" }]\n')
    resolver = FakeResolver({"10.2.0.192.strict.example": ("127.0.0.9",)})
    assert play(builtin("Not DNSBL Listed", text, resolver=resolver), "connect") is False
    assert sorted(resolver.asked) == ["10.2.0.192.bl.example", "10.2.0.192.strict.example"]
    any_answer = FakeResolver({"10.2.0.192.bl.example": ("10.0.0.1",)})
    assert play(builtin("Not DNSBL Listed", text, resolver=any_answer), "connect") is True


def test_m_ac_b7_dns_packets():
    """M-AC-B7 with [dnsbl] name_servers: the UDP query and answer parsing (no network)."""
    query = dns_query("10.2.0.192.zen.spamhaus.org", 0x1234)
    assert query[:4] == b"\x12\x34\x01\x00" and query.endswith(b"\x00\x00\x01\x00\x01")
    question = query[12:]
    answer = (b"\x12\x34\x81\x80\x00\x01\x00\x02\x00\x00\x00\x00" + question
              + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x0a"
              + b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x02\xc0\x0c")
    assert parse_dns_reply(answer, 0x1234) == ("127.0.0.10",)
    assert parse_dns_reply(answer, 0x9999) is None
    nxdomain = b"\x12\x34\x81\x83\x00\x01\x00\x00\x00\x00\x00\x00" + question
    assert parse_dns_reply(nxdomain, 0x1234) == ()
    servfail = b"\x12\x34\x81\x82\x00\x01\x00\x00\x00\x00\x00\x00" + question
    assert parse_dns_reply(servfail, 0x1234) is None
    assert parse_dns_reply(b"\x12", 0x1234) is None


@contextlib.contextmanager
def loopback_name_server():
    """A fake DNS server greenlet on 127.0.0.1 (its port is yielded): it answers 127.0.0.2 for any name but
    ignores those under ``silence.``."""
    import gevent
    from gevent import socket as gsocket

    server = gsocket.socket(gsocket.AF_INET, gsocket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))

    def serve():
        while True:
            data, peer = server.recvfrom(512)
            if b"\x07silence" in data:
                continue
            reply = data[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + data[12:]
            reply += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x02"
            server.sendto(reply, peer)

    job = gevent.spawn(serve)
    try:
        yield server.getsockname()[1]
    finally:
        job.kill()
        server.close()


def test_m_ac_b7_name_server_resolver_over_loopback():
    """[dnsbl] name_servers: a fake DNS server on 127.0.0.1 answers; silence means no answer in time."""
    with loopback_name_server() as port:
        resolve = builtin_module.name_server_resolver(["127.0.0.1"], port=port)
        # 1 s: a bound the answering server meets on a loaded machine (the silent query waits it out)
        answers = resolve(["1.0.0.127.bl.example", "x.silence.example"], 1.0)
        assert answers == {"1.0.0.127.bl.example": ("127.0.0.2",)}


def test_m_ac_b7_resolver_waits_its_timeout_after_the_worker_ran_without_yielding():
    """M-AC-B7 waits ``[dnsbl] timeout`` of real time even when the worker ran longer than that without yielding.

    A gevent loop timer started outside the hub's callback run counts from the loop's cached time, set when the
    hub last polled; after a worker ran (or blocked) for longer than the timeout without yielding, a wait bounded
    by such a timer ended at once: no answer, and "not listed" cached for every zone.
    """
    import gevent

    with loopback_name_server() as port:
        resolve = builtin_module.name_server_resolver(["127.0.0.1"], port=port)
        gevent.sleep(0.001)  # the hub last ran a timer's callback (not its callback run): its time is not refreshed
        time.sleep(1.2)  # the worker busy without yielding for longer than the timeout below
        started = time.monotonic()
        answers = resolve(["1.0.0.127.bl.example", "x.silence.example"], 1.0)
        waited = time.monotonic() - started
    assert answers == {"1.0.0.127.bl.example": ("127.0.0.2",)}
    assert waited >= 0.95, f"the silent name was given up after {waited:.3f} s instead of 1 s"


RESTRICT = r"""
[[restrict_accounts]]
condition_name = "Restrict Accounts"
accounts = ["bob@example.com"]
account_patterns = ['@example\.co\.jp\Z']
milters = ["m"]
"""


def test_m_ac_b8_restrict_accounts_recipient_stage():
    """M-AC-B8: a restricted account is applied; any other recipient stops the child for that RCPT only,
    marks it and sends have-not-restricted-account=true."""
    driver = Driver(configuration(RESTRICT, {"m": [], "other": []}))
    play(driver, "envelope-from")
    assert driver.rcpt("<bob@example.com>")["m"] is False
    assert driver.rcpt("<x@example.co.jp>")["m"] is False
    assert driver.macros("m", "R") == {}
    assert driver.rcpt("<eve@example.net>")["m"] is True
    assert driver.macros("m", "R") == {"have-not-restricted-account": "true"}
    assert driver.macros("other", "R") == {}
    assert driver.rcpt("bob@example.com")["m"] is False  # brackets are optional


def test_m_ac_b8_restrict_accounts_data_stage_and_m_ac_7():
    """M-AC-B8 + M-AC-7 fix: a marked child is stopped at data (it leaves the message, nothing more);
    an unmarked one goes on; the mark lasts one transaction."""
    driver = Driver(configuration(RESTRICT, {"m": [], "other": []}))
    assert play(driver, "data", recipients=("<bob@example.com>", "<eve@example.net>")) is True
    assert driver.child("m").in_message is False and driver.child("other").in_message is True
    assert play(driver, "data", recipients=("<bob@example.com>", "<x@example.co.jp>")) is False
    assert driver.child("m").recipients == ["<bob@example.com>", "<x@example.co.jp>"]


def test_m_ac_b8_restrict_accounts_mark_is_per_child():
    """M-AC-B8: the mark belongs to the child (two restrictions on two milters do not mix)."""
    text = RESTRICT + """
[[restrict_accounts]]
condition_name = "Eve only"
accounts = ["eve@example.net"]
milters = ["n"]
"""
    driver = Driver(configuration(text, {"m": [], "n": []}))
    play(driver, "envelope-from")
    assert driver.rcpt("<bob@example.com>") == {"m": False, "n": True}
    assert driver.rcpt("<eve@example.net>") == {"m": True, "n": False}
    driver = Driver(configuration(text, {"m": [], "n": []}))
    assert play(driver, "data", recipients=("<bob@example.com>",), child="m") is False
    assert driver.child("n").in_message is False


# ============================================================================================ C-COND-1

FIRST_MATCH = r"""
[[condition]]
name = "first"
  [[condition.rule]]
  stage = "connect"
  match = { client_host = ['\.trusted\.example\Z'] }
  set_macros = { trusted = "yes" }
  set_flags = ["seen-trusted"]
  action = "apply"
  [[condition.rule]]
  stage = "connect"
  match = { client_host = ['\.example\Z'] }
  set_macros = { late = "yes" }
  action = "stop"
  [[condition.rule]]
  stage = "helo"
  action = "stop"
"""


def test_c_cond_1_first_matching_rule_decides():
    """C-COND-1: rules of the stage in order; the first match decides; later rules are not tried."""
    driver = Driver(configuration(FIRST_MATCH, {"m": ["first"]}))
    assert driver.connect("mx.trusted.example") == {"m": False}
    assert driver.macros("m", "C") == {"trusted": "yes"}
    assert driver.leader.flags == {"seen-trusted"}
    driver = Driver(configuration(FIRST_MATCH, {"m": ["first"]}))
    assert driver.connect("mx.other.example") == {"m": True}
    assert driver.macros("m", "C") == {"late": "yes"}
    assert driver.leader.flags == set()


def test_c_cond_1_no_match_applies_and_sets_nothing():
    """C-COND-1: no rule matches → apply, no macro or flag; a stage without rules never stops."""
    driver = Driver(configuration(FIRST_MATCH, {"m": ["first"]}))
    assert driver.connect("mail.example.org") == {"m": False}
    assert driver.macros("m", "C") == {} and driver.leader.flags == set()
    assert driver.stop("m", Mail("<a@b.c>")) is False
    assert driver.helo() == {"m": True}  # an empty match always holds


def test_c_cond_1_conditions_in_order_first_stop_ends():
    """C-COND-1 / M-AC-2: conditions run in applicable_conditions order; the first stop ends the evaluation."""
    text = """
[[condition]]
name = "stopper"
  [[condition.rule]]
  stage = "envelope-from"
  action = "stop"
[[condition]]
name = "marker"
  [[condition.rule]]
  stage = "envelope-from"
  set_macros = { marked = "1" }
  action = "apply"
"""
    driver = Driver(configuration(text, {"a": ["marker", "stopper"], "b": ["stopper", "marker"]}))
    play(driver, "helo", child="a")
    assert driver.mail() == {"a": True, "b": True}
    assert driver.macros("a", "M") == {"marked": "1"}
    assert driver.macros("b", "M") == {}


def test_m_ac_2_a_raising_stopper_means_dont_stop():
    """M-AC-2: a stopper that raises is "don't stop"; the next condition still runs."""
    def broken(scope):
        raise RuntimeError("boom")

    driver = Driver(configuration("", {"m": []}))
    driver.connect()
    child = driver.child("m")
    child.definition.conditions = ConditionChain([Condition("broken", {"M": broken}),
                                                  Condition("stop", {"M": lambda scope: True})])
    assert driver.stop("m", Mail("<a@b.c>")) is True
    child.definition.conditions = ConditionChain([Condition("broken", {"M": broken})])
    assert driver.stop("m", Mail("<a@b.c>")) is False
    child.definition.conditions = (Condition("plain tuple", {"M": lambda scope: True}),)
    assert driver.stop("m", Mail("<a@b.c>")) is True


def test_m_ac_2_chain_groups_stoppers_by_stage():
    """Hot path: a ConditionChain knows per stage letter which stoppers exist."""
    built = build(configuration("", {"m": ["S25R", "Trust", "Sendmail Compatible"], "n": []}),
                  resolver=FakeResolver())
    chain = built.conditions_per_milter["m"]
    assert isinstance(chain, tuple) and [condition.name for condition in chain] == ["S25R", "Trust",
                                                                                    "Sendmail Compatible"]
    assert {letter: [condition.name for condition, _ in pairs] for letter, pairs in chain.by_letter.items()} == {
        "C": ["S25R", "Sendmail Compatible"], "M": ["Trust", "Sendmail Compatible"]}
    assert built.conditions_per_milter["n"] == ()


def test_m_ac_8_body_stopper_gets_the_chunk():
    """M-AC-8 fix: a body rule sees the chunk (of the current body command)."""
    driver = single_rule("body", "{ body = ['chunk-two'] }")
    play(driver, "end-of-header")
    assert driver.body(b"chunk-one\r\n") == {"m": False}
    assert driver.body(b"chunk-two\r\n") == {"m": True}


def test_m_mac_4_condition_macros_are_per_command():
    """M-MAC-4: a macro a condition set for one command is not sent again with the next command of that stage."""
    driver = builtin("Trust")
    play(driver, "envelope-from", sender="<a@gmail.com>")
    assert driver.macros("m", "M") == {"trusted_domain": "yes"}
    driver.mail("<a@example.org>")
    assert driver.macros("m", "M") == {}


# ============================================================================================ B8 equivalence

B8_RULES = r"""
[[condition]]
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

[[condition]]
name = "Remote Network (rules)"
  [[condition.rule]]
  stage = "connect"
  match = { client_local = false, not_client_family = ["unknown"] }
  action = "apply"
  [[condition.rule]]
  stage = "connect"
  action = "stop"

[[condition]]
name = "Authenticated (rules)"
  [[condition.rule]]
  stage = "envelope-from"
  match = { authenticated = false }
  action = "stop"

[[condition]]
name = "Unauthenticated (rules)"
  [[condition.rule]]
  stage = "envelope-from"
  match = { authenticated = true }
  action = "stop"

[[condition]]
name = "No Stress (rules)"
  [[condition.rule]]
  stage = "connect"
  match = { stressed = true }
  action = "stop"

[[condition]]
name = "Stress Notify (rules)"
  [[condition.rule]]
  stage = "connect"
  match = { stressed = true }
  set_macros = { stress = "yes" }
  action = "apply"

[[condition]]
name = "Trust (rules)"
  [[condition.rule]]
  stage = "envelope-from"
  match = { trusted_envelope_from_domain = true }
  set_macros = { trusted_domain = "yes" }
  action = "apply"

[[condition]]
name = "DNSBL Listed (rules)"
  [[condition.rule]]
  stage = "connect"
  match = { dnsbl_listed = false }
  action = "stop"

[[condition]]
name = "Not DNSBL Listed (rules)"
  [[condition.rule]]
  stage = "connect"
  match = { dnsbl_listed = true }
  action = "stop"

[[condition]]
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

[[restrict_accounts]]
condition_name = "Restrict Accounts"
accounts = ["bob@example.com"]
account_patterns = ['@example\.co\.jp\Z']
milters = ["restricted"]
"""

B8_PAIRS = ["S25R", "Remote Network", "Authenticated", "Unauthenticated", "No Stress", "Stress Notify", "Trust",
            "DNSBL Listed", "Not DNSBL Listed", "Restrict Accounts"]

CLIENTS = [("mail.example.org", "192.0.2.10"), ("[192.0.2.11]", "192.0.2.11"), ("unknown", "192.0.2.12"),
           ("p2034-ipbf1103funabasi.chiba.ocn.ne.jp", "203.0.113.4"), ("mail-yw1-f1.google.com", "209.85.1.1"),
           ("a12345.example.com", "198.51.100.7"), ("DHCP-77.Example.com", "198.51.100.8"),
           ("host-2001.example.net", "2001:db8::1"), ("localhost", "127.0.0.1"), ("intranet", "10.0.0.5"),
           ("relay", "172.16.3.3"), ("sock", "/var/run/smtpd.sock"), ("nohost", ""), ("fe80host", "fe80::1"),
           ("mapped", "::ffff:10.0.0.1"), ("o12345.ptr.sendgrid.net", "192.0.2.99"),
           ("x.1.dsl.isp.example", "10.9.9.9")]
AUTH = [None, {"auth_type": "PLAIN", "auth_authen": "alice"}, {"auth_authen": ""}]
SENDERS = ["<alice@gmail.com>", "<bob@example.org>", "<>", "<x@Yahoo.CO.JP>", "<x@sub.gmail.com>"]
RECIPIENT_SETS = [("<bob@example.com>",), ("<carol@example.com>",), ("<bob@example.com>", "<x@example.co.jp>"),
                  ("<bob@example.com>", "<eve@example.net>"), ("bob@example.com",), ("<a@Example.co.jp>",),
                  ("carol@example.co.jp", "<dave@example.com>")]
SESSIONS_PROCESSING = [1, 3]
#: DNSBL answers: listed (expected answer), answered outside ``expect``, listed elsewhere
DNSBL_ANSWERS = {"10.2.0.192.zen.spamhaus.org": ("127.0.0.10",), "4.113.0.203.zen.spamhaus.org": ("127.0.0.4",),
                 "5.0.0.10.bl.spamcop.net": ("127.0.0.2",), "7.100.51.198.dnsbl.sorbs.net": ("127.0.0.10",)}


def b8_sessions():
    """Clients × (auth, sender, recipients, stress) combinations, cycled so every value meets every client."""
    others = list(itertools.islice(zip(itertools.cycle(AUTH), itertools.cycle(SENDERS),
                                       itertools.cycle(RECIPIENT_SETS), itertools.cycle(SESSIONS_PROCESSING)),
                                   len(AUTH) * len(SENDERS) * len(RECIPIENT_SETS) * 2 // 3))
    for index, client in enumerate(CLIENTS):
        for offset in range(0, len(others), 3):
            yield client, others[(offset + index) % len(others)]


@functools.cache
def _b8_driver(conditions: tuple[str, ...], milter: str) -> Driver:
    return Driver(configuration(B8_RULES, {milter: list(conditions)}), resolver=FakeResolver(DNSBL_ANSWERS),
                  stress_threshold=2)


def trace(conditions: list[str], milter: str, session) -> list:
    """Play one session (two transactions) with ``conditions`` on ``milter``: every step's stop decision and the
    macros the child holds after it."""
    (host, address), (auth, sender, recipients, sessions) = session
    driver = _b8_driver(tuple(conditions), milter)
    driver.sessions = sessions
    driver.new_session()
    child = driver.child(milter)
    steps = []

    def step(label, result):
        steps.append((label, result.get(milter), {letter: dict(values) for letter, values
                                                  in child.macros_extra.items() if values}))

    step("connect", driver.connect(host, address, macros=POSTFIX))
    step("helo", driver.helo())
    for transaction in range(2):
        step("mail", driver.mail(sender if transaction == 0 else "<other@gmail.com>", macros=auth))
        for recipient in recipients if transaction == 0 else recipients[::-1]:
            step(f"rcpt {recipient}", driver.rcpt(recipient))
        step("data", driver.data())
        step("header", driver.header("Subject", "x"))
        step("eom", driver.end_of_message())
    return steps


@pytest.mark.parametrize("name", B8_PAIRS)
def test_b8_builtin_equals_its_rule_form(name):
    """B8: each built-in and its plain-rule form decide the same and set the same macros on varied sessions."""
    sessions = list(b8_sessions())
    assert len(sessions) > 100
    decisions = set()
    for session in sessions:
        if name == "Restrict Accounts":
            builtin_trace = trace([], "restricted", session)  # attached by [[restrict_accounts]] milters
        else:
            builtin_trace = trace([name], "plain", session)
        rules_trace = trace([f"{name} (rules)"], "plain", session)
        assert builtin_trace == rules_trace, session
        decisions.update(stopped for _label, stopped, _macros in builtin_trace if stopped is not None)
    assert decisions == ({False} if name in ("Stress Notify", "Trust") else {True, False})


# ============================================================================================ D-2


def test_d_2_stages_and_macros_read():
    """D-2: stages read by the conditions of enabled milters and by rules; their macros per stage."""
    text = r"""
[[condition]]
name = "late"
  [[condition.rule]]
  stage = "data"
  match = { helo = ['x'], macro = { "{daemon_name}" = 'ORIG' }, mta = "postfix" }
  action = "stop"
  [[condition.rule]]
  stage = "body"
  match = { macro = { bodymacro = true } }
  action = "stop"
[[condition]]
name = "unused"
  [[condition.rule]]
  stage = "end-of-header"
  action = "stop"
[[rule]]
stage = "unknown"
match = { mta = "postfix" }
action = "reject"
"""
    text += '[[milter]]\nname = "off"\nconnection_spec = "inet:1@[127.0.0.1]"\nenabled = false\n' \
            'applicable_conditions = ["unused", "Trust"]\n'
    built = build(configuration(text, {"a": ["late", "Authenticated"], "b": ["Sendmail Compatible"]}),
                  resolver=FakeResolver())
    assert built.stages_read == frozenset("CHMTBU")
    assert built.macros_read == {
        "T": ("daemon_name",), "C": ("v", "daemon_addr", "daemon_port", "j", "if_addr", "if_name"),
        "N": ("bodymacro",), "M": ("auth_type", "auth_authen", "i")}
    assert [condition.name for condition in built.conditions_per_milter["off"]] == ["unused", "Trust"]


def test_d_2_nothing_read_without_conditions_or_rules():
    built = build(configuration("", {"a": []}), resolver=FakeResolver())
    assert built.stages_read == frozenset() and built.macros_read == {} and built.rule_evaluator is None


def test_d_2_recipient_predicates_read_rcpt():
    """D-2: a data rule over the recipients needs the RCPT events; header predicates need the headers."""
    text = r"""
[[rule]]
stage = "end-of-message"
match = { envelope_recipient = ['x'], header = { name = 'X' } }
action = "discard"
"""
    built = build(configuration(text, {"a": []}), resolver=FakeResolver())
    assert built.stages_read == frozenset("RLE")


def test_restrict_accounts_reads_recipient_and_data():
    built = build(configuration(RESTRICT, {"m": []}), resolver=FakeResolver())
    assert built.stages_read == frozenset("RT")
    assert [condition.name for condition in built.conditions_per_milter["m"]] == ["Restrict Accounts"]


def test_connect_without_address_is_unknown_family():
    driver = single_rule("connect", '{ client_family = ["unknown"] }')
    assert driver.send(Connect("host", "U")) == {"m": True}
    assert driver.stop("m", Rcpt("<a@b>")) is False
