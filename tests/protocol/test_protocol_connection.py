"""The milter-side connection object: bytes in, handler calls out, replies back to bytes (no sockets).

P-SM-8 implied abort, P-SM-3 abort only with an open message, P-BAD-20 data on end of
message, P-NEG-8 step 4 events the application asked not to see, P-FRM-6 one write.
"""

from __future__ import annotations

import pytest

from milterman.protocol import (ABORT, CONTINUE, DATA, END_OF_HEADER, END_OF_MESSAGE, PROGRESS, QUIT, REJECT,
                                AddHeader, Body, Connect, EndOfMessage, Header, Helo, LocalProtocolError, Mail,
                                Negotiate, Rcpt, RemoteProtocolError, ReplyDecoder, Step, UnexpectedMessage, encode)
from milterman.protocol.connection import MilterConnection

OFFER = Negotiate(6, 0x1FF, 0x1FFFFF)
CONNECT = Connect("client.example.org", "4", 50000, "192.0.2.10")


def connection(*, protocol: int = 0, strict: bool = True) -> MilterConnection:
    conn = MilterConnection(strict=strict)
    conn.receive_data(OFFER.encode())
    [(offer, abort, calls, owed)] = list(conn.events())
    assert offer == OFFER and calls is None and owed and not abort
    conn.negotiate(OFFER, actions=0x1FF, protocol=protocol)
    return conn


def feed(conn: MilterConnection, *commands) -> list[tuple[str, bool, str | None, bool]]:
    """Feed the commands as one read; the events as (letter, abort, calls, owed), every owed reply CONTINUE."""
    conn.receive_data(b"".join(command.encode() for command in commands))
    seen = []
    for command, abort, calls, owed in conn.events():
        seen.append((command.LETTER, abort, calls, owed))
        if owed:
            conn.send(CONTINUE)
    return seen


def replies(data: bytes) -> list:
    decoder = ReplyDecoder()
    decoder.feed(data)
    return list(decoder)


def test_negotiation_reply_is_queued_P_NEG_8():
    conn = connection()
    [reply] = replies(conn.data_to_send())
    assert reply.LETTER == "O" and reply.version == 6 and conn.options.version == 6
    assert conn.data_to_send() == b""


def test_stage_commands_call_their_handler_and_owe_a_reply_P_SM_1():
    conn = connection()
    events = feed(conn, CONNECT, Helo("h"), Mail("<a@x>"), Rcpt("<b@y>"), DATA, Header("S", "v"), END_OF_HEADER,
                  Body(b"x"), END_OF_MESSAGE)
    assert events == [(letter, False, letter, True) for letter in "CHMRTLNBE"]
    assert conn.commands_received == 10  # the offer too


def test_new_mail_or_helo_inside_a_message_implies_abort_P_SM_8():
    conn = connection()
    feed(conn, CONNECT, Helo("h"), Mail("<a@x>"))
    assert feed(conn, Mail("<c@x>")) == [("M", True, "M", True)]
    assert feed(conn, Helo("again")) == [("H", True, "H", True)]
    assert feed(conn, Helo("outside")) == [("H", False, "H", True)]  # no message open any more


def test_abort_counts_only_with_an_open_message_P_SM_3():
    conn = connection()
    feed(conn, CONNECT, Helo("h"))
    assert feed(conn, ABORT) == [("A", False, None, False)]
    feed(conn, Mail("<a@x>"))
    assert conn.message_open
    assert feed(conn, ABORT) == [("A", True, None, False)]
    assert not conn.message_open


def test_data_on_end_of_message_is_a_last_body_chunk_P_BAD_20():
    conn = connection(strict=False)
    feed(conn, CONNECT, Helo("h"), Mail("<a@x>"), Rcpt("<b@y>"), DATA, END_OF_HEADER)
    assert feed(conn, EndOfMessage(b"tail")) == [("E", False, "BE", True)]


def test_data_on_end_of_message_is_refused_in_strict_mode_P_BAD_20():
    conn = connection()
    feed(conn, CONNECT, Helo("h"), Mail("<a@x>"), Rcpt("<b@y>"), DATA, END_OF_HEADER)
    with pytest.raises(RemoteProtocolError) as error:
        feed(conn, EndOfMessage(b"tail"))
    assert error.value.rule == "P-BAD-20"


def test_unwanted_events_are_answered_without_the_application_P_NEG_8():
    """The application asked to skip HELO but the MTA does not offer that bit: the event still comes and
    the connection answers it (calls == "") so the application never sees it."""
    conn = MilterConnection()
    offer = Negotiate(6, 0x1FF, int(Step.ALL & ~Step.NO_HELO))
    conn.receive_data(offer.encode())
    list(conn.events())
    conn.negotiate(offer, actions=0, protocol=int(Step.NO_HELO))
    assert "H" in conn.options.sent
    assert feed(conn, CONNECT, Helo("h")) == [("C", False, "C", True), ("H", False, "", True)]


def test_other_commands_are_left_to_the_caller():
    conn = connection()
    assert feed(conn, CONNECT, QUIT) == [("C", False, "C", True), ("Q", False, None, False)]


def test_replies_leave_in_one_write_and_are_checked_P_FRM_6_P_MOD_1():
    conn = connection()
    conn.data_to_send()
    conn.receive_data(CONNECT.encode())
    list(conn.events())
    with pytest.raises(LocalProtocolError) as error:
        conn.send(AddHeader("X", "y"))  # only at end of message
    assert error.value.rule == "P-MOD-1"
    conn.send(REJECT)
    assert conn.pending_bytes == len(REJECT.encode())
    assert [reply.LETTER for reply in replies(conn.data_to_send())] == ["r"]
    assert conn.pending_bytes == 0


def test_progress_and_modifications_queue_before_the_final_reply_P_RPL_9():
    conn = connection()
    feed(conn, CONNECT, Helo("h"), Mail("<a@x>"), Rcpt("<b@y>"), DATA, END_OF_HEADER)
    conn.data_to_send()
    conn.receive_data(END_OF_MESSAGE.encode())
    list(conn.events())
    conn.send(PROGRESS)
    conn.send(AddHeader("X", "y"))
    conn.send(CONTINUE)
    assert [reply.LETTER for reply in replies(conn.data_to_send())] == ["p", "h", "c"]


def test_last_word_replaces_the_queue_unchecked():
    conn = connection()
    conn.receive_data(b"\0\0\0\x01Z")
    with pytest.raises(RemoteProtocolError):
        list(conn.events())
    assert conn.last_word(REJECT)
    assert conn.data_to_send() == REJECT.encode()


def test_no_last_word_before_negotiation():
    conn = MilterConnection()
    conn.receive_data(CONNECT.encode())
    with pytest.raises(UnexpectedMessage) as error:
        list(conn.events())
    assert error.value.rule == "P-NEG-1"
    assert not conn.last_word(REJECT) and conn.data_to_send() == b""


def test_a_command_while_a_reply_is_owed_is_the_mtas_mistake_P_RPL_1():
    conn = connection()
    conn.receive_data(encode(CONNECT) + encode(Helo("h")))
    events = conn.events()
    next(events)
    with pytest.raises(UnexpectedMessage) as error:
        next(events)
    assert error.value.rule == "P-RPL-1"


def test_end_of_stream_without_a_command():
    conn = MilterConnection()
    conn.receive_data(b"")
    assert list(conn.events()) == [] and conn.commands_received == 0
