"""The message pipeline in process (D-3, M-MSG-*, M-BODY-*, M-EOM-*, M-ERR-3, M-EVAL-*): no sockets.

The pipeline is driven through its port the way the leader drives it, with the real children
over in-memory clients of :mod:`session_support`.
"""

from __future__ import annotations

import io

from session_support import ACTIONS, BODY, HEADERS, MtaSide, Port, child

from milterman.log import DEFAULT, INFO, Logger
from milterman.manager.child import Child
from milterman.manager.context import ManagerContext
from milterman.manager.session.leader import Leader
from milterman.manager.session.pipeline import MessagePipeline
from milterman.manager.session.port import SessionPort
from milterman.manager.status import Status
from milterman.net import MilterIOError
from milterman.protocol import (ACCEPT, CONTINUE, END_OF_HEADER, PROGRESS, REJECT, SKIP, TEMPFAIL, Action, AddHeader,
                                AddRcpt, Body, ChangeFrom, ChangeHeader, DeleteRcpt, EndOfMessage, Header,
                                Quarantine, ReplaceBody, Step)


def pipeline_of(*children: Child, chunk_size: int = 65535, mta: MtaSide | None = None):
    """The pipeline over ``children``, started as the leader starts it at the first message command."""
    port = Port(list(children))
    stream = io.StringIO()
    manager = ManagerContext(chunk_size=chunk_size, logger=Logger(DEFAULT | INFO, stream=stream))
    pipeline = MessagePipeline(port, mta or MtaSide(), manager)
    port.pipeline = pipeline
    pipeline.start(port.children)
    return pipeline, port, stream


def content(pipeline: MessagePipeline, headers=HEADERS, body=BODY) -> list:
    """The MTA's message commands through the pipeline; the replies, in order."""
    replies = [pipeline.header(Header(name, value)) for name, value in headers]
    replies.append(pipeline.end_of_header(END_OF_HEADER))
    replies.extend(pipeline.body(Body(chunk)) for chunk in body)
    replies.append(pipeline.end_of_message(EndOfMessage()))
    return replies


def seen(made: Child) -> list[str]:
    """The letters a child got after DATA."""
    return made.client.letters[5:]


def test_D_3_M_MSG_2_M_MSG_4_live_child_first_then_replay_with_earlier_edits():
    """D-3, M-MSG-2, M-MSG-4: the live child gets the MTA's packets as they come; the next one nothing
    until the first finished end of message, then the current headers (with the first child's edit)
    and the body in chunk_size pieces."""
    c1 = child("c1", {"E": [AddHeader("X-C1", "yes"), CONTINUE]})
    c2 = child("c2")
    pipeline, port, _ = pipeline_of(c1, c2)
    assert pipeline.header(Header("From", "<sender@example.org>")) == CONTINUE
    assert seen(c1) == ["L"] and seen(c2) == []
    assert content(pipeline, headers=HEADERS[1:]) == [CONTINUE] * 5
    assert seen(c1) == ["L", "L", "N", "B", "B", "E"]
    assert seen(c2) == ["L", "L", "L", "N", "B", "E"]
    assert [(command.name, command.value) for command in c2.client.commands if command.LETTER == "L"] == \
        [*HEADERS, ("X-C1", "yes")]
    assert [command.chunk for command in c2.client.commands if command.LETTER == "B"] == [b"".join(BODY)]
    assert pipeline.session.queued == [AddHeader("X-C1", "yes")]  # the header diff (M-EOM-3)
    assert port.events == ["end-message"] and pipeline.message is None


def test_M_BODY_2_M_BODY_3_replacement_is_chained_and_sent_in_chunk_size_pieces():
    """M-BODY-3: a child's first ``b`` empties the buffer, the next child is replayed the new body;
    M-BODY-2: replay and the final ``b`` packets use chunk_size."""
    c1 = child("c1", {"E": [ReplaceBody(b"new "), ReplaceBody(b"body"), CONTINUE]})
    c2 = child("c2")
    pipeline, _, _ = pipeline_of(c1, c2, chunk_size=5)
    assert content(pipeline)[-1] == CONTINUE
    assert [command.chunk for command in c1.client.commands if command.LETTER == "B"] == list(BODY)  # live: as sent
    assert [command.chunk for command in c2.client.commands if command.LETTER == "B"] == [b"new b", b"ody"]
    assert pipeline.session.queued == [ReplaceBody(b"new b"), ReplaceBody(b"ody")]


def test_M_EOM_1_emission_order_recipients_at_once_then_body_headers_from_quarantine():
    """M-EOM-1: recipient edits go out when they come, in arrival order; then the body, the header
    edits, the last change-from and the last quarantine reason."""
    c1 = child("c1", {"E": [AddRcpt("<r1@example.net>"), ChangeFrom("<a@example.org>"), AddHeader("X-A", "1"),
                            Quarantine("first"), ReplaceBody(b"B1"), CONTINUE]})
    c2 = child("c2", {"E": [ChangeFrom("<b@example.org>"), DeleteRcpt("<r2@example.net>"), Quarantine("second"),
                            CONTINUE]})
    pipeline, _, _ = pipeline_of(c1, c2)
    assert content(pipeline)[-1] == CONTINUE
    assert pipeline.session.queued == [AddRcpt("<r1@example.net>"), DeleteRcpt("<r2@example.net>"),
                                       ReplaceBody(b"B1"), AddHeader("X-A", "1"), ChangeFrom("<b@example.org>"),
                                       Quarantine("second")]


def test_M_EOM_2_M_EOM_3_edits_update_the_headers_and_the_mta_gets_the_difference():
    """M-EOM-2: the next child is replayed H after the edits; M-EOM-3: the MTA gets the diff H0 → H."""
    c1 = child("c1", {"E": [ChangeHeader(1, "Subject", "changed"), CONTINUE]})
    c2 = child("c2")
    pipeline, _, _ = pipeline_of(c1, c2)
    content(pipeline)
    assert [(command.name, command.value) for command in c2.client.commands if command.LETTER == "L"] == \
        [("From", "<sender@example.org>"), ("Subject", "changed")]
    assert pipeline.session.queued == [ChangeHeader(1, "Subject", "changed")]


def test_P_PRX_5_an_edit_the_mta_did_not_grant_is_dropped_and_logged():
    """P-PRX-5: a change-from the MTA did not grant is not sent; a warning says so."""
    c1 = child("c1", {"E": [ChangeFrom("<a@example.org>"), CONTINUE]})
    pipeline, _, stream = pipeline_of(c1, mta=MtaSide(actions=ACTIONS & ~int(Action.CHANGE_FROM)))
    assert content(pipeline)[-1] == CONTINUE
    assert pipeline.session.queued == []
    assert "[manager][modification][drop]" in stream.getvalue()


def test_M_MSG_6_refusal_answers_at_once_and_aborts_every_child():
    """M-MSG-6: a live refusal is the MTA's reply at once; every child is aborted, later children never
    see the message."""
    c1 = child("c1", {"L": REJECT})
    c2 = child("c2")
    pipeline, port, _ = pipeline_of(c1, c2)
    assert pipeline.header(Header("From", "<sender@example.org>")) == REJECT
    assert port.events == ["abort", ("end", "c1", "reject")]
    assert seen(c2) == ["A"] and pipeline.message is None


def test_M_MSG_6_refusal_at_eom_sends_the_edits_so_far_first():
    """M-MSG-6: a child refusing at its own end of message: the edits collected so far, its own
    included, go to the MTA before the refusal."""
    c1 = child("c1", {"E": [AddHeader("X-C1", "1"), CONTINUE]})
    c2 = child("c2", {"E": [AddHeader("X-C2", "2"), REJECT]})
    pipeline, port, _ = pipeline_of(c1, c2)
    assert content(pipeline)[-1] == REJECT
    assert pipeline.session.queued == [AddHeader("X-C1", "1"), AddHeader("X-C2", "2")]
    assert port.events == ["abort", ("end", "c2", "reject")]


def test_M_MSG_7_every_child_accepting_early_answers_accept():
    """M-MSG-7: when every child left before end of message, the MTA gets accept for the command."""
    c1 = child("c1", {"L": ACCEPT})
    c2 = child("c2", {"L": ACCEPT})
    pipeline, _, _ = pipeline_of(c1, c2)
    assert pipeline.header(Header("From", "<sender@example.org>")) == ACCEPT
    assert pipeline.waiting == [] and seen(c2) == ["L"]


def test_M_AGG_1_eom_continue_beats_an_earlier_accept():
    """M-AGG-1: c1 accepts at end of header, c2 continues to the end: end of message ``c``."""
    c1 = child("c1", {"N": ACCEPT})
    c2 = child("c2")
    pipeline, _, _ = pipeline_of(c1, c2)
    assert content(pipeline) == [CONTINUE] * 6
    assert seen(c1) == ["L", "L", "N"] and c1.end_status == "accept"
    assert seen(c2) == ["L", "L", "N", "B", "B", "E"]  # replayed up to EOH, then live


def test_M_MSG_6_skip_ends_the_body_for_that_child_only():
    """M-MSG-6: ``s`` to a body chunk: the MTA gets ``c``, the child no further body, but its EOM."""
    c1 = child("c1", {"B": SKIP}, protocol=int(Step.SKIP))
    c2 = child("c2")
    pipeline, _, _ = pipeline_of(c1, c2)
    assert content(pipeline) == [CONTINUE] * 6
    assert seen(c1) == ["L", "L", "N", "B", "E"]
    assert [command.chunk for command in c2.client.commands if command.LETTER == "B"] == [b"".join(BODY)]


def test_M_MSG_6_M_ERR_3_skip_outside_body_expires_the_child_and_the_next_one_goes_on():
    """M-MSG-6: skip outside the body is an error of that child; fallback accept (M-ERR-3): the next
    child takes over, the MTA gets ``c``."""
    c1 = child("c1", {"L": SKIP}, protocol=int(Step.SKIP))
    c2 = child("c2")
    pipeline, port, _ = pipeline_of(c1, c2)
    assert pipeline.header(Header("From", "<sender@example.org>")) == CONTINUE
    assert port.events == [("expire", "c1", "header: skip outside body (M-MSG-6)")]
    assert c1.quitted and seen(c2) == ["L"]


def test_M_ERR_3_eom_timeout_with_tempfail_fallback_answers_at_once_without_the_edits():
    """M-ERR-3: a child failing at end of message with fallback temporary-failure: the MTA gets ``t`` at
    once, without the edits collected so far; the children after it never see the message."""
    c1 = child("c1", {"E": [AddHeader("X-C1", "1"), CONTINUE]})
    c2 = child("c2", {"E": MilterIOError("end-of-message timeout")}, fallback=Status.TEMPORARY_FAILURE)
    c3 = child("c3")
    pipeline, port, _ = pipeline_of(c1, c2, c3)
    assert content(pipeline)[-1] == TEMPFAIL
    assert pipeline.session.queued == []
    assert port.events[0] == ("expire", "c2", "end-of-message: end-of-message timeout")
    assert port.events[1] == "abort" and seen(c3) == ["A"]


def test_M_ERR_3_failure_with_accept_fallback_keeps_the_edits_and_goes_on():
    """M-ERR-3 (fixed): fallback accept: the next child continues and the edits made so far stay."""
    c1 = child("c1", {"E": [AddHeader("X-C1", "1"), CONTINUE]})
    c2 = child("c2", {"E": MilterIOError("end-of-message timeout")})
    c3 = child("c3")
    pipeline, _, _ = pipeline_of(c1, c2, c3)
    assert content(pipeline)[-1] == CONTINUE
    assert pipeline.session.queued == [AddHeader("X-C1", "1")]
    assert seen(c3) == ["L", "L", "L", "N", "B", "E"]


def test_M_EVAL_1_M_EVAL_3_evaluation_child_edits_ignored_refusal_counts_as_accept():
    """M-EVAL-1: an evaluation child's edits are not applied; M-EVAL-3 (fixed): its refusal is not the
    MTA's answer, the child leaves as if it had accepted."""
    c1 = child("c1", {"E": [AddHeader("X-Eval", "1"), REJECT]}, evaluation=True)
    c2 = child("c2")
    pipeline, port, stream = pipeline_of(c1, c2)
    assert content(pipeline)[-1] == CONTINUE
    assert pipeline.session.queued == []
    assert "[manager][evaluation][ignore] [c1]" in stream.getvalue()
    assert c1.end_status == "reject" and "abort" not in port.events
    assert [(command.name, command.value) for command in c2.client.commands if command.LETTER == "L"] == \
        list(HEADERS)


def test_M_MSG_10_leading_space_stripped_for_a_child_that_did_not_ask_and_added_to_its_edits():
    """M-MSG-10: with header-leading-space negotiated with the MTA, a child that did not ask gets values
    without the leading space, and its own header values get one; a child that asked sees them as sent."""
    c1 = child("c1", {"E": [AddHeader("X-C1", "v"), CONTINUE]})
    c2 = child("c2", protocol=int(Step.HEADER_LEADING_SPACE))
    pipeline, _, _ = pipeline_of(c1, c2, mta=MtaSide(protocol=int(Step.HEADER_LEADING_SPACE)))
    content(pipeline, headers=(("Subject", " hello"),))
    assert [command.value for command in c1.client.commands if command.LETTER == "L"] == ["hello"]
    assert [command.value for command in c2.client.commands if command.LETTER == "L"] == [" hello", " v"]
    assert pipeline.session.queued == [AddHeader("X-C1", " v")]


def test_M_MSG_1_a_child_without_a_recipient_of_its_own_is_aborted_and_not_waited_for():
    """M-MSG-1: W = children in the message with at least one recipient they did not refuse; others get ``A``."""
    c1 = child("c1")
    c1.recipients_accepted = 0
    c2 = child("c2")
    pipeline, _, _ = pipeline_of(c1, c2)
    assert pipeline.waiting == [c2]
    assert seen(c1) == ["A"] and not c1.in_message


def test_M_AC_6_a_child_stopped_by_its_condition_at_replay_gets_abort_and_counts_accept():
    """M-AC-6, C-RULE-5: conditions run at replay too; a stopped child gets ``A`` and leaves W (accept
    counted), the message goes on."""
    c1 = child("c1")
    c2 = child("c2")
    pipeline, port, _ = pipeline_of(c1, c2)
    port.stops = {"c2": "N"}
    assert content(pipeline)[-1] == CONTINUE
    assert seen(c2) == ["L", "L", "A"] and c2.end_status == "stop"


def test_M_MSG_6_progress_is_relayed_to_the_mta_at_once():
    """M-MSG-6: a child's ``p`` at end of message goes to the MTA at once."""
    c1 = child("c1", {"E": [PROGRESS, PROGRESS, CONTINUE]})
    pipeline, _, _ = pipeline_of(c1)
    assert content(pipeline)[-1] == CONTINUE
    assert pipeline.session.progressed == 2


def test_the_leader_implements_the_port():
    """The pipeline and the fan-out reach the session only through SessionPort; the leader has every
    method of it (its two attributes, ``watch`` and ``logger``, are set per session)."""
    methods = [name for name, value in vars(SessionPort).items() if callable(value) and not name.startswith("_")]
    assert set(methods) >= {"stopped", "expire", "reply", "abort_message", "end_message"}
    assert [name for name in methods if not callable(getattr(Leader, name, None))] == []
    assert set(SessionPort.__annotations__) == {"watch", "logger"}
