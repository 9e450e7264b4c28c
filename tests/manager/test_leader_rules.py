"""Rule tests of the manager (manager.md ``M-*`` rules with a ``Py:`` line, decisions.md D-2, D-3, D-4, D-14).

Same set-up as test_scenarios.py: the real milter-manager as a subprocess, scripted
children c1 and c2 on unix sockets, and an MTA connection recording every packet
the manager sends. Each test name cites the rule it checks.
"""

from __future__ import annotations

import time

from manager_harness import OFFER, letters
from milterman.protocol import (ACCEPT, CONTINUE, REJECT, SHUTDOWN, SKIP, TEMPFAIL, AddHeader, AddRcpt, Action,
                                ChangeFrom, ChangeHeader, ConnectionFailure, MacroStage, Negotiate,
                                Quarantine, ReplaceBody, ReplyCode, Step)
from milterman.protocol.flags import NO_REPLY_STEPS, SKIP_STEPS
from scripted_milter import Script

HEADERS = (("From", "<sender@example.org>"), ("Subject", "hello"))
BODY = (b"line 1\r\n", b"line 2\r\n")
#: what the live child gets for HEADERS and BODY (the MTA's chunks)
FULL_MESSAGE = ["T", "L", "L", "N", "B", "B", "E"]
#: what a replayed child gets (the body in chunk_size pieces: one here)
REPLAYED_MESSAGE = ["T", "L", "L", "N", "B", "E"]


def at_eom(*edits, final=CONTINUE):
    def answer(session, command):
        for edit in edits:
            session.queue(edit)
        return final

    return answer


def body_of(record) -> bytes:
    return b"".join(command.chunk for command in record.commands("B"))


def headers_of(record) -> list[tuple[str, str]]:
    return [(command.name, command.value) for command in record.commands("L")]


def missing(env, name: str = "missing") -> str:
    """A unix socket spec nobody listens on."""
    return f"unix:{env.dir / (name + '.sock')}"


# ------------------------------------------------------------------------------------------ status algebra


def test_M_AGG_2a_message_accumulators_reset_per_transaction(pair):
    """M-AGG-2a Py: every child accepts at header 1 of message 1 (the MTA gets ``a``, M-MSG-7); message 2,
    where every child continues, ends with ``c``, not with message 1's status."""
    pair.c1.script = Script(replies={"L": [ACCEPT]})
    pair.c2.script = Script(replies={"L": [ACCEPT]})
    pair.start()
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert letters(mta.data()) == ["c"]
    assert mta.header("Subject", "one") == [ACCEPT]
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [CONTINUE]
    mta.quit()
    # c1 left at header 1 of message 1, so message 2's header 1 is c2's second header (a continue)
    assert pair.c1.session.letters == ["O", "C", "H", "M", "R", "T", "L", "M", "R", *FULL_MESSAGE, "Q"]


def test_M_AGG_1_eom_continue_beats_earlier_accept(pair):
    """M-AGG-1: c1 accepts at end of header, c2 continues to the end → EOM ``c`` (accept only when every
    participant accepted)."""
    pair.c1.script = Script(replies={"N": ACCEPT})
    pair.start()
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [CONTINUE]
    mta.quit()
    assert pair.c2.session.letters == ["O", "C", "H", "M", "R", "T", "L", "L", "N", "B", "B", "E", "Q"]


# ------------------------------------------------------------------------------------------ negotiation (D-2)


def test_M_NEG_1_children_get_the_original_offer(pair):
    """M-NEG-1 quirk Py: each child is offered exactly the MTA's offer, whatever the other child answered,
    also for the fresh children after ``K`` (D-4)."""
    pair.c1.script = Script(actions=int(Action.ADD_HEADERS), protocol=int(Step.NO_HELO | Step.NO_REPLY_CONNECT))
    pair.start()
    mta = pair.mta()
    mta.negotiate()
    assert letters(mta.connect()) == ["c"]
    mta.quit_new_connection()
    assert letters(mta.connect()) == ["c"]
    mta.quit()
    for milter in (pair.c1, pair.c2):
        sessions = milter.wait_sessions(2)
        assert [record.command("O") for record in sessions] == [OFFER, OFFER]


def test_M_NEG_1_narrow_mta_offer_passed_on_unchanged(pair):
    """M-NEG-1: a narrower MTA offer reaches every child as it is."""
    offer = Negotiate(6, int(Action.ADD_HEADERS | Action.CHANGE_HEADERS), 0x1FFFFF & ~int(Step.SKIP))
    pair.start()
    mta = pair.mta()
    reply = mta.negotiate(offer)
    assert reply.actions == offer.actions
    assert not reply.protocol & Step.SKIP
    mta.quit()
    assert pair.c1.session.command("O") == offer
    assert pair.c2.session.command("O") == offer


def test_M_NEG_3a_no_reply_bits_never_advertised_and_honoured(pair):
    """M-NEG-3a Py, D-2: both children ask no-reply for connect and header; the MTA is offered no no-reply
    bit and gets a reply to each command; the children are not waited for; the replayed child still gets
    every header, EOH, body and EOM."""
    no_reply = int(Step.NO_REPLY_CONNECT | Step.NO_REPLY_HEADER)
    pair.c1.script = Script(protocol=no_reply)
    pair.c2.script = Script(protocol=no_reply, replies={"E": at_eom(AddHeader("X-C2", "v2"))})
    pair.start(c1={"reading_timeout": 5.0}, c2={"reading_timeout": 5.0})
    mta = pair.mta()
    reply = mta.negotiate()
    assert reply.protocol & NO_REPLY_STEPS == 0
    started = time.monotonic()
    assert mta.connect() == [CONTINUE]
    assert letters(mta.helo()) == ["c"]
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [AddHeader("X-C2", "v2"), CONTINUE]
    assert time.monotonic() - started < 3  # no reading timeout was waited for
    mta.quit()
    assert pair.c1.session.letters == ["O", "C", "H", "M", "R", *FULL_MESSAGE, "Q"]
    assert pair.c2.session.letters == ["O", "C", "H", "M", "R", "T", "L", "L", "N", "B", "E", "Q"]


def test_M_NEG_3b_D_2_actions_are_the_offer_cut_to_the_children_requests(pair):
    """D-2: actions = MTA offer ∩ (OR of the children's requests)."""
    pair.c1.script = Script(actions=int(Action.ADD_HEADERS))
    pair.c2.script = Script(actions=int(Action.CHANGE_HEADERS | Action.QUARANTINE))
    pair.start()
    mta = pair.mta()
    reply = mta.negotiate()
    assert reply.actions == Action.ADD_HEADERS | Action.CHANGE_HEADERS | Action.QUARANTINE
    mta.quit()


def test_M_NEG_3b_actions_never_exceed_the_offer(pair):
    """M-NEG-3b Py: a child asking for actions the MTA did not offer never widens the manager's answer."""
    offer = Negotiate(6, int(Action.ADD_HEADERS | Action.CHANGE_BODY), 0x1FFFFF)

    def greedy(reply):
        return type(reply)(reply.version, 0x1FF, reply.protocol, reply.macro_lists)

    pair.c1.script = Script(negotiate_reply=greedy)
    pair.start()
    mta = pair.mta()
    reply = mta.negotiate(offer)
    assert reply.actions & ~offer.actions == 0
    assert reply.actions == offer.actions  # c2 asked for everything offered
    assert letters(mta.connect()) == ["c"]
    mta.quit()


def test_D_2_no_event_bits_only_when_every_child_set_them(pair):
    """D-2: no-connect and no-helo (asked by both) reach the MTA; no-body and no-unknown (asked by one) do not.
    The child that asked no-body gets no body; the other is replayed it."""
    pair.c1.script = Script(protocol=int(Step.NO_CONNECT | Step.NO_HELO | Step.NO_BODY))
    pair.c2.script = Script(protocol=int(Step.NO_CONNECT | Step.NO_HELO | Step.NO_UNKNOWN))
    pair.start()
    mta = pair.mta()
    reply = mta.negotiate()
    assert reply.protocol & SKIP_STEPS == Step.NO_CONNECT | Step.NO_HELO
    assert not mta.sends("C") and not mta.sends("H") and mta.sends("B") and mta.sends("U")
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [CONTINUE]
    mta.quit()
    assert pair.c1.session.letters == ["O", "M", "R", "T", "L", "L", "N", "E", "Q"]
    c2 = pair.c2.session
    assert c2.letters == ["O", "M", "R", "T", "L", "L", "N", "B", "E", "Q"]
    assert body_of(c2) == b"".join(BODY)


def test_D_2_macro_lists_union(pair):
    """D-2, M-MAC-3: per stage the union of the children's macro lists; no list for a stage where one child
    relies on the MTA's defaults; each child then gets only the macros it asked for (M-MAC-2)."""
    pair.c1.script = Script(macro_lists=((int(MacroStage.CONNECT), "{client_addr} j"),
                                         (int(MacroStage.HELO), "{tls_version}")))
    pair.c2.script = Script(macro_lists=((int(MacroStage.CONNECT), "{daemon_name} j"),))
    pair.start()
    mta = pair.mta()
    reply = mta.negotiate()
    assert reply.actions & Action.SET_SYMBOL_LIST
    lists = dict(reply.macro_lists)
    assert set(lists) == {int(MacroStage.CONNECT)}
    names = lists[int(MacroStage.CONNECT)].split()
    assert sorted(names) == ["j", "{client_addr}", "{daemon_name}"]
    macros = {"client_addr": "192.0.2.1", "j": "mx.example.net", "daemon_name": "smtpd", "other": "x"}
    assert letters(mta.connect(macros=macros)) == ["c"]
    mta.quit()
    assert pair.c1.session.macros("C") == {"client_addr": "192.0.2.1", "j": "mx.example.net"}
    assert pair.c2.session.macros("C") == {"daemon_name": "smtpd", "j": "mx.example.net"}


# ------------------------------------------------------------------------------------------ failures (D-14)


def test_D_14_M_NEG_5_unreachable_child_tempfail_fallback(env):
    """D-14 (replaces M-NEG-5): an unreachable child with fallback temporary-failure → the MTA gets ``t`` at
    connect; the other child is not switched off (it gets ``C``)."""
    c2 = env.milter("c2")
    env.start([{"name": "c1", "connection_spec": missing(env), "fallback_status": "temporary-failure"},
               {"name": "c2"}])
    mta = env.mta()
    mta.negotiate()
    assert mta.connect() == [TEMPFAIL]
    mta.quit()
    assert c2.session.letters == ["O", "C", "Q"]


def test_D_14_M_CON_5_unreachable_child_accept_is_absent(env):
    """D-14: with fallback accept the unreachable child is simply absent. M-CON-5: without a command it is
    not retried, so the MTA's negotiation is answered at once despite ``retry_delay = 3``."""
    c2 = env.milter("c2")
    env.start([{"name": "c1", "connection_spec": missing(env), "fallback_status": "accept", "retry_delay": 3.0},
               {"name": "c2", "fallback_status": "reject"}])
    mta = env.mta()
    started = time.monotonic()
    mta.negotiate()
    assert time.monotonic() - started < 2.5
    assert letters(mta.connect()) == ["c"]
    assert letters(mta.helo()) == ["c"]
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [CONTINUE]
    mta.quit()
    assert c2.session.letters == ["O", "C", "H", "M", "R", *FULL_MESSAGE, "Q"]


# ------------------------------------------------------------------------------------------ K (D-4)


def test_M_SES_7_D_4_quit_new_connection_gives_fresh_children(pair):
    """M-SES-7 Py, D-4: after ``K`` the children of the finished SMTP session get ``Q`` and are closed; the
    next ``C`` gets a fresh set, negotiated with the MTA's original offer."""
    pair.start()
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [CONTINUE]
    mta.quit_new_connection()
    for milter, message in ((pair.c1, FULL_MESSAGE), (pair.c2, REPLAYED_MESSAGE)):
        first = milter.wait_sessions(1)[0]
        assert first.letters == ["O", "C", "H", "M", "R", *message, "Q"]
        assert len(milter.sessions) == 1  # the new children are made at the next C, not before
    assert letters(mta.connect(host="second.example.net")) == ["c"]
    assert letters(mta.helo()) == ["c"]
    mta.quit()
    for milter in (pair.c1, pair.c2):
        sessions = milter.wait_sessions(2)
        second = sessions[1]
        assert second.letters == ["O", "C", "H", "Q"]
        assert second.command("O") == OFFER
        assert second.command("C").hostname == "second.example.net"


# ------------------------------------------------------------------------------------------ evaluation mode


def test_M_EVAL_3_evaluation_reject_at_header_acts_like_accept(pair):
    """M-EVAL-3 Py: c1 (evaluation mode) rejects header 1 → the MTA gets ``c``; c1 leaves, c2 is replayed
    header 1 and filters the whole message."""
    pair.c1.script = Script(replies={"L": REJECT})
    pair.c2.script = Script(replies={"E": at_eom(AddHeader("X-C2", "v2"))})
    pair.start(c1={"evaluation_mode": True})
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [AddHeader("X-C2", "v2"), CONTINUE]
    mta.quit()
    assert pair.c1.session.letters == ["O", "C", "H", "M", "R", "T", "L", "Q"]
    assert pair.c2.session.letters == ["O", "C", "H", "M", "R", *FULL_MESSAGE, "Q"]


def test_M_EVAL_1_evaluation_edits_ignored(pair):
    """M-EVAL-1: an evaluation child's modifications are ignored; its reject counts as accept."""
    pair.c2.script = Script(replies={"E": at_eom(AddHeader("X-Eval", "v"), AddRcpt("<e@example.org>"),
                                                 final=REJECT)})
    pair.start(c2={"evaluation_mode": True})
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [CONTINUE]
    mta.quit()


# ------------------------------------------------------------------------------------------ errors


def test_M_ERR_3_eom_timeout_tempfail_fallback_aborts_the_rest(pair):
    """M-ERR-3: c1's EOM times out with fallback temporary-failure → ``t``; c2 is aborted without seeing
    the message."""
    pair.c1.script = Script(hang="E")
    pair.start(c1={"fallback_status": "temporary-failure", "end_of_message_timeout": 1.0})
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [TEMPFAIL]
    mta.quit()
    assert pair.c2.session.letters == ["O", "C", "H", "M", "R", "T", "A", "Q"]


def test_M_ERR_3_rcpt_timeout_fallback_counts_at_parallel_stage(pair):
    """M-ERR-3: a reading timeout at RCPT with fallback temporary-failure → ``t`` once the timeout expired;
    the child is gone, the other one goes on."""
    pair.c1.script = Script(hang="R")
    pair.start(c1={"fallback_status": "temporary-failure", "reading_timeout": 1.0})
    mta = pair.mta()
    mta.session_start()
    assert letters(mta.mail()) == ["c"]
    started = time.monotonic()
    assert mta.rcpt() == [TEMPFAIL]
    assert 0.8 <= time.monotonic() - started < 5
    assert letters(mta.rcpt("<other@example.org>")) == ["c"]
    mta.quit()
    assert pair.c2.session.letters == ["O", "C", "H", "M", "R", "R", "Q"]


def test_M_ERR_3a_fallback_accept_at_eom_keeps_all_edits(pair):
    """M-ERR-3a Py: c2 (fallback accept) closes its socket at EOM after c1 edited headers, body, sender and
    quarantine → every edit of c1 still reaches the MTA."""
    from scripted_milter import CLOSE

    pair.c1.script = Script(replies={"E": at_eom(ReplaceBody(b"new body\r\n"), ChangeHeader(1, "Subject", "new"),
                                                 ChangeFrom("<new@example.org>"), Quarantine("held"))})
    pair.c2.script = Script(replies={"E": CLOSE})
    pair.start(c2={"fallback_status": "accept"})
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [ReplaceBody(b"new body\r\n"), ChangeHeader(1, "Subject", "new"),
                                          ChangeFrom("<new@example.org>"), Quarantine("held"), CONTINUE]
    mta.quit()


def test_M_ERR_3_refusing_fallback_at_eom_sends_no_earlier_edits(pair):
    """M-ERR-3: when c2 fails at EOM with fallback temporary-failure, the fallback answers at once and c1's
    header and body edits are not emitted (unlike a child's own refusal at its EOM, M-MSG-6)."""
    from scripted_milter import CLOSE

    pair.c1.script = Script(replies={"E": at_eom(ReplaceBody(b"new body\r\n"), ChangeHeader(1, "Subject", "new"))})
    pair.c2.script = Script(replies={"E": CLOSE})
    pair.start(c2={"fallback_status": "temporary-failure"})
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [TEMPFAIL]
    mta.quit()


def test_M_ERR_5_shutdown_reply_expires_child_with_fallback(pair):
    """M-ERR-5 Py: ``4`` from a child is an M-ERR-1 failure: its fallback (temporary-failure) is counted at
    once (no waiting for the reading timeout) and the child is gone."""
    pair.c1.script = Script(replies={"H": SHUTDOWN})
    pair.start(c1={"fallback_status": "temporary-failure", "reading_timeout": 30.0})
    mta = pair.mta()
    mta.negotiate()
    assert letters(mta.connect()) == ["c"]
    started = time.monotonic()
    assert mta.helo() == [TEMPFAIL]
    assert time.monotonic() - started < 3
    mta.quit()
    assert pair.c1.session.letters[:3] == ["O", "C", "H"]
    assert "M" not in pair.c1.session.letters


def test_M_ERR_5_connection_failure_reply_expires_child_with_fallback(pair):
    """M-ERR-5 Py: ``f`` from a child is an M-ERR-1 failure: its fallback (temporary-failure) is counted at
    once; the other child goes on."""
    pair.c1.script = Script(replies={"M": ConnectionFailure.INSTANCE})
    pair.start(c1={"fallback_status": "temporary-failure", "reading_timeout": 30.0})
    mta = pair.mta()
    mta.session_start()
    started = time.monotonic()
    assert mta.mail() == [TEMPFAIL]
    assert time.monotonic() - started < 3
    assert letters(mta.mail("<again@example.org>")) == ["c"]
    mta.quit()
    assert pair.c2.session.letters == ["O", "C", "H", "M", "A", "M", "Q"]
    assert pair.c1.session.letters.count("M") == 1


def test_M_ERR_7a_no_child_negotiated_single_fallback_reply(env):
    """M-ERR-7a Py, M-NEG-4, D-2: no child could be reached (fallback accept: absent) → the MTA's
    negotiation is still answered, and ``C`` gets the manager fallback (reject) exactly once."""
    env.start([{"name": "c1", "connection_spec": missing(env, "c1")},
               {"name": "c2", "connection_spec": missing(env, "c2")}],
              manager={"fallback_status": "reject"})
    mta = env.mta()
    mta.negotiate()
    assert mta.connect() == [REJECT]
    assert mta.silence(0.5) == []


def test_M_ERR_7a_no_alive_child_single_fallback_reply(pair):
    """M-ERR-7a Py: both children are quitted at an unknown command (they accepted it, M-ENV-4); the next
    MAIL finds no alive child → the manager fallback (temporary-failure) exactly once."""
    pair.c1.script = Script(replies={"U": ACCEPT})
    pair.c2.script = Script(replies={"U": ACCEPT})
    pair.start(manager={"fallback_status": "temporary-failure"})
    mta = pair.mta()
    mta.session_start()
    assert letters(mta.unknown("HELP")) == ["a"]
    assert mta.mail() == [TEMPFAIL]
    assert mta.silence(0.5) == []
    mta.quit()
    for milter in (pair.c1, pair.c2):
        assert milter.session.letters == ["O", "C", "H", "U", "Q"]


# ------------------------------------------------------------------------------------------ reply codes


def test_M_RC_1_reply_code_kept_with_its_status(pair):
    """M-RC-1: a 4xx ``y`` winning as temporary-failure is relayed with its text; when another child's
    plain reject wins, the 4xx text is not used (plain ``r``)."""
    pair.c1.script = Script(replies={"M": [ReplyCode("451 4.3.0 busy, try later"), ReplyCode("451 4.3.0 busy")]})
    pair.c2.script = Script(replies={"M": [None, REJECT]})
    pair.start()
    mta = pair.mta()
    mta.session_start()
    assert mta.mail() == [ReplyCode("451 4.3.0 busy, try later")]
    assert mta.mail() == [REJECT]
    mta.quit()


def test_M_RC_2a_invalid_reply_code_gives_plain_status(pair):
    """M-RC-2a Py: a child's ``y 554 3.7.1 …`` (extended class ≠ code class) → the MTA gets a plain ``r``
    (not silence); the reject still applies: the other child gets ``A``."""
    pair.c1.script = Script(replies={"M": ReplyCode("554 3.7.1 bad class")})
    pair.start()
    mta = pair.mta()
    mta.session_start()
    assert mta.mail() == [REJECT]
    mta.quit()
    assert pair.c2.session.letters == ["O", "C", "H", "M", "A", "Q"]


def test_M_RC_3_code_does_not_survive_into_a_later_stage(pair):
    """M-RC-3 Py: c1's ``y 550`` for one recipient is not reused when c2 rejects DATA (plain ``r``)."""
    pair.c1.script = Script(replies={"R": [ReplyCode("550 5.1.1 no such user x"), None]})
    pair.c2.script = Script(replies={"T": REJECT})
    pair.start()
    mta = pair.mta()
    mta.session_start()
    assert letters(mta.mail()) == ["c"]
    assert mta.rcpt("<x@example.org>") == [ReplyCode("550 5.1.1 no such user x")]
    assert letters(mta.rcpt("<y@example.org>")) == ["c"]
    assert mta.data() == [REJECT]
    mta.quit()


# ------------------------------------------------------------------------------------------ envelope


def test_M_ENV_8_rejected_recipient_only_to_children_that_asked(pair):
    """M-ENV-8 Py: the MTA-rejected RCPT (``{rcpt_mailer}`` = error) reaches only the child that negotiated
    envelope-recipient-rejected; the bit is offered to the MTA because one child asked."""
    pair.c1.script = Script(protocol=int(Step.RCPT_REJECTED))
    pair.start()
    mta = pair.mta()
    reply = mta.negotiate()
    assert reply.protocol & Step.RCPT_REJECTED
    assert letters(mta.connect()) == ["c"]
    assert letters(mta.helo()) == ["c"]
    assert letters(mta.mail()) == ["c"]
    assert letters(mta.rcpt("<bad@example.org>", macros={"rcpt_mailer": "error"})) == ["c"]
    assert letters(mta.rcpt("<good@example.org>", macros={"rcpt_mailer": "local"})) == ["c"]
    mta.quit()
    assert [command.address for command in pair.c1.session.commands("R")] == ["<bad@example.org>",
                                                                              "<good@example.org>"]
    assert [command.address for command in pair.c2.session.commands("R")] == ["<good@example.org>"]


# ------------------------------------------------------------------------------------------ message pipeline


def test_D_3_replay_shows_earlier_header_and_body_edits(pair):
    """D-3, M-MSG-4: c2 is replayed the headers and body as c1 left them (change, add, replace)."""
    pair.c1.script = Script(replies={"E": at_eom(ChangeHeader(1, "Subject", "changed"), AddHeader("X-C1", "v1"),
                                                 ReplaceBody(b"replaced by c1\r\n"))})
    pair.start()
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    packets = mta.content(HEADERS, BODY)
    assert packets == [ReplaceBody(b"replaced by c1\r\n"), ChangeHeader(1, "Subject", "changed"),
                       AddHeader("X-C1", "v1"), CONTINUE]
    mta.quit()
    c2 = pair.c2.session
    assert headers_of(c2) == [("From", "<sender@example.org>"), ("Subject", "changed"), ("X-C1", "v1")]
    assert body_of(c2) == b"replaced by c1\r\n"


def test_M_EOM_1_emission_order(pair):
    """M-EOM-1: recipients first (forwarded as they come), then body, header edits, sender, quarantine, and
    the final status — whatever order the child sent them in."""
    pair.c1.script = Script(replies={"E": at_eom(Quarantine("why"), ChangeFrom("<f@example.org>"),
                                                 AddHeader("X-C1", "v1"), AddRcpt("<added@example.org>"),
                                                 ReplaceBody(b"new\r\n"))})
    pair.start()
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [AddRcpt("<added@example.org>"), ReplaceBody(b"new\r\n"),
                                          AddHeader("X-C1", "v1"), ChangeFrom("<f@example.org>"),
                                          Quarantine("why"), CONTINUE]
    mta.quit()


def test_M_EOM_3_header_diff_verified_example(pair):
    """M-EOM-3 example under D-16 (no ``v`` macro: Sendmail's rules): H0 = [Subject: orig, X-Del: x, To: t];
    c1 changes Subject and deletes X-Del, c2 adds X-C2 → changes first, then deletes, then the new header,
    appended with ``h`` (nothing of that name): ``m Subject[1]``, ``m X-Del[1] ""``, ``h X-C2``."""
    pair.c1.script = Script(replies={"E": at_eom(ChangeHeader(1, "Subject", "changed"),
                                                 ChangeHeader(1, "X-Del", ""))})
    pair.c2.script = Script(replies={"E": at_eom(AddHeader("X-C2", "v2"))})
    pair.start()
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    packets = mta.content((("Subject", "orig"), ("X-Del", "x"), ("To", "t")), BODY)
    assert packets == [ChangeHeader(1, "Subject", "changed"), ChangeHeader(1, "X-Del", ""),
                       AddHeader("X-C2", "v2"), CONTINUE]
    mta.quit()


def test_M_BODY_1_large_body_passes_through(pair):
    """M-BODY-1: a body over 5 MiB (kept in a temporary file by the manager) passes through unchanged: no
    ``b`` to the MTA, c1 gets the MTA's chunks, the replayed c2 gets the whole body in chunks ≤ 65535."""
    pair.start()
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    size = 5 * 1024 * 1024 + 300_000
    body = bytes((index * 7) % 251 for index in range(size))
    chunks = [body[offset:offset + 65535] for offset in range(0, size, 65535)]
    assert mta.content(HEADERS, chunks) == [CONTINUE]
    mta.quit()
    c1, c2 = pair.c1.session, pair.c2.session
    assert [command.chunk for command in c1.commands("B")] == chunks
    assert body_of(c2) == body
    assert max(len(command.chunk) for command in c2.commands("B")) <= 65535


def test_M_MSG_10_header_leading_space(pair):
    """M-MSG-10: with header-value-with-leading-space negotiated (c1 asked), c1 gets values as sent, c2
    gets one leading space stripped; c2's added header value gets a leading space towards the MTA."""
    pair.c1.script = Script(protocol=int(Step.HEADER_LEADING_SPACE),
                            replies={"E": at_eom(AddHeader("X-C1", " v1"))})
    pair.c2.script = Script(replies={"E": at_eom(AddHeader("X-C2", "v2"))})
    pair.start()
    mta = pair.mta()
    reply = mta.negotiate()
    assert reply.protocol & Step.HEADER_LEADING_SPACE
    assert letters(mta.connect()) == ["c"]
    assert letters(mta.helo()) == ["c"]
    mta.envelope()
    packets = mta.content((("From", " <sender@example.org>"), ("Subject", " hello")), BODY)
    assert packets == [AddHeader("X-C1", " v1"), AddHeader("X-C2", " v2"), CONTINUE]
    mta.quit()
    assert headers_of(pair.c1.session) == [("From", " <sender@example.org>"), ("Subject", " hello")]
    assert headers_of(pair.c2.session) == [("From", "<sender@example.org>"), ("Subject", "hello"),
                                           ("X-C1", "v1")]


def test_M_MSG_8_abort_in_pipeline(pair):
    """M-MSG-8: MTA ``A`` while c1 is live → every child in the message gets ``A``, no reply; the next
    message starts clean."""
    pair.start()
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert letters(mta.data()) == ["c"]
    assert letters(mta.header("Subject", "one")) == ["c"]
    mta.abort()
    assert mta.silence(0.3) == []
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [CONTINUE]
    mta.quit()
    assert pair.c2.session.letters == ["O", "C", "H", "M", "R", "T", "A", "M", "R", *REPLAYED_MESSAGE, "Q"]



def test_M_MSG_6_progress_forwarded_at_once(pair):
    """M-MSG-6: a child's ``p`` during its end of message reaches the MTA before the final reply."""

    def slow(session, command):
        session.progress()
        return CONTINUE

    pair.c2.script = Script(replies={"E": slow})
    pair.start()
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert letters(mta.content(HEADERS, BODY)) == ["p", "c"]
    mta.quit()


def test_M_MSG_6_reject_at_replayed_header_emits_no_header_edits(pair):
    """M-MSG-6: c2 rejects a replayed header during the MTA's end of message → ``r`` at once; c1's header
    edit is not emitted (its recipient was already forwarded, M-EOM-1 step 1)."""
    pair.c1.script = Script(replies={"E": at_eom(AddHeader("X-C1", "v1"), AddRcpt("<r1@example.org>"))})
    pair.c2.script = Script(replies={"L": REJECT})
    pair.start()
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [AddRcpt("<r1@example.org>"), REJECT]
    mta.quit()
    assert pair.c2.session.letters[:7] == ["O", "C", "H", "M", "R", "T", "L"]
    assert "E" not in pair.c2.session.letters


def test_M_EVAL_2_evaluation_child_refusing_every_recipient_leaves_at_data(pair):
    """M-EVAL-2, M-ENV-1: c1 (evaluation mode) rejects the only recipient → the MTA gets ``c`` (counted as
    accept), and at DATA c1 gets ``A`` instead of ``T``: it has no recipient of its own."""
    pair.c1.script = Script(replies={"R": REJECT})
    pair.start(c1={"evaluation_mode": True})
    mta = pair.mta()
    mta.session_start()
    assert letters(mta.mail()) == ["c"]
    assert mta.rcpt() == [CONTINUE]
    assert mta.content(HEADERS, BODY) == [CONTINUE]
    mta.quit()
    assert pair.c1.session.letters == ["O", "C", "H", "M", "R", "A", "Q"]
    assert pair.c2.session.letters == ["O", "C", "H", "M", "R", *FULL_MESSAGE, "Q"]


def test_M_ENV_7_data_emulated_when_the_mta_skips_it(pair):
    """M-ENV-7: a v6 MTA sends a header right after RCPT → the children get ``T`` first; a data refusal
    by a child is the answer to that header."""
    pair.c2.script = Script(replies={"T": TEMPFAIL})
    pair.start()
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert mta.header("Subject", "no data command") == [TEMPFAIL]
    mta.quit()
    assert pair.c1.session.letters[:6] == ["O", "C", "H", "M", "R", "T"]
    assert "L" not in pair.c1.session.letters
    assert pair.c2.session.letters[:6] == ["O", "C", "H", "M", "R", "T"]


def test_M_MAC_2_replayed_child_gets_the_stage_macros(pair):
    """M-MAC-2: the end-of-header and end-of-message macros travel with the delayed commands of the
    replayed child too."""
    pair.start()
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert letters(mta.data()) == ["c"]
    assert letters(mta.header("Subject", "s")) == ["c"]
    assert letters(mta.end_of_header(macros={"eoh_macro": "h1"})) == ["c"]
    assert letters(mta.body(b"b\r\n")) == ["c"]
    assert mta.end_of_message(macros={"i": "QUEUEID", "eom_macro": "e1"}) == [CONTINUE]
    mta.quit()
    for record in (pair.c1.session, pair.c2.session):
        assert record.macros("N") == {"eoh_macro": "h1"}
        assert record.macros("E") == {"i": "QUEUEID", "eom_macro": "e1"}


def test_M_BODY_2_chunk_size_for_replay_and_replacement(pair):
    """M-BODY-2, M-BODY-3, M-MSG-4: the live child gets the MTA's chunks as sent; the replacement body goes
    to the MTA and to the replayed child in ``chunk_size`` pieces; a replayed child answering ``s`` gets no
    more of the body."""
    replacement = b"0123456789abcdefghijKLMNO"
    pair.c1.script = Script(replies={"E": at_eom(ReplaceBody(replacement))})
    pair.c2.script = Script(protocol=int(Step.SKIP), replies={"B": SKIP})
    pair.start(manager={"chunk_size": 10})
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    chunks = [b"a" * 23, b"b" * 12]
    assert mta.content(HEADERS, chunks) == [ReplaceBody(replacement[:10]), ReplaceBody(replacement[10:20]),
                                            ReplaceBody(replacement[20:]), CONTINUE]
    mta.quit()
    assert [command.chunk for command in pair.c1.session.commands("B")] == chunks
    c2 = pair.c2.session
    assert [command.chunk for command in c2.commands("B")] == [replacement[:10]]
    assert c2.letters[-3:] == ["B", "E", "Q"]
