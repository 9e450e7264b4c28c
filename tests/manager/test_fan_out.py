"""The envelope fan-out in process (M-ENV-*, P-RPL-6, M-EVAL-1, M-ERR-1): one outcome table, no sockets.

``fan_out`` is driven through the port stand-in of :mod:`session_support` with the real
children over in-memory clients; each test is one row of the outcome table at work.
"""

from __future__ import annotations

import io

from session_support import Port, child

from milterman.log import Logger
from milterman.manager.session.children import OUTCOMES, fan_out
from milterman.manager.status import Combined, Status
from milterman.net import MilterIOError
from milterman.protocol import (ACCEPT, CONTINUE, DISCARD, REJECT, TEMPFAIL, Connect, Helo, Mail, Quarantine, Rcpt,
                                Step, Unknown)
from milterman.protocol.stages import ENVELOPE_LETTERS

CONNECT = Connect("client.example", "4", 40000, "192.0.2.1")


def run(command, *children) -> tuple[Combined, Port]:
    port = Port(list(children))
    combined = Combined()
    fan_out(port, command, list(children), combined)
    return combined, port


def test_the_outcome_table_covers_every_parallel_stage():
    """M-ENV-2: every envelope stage has its row; discard is valid only inside a message (P-RPL-6)."""
    assert set(OUTCOMES) == set(ENVELOPE_LETTERS)
    assert {letter for letter, outcome in OUTCOMES.items() if not outcome.discard_valid} == {"C", "H", "U"}


def test_M_ENV_2_the_command_goes_to_every_target_before_any_reply_is_read():
    """M-ENV-2: all children get the command at once; then each reply is collected in turn."""
    journal: list = []
    children = [child(name, through="") for name in ("c1", "c2", "c3")]
    for each in children:
        each.client.journal = journal
    combined, _ = run(CONNECT, *children)
    assert journal == [("begin", "C", "c1"), ("begin", "C", "c2"), ("begin", "C", "c3"),
                       ("collect", "C", "c1"), ("collect", "C", "c2"), ("collect", "C", "c3")]
    assert combined.status == Status.CONTINUE


def test_M_ENV_4_accept_or_refusal_at_connect_ends_the_child_for_the_session():
    """M-ENV-4: a child that accepts at connect is quitted (its end line written); continue keeps it;
    continue beats accept in the combination (M-AGG-1)."""
    c1 = child("c1", {"C": ACCEPT}, through="")
    c2 = child("c2", through="")
    combined, port = run(CONNECT, c1, c2)
    assert c1.quitted and not c2.quitted
    assert port.events == [("end", "c1", "accept")]
    assert combined.status == Status.CONTINUE


def test_P_RPL_6_discard_where_it_means_nothing_expires_the_child_with_its_fallback():
    """P-RPL-6: discard at connect, helo or unknown is an error of that child: expired, its fallback
    counted (M-ERR-1, D-14)."""
    c1 = child("c1", {"H": DISCARD}, fallback=Status.REJECT, through="C")
    combined, port = run(Helo("client.example"), c1)
    assert port.events == [("expire", "c1", "helo: discard is not valid here (P-RPL-6)")]
    assert c1.quitted and combined.status == Status.REJECT


def test_M_ENV_1_an_answer_at_mail_ends_the_message_for_that_child_only():
    """M-ENV-1: accept, reject or discard at MAIL takes the child out of the message, not the session."""
    c1 = child("c1", {"M": REJECT}, through="CH")
    c2 = child("c2", {"M": DISCARD}, through="CH")
    c3 = child("c3", through="CH")
    for each in (c1, c2, c3):
        each.in_message = True
    combined, port = run(Mail("<sender@example.org>"), c1, c2, c3)
    assert [each.in_message for each in (c1, c2, c3)] == [False, False, True]
    assert not any(each.quitted for each in (c1, c2, c3)) and port.events == []
    assert combined.status == Status.DISCARD


def test_M_ENV_6_recipients_a_child_did_not_refuse_are_its_own():
    """M-ENV-6 / B5.1: a recipient counts for a child unless it refused it; accept at RCPT ends the
    child's message (M-ENV-4); a temporary failure is a refusal."""
    scripts = {"refuses": REJECT, "fails": TEMPFAIL, "continues": CONTINUE, "accepts": ACCEPT}
    children = [child(name, {"R": answer}, through="CHM") for name, answer in scripts.items()]
    for each in children:
        each.in_message = True
    combined, _ = run(Rcpt("<bob@example.net>"), *children)
    assert [each.recipients for each in children] == [[], [], ["<bob@example.net>"], ["<bob@example.net>"]]
    assert [each.recipients_accepted for each in children] == [0, 0, 1, 1]
    assert [each.in_message for each in children] == [True, True, True, False]
    assert combined.status == Status.REJECT


def test_M_EVAL_1_an_evaluation_child_refusal_counts_as_accept():
    """M-EVAL-1: the evaluation child's reject is recorded as its status but combined as accept."""
    c1 = child("c1", {"M": REJECT}, evaluation=True, through="CH")
    combined, _ = run(Mail("<sender@example.org>"), c1)
    assert combined.status == Status.ACCEPT and c1.last_status == "reject"


def test_M_ENV_3_D_2_skipped_events_and_no_reply_bits_count_continue_without_waiting():
    """M-ENV-3: a child that asked not to get helo is not sent it; D-2: a child with no-reply-helo is
    sent it but not waited for. Both count continue."""
    skipping = child("skipping", through="C", protocol=int(Step.NO_HELO))
    silent = child("silent", through="C", protocol=int(Step.NO_REPLY_HELO))
    journal: list = []
    skipping.client.journal = silent.client.journal = journal
    combined, _ = run(Helo("client.example"), skipping, silent)
    assert journal == [("begin", "H", "silent")]
    assert combined.status == Status.CONTINUE


def test_M_ENV_4_a_modification_outside_end_of_message_expires_the_child():
    """M-ENV-4: a modification before the final reply of an envelope command is that child's error."""
    c1 = child("c1", {"M": [Quarantine("why"), CONTINUE]}, through="CH")
    combined, port = run(Mail("<sender@example.org>"), c1)
    assert port.events == [("expire", "c1", "envelope-from: unexpected Quarantine outside end of message (M-ENV-4)")]
    assert combined.status == Status.ACCEPT  # its fallback


def test_M_ERR_1_M_ERR_2_a_failing_child_counts_its_fallback_and_the_others_are_still_read():
    """M-ERR-1: a child that times out is expired with its fallback; M-ERR-2: the next child's reply is
    still collected."""
    c1 = child("c1", {"C": MilterIOError("reading timeout")}, fallback=Status.TEMPORARY_FAILURE, through="")
    c2 = child("c2", through="")
    combined, port = run(CONNECT, c1, c2)
    assert port.events == [("expire", "c1", "connect: reading timeout")]
    assert c2.last_status == Status.CONTINUE.nick and combined.status == Status.TEMPORARY_FAILURE


def test_unknown_accept_is_logged_and_ends_the_child():
    """An accept to an unknown command is not valid: logged; the child is done for the session."""
    c1 = child("c1", {"U": ACCEPT}, through="CH")
    port = Port([c1])
    stream = io.StringIO()
    port.logger = Logger(stream=stream)
    combined = Combined()
    fan_out(port, Unknown("VRFY x"), [c1], combined)
    assert "[manager][child][unknown] [c1] accept is not valid for an unknown command" in stream.getvalue()
    assert c1.quitted and port.events == [("end", "c1", "accept")]
