"""What the milter side's decoder keeps as received: macro packets read lazily, body chunks not copied again.

The MTA's macro packet is stored whole and parsed only when a value is asked for; ``packet()`` gives it
back byte for byte (P-MAC-1, P-MAC-5, P-MAC-6); the values and the tolerated mistakes stay as before (P-BAD-18).
"""

from __future__ import annotations

import random
import struct

import pytest

from milterman.protocol import (ABORT, COMMAND_TYPES, CONTINUE, Body, CommandDecoder, Decoder, Helo, Macro,
                                MacroStore, MalformedPacket, MilterState, Negotiate, ReceivedMacro, decode_one)


def packet(letter: str, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + letter.encode("latin-1") + data


def received(data: bytes) -> list:
    decoder = CommandDecoder(strict=False)
    decoder.feed(data)
    return list(decoder)


def test_macro_packet_is_kept_as_sent_and_read_on_demand_P_MAC_1_P_MAC_5():
    wire = packet("D", b"C{daemon_name}\x00mx\x00j\x00host.example\x00{i}\x00Q1\x00")
    (macro,) = received(wire)
    assert isinstance(macro, ReceivedMacro) and macro.stage == "C"
    assert macro.encode() is wire                       # the block itself: no copy, no re-encoding
    assert macro == Macro("C", (("daemon_name", "mx"), ("j", "host.example"), ("i", "Q1")))
    assert Macro("C", (("daemon_name", "mx"), ("j", "host.example"), ("i", "Q1"))) == macro
    assert macro.dropped == ""
    store = MacroStore()
    assert store.receive(macro)
    assert store.packet("C") == wire
    assert store.get("{i}") == store.get("i") == "Q1" and store.get("daemon_name") == "mx"


@pytest.mark.parametrize("payload", [b"H", b"Ca\x001\x00b\x00", b"Ca\x001\x00b", b"Ca\x00", b"Ca\x00b",
                                     b"Ca\x001\x00a\x002\x00", b"C\xff\x00\xfe\x00"])
def test_lazy_read_equals_the_eager_one_P_BAD_18(payload):
    eager = decode_one(packet("D", payload), COMMAND_TYPES, strict=False)
    (lazy,) = received(packet("D", payload))
    assert type(eager) is Macro and isinstance(lazy, ReceivedMacro)
    assert (lazy.stage, lazy.macros, lazy.dropped) == (eager.stage, eager.macros, eager.dropped)
    assert lazy == eager and hash(lazy) == hash(eager)


def test_macro_packet_without_stage_is_refused_P_BAD_17():
    with pytest.raises(MalformedPacket) as error:
        received(packet("D"))
    assert error.value.rule == "P-BAD-17"


def _negotiated() -> MilterState:
    state = MilterState()
    state.receive(Negotiate(6, 0x1FF, 0))
    state.negotiate(Negotiate(6, 0x1FF, 0), actions=0, protocol=0)
    return state


def test_later_packet_replaces_and_commands_clear_P_MAC_6():
    state = _negotiated()
    first = packet("D", b"Cj\x00one\x00")
    second = packet("D", b"C{j}\x00two\x00")
    for wire in (first, second):
        for command in received(wire):
            state.receive(command)
    assert state.macros.packet("C") == second           # the later D for the stage replaces the earlier one
    values = state.macros.stage("C")
    assert values == {"j": "two"} and state.macros.stage("C") is values   # read once per packet
    for command in received(packet("D", b"Hi\x00h\x00") + packet("H", b"helo.example\x00")):
        state.receive(command)
    state.check_send(CONTINUE)
    assert state.macros.packet("H") is not None and state.macros.get("i") == "h"
    state.receive(received(packet("D", b"Mm\x00mail\x00"))[0])
    state.receive(received(packet("M", b"<a@b>\x00"))[0])
    state.check_send(CONTINUE)
    assert state.macros.get("m") == "mail"
    state.receive(ABORT)                                 # the message stages go
    assert state.macros.packet("M") is None and state.macros.get("m") is None
    assert state.macros.packet("C") == second and state.macros.packet("X") is None


def test_packet_of_constructed_macros_is_their_encoding():
    store = MacroStore()
    store.define("C", (("daemon_name", "mx"),))
    assert store.packet("C") == Macro("C", (("daemon_name", "mx"),)).encode()
    assert not store.define("Z", (("a", "b"),)) and store.packet("Z") is None     # unknown stage (P-BAD-18)


def test_body_chunk_that_was_the_whole_block_keeps_it_as_its_wire_form_P_CMD_10():
    wire = packet("B", b"x" * 65535)
    (body,) = received(wire)
    assert body == Body(b"x" * 65535) and body.encode() is wire
    two = received(wire + packet("B", b"yz"))           # several packets in one block: payload slices
    assert two == [Body(b"x" * 65535), Body(b"yz")] and two[1].encode() == packet("B", b"yz")
    with pytest.raises(MalformedPacket):
        received(packet("B"))


def test_any_split_of_the_stream_decodes_the_same_P_FRM_1():
    stream = b"".join([packet("O", struct.pack(">III", 6, 0x1FF, 0)), packet("D", b"Cj\x00mx\x00"),
                       packet("C", b"h\x004\x00\x19192.0.2.1\x00"), packet("H", b"helo\x00"),
                       packet("B", b"b" * 70000), packet("D", b"E"), packet("E"), packet("Q")])
    reference = Decoder(COMMAND_TYPES)
    reference.feed(stream)
    expected = list(reference)
    rng = random.Random(15)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 10)))
        decoder = CommandDecoder()
        got = []
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            decoder.feed(stream[start:end])
            if rng.random() < 0.6:
                got += list(decoder)
        got += list(decoder)
        assert got == expected and decoder.pending_bytes == 0
        assert [message.encode() for message in got] == [message.encode() for message in expected]
    assert isinstance(Helo("x"), type(expected[3]))
