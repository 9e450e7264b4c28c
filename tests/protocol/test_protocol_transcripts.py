"""Replaying whole sessions through both state machines (P-SM-1, P-SM-8, P-SM-9, P-RPL-1, P-NEG-10).

The transcripts (vectors 03, 04, 09) and the real Postfix 3.7 traces are fed packet by packet:
MTA packets to ``MilterState.receive`` and ``MtaState.send``, milter packets to
``MilterState.check_send`` and ``MtaState.receive``. The negotiation reply is re-computed by
``MilterState.negotiate`` from the recorded reply's wishes and must match it byte for byte.
"""

from __future__ import annotations

import pytest

from milter_vectors import TRANSCRIPT_FILES, Packet, read_trace, read_vectors, trace_files
from milterman.protocol import (CommandDecoder, Macro, MilterState, MtaState, Negotiate, NegotiateReply,
                                ReplyDecoder)
from milterman.protocol.state import CLOSED


def _replies_after(packets: list[Packet], index: int) -> list[Packet]:
    """The milter packets that follow the MTA packet at ``index`` up to the next MTA packet."""
    following = []
    for packet in packets[index + 1:]:
        if packet.sender != "milter":
            break
        following.append(packet)
    return following


def replay(packets: list[Packet]) -> tuple[MilterState, MtaState, dict[str, int]]:
    """Drive both state machines through a recorded session; return them and per-letter answer counts."""
    offer_packet, reply_packet = packets[0], packets[1]
    assert (offer_packet.sender, reply_packet.sender) == ("mta", "milter")
    offer = offer_packet.decode()
    recorded = reply_packet.decode()
    assert isinstance(offer, Negotiate) and isinstance(recorded, NegotiateReply)

    milter = MilterState()
    mta = MtaState(offer)
    assert milter.receive(offer) is True
    assert mta.send(offer) is True
    produced = milter.negotiate(offer, actions=recorded.actions, protocol=recorded.protocol,
                                macro_lists=recorded.macro_lists)
    assert produced.encode() == reply_packet.data, "negotiate() must reproduce the recorded reply (P-NEG-8)"
    assert mta.receive(recorded) is True
    assert mta.warnings == []
    assert milter.options == mta.options
    assert milter.options.sent == mta.options.sent and milter.options.answered == mta.options.answered

    answered: dict[str, int] = {}
    owed: str | None = None        # letter of the command whose final reply is still missing
    for index in range(2, len(packets)):
        packet = packets[index]
        message = packet.decode()
        if packet.sender == "mta":
            assert owed is None, f"{packet.id}: command sent while the reply to {owed!r} is missing"
            needs_reply = milter.receive(message)
            awaits_reply = mta.send(message)
            assert needs_reply == awaits_reply, packet.id
            assert needs_reply == bool(_replies_after(packets, index)), (
                f"{packet.id}: MilterState says reply needed={needs_reply} but the recording disagrees")
            if isinstance(message, Macro):
                assert needs_reply is False  # P-CMD-2: never answered
            if message.LETTER == "E":
                assert needs_reply is True   # P-CMD-11: end of message is always answered
            if needs_reply:
                owed = message.LETTER
                assert milter.awaiting == owed and mta.awaiting == owed
        else:
            assert owed is not None, f"{packet.id}: reply while no command awaits one (P-RPL-1)"
            milter.check_send(message)
            final = mta.receive(message)
            assert final == message.FINAL, packet.id
            if final:
                answered[owed] = answered.get(owed, 0) + 1
                owed = None
                assert milter.awaiting is None and mta.awaiting is None
            else:
                assert milter.awaiting == owed and mta.awaiting == owed
    assert owed is None, "every answered command got exactly one final reply"
    assert milter.awaiting is None and mta.awaiting is None
    return milter, mta, answered


def _stream_check(packets: list[Packet]) -> None:
    """Each direction as one byte stream: fed whole and one byte at a time, the same messages come out (P-FRM-5)."""
    for sender, decoder_type in (("mta", CommandDecoder), ("milter", ReplyDecoder)):
        wanted = [p.decode() for p in packets if p.sender == sender]
        stream = b"".join(p.data for p in packets if p.sender == sender)
        whole = decoder_type()
        whole.feed(stream)
        assert list(whole) == wanted
        whole.feed_eof()
        trickle = decoder_type()
        got = []
        for i in range(len(stream)):
            trickle.feed(stream[i:i + 1])
            got.extend(trickle)
        trickle.feed_eof()
        assert got == wanted


# ---------------------------------------------------------------------------------------------------------
# Acceptance 3: the transcripts


@pytest.mark.parametrize("name", TRANSCRIPT_FILES)
def test_transcript_replays_through_both_state_machines_P_SM_8_P_SM_9_P_RPL_1(name):
    packets = read_vectors(name)
    milter, mta, answered = replay(packets)
    assert milter.phase == CLOSED and mta.phase == CLOSED  # every transcript ends with QUIT
    commands = [p.decode() for p in packets[2:] if p.sender == "mta"]
    finals = sum(1 for p in packets[2:] if p.sender == "milter" and p.decode().FINAL)
    assert sum(answered.values()) == finals
    # every EOM got exactly one final reply
    assert answered.get("E", 0) == sum(1 for c in commands if c.LETTER == "E")


@pytest.mark.parametrize("name", TRANSCRIPT_FILES)
def test_transcript_byte_streams_decode_in_any_fragmentation_P_FRM_5(name):
    _stream_check(read_vectors(name))


def test_transcript_03_every_command_is_answered_P_NEG_10():
    """Milter negotiated protocol 0: every C H M R T L N B E gets exactly one reply, D A Q none."""
    packets = read_vectors("03-v6-session-transcript.hex")
    _, _, answered = replay(packets)
    assert answered == {"C": 1, "H": 1, "M": 1, "R": 1, "T": 1, "L": 3, "N": 1, "B": 1, "E": 1}


def test_transcript_04_only_eom_is_answered_P_NEG_6_P_NEG_13():
    """NR_* for every step and NOHELO/NOUNKNOWN: only EOM is answered; the macro lists were echoed."""
    packets = read_vectors("04-v6-noreply-symlist-transcript.hex")
    milter, mta, answered = replay(packets)
    assert answered == {"E": 1}
    assert milter.options.answered == {"O", "E"}
    assert "H" not in milter.options.sent and "U" not in milter.options.sent
    assert mta.will_send("H") is False
    assert milter.options.macro_request("C") == ("j", "client_addr")
    assert milter.options.macro_request("M") == ("i", "mail_addr")
    assert milter.options.macro_request("R") is None  # no list: MTA default (P-NEG-14)


def test_transcript_04_macros_are_visible_with_and_without_braces_P_MAC_5():
    packets = read_vectors("04-v6-noreply-symlist-transcript.hex")
    milter = MilterState()
    offer = packets[0].decode()
    milter.receive(offer)
    recorded = packets[1].decode()
    milter.negotiate(offer, actions=recorded.actions, protocol=recorded.protocol, macro_lists=recorded.macro_lists)
    for packet in packets[2:]:
        if packet.sender == "mta" and packet.decode().LETTER == "E":
            break
        if packet.sender == "mta":
            milter.receive(packet.decode())
    assert milter.macros.get("client_addr") == "IPv6:2001:db8::10"
    assert milter.macros.get("{client_addr}") == "IPv6:2001:db8::10"
    assert milter.macros.get("j") == "mx.example.net"
    assert milter.macros.get("rcpt_mailer") == "local"
    # the E macros arrive before E and shadow nothing older; the MAIL-stage queue id is still visible
    assert milter.macros.get("msg_id") == "<20240101120000.5A1Bc3D4004567@mx.example.net>"
    assert milter.macros.get("i") == "5A1Bc3D4004567"


def test_transcript_09_two_messages_and_progress_P_SM_2_P_SM_3_P_RPL_9():
    packets = read_vectors("09-two-messages-transcript.hex")
    _, _, answered = replay(packets)
    assert answered == {"C": 1, "H": 1, "M": 2, "R": 3, "T": 1, "L": 1, "N": 1, "B": 1, "E": 1}


# ---------------------------------------------------------------------------------------------------------
# Acceptance 4: the Postfix 3.7 traces


@pytest.mark.parametrize("name", trace_files())
def test_postfix_trace_replays_through_both_state_machines_P_DIFF_0_P_DIFF_1_P_DIFF_2(name):
    packets = read_trace(name)
    milter, mta, answered = replay(packets)
    assert milter.phase == CLOSED and mta.phase == CLOSED
    letters = [p.label for p in packets[2:] if p.sender == "mta"]
    # the milter asked for every event and every reply: each non-macro, non-abort command got one answer
    for letter in set(letters) - set("DAQ"):
        assert answered[letter] == letters.count(letter), letter
    assert letters[-1] == "Q"
    if name != "postfix-local.hex":
        # smtpd's abort, abort, quit after end of message was accepted (P-SM-3, P-DIFF-2);
        # the non_smtpd session (local sendmail) ends with a bare quit
        assert letters[-3:] == ["A", "A", "Q"]
    # Postfix's L and B macro stages did not produce warnings (P-MAC-2)
    assert milter.warnings == []


@pytest.mark.parametrize("name", trace_files())
def test_postfix_trace_byte_streams_decode_in_any_fragmentation_P_FRM_5(name):
    _stream_check(read_trace(name))


def test_postfix_auth_trace_shows_auth_macros_with_mail_P_MAC_10():
    packets = read_trace("postfix-auth.hex")
    milter = MilterState()
    offer = packets[0].decode()
    milter.receive(offer)
    recorded = packets[1].decode()
    milter.negotiate(offer, actions=recorded.actions, protocol=recorded.protocol)
    for packet in packets[2:]:
        message = packet.decode()
        if packet.sender == "mta":
            milter.receive(message)
            if message.LETTER == "M":
                assert milter.macros.get("auth_type") is not None
                assert milter.macros.get("{auth_authen}") is not None
                break
        else:
            milter.check_send(message)
    else:
        pytest.fail("no MAIL in the trace")
