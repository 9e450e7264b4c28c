"""The spec's hex vectors: byte-exact round trips (P-FRM-1, P-STR-*) and the bad-input catalogue (P-BAD-*)."""

from __future__ import annotations

import pytest

from milter_vectors import BAD_INPUT_FILE, read_trace, read_vectors, trace_files, vector_files, well_formed_vectors
from milterman.protocol import (CONTINUE, CommandDecoder, Connect, EndOfHeader, Helo, Macro, Mail, MalformedPacket,
                                MAX_DATA_SIZE_DEFAULT, MilterState, MtaState, Negotiate, NegotiateReply,
                                NegotiationError, ProtocolError, Rcpt, ReplyCode, ReplyDecoder, UnexpectedMessage,
                                answer_offer, check_reply)
from milterman.protocol.messages import (Accept, AddHeader, AddRcpt, AddRcptWithParameters, ChangeFrom,
                                         ChangeHeader, ConnectionFailure, Continue, DeleteRcpt, Discard,
                                         InsertHeader, Progress, Quarantine, Reject, ReplaceBody, Shutdown, Skip,
                                         TempFail)

WELL_FORMED = well_formed_vectors()


def test_vector_files_are_present_and_nonempty():
    """The copied data set is complete: ten vector files, four traces (the suite must not silently shrink)."""
    assert len(vector_files()) == 10
    assert len(trace_files()) == 4
    assert len(WELL_FORMED) >= 150
    for name in vector_files():
        assert read_vectors(name), name


# ---------------------------------------------------------------------------------------------------------
# Acceptance 1: every well-formed packet decodes and re-encodes byte for byte


@pytest.mark.parametrize("packet", WELL_FORMED, ids=lambda p: p.id)
def test_vector_decodes_and_reencodes_byte_for_byte_P_FRM_1(packet):
    message = packet.decode()
    assert message.LETTER == chr(packet.data[4])
    assert message.encode() == packet.data
    # the lenient reader agrees on every well-formed packet
    assert packet.decode(strict=False) == message


@pytest.mark.parametrize("name", trace_files())
def test_postfix_trace_packets_reencode_byte_for_byte_P_FRM_1(name):
    for packet in read_trace(name):
        message = packet.decode()
        assert message.LETTER == packet.label, packet.id
        assert message.encode() == packet.data, packet.id


def test_commands_vector_has_one_example_of_every_command_P_CMD_0():
    letters = [packet.decode().LETTER for packet in read_vectors("00-commands.hex")]
    assert set(letters) == set("OCHMRTLNBEAQKUD")
    for packet in read_vectors("00-commands.hex"):
        assert packet.label[0] == packet.decode().LETTER, packet.id


_REPLY_NAMES = {
    "SMFIR_CONTINUE": Continue, "SMFIR_ACCEPT": Accept, "SMFIR_REJECT": Reject, "SMFIR_TEMPFAIL": TempFail,
    "SMFIR_DISCARD": Discard, "SMFIR_SKIP": Skip, "SMFIR_PROGRESS": Progress, "SMFIR_SHUTDOWN": Shutdown,
    "SMFIR_CONN_FAIL": ConnectionFailure, "SMFIR_REPLYCODE": ReplyCode, "SMFIR_ADDHEADER": AddHeader,
    "SMFIR_INSHEADER": InsertHeader, "SMFIR_CHGHEADER": ChangeHeader, "SMFIR_ADDRCPT": AddRcpt,
    "SMFIR_ADDRCPT_PAR": AddRcptWithParameters, "SMFIR_DELRCPT": DeleteRcpt, "SMFIR_CHGFROM": ChangeFrom,
    "SMFIR_REPLBODY": ReplaceBody, "SMFIR_QUARANTINE": Quarantine,
}


def test_replies_vector_decodes_to_the_named_types_P_RPL_0():
    seen = set()
    for packet in read_vectors("07-replies.hex"):
        name = packet.label.split()[0]
        assert type(packet.decode()) is _REPLY_NAMES[name], packet.id
        seen.add(name)
    assert seen == set(_REPLY_NAMES)


def test_replies_vector_field_values_P_MOD_4_P_MOD_5_P_MOD_8_P_MOD_10_P_CODE_6():
    decoded = [packet.decode() for packet in read_vectors("07-replies.hex")]
    assert InsertHeader(0, "X-First", "top") in decoded
    assert ChangeHeader(2, "Received", "") in decoded            # empty value = delete (P-MOD-5)
    assert AddRcptWithParameters("<archive@example.net>", "NOTIFY=NEVER") in decoded
    assert ChangeFrom("<bounces@example.org>", None) in decoded
    assert ChangeFrom("<bounces@example.org>", "RET=HDRS ENVID=abc123") in decoded  # one string (P-MOD-10)
    assert ReplaceBody(b"") in decoded
    assert AddHeader("X-Multi", "line one\n\tline two") in decoded
    percent = [m for m in decoded if isinstance(m, ReplyCode) and "%%" in m.text]
    assert len(percent) == 1 and percent[0].smtp_text == "550 5.7.1 100% sure"
    multi = [m for m in decoded if isinstance(m, ReplyCode) and "\r\n" in m.text]
    assert len(multi) == 1
    assert multi[0].parsed.code == "550" and multi[0].parsed.xcode == "5.7.0" and len(multi[0].parsed.lines) == 3


def test_connect_vector_fields_P_CON_1_P_CON_2_P_CON_4():
    decoded = [packet.decode() for packet in read_vectors("06-connect.hex")]
    assert all(isinstance(m, Connect) for m in decoded)
    v4, v6_postfix, v6_sendmail, mapped, unix, unknown = decoded
    assert (v4.family, v4.port, v4.address, v4.ip) == ("4", 50000, "192.0.2.10", "192.0.2.10")
    assert (v6_postfix.family, v6_postfix.port, v6_postfix.ip) == ("6", 54321, "2001:db8::10")
    assert v6_sendmail.address == "IPv6:2001:db8::10" and v6_sendmail.ip == "2001:db8::10"
    assert v6_sendmail.hostname == "[IPv6:2001:db8::10]"
    assert (mapped.family, mapped.port) == ("4", 443)
    assert (unix.family, unix.port, unix.address) == ("L", 0, "/var/run/smtp.sock")
    assert (unknown.family, unknown.hostname, unknown.port, unknown.address) == ("U", "localhost", 0, "")


def test_negotiation_vector_fields_P_NEG_2_P_NEG_12_P_NEG_13():
    decoded = [packet.decode() for packet in read_vectors("05-negotiation.hex")]
    offers = [m for m in decoded if isinstance(m, Negotiate)]
    replies = [m for m in decoded if isinstance(m, NegotiateReply)]
    assert [o.version for o in offers] == [2, 6, 4, 3, 2, 6]
    assert offers[-1].protocol == 0x101FFFFF
    lists = [r for r in replies if r.macro_lists]
    assert len(lists) == 1
    assert lists[0].macro_lists == ((0, "{client_addr} {client_name}"), (1, ""), (6, "i"))


def test_macro_vector_names_lose_their_braces_P_MAC_5():
    first = read_vectors("00-commands.hex")[1].decode()
    assert isinstance(first, Macro)
    assert first.stage == "C"
    assert first.macros == (("j", "mx.example.net"), ("daemon_name", "mx"))


# ---------------------------------------------------------------------------------------------------------
# Acceptance 2: the bad-input catalogue, every line, by label

BAD = read_vectors(BAD_INPUT_FILE)
V6_OFFER = Negotiate(6, 0x1FF, 0x1FFFFF)


def _expectation(packet) -> str:
    label, sep, outcome = packet.label.partition("expect:")
    assert sep, f"{packet.id}: label without 'expect:'"
    return outcome.strip()


def _label(packet) -> str:
    return packet.label.partition(" | expect:")[0].strip()


def test_bad_input_catalogue_is_driven_completely():
    """Every line of 08-bad-input.hex carries a known outcome and a unique label, so each one is tested below."""
    assert len(BAD) == 40
    assert len({_label(p) for p in BAD}) == len(BAD)
    kinds = {(p.sender, _expectation(p).split()[0]) for p in BAD}
    assert kinds == {("mta", "close"), ("mta", "ignore"), ("milter", "error"), ("milter", "accept")}


def negotiated_connected_milter(protocol: int = 0) -> MilterState:
    """The context of the catalogue's milter-side lines: fresh v6 negotiation, CONNECT answered."""
    state = MilterState()
    assert state.receive(V6_OFFER) is True
    state.negotiate(V6_OFFER, actions=0x1FF, protocol=protocol)
    assert state.receive(Connect("client.example.org", "4", 25000, "192.0.2.10")) is True
    state.check_send(CONTINUE)
    return state


def mta_awaiting_rcpt_reply() -> MtaState:
    """The MTA context: we offered v6/0x1ff/0x1fffff, the milter granted everything, a RCPT awaits its reply."""
    state = MtaState(V6_OFFER)
    assert state.send(V6_OFFER) is True
    assert state.receive(NegotiateReply(6, 0x1FF, 0)) is True
    for command in (Connect("client.example.org", "4", 25000, "192.0.2.10"), Helo("client.example.org"),
                    Mail("<alice@example.org>")):
        assert state.send(command) is True
        assert state.receive(CONTINUE) is True
    assert state.send(Rcpt("<bob@example.net>")) is True
    return state


def mta_awaiting_negotiation_reply() -> MtaState:
    state = MtaState(V6_OFFER)
    assert state.send(V6_OFFER) is True
    return state


def _decode_stream(decoder, data: bytes):
    """Feed the bytes, then EOF (the [prefix] lines are truncated on purpose); return the message."""
    decoder.feed(data)
    message = decoder.next_message()
    if message is None:
        decoder.feed_eof()
        pytest.fail("the decoder waited for more bytes and accepted EOF inside a packet (P-FRM-5)")
    assert decoder.next_message() is None
    return message


def _milter_side_error(packet) -> ProtocolError | None:
    """Run a MTA->milter packet through decoder and state machine; return the error that closes, if any."""
    try:
        message = _decode_stream(CommandDecoder(), packet.data)
    except ProtocolError as error:
        return error
    if isinstance(message, Negotiate):
        fresh = MilterState()
        assert fresh.receive(message) is True
        try:
            fresh.negotiate(message, actions=0x1FF)
        except ProtocolError as error:
            # a rejected offer must also be refused where a second OPTNEG arrives
            with pytest.raises(UnexpectedMessage):
                negotiated_connected_milter().receive(message)
            return error
    state = negotiated_connected_milter()
    try:
        state.receive(message)
    except ProtocolError as error:
        return error
    return None


CLOSE = [p for p in BAD if p.sender == "mta" and _expectation(p).startswith("close")]
IGNORE = [p for p in BAD if p.sender == "mta" and _expectation(p).startswith("ignore")]
ERROR = [p for p in BAD if p.sender == "milter" and _expectation(p).startswith("error")]
ACCEPT = [p for p in BAD if p.sender == "milter" and _expectation(p).startswith("accept")]


@pytest.mark.parametrize("packet", CLOSE, ids=_label)
def test_bad_input_milter_side_closes_P_BAD_1_to_21(packet):
    """'close': the decoder or, for state-level cases, the milter state machine raises a ProtocolError."""
    if "above default 65535" in packet.label:
        # "close unless a larger limit was negotiated/configured": the libmilter limit closes at once,
        # without waiting for the body (P-FRM-4, P-BAD-3) ...
        decoder = CommandDecoder(max_data_size=MAX_DATA_SIZE_DEFAULT)
        decoder.feed(packet.data)
        with pytest.raises(ProtocolError) as error:
            decoder.next_message()
        assert error.value.rule == "P-FRM-4"
        # ... while our default cap (1 MiB - 1, P-FRM-4) waits for the rest of the packet
        relaxed = CommandDecoder()
        relaxed.feed(packet.data)
        assert relaxed.next_message() is None
    error = _milter_side_error(packet)
    assert isinstance(error, ProtocolError), f"{packet.id} was accepted"


@pytest.mark.parametrize("packet", [p for p in CLOSE if "[prefix]" in p.label and "EOF" not in p.label],
                         ids=_label)
def test_bad_length_is_refused_before_the_data_arrives_P_BAD_2_P_BAD_3(packet):
    """Oversized lengths are refused from the 4 length bytes alone (never allocate, P-FRM-4)."""
    decoder = CommandDecoder(max_data_size=MAX_DATA_SIZE_DEFAULT)
    decoder.feed(packet.data[:4])
    with pytest.raises(ProtocolError):
        decoder.next_message()


@pytest.mark.parametrize("label, expected", [
    ("OPTNEG version 1", NegotiationError),
    ("RCPT right after CONNECT (no MAIL)", UnexpectedMessage),
    ("second OPTNEG after negotiation", UnexpectedMessage),
])
def test_bad_input_state_level_cases_P_BAD_7_P_BAD_9_P_BAD_21(label, expected):
    """The three well-formed-but-misplaced packets pass the decoder and are refused by MilterState."""
    (packet,) = [p for p in BAD if _label(p) == label]
    message = _decode_stream(CommandDecoder(), packet.data)
    assert isinstance(message, (Negotiate, Rcpt))
    assert isinstance(_milter_side_error(packet), expected)


def test_bad_input_eoh_with_data_strict_closes_lenient_ignores_P_BAD_19():
    (packet,) = [p for p in BAD if _label(p) == "EOH with unexpected data"]
    with pytest.raises(MalformedPacket):
        _decode_stream(CommandDecoder(), packet.data)
    assert _decode_stream(CommandDecoder(strict=False), packet.data) == EndOfHeader.INSTANCE


@pytest.mark.parametrize("packet", IGNORE, ids=_label)
def test_bad_input_milter_side_ignores_P_BAD_18(packet):
    """'ignore': no exception, no reply owed, a warning for the log, and the session goes on."""
    message = _decode_stream(CommandDecoder(), packet.data)
    assert isinstance(message, Macro)
    state = negotiated_connected_milter()
    assert state.warnings == []
    assert state.receive(message) is False
    assert state.warnings, "the tolerated mistake must be logged"
    assert state.awaiting is None
    assert state.receive(Helo("client.example.org")) is True


def test_bad_input_dangling_macro_name_is_dropped_P_MAC_4():
    (packet,) = [p for p in BAD if _label(p) == "MACRO name without value"]
    message = _decode_stream(CommandDecoder(), packet.data)
    assert message.stage == "C" and message.macros == () and message.dropped


def _mta_side_error(packet) -> ProtocolError | None:
    try:
        message = _decode_stream(ReplyDecoder(), packet.data)
    except ProtocolError as error:
        return error
    if isinstance(message, NegotiateReply) or "OPTNEG" in packet.label:
        state = mta_awaiting_negotiation_reply()
    else:
        state = mta_awaiting_rcpt_reply()
    try:
        state.receive(message)
    except ProtocolError as error:
        return error
    return None


@pytest.mark.parametrize("packet", ERROR, ids=_label)
def test_bad_input_mta_side_fails_the_milter_P_BAD_30_to_45(packet):
    """'error': the reply decoder, MtaState or check_reply raises (context: offer v6/0x1ff/0x1fffff)."""
    error = _mta_side_error(packet)
    assert isinstance(error, ProtocolError), f"{packet.id} was accepted"


@pytest.mark.parametrize("label, rule", [
    ("OPTNEG reply with version above the offer (7 > 6)", "P-BAD-31"),
    ("OPTNEG reply requesting an action bit not offered", "P-BAD-32"),
])
def test_bad_negotiation_replies_fail_in_check_reply_P_BAD_31_P_BAD_32(label, rule):
    (packet,) = [p for p in BAD if _label(p) == label]
    reply = packet.decode()
    with pytest.raises(NegotiationError) as error:
        check_reply(V6_OFFER, reply)
    assert error.value.rule == rule
    with pytest.raises(NegotiationError):
        check_reply(V6_OFFER, reply, strict=False)


def test_bad_input_continue_instead_of_negotiation_reply_P_BAD_31():
    (packet,) = [p for p in BAD if _label(p) == "CONTINUE instead of OPTNEG reply"]
    with pytest.raises(UnexpectedMessage):
        mta_awaiting_negotiation_reply().receive(packet.decode())


def test_bad_input_modification_outside_eom_P_BAD_37():
    """The action is granted, so only the position (reply to RCPT) makes ADDHEADER an error."""
    (packet,) = [p for p in BAD if _label(p).startswith("ADDHEADER in reply to RCPT")]
    with pytest.raises(UnexpectedMessage) as error:
        mta_awaiting_rcpt_reply().receive(packet.decode())
    assert error.value.rule == "P-BAD-37"


@pytest.mark.parametrize("packet", ACCEPT, ids=_label)
def test_bad_input_lone_percent_is_accepted_and_dropped_P_BAD_41(packet):
    message = _decode_stream(ReplyDecoder(), packet.data)
    assert isinstance(message, ReplyCode)
    assert message.text == "550 5.7.1 50% off"          # the wire text is kept for exact re-encoding
    assert message.smtp_text == "550 5.7.1 50 off"      # the client sees the lone % dropped (P-CODE-6)
    assert message.encode() == packet.data
    state = mta_awaiting_rcpt_reply()
    assert state.receive(message) is True
    assert state.awaiting is None


def test_answer_offer_refuses_version_1_P_BAD_7():
    (packet,) = [p for p in BAD if _label(p) == "OPTNEG version 1"]
    with pytest.raises(NegotiationError):
        answer_offer(packet.decode())
