"""Property tests (hypothesis): round trips, fragmentation and hostile input (P-FRM-*, P-STR-*, P-BAD)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from milterman.protocol import (ABORT, ACCEPT, COMMAND_TYPES, CONTINUE, DATA, DISCARD, END_OF_HEADER,
                                END_OF_MESSAGE, PROGRESS, QUIT, QUIT_NEW_CONNECTION, REJECT, REPLY_TYPES, SHUTDOWN,
                                SKIP, TEMPFAIL, Abort, Accept, AddHeader, AddRcpt, AddRcptWithParameters, Body,
                                ChangeFrom, ChangeHeader, CommandDecoder, Connect, ConnectionFailure, Continue, Data,
                                DeleteRcpt, Discard, EndOfHeader, EndOfMessage, Header, Helo, InsertHeader, Macro,
                                Mail, MilterState, MtaState, Negotiate, NegotiateReply, ParsedReply, Progress,
                                ProtocolError, Quarantine, Quit, QuitNewConnection, Rcpt, Reject, ReplaceBody,
                                ReplyCode, ReplyDecoder, Shutdown, Skip, TempFail, Unknown, decode_one,
                                format_reply_text, parse_reply_text, unescape_percent)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u32 = st.integers(0, 0xFFFFFFFF)
u16 = st.integers(0, 0xFFFF)

# Wire strings: any text without NUL that survives UTF-8/surrogateescape (P-STR-1, P-STR-4). Two sources:
# ordinary text (no surrogates), and arbitrary octets decoded the way the codec decodes them.
_plain_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=24)
_octet_text = st.binary(max_size=24).map(lambda b: b.replace(b"\0", b"").decode("utf-8", "surrogateescape"))
wire_text = st.one_of(_plain_text, _octet_text)
nonempty_text = wire_text.filter(bool)
# Macro names travel bare (one character) or in braces (longer); the API keeps them without braces (P-MAC-5)
macro_name = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0{}"), min_size=1, max_size=12),
    st.binary(min_size=1, max_size=12).map(
        lambda b: b.translate(None, b"\0{}").decode("utf-8", "surrogateescape")).filter(bool),
)
stage_letter = st.sampled_from("CHMRTLNBEUAZ")

negotiates = st.builds(Negotiate, u32, u32, u32)
macros = st.builds(Macro, stage_letter, st.lists(st.tuples(macro_name, wire_text), max_size=4).map(tuple))
connects = st.one_of(
    st.builds(Connect, wire_text, st.just("4"), u16, st.ip_addresses(v=4).map(str)),
    st.builds(Connect, wire_text, st.just("6"), u16,
              st.tuples(st.sampled_from(["", "IPv6:", "ipv6:"]), st.ip_addresses(v=6).map(str)).map("".join)),
    st.builds(Connect, wire_text, st.just("L"), st.just(0), wire_text),
    st.builds(Connect, wire_text, st.just("U")),
)
envelope_args = st.lists(wire_text, max_size=3).map(tuple)

#: one strategy per command type (valid field values only)
COMMAND_STRATEGIES = {
    Negotiate: negotiates,
    Macro: macros,
    Connect: connects,
    Helo: st.builds(Helo, wire_text),
    Mail: st.builds(Mail, wire_text, envelope_args),
    Rcpt: st.builds(Rcpt, wire_text, envelope_args),
    Data: st.just(DATA),
    Header: st.builds(Header, wire_text, wire_text),
    EndOfHeader: st.just(END_OF_HEADER),
    Body: st.builds(Body, st.binary(min_size=1, max_size=300)),
    EndOfMessage: st.just(END_OF_MESSAGE),
    Abort: st.just(ABORT),
    Quit: st.just(QUIT),
    QuitNewConnection: st.just(QUIT_NEW_CONNECTION),
    Unknown: st.builds(Unknown, wire_text),
}
commands = st.one_of(*COMMAND_STRATEGIES.values())

reply_line = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@st.composite
def reply_texts(draw):
    code = draw(st.sampled_from(["421", "450", "451", "452", "550", "551", "552", "553", "554"]))
    xcode = draw(st.one_of(st.none(), st.builds(lambda a, b: f"{code[0]}.{a}.{b}", st.integers(0, 999),
                                               st.integers(0, 999))))
    lines = draw(st.lists(reply_line, min_size=1, max_size=4))
    return code, xcode, lines


header_index = st.integers(0, 0x7FFFFFFF)
optional_args = st.one_of(st.none(), wire_text)

#: one strategy per reply type (valid field values only)
REPLY_STRATEGIES = {
    NegotiateReply: st.builds(NegotiateReply, u32, u32, u32,
                              st.lists(st.tuples(u32, wire_text), max_size=4).map(tuple)),
    Continue: st.just(CONTINUE),
    Accept: st.just(ACCEPT),
    Reject: st.just(REJECT),
    TempFail: st.just(TEMPFAIL),
    Discard: st.just(DISCARD),
    Skip: st.just(SKIP),
    Shutdown: st.just(SHUTDOWN),
    ConnectionFailure: st.just(ConnectionFailure.INSTANCE),
    Progress: st.just(PROGRESS),
    ReplyCode: reply_texts().map(lambda t: ReplyCode(format_reply_text(*t))),
    Quarantine: st.builds(Quarantine, nonempty_text),
    AddHeader: st.builds(AddHeader, nonempty_text, wire_text),
    InsertHeader: st.builds(InsertHeader, header_index, nonempty_text, wire_text),
    ChangeHeader: st.builds(ChangeHeader, header_index, nonempty_text, wire_text),
    AddRcpt: st.builds(AddRcpt, nonempty_text),
    AddRcptWithParameters: st.builds(AddRcptWithParameters, nonempty_text, optional_args),
    DeleteRcpt: st.builds(DeleteRcpt, nonempty_text),
    ChangeFrom: st.builds(ChangeFrom, nonempty_text, optional_args),
    ReplaceBody: st.builds(ReplaceBody, st.binary(max_size=300)),
}
replies = st.one_of(*REPLY_STRATEGIES.values())


# ---------------------------------------------------------------------------------------------------------
# encode -> decode round trips of every message type


def test_strategies_cover_every_message_type():
    assert set(COMMAND_STRATEGIES) == set(COMMAND_TYPES.values())
    assert set(REPLY_STRATEGIES) == set(REPLY_TYPES.values())


def _round_trip(message, types) -> None:
    packet = message.encode()
    assert struct.unpack(">I", packet[:4])[0] == len(packet) - 4  # P-FRM-1
    assert packet[4:5] == message.LETTER.encode()
    decoded = decode_one(packet, types)
    assert decoded == message
    assert type(decoded) is type(message)
    assert decoded.encode() == packet


@pytest.mark.parametrize("message_type", list(COMMAND_STRATEGIES), ids=lambda t: t.__name__)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_command_type_round_trips_P_FRM_1_P_STR_1_P_STR_4(message_type, data):
    _round_trip(data.draw(COMMAND_STRATEGIES[message_type]), COMMAND_TYPES)


@pytest.mark.parametrize("message_type", list(REPLY_STRATEGIES), ids=lambda t: t.__name__)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_reply_type_round_trips_P_FRM_1_P_STR_1_P_STR_4(message_type, data):
    _round_trip(data.draw(REPLY_STRATEGIES[message_type]), REPLY_TYPES)


@FAST
@given(macro_name, wire_text)
def test_macro_names_get_braces_on_the_wire_only_when_longer_than_one_character_P_MAC_5(name, value):
    packet = Macro("C", ((name, value),)).encode()
    wire_name = packet[6:].split(b"\0")[0]
    raw = name.encode("utf-8", "surrogateescape")
    if len(name) == 1:
        assert wire_name == raw
    else:
        assert wire_name == b"{" + raw + b"}"
    assert decode_one(packet, COMMAND_TYPES).macros == ((name, value),)


@FAST
@given(st.binary(min_size=1, max_size=1))
def test_any_macro_stage_byte_round_trips_P_STR_4(stage):
    packet = struct.pack(">I", 2) + b"D" + stage
    assert decode_one(packet, COMMAND_TYPES).encode() == packet


# ---------------------------------------------------------------------------------------------------------
# hostile bytes: only ProtocolError subclasses, whatever the input and however it is split


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


def _drain(decoder, pieces: list[bytes]) -> list:
    messages = []
    for piece in pieces:
        decoder.feed(piece)
        messages.extend(decoder)
    return messages


letters = st.sampled_from(sorted(set(COMMAND_TYPES) | set(REPLY_TYPES) | {"Z", "l", "\x00", "\xff"}))


@st.composite
def plausible_garbage(draw):
    """Packets with a sane length and a real letter but random payloads, mixed with raw noise."""
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            payload = draw(st.binary(max_size=40))
            parts.append(struct.pack(">I", len(payload) + 1) + draw(letters).encode("latin-1") + payload)
        else:
            parts.append(draw(st.binary(max_size=24)))
    return b"".join(parts)


hostile = st.one_of(st.binary(max_size=120), plausible_garbage())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile, st.lists(st.integers(0, 1000), max_size=6), st.sampled_from([CommandDecoder, ReplyDecoder]),
       st.booleans())
def test_arbitrary_bytes_raise_only_protocol_errors_P_BAD_P_FRM_5(data, cuts, decoder_type, strict):
    decoder = decoder_type(strict=strict)
    try:
        _drain(decoder, _split(data, cuts))
        decoder.feed_eof()
    except ProtocolError:
        pass


@FAST
@given(hostile, st.lists(st.integers(0, 1000), max_size=6), st.sampled_from([CommandDecoder, ReplyDecoder]))
def test_fragmentation_does_not_change_the_outcome_of_hostile_input_P_FRM_5(data, cuts, decoder_type):
    """Split or whole, the decoder yields the same messages and then the same kind of error (or none)."""
    def run(pieces):
        decoder = decoder_type()
        got = []
        try:
            for piece in pieces:
                decoder.feed(piece)
                got.extend(decoder)
            decoder.feed_eof()
        except ProtocolError as error:
            return got, type(error)
        return got, None

    assert run(_split(data, cuts)) == run([data])


# ---------------------------------------------------------------------------------------------------------
# valid streams in arbitrary fragments (P-FRM-5)


@PROPERTY
@given(st.lists(commands, min_size=1, max_size=8), st.lists(st.integers(0, 5000), max_size=10))
def test_command_stream_in_fragments_equals_whole_P_FRM_5(messages, cuts):
    stream = b"".join(m.encode() for m in messages)
    whole = CommandDecoder()
    whole.feed(stream)
    assert list(whole) == messages
    fragmented = CommandDecoder()
    assert _drain(fragmented, _split(stream, cuts)) == messages
    assert fragmented.pending_bytes == 0
    fragmented.feed_eof()


@PROPERTY
@given(st.lists(replies, min_size=1, max_size=8), st.lists(st.integers(0, 5000), max_size=10))
def test_reply_stream_in_fragments_equals_whole_P_FRM_5(messages, cuts):
    stream = b"".join(m.encode() for m in messages)
    fragmented = ReplyDecoder()
    assert _drain(fragmented, _split(stream, cuts)) == messages
    fragmented.feed_eof()


@FAST
@given(st.lists(commands, min_size=1, max_size=4), st.integers(1, 200))
def test_eof_inside_any_packet_is_a_framing_error_P_FRM_5_P_BAD_4(messages, cut):
    stream = b"".join(m.encode() for m in messages)
    cut = cut % len(stream) or 1
    decoder = CommandDecoder()
    decoder.feed(stream[:cut])
    list(decoder)
    if decoder.pending_bytes:
        try:
            decoder.feed_eof()
        except ProtocolError as error:
            assert error.rule == "P-FRM-5"
        else:
            raise AssertionError("EOF inside a packet was accepted")


# ---------------------------------------------------------------------------------------------------------
# reply texts (section 8)


@FAST
@given(reply_texts())
def test_formatted_reply_text_parses_back_P_CODE_2_to_P_CODE_6(spec):
    code, xcode, lines = spec
    text = format_reply_text(code, xcode, lines)
    parsed = parse_reply_text(text)
    assert isinstance(parsed, ParsedReply)
    assert parsed.code == code
    assert parsed.xcode == (xcode or f"{code[0]}.0.0")          # always an enhanced code (P-CODE-4)
    assert [unescape_percent(line) for line in parsed.lines] == lines  # %% undone (P-CODE-6)
    assert len(text.split("\r\n")) == len(lines)                 # CRLF-joined (P-CODE-5)
    assert not text.endswith("\r\n")


@FAST
@given(st.text(max_size=30))
def test_unescape_percent_undoes_doubling_P_CODE_6(text):
    doubled = text.replace("%", "%%")
    assert unescape_percent(doubled) == text
    assert unescape_percent(doubled + "%") == text          # a trailing lone % is dropped (P-BAD-41)
    assert unescape_percent("%" + doubled.replace("%%", "")) == text.replace("%", "")


# ---------------------------------------------------------------------------------------------------------
# state machines never raise anything but ProtocolError


state_commands = st.sampled_from([Negotiate(6, 0x1FF, 0x1FFFFF), Macro("C", (("j", "x"),)), Macro("Z"),
                                  Connect("h", "U"), Helo("x"), Mail("<a>"), Rcpt("<b>"), DATA,
                                  Header("a", "b"), END_OF_HEADER, Body(b"x"), END_OF_MESSAGE, ABORT, QUIT,
                                  QUIT_NEW_CONNECTION, Unknown("X")])
state_replies = st.sampled_from([CONTINUE, ACCEPT, REJECT, TEMPFAIL, DISCARD, SKIP, SHUTDOWN, PROGRESS,
                                 ReplyCode("550 5.7.1 x"), Quarantine("q"), AddHeader("a", "b"),
                                 ReplaceBody(b""), ChangeFrom("<x>"), ConnectionFailure.INSTANCE,
                                 NegotiateReply(6, 0, 0)])


@FAST
@given(st.integers(0, 0x1FF), st.integers(0, 0x1FFFFF),
       st.lists(st.one_of(state_commands, state_replies), max_size=30))
def test_state_machines_raise_only_protocol_errors_P_SM_8_P_SM_10(actions, protocol, sequence):
    offer = Negotiate(6, 0x1FF, 0x1FFFFF)
    milter = MilterState()
    milter.receive(offer)
    reply = milter.negotiate(offer, actions=actions, protocol=protocol)
    mta = MtaState(offer)
    mta.send(offer)
    mta.receive(reply)
    for item in sequence:
        is_command = item.LETTER in COMMAND_TYPES and type(item) is COMMAND_TYPES[item.LETTER]
        for step in ((milter.receive, mta.send) if is_command else (milter.check_send, mta.receive)):
            try:
                step(item)
            except ProtocolError:
                pass
