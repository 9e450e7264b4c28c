"""Review findings: each test shows one defect of the leader (manager.md, decisions.md rule ids)."""

from __future__ import annotations

import time

from manager_harness import letters
from milterman.protocol import CONTINUE, AddHeader, Step
from scripted_milter import Script

HEADERS = (("From", "<sender@example.org>"), ("Subject", "hello"))
BODY = (b"line 1\r\n",)


def test_D_2_M_ENV_1_no_envelope_recipient_towards_the_mta_keeps_children_in_the_message(pair):
    """D-2 lets the manager ask the MTA for no RCPT events when every child set no-envelope-recipient.
    The children then saw no recipient at all, which is not "rejected every recipient" (M-ENV-6):
    they must still get DATA and the message, and the MTA must not get ``a`` at DATA."""
    pair.c1.script = Script(protocol=int(Step.NO_RCPT))
    pair.c2.script = Script(protocol=int(Step.NO_RCPT))
    pair.start()
    mta = pair.mta()
    mta.session_start()
    assert not mta.sends("R")
    assert letters(mta.mail()) == ["c"]
    assert letters(mta.data()) == ["c"]
    for name, value in HEADERS:
        assert letters(mta.header(name, value)) == ["c"]
    assert letters(mta.end_of_header()) == ["c"]
    assert letters(mta.body(BODY[0])) == ["c"]
    assert mta.end_of_message() == [CONTINUE]
    mta.quit()
    assert pair.c1.session.letters == ["O", "C", "H", "M", "T", "L", "L", "N", "B", "E", "Q"]
    assert pair.c2.session.letters == ["O", "C", "H", "M", "T", "L", "L", "N", "B", "E", "Q"]


def test_D_2_M_ENV_1_no_envelope_from_towards_the_mta_still_starts_a_transaction(pair):
    """D-2: every child set no-envelope-from. If the manager passes that on, the MTA never sends ``M``
    and the manager never starts a transaction: the first RCPT finds "no milter processing the
    message" (M-ERR-7). Children must take part in the message (M-ENV-1: no-envelope-from children
    are processing it although they were not sent ``M``)."""
    pair.c1.script = Script(protocol=int(Step.NO_MAIL))
    pair.c2.script = Script(protocol=int(Step.NO_MAIL))
    pair.start(manager={"fallback_status": "reject"})
    mta = pair.mta()
    mta.session_start()
    if mta.sends("M"):
        assert letters(mta.mail()) == ["c"]
    assert letters(mta.rcpt()) == ["c"]
    assert letters(mta.data()) == ["c"]
    for name, value in HEADERS:
        assert letters(mta.header(name, value)) == ["c"]
    assert letters(mta.end_of_header()) == ["c"]
    assert letters(mta.body(BODY[0])) == ["c"]
    assert mta.end_of_message() == [CONTINUE]
    mta.quit()
    assert pair.c1.session.letters == ["O", "C", "H", "R", "T", "L", "L", "N", "B", "E", "Q"]
    assert pair.c2.session.letters == ["O", "C", "H", "R", "T", "L", "L", "N", "B", "E", "Q"]


def test_D_4_quit_after_quit_new_connection_leaves_no_session_counted(pair):
    """D-4: ``K`` then ``Q`` (no new SMTP session began). The fresh handler made at ``K`` must not stay
    counted as a session in progress (``[sessions][finished] N(+n) PROCESSING``, M-FIN-1; the "No
    Stress" condition reads the same counter, M-AC-B5)."""
    manager = pair.start(log={"level": "statistics"})
    mta = pair.mta()
    mta.session_start()
    mta.quit_new_connection()
    mta.quit()
    manager.wait_output("[session][end][helo]")  # the session ended by K
    time.sleep(0.3)  # the Q is handled
    before = manager.output.count("[sessions][finished]")
    second = pair.mta()
    second.session_start()
    second.quit()
    output = manager.wait_output("[sessions][finished]", count=before + 1)
    lines = [line for line in output.splitlines() if "[sessions][finished]" in line]
    assert lines[-1].rstrip().endswith(" 0"), lines


def test_D_2_M_EOM_3_added_header_with_an_existing_name_needs_no_change_header(pair):
    """D-2 narrows the MTA's actions to what children asked: both ask add-header only. c1 adds
    ``X-A: new`` while the MTA sent an ``X-A: old`` (Sendmail puts the new one before it). The diff
    must not express that as "change X-A[1] to new, then add X-A: old" — the change-header would be
    dropped (not granted, P-PRX-5) and the MTA would end with two ``X-A: old`` and no ``X-A: new``."""
    from milterman.protocol import Action, ChangeHeader

    pair.c1.script = Script(actions=int(Action.ADD_HEADERS), replies={"E": _at_eom(AddHeader("X-A", "new"))})
    pair.c2.script = Script(actions=int(Action.ADD_HEADERS))
    pair.start()
    mta = pair.mta()
    reply = mta.negotiate()
    assert reply.actions == Action.ADD_HEADERS
    assert letters(mta.connect()) == ["c"]
    assert letters(mta.helo()) == ["c"]
    mta.envelope()
    packets = mta.content((("Subject", "hello"), ("X-A", "old")), BODY)
    mta.quit()
    assert not any(isinstance(packet, ChangeHeader) for packet in packets), packets
    # no ``v`` macro: Sendmail's rules (D-16), where ``h`` itself goes before the first X-A
    assert packets == [AddHeader("X-A", "new"), CONTINUE], packets


def _at_eom(*edits):
    def answer(session, command):
        for edit in edits:
            session.queue(edit)
        return CONTINUE

    return answer


def test_D_2_M_EOM_3_header_edits_of_children_without_headers_reach_the_mta(pair):
    """D-2: both children set no-headers; c1 deletes ``X-Spam-Flag`` (``m X-Spam-Flag[1] ""``) and
    inserts ``X-Top`` at index 0 at end of message. If the manager passes no-headers on to the MTA it
    has no H0 to diff against (M-EOM-3): the delete vanishes and the insert becomes an append."""
    from milterman.protocol import Action, ChangeHeader, InsertHeader

    edits = _at_eom(ChangeHeader(1, "X-Spam-Flag", ""), InsertHeader(0, "X-Top", "t"))
    headers_actions = int(Action.ADD_HEADERS | Action.CHANGE_HEADERS)
    pair.c1.script = Script(protocol=int(Step.NO_HEADERS), actions=headers_actions, replies={"E": edits})
    pair.c2.script = Script(protocol=int(Step.NO_HEADERS), actions=headers_actions)
    pair.start()
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    headers = (("Subject", "hello"), ("X-Spam-Flag", "YES")) if mta.sends("L") else ()
    packets = mta.content(headers, BODY)
    mta.quit()
    assert ChangeHeader(1, "X-Spam-Flag", "") in packets, packets
    assert InsertHeader(0, "X-Top", "t") in packets, packets
    assert pair.c1.session.count("L") == 0 and pair.c2.session.count("L") == 0


def test_M_ERR_2_each_child_has_its_own_reading_timeout_at_parallel_stages(pair):
    """M-ERR-2, M-ENV-2: c1 never answers RCPT (reading timeout 1 s, fallback accept); c2 answers at once
    (same timeout, fallback reject). Only c1 expires: c2's answer, which arrived in time, is read
    after c1's timeout and must still count (RCPT → ``c``), and c2 stays for the message."""
    pair.c1.script = Script(hang="R")
    pair.start(c1={"reading_timeout": 1.0}, c2={"reading_timeout": 1.0, "fallback_status": "reject"})
    mta = pair.mta()
    mta.session_start()
    assert letters(mta.mail()) == ["c"]
    assert letters(mta.rcpt()) == ["c"]
    assert mta.content(HEADERS, BODY) == [CONTINUE]
    mta.quit()
    assert pair.c2.session.letters == ["O", "C", "H", "M", "R", "T", "L", "L", "N", "B", "E", "Q"]
