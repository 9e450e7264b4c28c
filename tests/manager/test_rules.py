"""The manager-level rule chain ``[[rule]]`` (configuration.md B7, C-RULE-1…6), as pure unit tests.

The evaluator is called the way the leader calls it (``rule_evaluator(leader, letter,
command)``) with the fake leader of :mod:`conditions_support`; the two leader methods that
apply an outcome (``_rules`` for macros and stops, ``_stopped`` for C-RULE-6) are exercised
on that fake as unbound functions.
"""

from __future__ import annotations

import pytest
from conditions_support import POSTFIX, Driver, FakeResolver, configuration

from milterman.manager.conditions import build
from milterman.manager.context import ManagerContext, RuleOutcome
from milterman.manager.session.leader import Leader
from milterman.manager.status import Status
from milterman.protocol import Connect, Data, EndOfMessage, Header, Helo, Mail, Rcpt, ReplyCode, Unknown

MILTERS = {"spamassassin": [], "spam-quarantine": [], "clamav": [], "opendkim": []}
ALL = frozenset(MILTERS)


def rules(text: str, milters: dict | None = None) -> Driver:
    return Driver(configuration(text, milters or dict(MILTERS)))


def evaluate(driver: Driver, command) -> RuleOutcome | None:
    return driver.built.rule_evaluator(driver.leader, command.LETTER, command)


CONNECT = Connect("mx.example.net", "4", 41000, "192.0.2.1")
LOCAL = Connect("relay.internal", "4", 41000, "10.1.1.1")


# ============================================================================================ C-RULE-1


def test_c_rule_1_every_matching_rule_takes_effect_in_file_order():
    """C-RULE-1: all matching rules of the stage apply, in order; a non-matching one does nothing."""
    driver = rules(r"""
[[rule]]
stage = "connect"
match = { client_local = true }
action = "skip"
milters = ["spamassassin"]
[[rule]]
stage = "connect"
match = { client_host = ['\.internal\Z'] }
action = "skip"
milters = ["clamav"]
[[rule]]
stage = "connect"
match = { client_local = false }
action = "skip"
milters = ["opendkim"]
[[rule]]
stage = "connect"
action = "set-macro"
set_macros = { a = "1", b = "1" }
[[rule]]
stage = "connect"
action = "set-macro"
set_macros = { b = "2" }
""")
    outcome = evaluate(driver, LOCAL)
    assert outcome == RuleOutcome(stopped=frozenset({"spamassassin", "clamav"}), macros={"a": "1", "b": "2"})
    outcome = evaluate(driver, CONNECT)
    assert outcome == RuleOutcome(stopped=frozenset({"opendkim"}), macros={"a": "1", "b": "2"})


def test_c_rule_1_final_ends_the_chain():
    """C-RULE-1: after a matching rule with ``final = true`` later rules are not evaluated."""
    driver = rules("""
[[rule]]
stage = "helo"
action = "skip"
milters = ["clamav"]
final = true
[[rule]]
stage = "helo"
action = "reject"
""")
    assert evaluate(driver, Helo("x")) == RuleOutcome(stopped=frozenset({"clamav"}))


def test_c_rule_1_final_only_when_it_matches():
    driver = rules("""
[[rule]]
stage = "helo"
match = { helo = ['\\Anever\\Z'] }
action = "skip"
milters = ["clamav"]
final = true
[[rule]]
stage = "helo"
action = "skip"
milters = ["opendkim"]
""")
    assert evaluate(driver, Helo("x")) == RuleOutcome(stopped=frozenset({"opendkim"}))


def test_c_rule_1_other_stages_and_no_match_give_none():
    """C-RULE-1: only the rules of the command's stage run; nothing matched → None (nothing to do)."""
    driver = rules("""
[[rule]]
stage = "envelope-from"
match = { envelope_from = ['@spam\\.example>\\Z'] }
action = "reject"
""")
    assert evaluate(driver, Helo("x")) is None
    assert evaluate(driver, Mail("<a@example.org>")) is None
    assert evaluate(driver, Mail("<a@spam.example>")).terminal == Status.REJECT


def test_c_rule_1_no_rules_no_evaluator():
    """No ``[[rule]]``: the leader is given no rule evaluator at all (ManagerContext.rule_evaluator None)."""
    assert build(configuration("", {"m": []}), resolver=FakeResolver()).rule_evaluator is None


# ============================================================================================ C-RULE-2

SKIP_ONLY = """
[[rule]]
stage = "envelope-from"
match = { envelope_from = ['@skip\\.example>'] }
action = "skip"
milters = ["spam*"]
[[rule]]
stage = "envelope-from"
match = { envelope_from = ['@only\\.example>'] }
action = "only"
milters = ["clam?v", "open*"]
[[rule]]
stage = "envelope-from"
match = { envelope_from = ['@nobody\\.example>'] }
action = "skip"
milters = ["does-not-exist"]
"""


@pytest.mark.parametrize("sender,stopped", [
    ("<a@skip.example>", {"spamassassin", "spam-quarantine"}),
    ("<a@only.example>", {"spamassassin", "spam-quarantine"}),
    ("<a@nobody.example>", None),
    ("<a@example.org>", None),
])
def test_c_rule_2_skip_and_only_globs(sender, stopped):
    """C-RULE-2: skip stops the milters its globs name; only stops every milter they do not name."""
    outcome = evaluate(rules(SKIP_ONLY), Mail(sender))
    if stopped is None:
        assert outcome is None
    else:
        assert outcome.terminal is None and outcome.stopped == frozenset(stopped)


def test_c_rule_2_only_can_stop_everyone():
    driver = rules('[[rule]]\nstage = "data"\naction = "only"\nmilters = ["none-of-them"]\n')
    assert evaluate(driver, Data()).stopped == ALL


def test_c_rule_2_skipped_child_in_the_session():
    """C-RULE-2: a child stopped by a rule is stopped for that stage exactly as by a condition."""
    driver = rules(SKIP_ONLY)
    driver.connect()
    driver.helo()
    assert driver.mail("<a@only.example>") == {"spamassassin": True, "spam-quarantine": True, "clamav": False,
                                               "opendkim": False}
    assert driver.mail("<a@example.org>") == dict.fromkeys(MILTERS, False)


# ============================================================================================ C-RULE-3


def test_c_rule_3_reject_with_reply():
    """C-RULE-3: a terminal rule answers the MTA itself; ``reply`` gives ``y CODE XCODE text``."""
    driver = rules(r"""
[[rule]]
name = "refuse localhost HELO from outside"
stage = "helo"
match = { helo = ['(?i)\Alocalhost(\.localdomain)?\Z'], client_local = false }
action = "reject"
reply = { code = 550, xcode = "5.7.1", text = "Bad HELO" }
final = true
""")
    driver.connect()
    outcome = evaluate(driver, Helo("LOCALHOST"))
    assert outcome.terminal == Status.REJECT
    assert outcome.reply == ReplyCode("550 5.7.1 Bad HELO")
    assert outcome.stopped == frozenset() and outcome.macros == {}
    assert evaluate(driver, Helo("mail.example.net")) is None
    driver.connect(address="10.0.0.1")
    assert evaluate(driver, Helo("localhost")) is None


@pytest.mark.parametrize("reply,text", [
    ('{ code = 451 }', "451 4.0.0"),
    ('{ code = 451, text = "Try later" }', "451 4.0.0 Try later"),
    ('{ code = 452, xcode = "4.2.2", text = "100% full" }', "452 4.2.2 100%% full"),
    ('{ code = 421, text = "first\\nsecond" }', "421-4.0.0 first\r\n421 4.0.0 second"),
])
def test_c_rule_3_reply_formatting(reply, text):
    """C-RULE-3 / P-CODE-3…7: default enhanced code, ``%`` doubled, multi-line replies."""
    driver = rules(f'[[rule]]\nstage = "envelope-recipient"\naction = "temporary-failure"\nreply = {reply}\n')
    outcome = evaluate(driver, Rcpt("<a@b.example>"))
    assert outcome.terminal == Status.TEMPORARY_FAILURE
    assert outcome.reply == ReplyCode(text)
    assert outcome.reply.parsed.code == text[:3]


@pytest.mark.parametrize("action,status", [("accept", Status.ACCEPT), ("discard", Status.DISCARD),
                                           ("reject", Status.REJECT), ("temporary-failure", Status.TEMPORARY_FAILURE),
                                           ("tempfail", Status.TEMPORARY_FAILURE)])
def test_c_rule_3_terminal_statuses_without_reply(action, status):
    driver = rules(f'[[rule]]\nstage = "end-of-message"\naction = "{action}"\n')
    assert evaluate(driver, EndOfMessage()) == RuleOutcome(terminal=status)


def test_c_rule_3_terminal_discards_earlier_effects_and_ends_the_chain():
    """C-RULE-3: effects of non-terminal rules matched earlier are dropped; the first terminal rule wins."""
    driver = rules("""
[[rule]]
stage = "envelope-recipient"
action = "skip"
milters = ["clamav"]
[[rule]]
stage = "envelope-recipient"
action = "set-macro"
set_macros = { x = "1" }
[[rule]]
stage = "envelope-recipient"
match = { envelope_recipient = ['\\A<abuse-test@'] }
action = "reject"
reply = { code = 550, xcode = "5.1.1", text = "No such user" }
[[rule]]
stage = "envelope-recipient"
action = "discard"
""")
    assert evaluate(driver, Rcpt("<abuse-test@example.com>")) == RuleOutcome(
        terminal=Status.REJECT, reply=ReplyCode("550 5.1.1 No such user"))
    assert evaluate(driver, Rcpt("<bob@example.com>")) == RuleOutcome(terminal=Status.DISCARD)


def test_c_rule_3_unknown_stage():
    """C-RULE-1: stage "unknown" takes terminal actions and set-macro."""
    driver = rules("""
[[rule]]
stage = "unknown"
match = { client_local = false }
action = "reject"
reply = { code = 502, xcode = "5.5.1", text = "Unrecognized" }
[[rule]]
stage = "unknown"
action = "set-macro"
set_macros = { saw_unknown = "yes" }
""")
    driver.connect()
    assert evaluate(driver, Unknown("FOO")).reply == ReplyCode("502 5.5.1 Unrecognized")
    driver.connect(address="127.0.0.1")
    assert evaluate(driver, Unknown("FOO")) == RuleOutcome(macros={"saw_unknown": "yes"})


# ============================================================================================ C-RULE-4


def test_c_rule_4_set_macro_for_every_child_of_this_stage():
    """C-RULE-4: set-macro adds macros to every child for this stage (applied by the leader, M-MAC-4)."""
    driver = rules("""
[[rule]]
stage = "envelope-from"
match = { authenticated = true }
action = "set-macro"
set_macros = { "{submission}" = "yes" }
""")
    driver.connect()
    driver.helo()
    driver.mail(macros={"auth_type": "PLAIN"})
    assert driver.outcome == RuleOutcome(macros={"submission": "yes"})  # braces are dropped at load
    assert [child.macros_extra for child in driver.leader.children] == [{"M": {"submission": "yes"}}] * 4
    driver.mail(macros={"i": "4Vq2"})
    assert driver.outcome is None
    assert all("M" not in child.macros_extra for child in driver.leader.children)


# ============================================================================================ predicates in rules


def test_rule_recipients_are_those_the_manager_accepted():
    """B5.1 ``recipients`` for ``[[rule]]``: over the RCPTs accepted by the manager so far."""
    driver = rules("""
[[rule]]
stage = "envelope-recipient"
match = { envelope_recipient = ['\\A<blocked@'] }
action = "reject"
[[rule]]
stage = "data"
match = { envelope_recipient_domain = ["example.com"], recipients = "all" }
action = "skip"
milters = ["spam*"]
[[rule]]
stage = "data"
match = { not_envelope_recipient_domain = ["example.com"] }
action = "accept"
""")
    driver.connect()
    driver.helo()
    driver.mail()
    driver.rcpt("<a@example.com>")
    driver.rcpt("<blocked@example.net>")
    assert driver.outcome.terminal == Status.REJECT
    driver.rcpt("<b@Example.COM>")
    assert driver.leader.recipients == ["<a@example.com>", "<b@Example.COM>"]
    assert evaluate(driver, Data()) == RuleOutcome(stopped=frozenset({"spamassassin", "spam-quarantine"}))
    driver.mail()
    driver.rcpt("<c@example.org>")
    assert evaluate(driver, Data()) == RuleOutcome(terminal=Status.ACCEPT)


def test_rule_header_is_the_current_one_and_macros_are_the_mtas():
    """B5.1 header at the header stage (rules run before the header is stored); macros: the MTA's."""
    driver = rules(r"""
[[rule]]
stage = "header"
match = { header = { name = '(?i)\AX-Spam-Flag\Z', value = '(?i)\AYES\Z' }, mta = "postfix" }
action = "discard"
""")
    driver.connect(macros=POSTFIX)
    driver.helo()
    driver.mail()
    driver.rcpt()
    driver.data()
    assert evaluate(driver, Header("Subject", "hi")) is None
    assert evaluate(driver, Header("X-Spam-Flag", "yes")) == RuleOutcome(terminal=Status.DISCARD)


def test_rule_milter_status_and_flags():
    """B5.1 milter_status and flag in a rule: siblings by name, the transaction shelf."""
    driver = rules("""
[[rule]]
stage = "end-of-message"
match = { milter_status = { clamav = ["reject"] }, not_flag = ["keep"] }
action = "discard"
""")
    driver.leader.children[2].last_status = "reject"
    assert evaluate(driver, EndOfMessage()) == RuleOutcome(terminal=Status.DISCARD)
    driver.leader.flags.add("keep")
    assert evaluate(driver, EndOfMessage()) is None


# ============================================================================================ the leader side


class LeaderStandIn:
    """The attributes ``Leader._rules`` and ``Leader.stopped`` use, around the driver's facts."""

    def __init__(self, driver: Driver) -> None:
        self.fake = driver.leader
        self.children = driver.leader.children
        self.facts = driver.leader
        self.manager = ManagerContext(condition_evaluator=driver.built.condition_evaluator,
                                      rule_evaluator=driver.built.rule_evaluator)
        self.rule_stopped = frozenset()
        self.rule_stage = ""

    def __getattr__(self, name):
        return getattr(self.fake, name)


def test_c_rule_6_rule_stopped_child_skips_its_conditions():
    """C-RULE-6: the rule chain runs first; a child it stopped is not evaluated by its conditions."""
    text = """
[[condition]]
name = "marker"
  [[condition.rule]]
  stage = "envelope-from"
  set_macros = { evaluated = "yes" }
  action = "apply"
[[rule]]
stage = "envelope-from"
action = "skip"
milters = ["a"]
"""
    driver = Driver(configuration(text, {"a": ["marker"], "b": ["marker"]}))
    stand_in = LeaderStandIn(driver)
    command = Mail("<x@example.org>")
    assert Leader._rules(stand_in, "M", command) is None
    assert stand_in.rule_stopped == frozenset({"a"})
    a, b = driver.leader.children
    assert Leader.stopped(stand_in, a, "M", command) is True
    assert Leader.stopped(stand_in, b, "M", command) is False
    assert a.macros_extra == {} and b.macros_extra == {"M": {"evaluated": "yes"}}
    # the stop belongs to this stage only
    assert Leader.stopped(stand_in, a, "R", Rcpt("<y@example.org>")) is False


def test_c_rule_4_leader_applies_macros_per_command():
    """C-RULE-4 / M-MAC-4 in the leader: rule macros go to every child; the next command of the stage
    starts without the previous command's macros."""
    text = """
[[rule]]
stage = "envelope-recipient"
match = { envelope_recipient = ['\\A<list@'] }
action = "set-macro"
set_macros = { list = "yes" }
"""
    driver = Driver(configuration(text, {"a": [], "b": []}))
    stand_in = LeaderStandIn(driver)
    Leader._rules(stand_in, "R", Rcpt("<list@example.org>"))
    assert [child.macros_extra for child in driver.leader.children] == [{"R": {"list": "yes"}}] * 2
    Leader._rules(stand_in, "R", Rcpt("<bob@example.org>"))
    assert [child.macros_extra for child in driver.leader.children] == [{}, {}]


def test_c_rule_5_rules_are_not_part_of_condition_evaluation():
    """C-RULE-5: replays only run conditions (the leader calls the rule chain from MTA commands only);
    evaluating a child's conditions never consults the rule chain."""
    text = """
[[rule]]
stage = "header"
action = "reject"
"""
    driver = Driver(configuration(text, {"a": ["Trust"]}))
    calls = []
    stand_in = LeaderStandIn(driver)
    stand_in.manager.rule_evaluator = lambda *args: calls.append(args)
    child = driver.leader.children[0]
    assert Leader.stopped(stand_in, child, "L", Header("Subject", "x")) is False
    assert calls == []
