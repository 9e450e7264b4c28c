"""Macro values as the milter side sees them (P-MAC-*)."""

from __future__ import annotations

import pytest

from milterman.protocol import (ABORT, COMMAND_TYPES, CONTINUE, DATA, QUIT, QUIT_NEW_CONNECTION, Connect, Helo,
                                Macro, MacroStore, Mail, MilterState, Negotiate, Rcpt, decode_one, strip_braces,
                                wire_macro_name)


def test_strip_and_add_braces_P_MAC_5():
    assert strip_braces("{daemon_name}") == "daemon_name"
    assert strip_braces("{i}") == "i"
    assert strip_braces("i") == "i"
    assert strip_braces("{}") == "{}"
    assert wire_macro_name("i") == "i"
    assert wire_macro_name("daemon_name") == "{daemon_name}"
    assert wire_macro_name("{daemon_name}") == "{daemon_name}"


def test_lookup_with_or_without_braces_P_MAC_5():
    store = MacroStore()
    message = decode_one(bytes.fromhex("0000002444436a006d782e6578616d706c652e6e6574007b6461656d6f6e5f6e616d657d"
                                       "006d7800"), COMMAND_TYPES)
    store.define(message.stage, message.macros)
    for name in ("j", "{j}", "daemon_name", "{daemon_name}"):
        assert store.get(name) is not None, name
    assert store.get("{j}") == "mx.example.net"
    assert store.get("daemon_name") == "mx"


def test_single_character_name_sent_braced_is_found_bare_P_MAC_5():
    payload = b"C{i}\x00Q1\x00"
    message = decode_one(len(payload + b"D").to_bytes(4, "big") + b"D" + payload, COMMAND_TYPES)
    assert message.macros == (("i", "Q1"),)
    store = MacroStore()
    store.define("C", message.macros)
    assert store.get("i") == store.get("{i}") == "Q1"


def test_stage_values_are_replaced_as_a_whole_P_MAC_6():
    store = MacroStore()
    store.define("M", (("i", "1"), ("mail_addr", "a@b")))
    store.define("M", (("i", "2"),))
    assert store.get("i") == "2"
    assert store.get("mail_addr") is None
    store.define("M", ())                                # an empty D empties the stage
    assert store.get("i") is None
    assert store.stage("M") == {}


def test_lookup_searches_newest_stage_first_P_MAC_6():
    store = MacroStore()
    for letter in "CHMRTNE":
        store.define(letter, (("x", letter),))
    assert store.get("x") == "E"
    for letter, expected in zip("ENTRMH", "NTRMHC", strict=True):
        store.define(letter, ())          # empty the newest stage: the next older one shows through
        assert store.get("x") == expected
    assert store.get("missing", "dflt") == "dflt"


def test_postfix_l_and_b_stages_are_stored_P_MAC_2():
    store = MacroStore()
    assert store.define("L", (("i", "Q"),)) is True
    assert store.define("B", (("i", "Q"),)) is True
    assert store.define("U", ()) is True
    assert store.get("i") == "Q"


@pytest.mark.parametrize("letter", ["Z", "A", "K", "x", "\udcff"])
def test_unknown_stage_is_ignored_P_MAC_2_P_BAD_18(letter):
    store = MacroStore()
    assert store.define(letter, (("x", "1"),)) is False
    assert store.get("x") is None
    assert store.merged() == {}


@pytest.mark.parametrize("command, cleared, kept", [
    ("C", "UHMRTLNBE", ""),
    ("H", "MRTLNBE", "CU"),
    ("M", "RTLNBE", "CUHM"),
    ("R", "TLNBE", "CUHMR"),
    ("A", "MRTLNBE", "CUH"),
])
def test_commands_clear_later_stages_P_MAC_6(command, cleared, kept):
    store = MacroStore()
    for letter in "CUHMRTLNBE":
        store.define(letter, ((f"m{letter}", letter),))
    store.command_arrived(command)
    for letter in cleared:
        assert store.get(f"m{letter}") is None, letter
    for letter in kept + (command if command != "A" else ""):
        assert store.get(f"m{letter}") == letter, letter


def test_merged_view_newer_shadows_older_P_MAC_6():
    store = MacroStore()
    store.define("C", (("a", "1"), ("b", "1")))
    store.define("M", (("b", "2"),))
    assert store.merged() == {"a": "1", "b": "2"}


def _negotiated() -> MilterState:
    offer = Negotiate(6, 0x1FF, 0x1FFFFF)
    state = MilterState()
    state.receive(offer)
    state.negotiate(offer)
    return state


def test_milter_state_applies_macro_scope_P_MAC_3_P_MAC_6():
    state = _negotiated()
    state.receive(Macro("C", (("j", "mx"),)))
    state.receive(Connect("h", "U"))
    state.check_send(CONTINUE)
    state.receive(Macro("H", (("tls_version", "TLSv1.3"),)))     # macros for a suppressed event still count
    state.receive(Macro("M", (("mail_addr", "a@b"),)))
    state.receive(Mail("<a@b>"))
    state.check_send(CONTINUE)
    state.receive(Macro("R", (("rcpt_addr", "c@d"),)))
    state.receive(Rcpt("<c@d>"))
    state.check_send(CONTINUE)
    assert state.macros.get("rcpt_addr") == "c@d" and state.macros.get("j") == "mx"
    state.receive(ABORT)                                        # ends the message: message macros go
    assert state.macros.get("rcpt_addr") is None and state.macros.get("mail_addr") is None
    assert state.macros.get("j") == "mx" and state.macros.get("tls_version") == "TLSv1.3"
    state.receive(Macro("M", (("mail_addr", "x@y"),)))
    state.receive(Mail("<x@y>"))
    state.check_send(CONTINUE)
    state.receive(Helo("again"))                                 # HELO clears MAIL and later
    state.check_send(CONTINUE)
    assert state.macros.get("mail_addr") is None and state.macros.get("j") == "mx"


@pytest.mark.parametrize("end", [QUIT, QUIT_NEW_CONNECTION])
def test_quit_and_quit_nc_clear_every_macro_P_MAC_6_P_CMD_14(end):
    state = _negotiated()
    state.receive(Macro("C", (("j", "mx"),)))
    state.receive(end)
    assert state.macros.get("j") is None


def test_unknown_stage_in_milter_state_is_logged_not_fatal_P_BAD_18():
    state = _negotiated()
    assert state.receive(Macro("Z", (("x", "1"),))) is False
    assert state.macros.get("x") is None
    assert any("P-BAD-18" in warning for warning in state.warnings)
    assert state.receive(Connect("h", "U")) is True


def test_macro_before_data_is_kept_for_data_P_MAC_3():
    state = _negotiated()
    state.receive(Connect("h", "U"))
    state.check_send(CONTINUE)
    state.receive(Mail("<a>"))
    state.check_send(CONTINUE)
    state.receive(Rcpt("<b>"))
    state.check_send(CONTINUE)
    state.receive(Macro("T", (("i", "QID"),)))
    state.receive(DATA)
    assert state.macros.get("i") == "QID"


# ---------------------------------------------------------------------------------------------------------
# P-NEG-14 the MTA side sends what the milter asked for


def test_macro_packet_without_a_request_sends_everything_sorted_P_NEG_14():
    from milterman.protocol.macros import macro_packet

    packet = macro_packet(None, "C", {"{j}": "mx", "daemon_name": "d", "_": "c"})
    assert packet.stage == "C" and packet.macros == (("_", "c"), ("daemon_name", "d"), ("j", "mx"))
    assert macro_packet(None, "C", {}) is None


def test_macro_packet_filters_by_the_milters_list_P_NEG_14():
    from milterman.protocol import Action, Step
    from milterman.protocol.macros import macro_packet
    from milterman.protocol.negotiation import Options

    options = Options(6, Action.SET_SYMBOL_LIST, Step.NONE, ((0, "{daemon_name} j"), (2, "")))
    packet = macro_packet(options, "C", [("daemon_name", "d"), ("{j}", "mx"), ("_", "c")])
    assert packet.macros == (("daemon_name", "d"), ("j", "mx"))
    assert macro_packet(options, "M", {"i": "Q1"}) is None  # an empty list asks for none
    assert macro_packet(options, "H", {"i": "Q1"}).macros == (("i", "Q1"),)  # no list: the MTA's default
