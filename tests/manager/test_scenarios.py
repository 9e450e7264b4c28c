"""The scenario vectors V1–V14 of manager.md §16, with the Py outcome (D-1) where the row has one.

Headers a child appends reach the MTA as ``h``, not the rows' ``i N``, and deletes come before new
headers: the real MTAs win (D-16, P-MOD-4, see header_edits in milterman/manager/headers.py).

Two children c1 and c2 in this order (scripted milters on unix sockets), the real
milter-manager as a subprocess, and an MTA connection that offers v6/0x1ff/0x1fffff
and records every packet the manager sends back.
"""

from __future__ import annotations

import time

import pytest

from manager_harness import OFFER, letters
from milterman.protocol import (ACCEPT, CONTINUE, REJECT, SKIP, TEMPFAIL, AddHeader, AddRcpt, ChangeFrom,
                                ChangeHeader, NegotiateReply, Quarantine, ReplaceBody, ReplyCode,
                                Rcpt, Step)
from scripted_milter import CLOSE, Script

HEADERS = (("From", "<sender@example.org>"), ("Subject", "hello"))
BODY = (b"line 1\r\n", b"line 2\r\n")


def at_eom(*edits, final=CONTINUE):
    """A scripted end-of-message answer: queue ``edits`` through the session, then ``final``."""

    def answer(session, command):
        for edit in edits:
            session.queue(edit)
        return final

    return answer


def body_of(record) -> bytes:
    return b"".join(command.chunk for command in record.commands("B"))


def headers_of(record) -> list[tuple[str, str]]:
    return [(command.name, command.value) for command in record.commands("L")]


# ------------------------------------------------------------------------------------------ V1, V2


@pytest.mark.parametrize("n_workers", [0, 2], ids=["single-process", "2-workers"])
def test_V1_reject_at_eom_after_add_header(pair, n_workers):
    """V1: c1 adds X-C1 then rejects at EOM → ``h X-C1``, ``r``; c2 gets ``A`` and never sees the body.

    The spec row shows ``i 2 X-C1``; a header appended at the end now goes out as ``h`` because real
    Postfix counts its own Received: in insert indexes and put ``i 2`` before the last header (P-MOD-4;
    tests/interop/test_header_position_postfix.py)."""
    pair.c1.script = Script(replies={"E": at_eom(AddHeader("X-C1", "v1"), final=REJECT)})
    pair.start(n_workers=n_workers)
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    packets = mta.content(HEADERS, BODY)
    assert packets == [AddHeader("X-C1", "v1"), REJECT]
    mta.quit()
    c1, c2 = pair.c1.session, pair.c2.session
    assert c1.letters[:12] == ["O", "C", "H", "M", "R", "T", "L", "L", "N", "B", "B", "E"]
    assert c1.letters[-1] == "Q"
    assert c2.letters == ["O", "C", "H", "M", "R", "T", "A", "Q"]
    assert c2.count("B") == 0 and c2.count("L") == 0


def test_V2_M_AGG_2a_second_message_not_sticky(pair):
    """V2 (M-AGG-2a Py): message 2 after a rejected message 1 gets ``i X-C1``, ``i X-C2``, ``c`` (not ``r``);
    c2 is replayed with c1's X-C1 header."""
    pair.c1.script = Script(replies={"E": [at_eom(AddHeader("X-C1", "v1"), final=REJECT),
                                           at_eom(AddHeader("X-C1", "msg2"))]})
    pair.c2.script = Script(replies={"E": at_eom(AddHeader("X-C2", "v2"))})
    pair.start()
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [AddHeader("X-C1", "v1"), REJECT]
    mta.envelope()
    packets = mta.content(HEADERS, BODY)
    assert packets == [AddHeader("X-C1", "msg2"), AddHeader("X-C2", "v2"), CONTINUE]
    mta.quit()
    c2 = pair.c2.session
    assert headers_of(c2) == [*HEADERS, ("X-C1", "msg2")]
    assert body_of(c2) == b"".join(BODY)
    assert c2.letters == ["O", "C", "H", "M", "R", "T", "A", "M", "R", "T", "L", "L", "L", "N", "B", "E", "Q"]


# ------------------------------------------------------------------------------------------ V3


DATA_STOP = """
[[condition]]
name = "data stop"
  [[condition.rule]]
  stage = "data"
  action = "stop"
"""




def test_V3_M_AC_7_data_stop_leaves_message(pair):
    """V3 (M-AC-7 Py): c1 stopped at data → ``T`` not sent to c1, c1 leaves the message; the data reply
    waits for c2, whose answer is not lost (here ``t``)."""
    pair.c2.script = Script(replies={"T": TEMPFAIL})
    pair.start(c1={"applicable_conditions": ["data stop"]}, extra=DATA_STOP)
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert letters(mta.data()) == ["t"]
    mta.quit()
    c1, c2 = pair.c1.session, pair.c2.session
    assert c1.letters == ["O", "C", "H", "M", "R", "A", "Q"]
    assert c2.letters == ["O", "C", "H", "M", "R", "T", "Q"]


def test_V3_M_AC_7_data_stop_other_child_filters(pair):
    """V3 (M-AC-7 Py): with c2 continuing, DATA gets ``c`` (not ``a``) and c2 alone filters the message."""
    pair.c2.script = Script(replies={"E": at_eom(AddHeader("X-C2", "v2"))})
    pair.start(c1={"applicable_conditions": ["data stop"]}, extra=DATA_STOP)
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [AddHeader("X-C2", "v2"), CONTINUE]
    mta.quit()
    assert pair.c1.session.count("T") == 0 and pair.c1.session.count("L") == 0
    assert pair.c2.session.letters == ["O", "C", "H", "M", "R", "T", "L", "L", "N", "B", "B", "E", "Q"]


# ------------------------------------------------------------------------------------------ V4


def test_V4_M_RC_3_reply_text_not_sticky(pair):
    """V4 (M-RC-3 Py): RCPT x → ``y 550 …``; RCPT y (c2 ``t``) → plain ``t``; RCPT z (c2 ``r``) → plain ``r``;
    every child stays in the message."""
    pair.c1.script = Script(replies={"R": [ReplyCode("550 5.1.1 no such user x"), None, None]})
    pair.c2.script = Script(replies={"R": [None, TEMPFAIL, REJECT]})
    pair.start()
    mta = pair.mta()
    mta.session_start()
    assert letters(mta.mail()) == ["c"]
    assert mta.rcpt("<x@example.org>") == [ReplyCode("550 5.1.1 no such user x")]
    assert mta.rcpt("<y@example.org>") == [TEMPFAIL]
    assert mta.rcpt("<z@example.org>") == [REJECT]
    assert letters(mta.data()) == ["c"]
    mta.quit()
    for record in (pair.c1.session, pair.c2.session):
        assert record.letters == ["O", "C", "H", "M", "R", "R", "R", "T", "Q"]


# ------------------------------------------------------------------------------------------ V5


@pytest.mark.parametrize("n_workers", [0, 2], ids=["single-process", "2-workers"])
def test_V5_every_modification_combined(pair, n_workers):
    """V5: c1 skips the body after chunk 1 and edits everything at EOM; c2 edits after its replay.
    The MTA gets ``c``, ``c`` for the chunks, then ``+new``, ``+new``, ``b <c2 body>``, ``m Subject[1]``,
    ``m X-Del[1] ""``, ``h X-C2`` (D-16: changes, deletes, then new headers), ``e from2``, ``q c1 reason``,
    ``c``."""
    pair.c1.script = Script(protocol=Step.SKIP, replies={
        "B": [SKIP],
        "E": at_eom(ReplaceBody(b"c1 body\r\n"), ChangeHeader(1, "Subject", "changed"), ChangeHeader(1, "X-Del", ""),
                    AddRcpt("<new@example.org>"), ChangeFrom("<from1@example.org>"), Quarantine("c1 reason")),
    })
    pair.c2.script = Script(replies={
        "E": at_eom(ReplaceBody(b"c2 body\r\n"), AddHeader("X-C2", "v2"), AddRcpt("<new@example.org>"),
                    ChangeFrom("<from2@example.org>")),
    })
    pair.start(n_workers=n_workers)
    mta = pair.mta()
    reply = mta.negotiate()
    assert reply.protocol & Step.SKIP
    assert letters(mta.connect()) == ["c"]
    assert letters(mta.helo()) == ["c"]
    mta.envelope()
    assert letters(mta.data()) == ["c"]
    for name, value in (("Subject", "orig"), ("X-Del", "x"), ("To", "t")):
        assert letters(mta.header(name, value)) == ["c"]
    assert letters(mta.end_of_header()) == ["c"]
    assert letters(mta.body(b"chunk 1\r\n")) == ["c"]
    assert letters(mta.body(b"chunk 2\r\n")) == ["c"]
    packets = mta.end_of_message()
    assert packets == [
        AddRcpt("<new@example.org>"), AddRcpt("<new@example.org>"), ReplaceBody(b"c2 body\r\n"),
        ChangeHeader(1, "Subject", "changed"), ChangeHeader(1, "X-Del", ""), AddHeader("X-C2", "v2"),
        ChangeFrom("<from2@example.org>"), Quarantine("c1 reason"), CONTINUE,
    ]
    mta.quit()
    c1, c2 = pair.c1.session, pair.c2.session
    assert body_of(c1) == b"chunk 1\r\n"  # the rest of the body was not sent after its skip
    assert headers_of(c2) == [("Subject", "changed"), ("To", "t")]
    assert body_of(c2) == b"c1 body\r\n"
    assert c2.letters == ["O", "C", "H", "M", "R", "T", "L", "L", "N", "B", "E", "Q"]


# ------------------------------------------------------------------------------------------ V6


def test_V6_accept_at_first_header_replays_to_next(pair):
    """V6: c1 answers ``a`` to header 1 → the MTA gets ``c``; c2 is replayed header 1 and goes on live;
    the end of message is ``c`` (c2's continue beats c1's accept, M-AGG-1)."""
    pair.c1.script = Script(replies={"L": ACCEPT})
    pair.start()
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [CONTINUE]
    mta.quit()
    c1, c2 = pair.c1.session, pair.c2.session
    assert c1.letters == ["O", "C", "H", "M", "R", "T", "L", "Q"]
    assert c2.letters == ["O", "C", "H", "M", "R", "T", "L", "L", "N", "B", "B", "E", "Q"]
    assert headers_of(c2) == list(HEADERS)


# ------------------------------------------------------------------------------------------ V7


def test_V7_M_EVAL_3_evaluation_reject_at_eom(pair):
    """V7 (M-EVAL-3 Py): c1 in evaluation mode rejects at EOM → c2 still runs; the MTA gets the combined
    result after c2 (its edit and ``c``)."""
    pair.c1.script = Script(replies={"E": REJECT})
    pair.c2.script = Script(replies={"E": at_eom(AddHeader("X-C2", "v2"))})
    pair.start(c1={"evaluation_mode": True})
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [AddHeader("X-C2", "v2"), CONTINUE]
    mta.quit()
    c2 = pair.c2.session
    assert c2.letters == ["O", "C", "H", "M", "R", "T", "L", "L", "N", "B", "E", "Q"]
    assert "A" not in pair.c1.session.letters


# ------------------------------------------------------------------------------------------ V8


def test_V8_M_ERR_3_header_timeout_fallback_accept_continues(pair):
    """V8 (M-ERR-3 Py): c1 never answers header 1 (fallback accept, reading timeout 1 s) → after the
    timeout the MTA gets ``c`` and c2 filters the message."""
    pair.c1.script = Script(hang="L")
    pair.c2.script = Script(replies={"E": at_eom(AddHeader("X-C2", "v2"))})
    pair.start(c1={"fallback_status": "accept", "reading_timeout": 1.0})
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    assert letters(mta.data()) == ["c"]
    started = time.monotonic()
    assert mta.header(*HEADERS[0]) == [CONTINUE]
    assert 0.8 <= time.monotonic() - started < 5
    assert letters(mta.header(*HEADERS[1])) == ["c"]
    assert letters(mta.end_of_header()) == ["c"]
    assert letters(mta.body(b"line 1\r\n")) == ["c"]
    assert mta.end_of_message() == [AddHeader("X-C2", "v2"), CONTINUE]
    mta.quit()
    c2 = pair.c2.session
    assert c2.letters == ["O", "C", "H", "M", "R", "T", "L", "L", "N", "B", "E", "Q"]
    assert headers_of(c2) == list(HEADERS)


# ------------------------------------------------------------------------------------------ V9


def test_V9_D_14_unreachable_child_with_fallback_reject(env):
    """V9 (D-14, M-CON-5): an unreachable child (missing unix socket) with fallback reject → the negotiation
    reply comes at once (no retry without a command), ``C`` → ``r`` and the other child still gets ``C``."""
    c2 = env.milter("c2")
    env.start([{"name": "c1", "connection_spec": f"unix:{env.dir / 'missing.sock'}", "fallback_status": "reject"},
               {"name": "c2"}])
    mta = env.mta()
    started = time.monotonic()
    mta.negotiate()
    assert time.monotonic() - started < 2
    assert mta.connect() == [REJECT]
    mta.quit()
    assert c2.session.letters == ["O", "C", "Q"]


# ------------------------------------------------------------------------------------------ V10


def test_V10_accept_at_rcpt_single_reply(pair):
    """V10 (Py: once): both children accept RCPT 1 → exactly one ``a``; the message is over for the MTA
    (P-SM-6), the children stay for the next transaction. A stray RCPT 2 is out of order for a milter
    (P-SM-8): it gets no reply at all, never a second ``a``."""
    pair.c1.script = Script(replies={"R": ACCEPT})
    pair.c2.script = Script(replies={"R": ACCEPT})
    pair.start()
    mta = pair.mta()
    mta.session_start()
    assert letters(mta.mail()) == ["c"]
    assert mta.rcpt("<one@example.org>") == [ACCEPT]
    assert mta.silence(0.3) == []
    assert letters(mta.mail("<next@example.org>")) == ["c"]  # the next transaction reaches both children
    mta.quit()
    for record in (pair.c1.session, pair.c2.session):
        assert record.letters == ["O", "C", "H", "M", "R", "M", "Q"]


def test_V10_stray_rcpt_after_accept_gets_no_reply(pair):
    pair.c1.script = Script(replies={"R": ACCEPT})
    pair.c2.script = Script(replies={"R": ACCEPT})
    pair.start()
    mta = pair.mta()
    mta.session_start()
    assert letters(mta.mail()) == ["c"]
    assert mta.rcpt("<one@example.org>") == [ACCEPT]
    mta.send(Rcpt("<two@example.org>"))
    assert mta.silence(1.0) == []
    assert mta.closed_by_peer


# ------------------------------------------------------------------------------------------ V11


def test_V11_M_ERR_3a_eom_timeout_keeps_earlier_edits(pair):
    """V11 (M-ERR-3a Py): c1 adds X-C1 and a recipient; c2 never answers EOM (fallback accept, EOM timeout
    1 s) → ``+ <r1@x>``, ``i 2 X-C1``, ``c``."""
    pair.c1.script = Script(replies={"E": at_eom(AddHeader("X-C1", "v1"), AddRcpt("<r1@example.org>"))})
    pair.c2.script = Script(hang="E")
    pair.start(c2={"fallback_status": "accept", "end_of_message_timeout": 1.0})
    mta = pair.mta()
    mta.session_start()
    mta.envelope()
    started = time.monotonic()
    packets = mta.content(HEADERS, BODY)
    assert packets == [AddRcpt("<r1@example.org>"), AddHeader("X-C1", "v1"), CONTINUE]
    assert 0.8 <= time.monotonic() - started < 5
    mta.quit()
    # c2 still hangs in its EOM handler (until teardown): what it received so far
    assert pair.c2.sessions[0].letters == ["O", "C", "H", "M", "R", "T", "L", "L", "L", "N", "B", "E"]
    assert [value for name, value in headers_of(pair.c2.sessions[0]) if name == "X-C1"] == ["v1"]


# ------------------------------------------------------------------------------------------ V12


def test_V12_child_closes_at_helo_fallback_reject(pair):
    """V12: c1 closes its socket at HELO (fallback reject) → HELO ``r``; c1 is gone, c2 stays (no ``A``,
    no early ``Q``: it is quit only when the MTA quits)."""
    pair.c1.script = Script(replies={"H": CLOSE})
    pair.start(c1={"fallback_status": "reject"})
    mta = pair.mta()
    mta.negotiate()
    assert letters(mta.connect()) == ["c"]
    assert mta.helo() == [REJECT]
    assert pair.c1.wait_sessions(1)[0].letters == ["O", "C", "H"]
    assert not pair.c2.sessions[0].done.is_set()  # c2 is still connected
    mta.quit()
    assert pair.c2.session.letters == ["O", "C", "H", "Q"]


# ------------------------------------------------------------------------------------------ V13


def test_V13_evaluation_reject_at_mail(pair):
    """V13: c2 in evaluation mode answers ``r`` to MAIL → MAIL ``c``; c2 is not sent RCPT."""
    pair.c2.script = Script(replies={"M": REJECT})
    pair.start(c2={"evaluation_mode": True})
    mta = pair.mta()
    mta.session_start()
    assert mta.mail() == [CONTINUE]
    assert letters(mta.rcpt()) == ["c"]
    mta.quit()
    assert pair.c1.session.letters == ["O", "C", "H", "M", "R", "Q"]
    assert pair.c2.session.letters == ["O", "C", "H", "M", "Q"]


# ------------------------------------------------------------------------------------------ V14


def test_V14_M_ACC_1a_max_connections_second_waits(pair):
    """V14 (M-ACC-1a Py, D-6): ``max_connections = 1``: a second MTA connection waits in the backlog while
    the first proceeds to its end; then the second is served."""
    pair.start(manager={"max_connections": 1})
    first = pair.mta()
    first.session_start()
    second = pair.mta()
    second.send(OFFER)
    assert second.silence(0.5) == []  # not accepted yet
    first.envelope()
    assert first.content(HEADERS, BODY) == [CONTINUE]
    first.quit()
    packets = second.read_reply(timeout=10)
    assert len(packets) == 1 and isinstance(packets[0], NegotiateReply)
    assert letters(second.connect()) == ["c"]
    second.quit()
    assert [len(records) for records in (pair.c1.wait_sessions(2), pair.c2.wait_sessions(2))] == [2, 2]


def test_V14_D_6_max_connections_is_per_worker(pair):
    """D-6: with two workers and ``max_connections = 1`` a second MTA connection is served by the other
    worker while the first is still open."""
    pair.start(manager={"max_connections": 1}, n_workers=2)
    first = pair.mta()
    first.session_start()
    second = pair.mta()
    second.session_start()  # answered although the first session is still open
    for mta in (first, second):
        mta.envelope()
        assert mta.content(HEADERS, BODY) == [CONTINUE]
        mta.quit()
    assert [len(records) for records in (pair.c1.wait_sessions(2), pair.c2.wait_sessions(2))] == [2, 2]
