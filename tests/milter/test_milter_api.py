"""milterman.milter: stages negotiated as implemented, one reply per event, an instance per transaction,
the changes at end of message, macros, types, shadowed callbacks refused, timeouts in process."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import gevent
import pytest

from milterman.milter import (ACCEPT, CONTINUE, SKIP, TEMPFAIL, Milter, MilterDefinitionError,
                              MilterUsageError, check_milter_class, reply)
from milterman.milter.inprocess import InProcessClient
from milterman.net import MilterIOError, Timeouts
from milterman.protocol import (ABORT, DATA, END_OF_HEADER, END_OF_MESSAGE, QUIT, Action, Body, Connect, Family,
                                Header, Helo, Mail, Negotiate, ProtocolError, Rcpt, Step)
from milterman.testing import run_milter, serve_milter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from tag import Tag  # noqa: E402  (the issue's file, exactly as written)

pytest_plugins = ["milterman.testing.pytest_plugin"]


RECIPIENTS = ["alice@example.test", "carol@example.test", "bob@example.test"]


@pytest.mark.parametrize("where", ["in process", "over a unix socket"])
def test_tag_refuses_carol_and_tags_the_rest(milter_tester, where):
    target = Tag if where == "in process" else milter_tester.serve(Tag)
    outcome = milter_tester.run(target, recipients=RECIPIENTS)
    assert outcome.status == "pass", outcome.error
    assert outcome.rejected_recipients == ["<carol@example.test>"]
    assert outcome.message.recipients == ["<alice@example.test>", "<bob@example.test>"]
    assert outcome.added_headers == [("X-Tagged", "yes")]
    assert outcome.header("x-tagged") == "yes"
    assert [type(r).__name__ for r in outcome.replies("envelope_recipient")] == ["Continue", "Reject", "Continue"]


def test_only_implemented_stages_are_negotiated():
    """P-NEG-8: the skip and no-reply bits of every stage the class lacks; none for the ones it has."""
    options = run_milter(Tag).result.options
    protocol = int(options.protocol)
    for skipped in (Step.NO_CONNECT, Step.NO_HELO, Step.NO_MAIL, Step.NO_DATA, Step.NO_HEADERS,
                    Step.NO_END_OF_HEADER, Step.NO_BODY, Step.NO_UNKNOWN, Step.NO_REPLY_CONNECT, Step.NO_REPLY_HELO,
                    Step.NO_REPLY_MAIL, Step.NO_REPLY_DATA, Step.NO_REPLY_HEADER, Step.NO_REPLY_END_OF_HEADER,
                    Step.NO_REPLY_BODY, Step.NO_REPLY_UNKNOWN):
        assert protocol & skipped, skipped
    assert not protocol & (Step.NO_RCPT | Step.NO_REPLY_RCPT)
    assert options.sent >= {"R", "E"} and not options.sent & set("CHMTLNBU")

    class BodyOnly(Milter):
        def body(self, chunk):
            return SKIP

        def end_of_message(self):
            return ACCEPT

    options = run_milter(BodyOnly, body=[b"one\r\n", b"two\r\n"]).result.options
    assert "B" in options.answered and options.skip_allowed and "R" not in options.sent


def test_types_of_what_callbacks_get():
    seen = []

    class Recorder(Milter):
        def connect(self, hostname, family, address, port):
            seen.append(("connect", hostname, family, address, port))
            return CONTINUE

        def helo(self, name):
            seen.append(("helo", name, self.connection.helo))
            return CONTINUE

        def envelope_from(self, sender, parameters):
            seen.append(("from", sender, parameters))
            return CONTINUE

        def header(self, name, value):
            seen.append(("header", name, value))
            return CONTINUE

        def body(self, chunk):
            seen.append(("body", chunk))
            return CONTINUE

        def end_of_message(self):
            seen.append(("eom", self.connection.hostname, self.macro("i"), self.macro("{daemon_name}"),
                         self.macros.get("j")))
            return CONTINUE

    run_milter(Recorder, headers=[("Subject", "h\u00e9")], body=b"caf\xc3\xa9\r\n", macros={"envelope_from": {}})
    assert ("connect", "mx.example.net", "inet", "192.0.2.1", 50443) in seen
    assert ("helo", "delian", "delian") in seen
    assert ("from", "<sender@example.com>", ()) in seen
    assert ("header", "Subject", "h\u00e9".encode()) in seen
    assert ("body", b"caf\xc3\xa9\r\n") in seen
    assert ("eom", "mx.example.net", "i", "milter-test-server", "mail.example.com") in seen


def test_every_change_at_end_of_message_reaches_the_message():
    class Editor(Milter):
        def end_of_message(self):
            self.add_header("X-Added", "1")
            self.insert_header(0, "X-First", b"bytes \xc3\xa9")
            self.change_header("Subject", "changed")
            self.delete_header("X-Drop")
            self.add_recipient("<new@example.test>", ["NOTIFY=NEVER"])
            self.delete_recipient("<receiver@example.org>")
            self.change_sender("<bounce@example.test>")
            self.progress()
            self.replace_body(b"first part, ")
            self.replace_body(b"second part")
            self.quarantine("look at it")
            return CONTINUE

    outcome = run_milter(Editor, headers=[("Subject", "s"), ("X-Drop", "d")])
    message = outcome.message
    assert message.headers[0] == ("X-First", "bytes \u00e9")
    assert ("Subject", "changed") in message.headers and ("X-Added", "1") in message.headers
    assert all(name != "X-Drop" for name, _ in message.headers)
    assert message.recipients == ["<new@example.test>"]
    assert message.sender == "<bounce@example.test>"
    assert message.body == b"first part, second part"
    assert outcome.quarantine_reason == "look at it" and outcome.status == "quarantine"
    assert outcome.modifications[4].args == "NOTIFY=NEVER"


def test_changes_outside_end_of_message_are_refused():
    class Early(Milter):
        def envelope_from(self, sender, parameters):
            self.add_header("X-Too", "early")
            return CONTINUE

    with pytest.raises(MilterUsageError, match="only allowed in end_of_message"):
        run_milter(Early)


def _in_process_end_of_message(cls, offer):
    """Run ``cls`` in process over one message; the error its end of message raises (reraise: as the milter's)."""
    client = InProcessClient.start(cls, offer, reraise=True)
    client.negotiate()
    for command in (Mail("<s@x>"), Rcpt("<r@x>")):
        if client.will_send(command.LETTER):
            client.send(command)
    try:
        client.send(END_OF_MESSAGE)
    finally:
        client.close(send_quit=False)


def test_in_process_an_action_the_mta_did_not_offer_is_refused():
    """P-MOD-2: a modification whose action was not negotiated fails as on the milter side of a socket."""
    class Adder(Milter):
        def end_of_message(self):
            self.add_header("X-Added", "1")
            return CONTINUE

    offer = Negotiate(6, int(Action.ALL) & ~int(Action.ADD_HEADERS), 0x1FFFFF)
    with pytest.raises(ProtocolError, match=r"AddHeader needs an action that was not negotiated") as error:
        _in_process_end_of_message(Adder, offer)
    assert error.value.rule == "P-MOD-2"


def test_in_process_replace_body_packets_must_be_consecutive():
    """P-MOD-11: replace-body, another change, replace-body again is refused in process too."""
    class Splitter(Milter):
        def end_of_message(self):
            self.replace_body(b"one")
            self.add_header("X-Between", "1")
            self.replace_body(b"two")
            return CONTINUE

    with pytest.raises(ProtocolError, match="replace-body packets must be consecutive") as error:
        _in_process_end_of_message(Splitter, OFFER)
    assert error.value.rule == "P-MOD-11"

    class Consecutive(Milter):  # each end of message starts afresh: two messages, each replacing twice
        def end_of_message(self):
            self.replace_body(b"one")
            self.replace_body(b"two")
            self.add_header("X-After", "1")
            return CONTINUE

    _in_process_end_of_message(Consecutive, OFFER)


@pytest.mark.parametrize("result", [None, "CONTINUE", [CONTINUE], Header("a", "b")])
def test_exactly_one_reply_per_event(result):
    class Forgetful(Milter):
        def envelope_from(self, sender, parameters):
            return result

    with pytest.raises(MilterUsageError, match="returns exactly one reply"):
        run_milter(Forgetful)


def test_a_forgotten_reply_over_a_socket_ends_the_connection(milter_tester):
    class Forgetful(Milter):
        def envelope_from(self, sender, parameters):
            pass

    outcome = milter_tester.run(milter_tester.serve(Forgetful))
    assert outcome.status == "error" and "closed" in outcome.error


def test_custom_replies():
    class Picky(Milter):
        def envelope_recipient(self, recipient, parameters):
            if "temp" in recipient:
                return reply(451, "try later", "4.7.1")
            return reply(550, ["no such user", "really"], "5.1.1")

    outcome = run_milter(Picky, recipients=["temp@example.test"])
    assert outcome.status == "temporary-failure" and outcome.smtp_reply == "451 4.7.1 try later"
    outcome = run_milter(Picky, recipients=["x@example.test"])
    assert outcome.smtp_reply == "550-5.1.1 no such user\r\n550 5.1.1 really"


# ------------------------------------------------------------------------------ the classic shadowing mistake


def test_a_stage_hidden_by_a_class_attribute_is_refused_at_definition():
    with pytest.raises(MilterDefinitionError, match=r"Shadowed\.body is a bytes .*hides the callback"):
        class Shadowed(Milter):
            body = b""

            def end_of_message(self):
                return CONTINUE


def test_a_stage_hidden_by_an_attribute_set_in_init_is_refused_at_start():
    class Collector(Milter):
        def __init__(self):
            self.body = []  # meant as the collected chunks: hides body()

        def body(self, chunk):
            return CONTINUE

    with pytest.raises(MilterDefinitionError, match="attribute 'body' would hide the stage method"):
        check_milter_class(Collector)


def test_a_stage_method_with_the_wrong_arguments_is_refused():
    with pytest.raises(MilterDefinitionError, match=r"envelope_recipient must accept \(self, recipient, parameters\)"):
        class Short(Milter):
            def envelope_recipient(self, recipient):
                return CONTINUE


# ------------------------------------------------------------------------------ instances, abort, timeouts


OFFER = Negotiate(6, 0x1FF, 0x1FFFFF)


def test_a_new_instance_per_transaction_and_abort_honoured():
    """Two transactions and an aborted one on one connection: three instances, abort on the aborted one."""
    events = []

    class Counter(Milter):
        made = 0

        def __init__(self):
            Counter.made += 1
            self.number = Counter.made
            self.recipients = []

        def envelope_recipient(self, recipient, parameters):
            self.recipients.append(recipient)
            return CONTINUE

        def end_of_message(self):
            events.append(("eom", self.number, list(self.recipients), self.connection.helo))
            return CONTINUE

        def abort(self):
            events.append(("abort", self.number, list(self.recipients)))

        def close(self):
            events.append(("close", self.number))

    client = InProcessClient.start(Counter, OFFER, reraise=True)
    Counter.made = 0  # (the class was checked with one instance: count from here)
    client.negotiate()
    assert not client.will_send("C") and not client.will_send("H")  # not implemented: not sent

    def send(command):
        if command.LETTER in "AQ" or client.will_send(command.LETTER):
            client.send(command)

    send(Connect("mx", Family.INET, 25, "192.0.2.9"))
    send(Helo("client.example"))
    for recipient in ("<a@x>", "<b@x>"):
        for command in (Mail("<s@x>"), Rcpt(recipient), DATA, Header("Subject", "s"), END_OF_HEADER, Body(b"b"),
                        END_OF_MESSAGE):
            send(command)
    for command in (Mail("<s@x>"), Rcpt("<c@x>"), ABORT, QUIT):
        send(command)
    client.close(send_quit=False)
    assert events == [("eom", 1, ["<a@x>"], None), ("eom", 2, ["<b@x>"], None),
                      ("abort", 3, ["<c@x>"]), ("close", 3)]


def test_a_callback_that_waits_past_the_reading_timeout_times_out():
    class Slow(Milter):
        def envelope_from(self, sender, parameters):
            gevent.sleep(5)
            return CONTINUE

    started = time.monotonic()
    outcome = run_milter(Slow, timeouts=Timeouts(reading=0.3))
    assert outcome.status == "error" and outcome.error == "reading timeout"
    assert time.monotonic() - started < 2


def test_a_callback_that_computes_past_the_timeout_has_its_reply_dropped():
    class Busy(Milter):
        def end_of_message(self):
            time.sleep(0.4)  # blocks the loop: cannot be cut, but its reply is not taken
            return ACCEPT

    outcome = run_milter(Busy, timeouts=Timeouts(end_of_message=0.2))
    assert outcome.status == "error" and outcome.error == "end-of-message timeout"


def test_progress_restarts_the_end_of_message_timeout():
    class Patient(Milter):
        def end_of_message(self):
            for _ in range(4):
                gevent.sleep(0.15)
                self.progress()
            return TEMPFAIL

    outcome = run_milter(Patient, timeouts=Timeouts(end_of_message=0.3))
    assert outcome.status == "temporary-failure", outcome.error


def test_serve_milter_stops_serving_at_the_end_of_the_block():
    with serve_milter(Tag) as spec:
        assert run_milter(spec).status == "pass"
    with pytest.raises(MilterIOError):
        run_milter(spec, timeouts=Timeouts(connection=1))
