"""Framing limits (P-FRM-*), payload validation (P-STR-*, P-CON-5, P-BAD-*) and body chunking (P-BODY-1)."""

from __future__ import annotations

import struct

import pytest

from milterman.protocol import (BODY_CHUNK_SIZE, COMMAND_TYPES, MAX_DATA_SIZE_1M, MAX_DATA_SIZE_DEFAULT, QUIT,
                                REPLY_TYPES, AddHeader, AddRcptWithParameters, Body, ChangeFrom, ChangeHeader,
                                CommandDecoder, Connect, EndOfMessage, FramingError, Header, InsertHeader,
                                LocalProtocolError, Macro, Mail, MalformedPacket, Negotiate, NegotiateReply,
                                NegotiationError, ProtocolError, Quarantine, Rcpt, RemoteProtocolError, ReplaceBody,
                                ReplyDecoder, UnexpectedMessage, chunk_body, decode_one)


def packet(letter: str, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + letter.encode("latin-1") + data


def command(data: bytes, *, strict: bool = True):
    return decode_one(data, COMMAND_TYPES, strict=strict)


def reply(data: bytes, *, strict: bool = True):
    return decode_one(data, REPLY_TYPES, strict=strict)


# ---------------------------------------------------------------------------------------------------------
# error hierarchy


def test_every_error_is_a_protocol_error():
    for remote in (FramingError, MalformedPacket, UnexpectedMessage, NegotiationError):
        assert issubclass(remote, RemoteProtocolError) and issubclass(remote, ProtocolError)
    assert issubclass(LocalProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    error = FramingError("boom", "P-FRM-2")
    assert error.rule == "P-FRM-2" and "P-FRM-2" in str(error)


# ---------------------------------------------------------------------------------------------------------
# length field (P-FRM-1 .. P-FRM-5)


def test_length_counts_command_byte_not_itself_P_FRM_1():
    assert Negotiate(6, 0x1FF, 0x1FFFFF).encode()[:4] == b"\x00\x00\x00\x0d"
    assert QUIT.encode() == b"\x00\x00\x00\x01Q"


def test_length_zero_is_framing_error_P_FRM_2():
    decoder = CommandDecoder()
    decoder.feed(b"\x00\x00\x00\x00" + packet("Q"))
    with pytest.raises(FramingError) as error:
        decoder.next_message()
    assert error.value.rule == "P-FRM-2"


@pytest.mark.parametrize("length", [0x80000000, 0x80000001, 0xFFFFFFFF])
@pytest.mark.parametrize("decoder_type", [CommandDecoder, ReplyDecoder])
def test_length_with_top_bit_is_framing_error_even_with_huge_cap_P_FRM_4_P_BAD_2(length, decoder_type):
    decoder = decoder_type(max_data_size=0xFFFFFFFF)
    decoder.feed(struct.pack(">I", length))          # only the length: refused before any data arrives
    with pytest.raises(FramingError):
        decoder.next_message()


def test_default_cap_is_1mib_minus_1_on_both_sides_P_FRM_4():
    for decoder_type in (CommandDecoder, ReplyDecoder):
        assert decoder_type().max_data_size == MAX_DATA_SIZE_1M == 1048575
        ok = decoder_type()
        ok.feed(struct.pack(">I", MAX_DATA_SIZE_1M + 1) + b"B")
        assert ok.next_message() is None            # waits for the data
        too_big = decoder_type()
        too_big.feed(struct.pack(">I", MAX_DATA_SIZE_1M + 2))
        with pytest.raises(FramingError) as error:
            too_big.next_message()
        assert error.value.rule == "P-FRM-4"


@pytest.mark.parametrize("cap", [1, 100, MAX_DATA_SIZE_DEFAULT, 262143])
def test_configurable_cap_P_FRM_4_P_BAD_3(cap):
    at_cap = CommandDecoder(max_data_size=cap)
    at_cap.feed(packet("B", b"x" * cap))
    assert at_cap.next_message() == Body(b"x" * cap)
    above = CommandDecoder(max_data_size=cap)
    above.feed(struct.pack(">I", cap + 2) + b"B")
    with pytest.raises(FramingError):
        above.next_message()


def test_cap_can_change_between_packets_P_NEG_12():
    """A negotiated MDS can raise the limit of a running decoder."""
    decoder = ReplyDecoder(max_data_size=MAX_DATA_SIZE_DEFAULT)
    decoder.max_data_size = 262143
    decoder.feed(packet("b", b"y" * 70000))
    assert decoder.next_message() == ReplaceBody(b"y" * 70000)


def test_body_larger_than_65535_is_accepted_up_to_our_cap_P_BAD_23():
    assert command(packet("B", b"z" * 70000)) == Body(b"z" * 70000)


def test_eof_mid_packet_is_framing_error_P_FRM_5_P_BAD_4():
    for prefix in (b"\x00", b"\x00\x00\x00", b"\x00\x00\x00\x05", packet("H", b"abc\x00")[:-1]):
        decoder = CommandDecoder()
        decoder.feed(prefix)
        assert decoder.next_message() is None
        assert decoder.pending_bytes == len(prefix)
        with pytest.raises(FramingError):
            decoder.feed_eof()


def test_eof_between_packets_is_a_normal_end_P_SM_4():
    decoder = CommandDecoder()
    decoder.feed(packet("A") + packet("Q"))
    assert [m.LETTER for m in decoder] == ["A", "Q"]
    assert decoder.pending_bytes == 0
    decoder.feed_eof()  # no error
    CommandDecoder().feed_eof()


def test_several_packets_in_one_read_and_one_packet_over_many_reads_P_FRM_5():
    stream = packet("H", b"a\x00") + packet("M", b"<a>\x00") + packet("R", b"<b>\x00")
    decoder = CommandDecoder()
    decoder.feed(stream)
    assert [m.LETTER for m in decoder] == ["H", "M", "R"]
    decoder = CommandDecoder()
    got = []
    for byte in stream:
        decoder.feed(bytes([byte]))
        message = decoder.next_message()
        if message is not None:
            got.append(message.LETTER)
    assert got == ["H", "M", "R"]


def test_large_buffered_stream_is_compacted_correctly_P_FRM_5():
    """More than 64 KiB of consumed packets in one buffer (the decoder's compaction path) stays in sync."""
    bodies = [Body(bytes([i]) * 30000) for i in range(1, 6)]
    decoder = CommandDecoder()
    decoder.feed(b"".join(b.encode() for b in bodies) + packet("E")[:3])
    assert list(decoder) == bodies
    decoder.feed(packet("E")[3:])
    assert decoder.next_message() == EndOfMessage()


def test_unknown_letter_is_malformed_P_BAD_5_P_BAD_35():
    with pytest.raises(MalformedPacket):
        command(packet("Z"))
    for letter in ("Z", "l", "c"):  # 'c' is a reply letter, not a command
        with pytest.raises(MalformedPacket):
            command(packet(letter))
    for letter in ("Z", "l", "C"):
        with pytest.raises(MalformedPacket):
            reply(packet(letter))


def test_decode_one_refuses_incomplete_and_trailing_bytes_P_FRM_1():
    with pytest.raises(FramingError):
        command(packet("Q")[:-1])
    with pytest.raises(FramingError):
        command(packet("Q") + b"\x00")


# ---------------------------------------------------------------------------------------------------------
# commands: payload layouts and strict/lenient reading (P-CMD-*, P-BAD-6 .. P-BAD-20)


@pytest.mark.parametrize("letter", list("TNAQK"))
def test_data_on_empty_commands_strict_closes_lenient_ignores_P_CMD_16_P_BAD_19(letter):
    with pytest.raises(MalformedPacket):
        command(packet(letter, b"x"))
    assert command(packet(letter, b"x"), strict=False) == command(packet(letter))


def test_data_on_eom_strict_closes_lenient_keeps_it_as_body_P_CMD_11_P_BAD_20():
    with pytest.raises(MalformedPacket) as error:
        command(packet("E", b"tail"))
    assert error.value.rule == "P-BAD-20"
    assert command(packet("E", b"tail"), strict=False) == EndOfMessage(b"tail")


@pytest.mark.parametrize("letter", list("OCHMRLUDB"))
def test_commands_that_need_data_refuse_none_P_CMD_17_P_BAD_10(letter):
    with pytest.raises(MalformedPacket):
        command(packet(letter))


def test_negotiate_offer_needs_exactly_12_bytes_P_NEG_2_P_BAD_6():
    body = struct.pack(">III", 6, 0x1FF, 0x1FFFFF)
    assert command(packet("O", body)) == Negotiate(6, 0x1FF, 0x1FFFFF)
    with pytest.raises(MalformedPacket):
        command(packet("O", body[:11]))
    with pytest.raises(MalformedPacket):
        command(packet("O", body + b"\x00"))
    assert command(packet("O", body + b"\x00"), strict=False) == Negotiate(6, 0x1FF, 0x1FFFFF)


def test_mail_rcpt_arguments_are_one_string_each_P_CMD_5_P_STR_2():
    mail = command(packet("M", b"<a@b>\x00SIZE=1\x00BODY=8BITMIME\x00"))
    assert mail == Mail("<a@b>", ("SIZE=1", "BODY=8BITMIME"))
    assert command(packet("M", b"<>\x00")) == Mail("<>")
    assert Rcpt("<b@c>", ("NOTIFY=NEVER",)).encode() == packet("R", b"<b@c>\x00NOTIFY=NEVER\x00")


@pytest.mark.parametrize("letter", ["M", "R"])
def test_mail_rcpt_trailing_bytes_strict_closes_lenient_drops_P_BAD_12_P_BAD_13(letter):
    with pytest.raises(MalformedPacket):
        command(packet(letter, b"<a@b>"))                      # no NUL at all: close in both modes
    with pytest.raises(MalformedPacket):
        command(packet(letter, b"<a@b>"), strict=False)
    with pytest.raises(MalformedPacket) as error:
        command(packet(letter, b"<a@b>\x00SIZE"))
    assert error.value.rule == "P-BAD-13"
    lenient = command(packet(letter, b"<a@b>\x00SIZE"), strict=False)
    assert (lenient.address, lenient.args) == ("<a@b>", ())


def test_header_layout_P_CMD_8_P_BAD_14_P_BAD_15():
    assert command(packet("L", b"X-Empty\x00\x00")) == Header("X-Empty", "")
    assert command(packet("L", b"X-F\x00a\n\tb\x00")).value == "a\n\tb"     # bare LF folding kept
    with pytest.raises(MalformedPacket):
        command(packet("L", b"Subject\x00"))
    with pytest.raises(MalformedPacket):
        command(packet("L", b"Subject\x00Hello"))
    with pytest.raises(MalformedPacket) as error:
        command(packet("L", b"a\x00b\x00c\x00"))
    assert error.value.rule == "P-BAD-15"
    assert command(packet("L", b"a\x00b\x00c\x00"), strict=False) == Header("a", "b")


def test_eight_bit_data_round_trips_losslessly_P_STR_4():
    raw = b"X-8bit\x00caf\xc3\xa9 \xff\xfe\x00"
    header = command(packet("L", raw))
    assert header.value == "caf\u00e9 \udcff\udcfe"
    assert header.encode() == packet("L", raw)


@pytest.mark.parametrize("data, valid", [
    (b"host\x004\x00\x19192.0.2.1\x00", True),
    (b"host\x006\x00\x192001:db8::1\x00", True),
    (b"host\x006\x00\x19IPv6:2001:db8::1\x00", True),
    (b"host\x006\x00\x19ipv6:2001:db8::1\x00", True),            # prefix is case-insensitive (P-CON-4)
    (b"host\x006\x00\x19[IPv6:2001:db8::1]\x00", True),          # bracketed form accepted (P-CON-4)
    (b"host\x00L\x00\x00/run/s.sock\x00", True),
    (b"host\x00L\x00\x00\x00", True),                            # empty unix path is legal
    (b"host\x00U", True),
    (b"host\x004\x00\x19192.0.2.1", False),                      # address without NUL
    (b"host\x004\x00\x19192.0.2.1\x00x", False),                 # address not last
    (b"host\x004\x00\x19\x00", False),                           # empty IPv4
    (b"host\x004\x00\x192001:db8::1\x00", False),                # IPv6 under family 4
    (b"host\x006\x00\x19192.0.2.1\x00", False),                  # IPv4 under family 6
    (b"host\x004\x00", False),                                   # short port
    (b"host\x004", False),                                       # no port at all
    (b"host\x00X\x00\x19a\x00", False),                          # unknown family
    (b"host\x00", False),                                        # no family
    (b"host", False),                                            # host name without NUL
])
def test_connect_validation_P_CON_5_P_BAD_16(data, valid):
    if valid:
        message = command(packet("C", data))
        assert message.encode() == packet("C", data)
    else:
        with pytest.raises(MalformedPacket):
            command(packet("C", data))


def test_connect_family_u_with_data_strict_closes_P_CON_1():
    with pytest.raises(MalformedPacket):
        command(packet("C", b"host\x00U\x00\x00"))
    assert command(packet("C", b"host\x00U\x00\x00"), strict=False) == Connect("host", "U")


def test_connect_port_is_big_endian_and_ip_strips_prefix_P_CON_2_P_CON_4():
    message = command(packet("C", b"h\x006\xc3\x50IPv6:2001:db8::10\x00"))
    assert message.port == 50000
    assert message.ip == "2001:db8::10"
    assert message.address == "IPv6:2001:db8::10"
    assert Connect("h", "4", 25, "192.0.2.1").encode() == packet("C", b"h\x004\x00\x19192.0.2.1\x00")


def test_macro_packet_layout_P_MAC_1_P_BAD_17_P_BAD_18():
    assert command(packet("D", b"H")) == Macro("H", ())
    with pytest.raises(MalformedPacket) as error:
        command(packet("D"))
    assert error.value.rule == "P-BAD-17"
    odd = command(packet("D", b"Ca\x001\x00b\x00"))
    assert odd.macros == (("a", "1"),) and odd.dropped
    tail = command(packet("D", b"Ca\x001\x00b"))
    assert tail.macros == (("a", "1"),) and tail.dropped
    both = command(packet("D", b"Ca\x00"), strict=False)
    assert both.macros == () and both.dropped
    dup = command(packet("D", b"Ca\x001\x00a\x002\x00"))
    assert dup.as_dict() == {"a": "2"}                          # last one wins (P-MAC-4)


# ---------------------------------------------------------------------------------------------------------
# replies (P-RPL-*, P-MOD-*, P-BAD-30 .. P-BAD-43)


@pytest.mark.parametrize("letter", list("cartdsp4f"))
def test_data_on_payloadless_replies_is_malformed_P_RPL_14_P_BAD_36(letter):
    assert reply(packet(letter)).LETTER == letter
    with pytest.raises(MalformedPacket):
        reply(packet(letter, b"\x00"))


def test_negotiate_reply_layout_P_NEG_3_P_NEG_13_P_BAD_34():
    base = struct.pack(">III", 6, 0x101, 0)
    assert reply(packet("O", base)) == NegotiateReply(6, 0x101, 0)
    with pytest.raises(MalformedPacket):
        reply(packet("O", base[:11]))
    lists = base + struct.pack(">I", 0) + b"j {x}\x00" + struct.pack(">I", 6) + b"\x00"
    assert reply(packet("O", lists)).macro_lists == ((0, "j {x}"), (6, ""))
    with pytest.raises(MalformedPacket):
        reply(packet("O", base + b"\x00\x00\x00"))              # truncated stage number
    with pytest.raises(MalformedPacket):
        reply(packet("O", base + struct.pack(">I", 0) + b"j"))  # missing NUL


def test_header_modifications_layout_P_MOD_3_P_MOD_4_P_MOD_5_P_BAD_39_P_BAD_42():
    assert reply(packet("h", b"X-A\x00\x00")) == AddHeader("X-A", "")                   # empty value allowed
    with pytest.raises(MalformedPacket):
        reply(packet("h", b"\x00v\x00"))                                              # empty name
    with pytest.raises(MalformedPacket):
        reply(packet("h", b"X-A\x00v"))                                               # missing NUL
    with pytest.raises(MalformedPacket):
        reply(packet("h", b"X-A\x00v\x00extra\x00"))                                  # left-over data
    assert reply(packet("i", b"\x7f\xff\xff\xffX\x00v\x00")) == InsertHeader(0x7FFFFFFF, "X", "v")
    for letter in ("i", "m"):
        with pytest.raises(MalformedPacket) as error:
            reply(packet(letter, b"\x80\x00\x00\x00X\x00v\x00"))
        assert error.value.rule == "P-MOD-5a"
        with pytest.raises(MalformedPacket):
            reply(packet(letter, b"\x00\x00\x01"))                                    # index truncated
        with pytest.raises(MalformedPacket):
            reply(packet(letter, b"\x00\x00\x00\x01\x00v\x00"))                       # empty name
    assert reply(packet("m", b"\x00\x00\x00\x01Subject\x00\x00")) == ChangeHeader(1, "Subject", "")


def test_recipient_and_sender_modifications_layout_P_MOD_7_to_P_MOD_10():
    assert reply(packet("2", b"<a>\x00")) == AddRcptWithParameters("<a>", None)        # libmilter's form
    assert reply(packet("2", b"<a>\x00NOTIFY=NEVER ORCPT=x\x00")).args == "NOTIFY=NEVER ORCPT=x"
    assert reply(packet("e", b"<>\x00")) == ChangeFrom("<>")
    for letter in ("2", "e"):
        with pytest.raises(MalformedPacket):
            reply(packet(letter, b"<a>\x00A=1\x00B=2\x00"))                            # at most ONE arg string
        with pytest.raises(MalformedPacket):
            reply(packet(letter, b"\x00"))                                             # empty address
    for letter in ("+", "-"):
        with pytest.raises(MalformedPacket):
            reply(packet(letter, b"<a>\x00x\x00"))                                     # left-over data
        with pytest.raises(MalformedPacket):
            reply(packet(letter, b"\x00"))
        with pytest.raises(MalformedPacket):
            reply(packet(letter))


def test_quarantine_reason_must_be_non_empty_P_RPL_10():
    assert reply(packet("q", b"why\x00")) == Quarantine("why")
    with pytest.raises(MalformedPacket):
        reply(packet("q", b"\x00"))


def test_replace_body_is_raw_and_may_be_empty_P_MOD_11():
    assert reply(packet("b")) == ReplaceBody(b"")
    assert reply(packet("b", b"a\x00\r\n")) == ReplaceBody(b"a\x00\r\n")


def test_reply_code_packet_is_validated_on_decode_P_CODE_1_P_BAD_40():
    assert reply(packet("y", b"550 5.7.1 no\x00")).text == "550 5.7.1 no"
    for bad in (b"550 5.7.1 no", b"550 5.7.1 a\x00b\x00", b"250 ok\x00", b"\x00"):
        with pytest.raises(MalformedPacket):
            reply(packet("y", bad))


# ---------------------------------------------------------------------------------------------------------
# chunk_body (P-BODY-1, P-BODY-3, P-BODY-6)


def test_chunk_body_fills_65535_byte_chunks_P_BODY_1():
    body = bytes(range(256)) * 600                                # 153600 bytes
    chunks = chunk_body(body)
    assert [len(c) for c in chunks] == [65535, 65535, 153600 - 2 * 65535]
    assert b"".join(chunks) == body
    assert BODY_CHUNK_SIZE == 65535


def test_chunk_body_exact_multiple_and_small_P_BODY_1():
    assert chunk_body(b"x" * 65535) == [b"x" * 65535]
    assert [len(c) for c in chunk_body(b"x" * 131070)] == [65535, 65535]
    assert chunk_body(b"a\r\nb", 2) == [b"a\r", b"\nb"]            # CRLF may be split (P-BODY-1)


def test_chunk_body_empty_body_sends_no_chunk_P_BODY_3():
    assert chunk_body(b"") == []


@pytest.mark.parametrize("size", [0, -1, 65536])
def test_chunk_body_refuses_sizes_outside_1_to_65535_P_BODY_6(size):
    with pytest.raises(LocalProtocolError):
        chunk_body(b"abc", size)


def test_chunk_body_chunks_encode_as_body_packets_P_CMD_10():
    for chunk in chunk_body(b"q" * 70000):
        data = Body(chunk).encode()
        assert struct.unpack(">I", data[:4])[0] == len(chunk) + 1 and data[4:5] == b"B"
        assert len(chunk) <= MAX_DATA_SIZE_DEFAULT
