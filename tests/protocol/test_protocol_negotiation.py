"""Option negotiation on both sides (P-NEG-*)."""

from __future__ import annotations

import pytest

from milterman.protocol import (MAX_DATA_SIZE_1M, MAX_DATA_SIZE_DEFAULT, Action, LocalProtocolError, MilterState,
                                MtaState, Negotiate, NegotiateReply, NegotiationError, Options, Step, answer_offer,
                                check_reply)
from milterman.protocol.flags import CAPABILITY_STEPS, NO_REPLY_STEPS, SKIP_STEPS

POSTFIX_V6 = Negotiate(6, 0x1FF, 0x1FFFFF)
POSTFIX_V4 = Negotiate(4, 0x1FF, 0x37F)
POSTFIX_V3 = Negotiate(3, 0x1FF, 0x17F)
POSTFIX_V2 = Negotiate(2, 0x1FF, 0x7F)
POSTFIX_25 = Negotiate(2, 0x13F, 0x7F)
SENDMAIL_256K = Negotiate(6, 0x1FF, 0x101FFFFF)

ALL_BITS = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------------------
# P-NEG-4 versions (milter side)


@pytest.mark.parametrize("offered, answered", [(2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 6), (0xFFFFFFFF, 6)])
def test_version_is_min_of_ours_and_offer_P_NEG_4(offered, answered):
    reply, options = answer_offer(Negotiate(offered, 0x1FF, 0x1FFFFF))
    assert reply.version == answered and options.version == answered


def test_version_is_capped_by_max_version_P_NEG_4():
    reply, _ = answer_offer(POSTFIX_V6, max_version=4)
    assert reply.version == 4


@pytest.mark.parametrize("offered", [0, 1])
def test_version_below_2_closes_P_NEG_4_P_BAD_7(offered):
    with pytest.raises(NegotiationError) as error:
        answer_offer(Negotiate(offered, 0x3F, 0x7F))
    assert error.value.rule == "P-BAD-7"


# ---------------------------------------------------------------------------------------------------------
# P-NEG-8 computing the reply: every kind of bit is masked by the offer


def test_zero_offer_means_libmilter_v1_defaults_P_NEG_8_step_2():
    reply, options = answer_offer(Negotiate(2, 0, 0), actions=ALL_BITS, protocol=ALL_BITS)
    assert reply.actions == Action.V1 == 0x0F
    assert reply.protocol == Step.V1 == 0x3F


def test_required_actions_not_offered_close_P_NEG_8_step_3_P_BAD_8():
    with pytest.raises(NegotiationError) as error:
        answer_offer(POSTFIX_25, required_actions=Action.CHANGE_FROM)
    assert error.value.rule == "P-BAD-8"
    reply, _ = answer_offer(POSTFIX_V6, required_actions=Action.CHANGE_FROM, actions=Action.CHANGE_FROM)
    assert reply.actions & Action.CHANGE_FROM


def test_actions_are_masked_by_the_offer_P_NEG_8_step_3():
    reply, options = answer_offer(POSTFIX_25, actions=Action.ALL)
    assert reply.actions == 0x13F
    assert options.actions == 0x13F
    assert reply.actions & ~POSTFIX_25.actions == 0


def test_skip_bits_not_offered_are_removed_P_NEG_8_step_4():
    # a v2 offer (0x7f) cannot suppress DATA or UNKNOWN: NODATA and NOUNKNOWN are dropped
    reply, options = answer_offer(POSTFIX_V2, protocol=Step.NO_DATA | Step.NO_UNKNOWN | Step.NO_HELO)
    assert reply.protocol == Step.NO_HELO
    # any other skip bit not offered is dropped too
    reply, _ = answer_offer(Negotiate(6, 0x1FF, 0x1FFFFF & ~Step.NO_BODY), protocol=SKIP_STEPS)
    assert reply.protocol == SKIP_STEPS & ~Step.NO_BODY


def test_no_reply_bits_not_offered_are_removed_P_NEG_8_step_5():
    reply, options = answer_offer(POSTFIX_V2, protocol=NO_REPLY_STEPS)
    assert reply.protocol == 0                     # v2 offer 0x7f has no NR bits (0x80 not offered)
    assert options.answered >= set("CHMRLNBE")
    reply, _ = answer_offer(Negotiate(2, 0x1FF, 0xFF), protocol=NO_REPLY_STEPS)  # no_header_reply offered
    assert reply.protocol == Step.NO_REPLY_HEADER


def test_capability_bits_not_offered_are_removed_P_NEG_8_step_6():
    reply, _ = answer_offer(POSTFIX_V4, protocol=CAPABILITY_STEPS)
    assert reply.protocol == 0
    reply, _ = answer_offer(POSTFIX_V6, protocol=CAPABILITY_STEPS)
    assert reply.protocol == CAPABILITY_STEPS == Step.SKIP | Step.RCPT_REJECTED | Step.HEADER_LEADING_SPACE


def test_undefined_and_internal_bits_are_never_echoed_P_NEG_8_step_8():
    offer = Negotiate(6, 0x1FF, ALL_BITS)
    reply, _ = answer_offer(offer, protocol=ALL_BITS & ~(Step.MDS_256K | Step.MDS_1M))
    assert reply.protocol == Step.ALL                      # 0x1fffff: nothing from 0x00e00000..0xf0000000
    assert reply.protocol & 0x40000000 == 0 and reply.protocol & 0x80000000 == 0


@pytest.mark.parametrize("offer", [POSTFIX_V6, POSTFIX_V4, POSTFIX_V3, POSTFIX_V2, POSTFIX_25, SENDMAIL_256K,
                                   Negotiate(6, 0x1FF, 0x301FFFFF), Negotiate(6, 0x3, 0x3)])
def test_final_invariant_reply_within_offer_P_NEG_8_step_8(offer):
    reply, options = answer_offer(offer, actions=ALL_BITS, protocol=ALL_BITS, macro_lists=((0, "j"),))
    assert reply.actions & ~offer.actions == 0
    assert reply.protocol & ~offer.protocol == 0
    # and the MTA side accepts exactly what the milter side computed
    checked, warnings = check_reply(offer, reply)
    assert checked == options and warnings == []
    assert checked.sent == options.sent and checked.answered == options.answered


# ---------------------------------------------------------------------------------------------------------
# P-NEG-12 MDS


@pytest.mark.parametrize("offered, wanted, echoed", [
    (0, Step.MDS_256K, 0),                                   # never echo a bit that was not offered
    (0, Step.MDS_1M, 0),
    (Step.MDS_256K, Step.MDS_256K, Step.MDS_256K),
    (Step.MDS_256K, Step.MDS_1M, 0),
    (Step.MDS_256K, Step.MDS_256K | Step.MDS_1M, Step.MDS_256K),
    (Step.MDS_1M, Step.MDS_256K | Step.MDS_1M, Step.MDS_1M),
    (Step.MDS_256K | Step.MDS_1M, Step.MDS_256K | Step.MDS_1M, Step.MDS_1M),  # at most one bit
    (Step.MDS_256K | Step.MDS_1M, Step.MDS_256K, Step.MDS_256K),
    (Step.MDS_256K | Step.MDS_1M, 0, 0),                      # not wanted: not echoed
])
def test_mds_echo_rules_P_NEG_12(offered, wanted, echoed):
    reply, options = answer_offer(Negotiate(6, 0x1FF, 0x1FFFFF | offered), protocol=wanted)
    assert reply.protocol & (Step.MDS_256K | Step.MDS_1M) == echoed
    assert options.max_data_size == {0: MAX_DATA_SIZE_DEFAULT, Step.MDS_256K: 262143,
                                     Step.MDS_1M: MAX_DATA_SIZE_1M}[echoed]


def test_sendmail_mds_vector_reply_P_NEG_12():
    reply, _ = answer_offer(SENDMAIL_256K, actions=Action.ADD_HEADERS, protocol=Step.MDS_256K)
    assert reply.encode() == bytes.fromhex("0000000d4f000000060000000110000000")


def test_mta_side_refuses_mds_bit_it_did_not_offer_P_NEG_12():
    with pytest.raises(NegotiationError):
        check_reply(POSTFIX_V6, NegotiateReply(6, 0, Step.MDS_256K))
    options, _ = check_reply(SENDMAIL_256K, NegotiateReply(6, 0, Step.MDS_256K))
    assert options.max_data_size == 262143


# ---------------------------------------------------------------------------------------------------------
# P-NEG-13 macro lists


def test_macro_lists_are_sent_when_setsymlist_offered_P_NEG_13():
    lists = ((0, "{client_addr} {client_name}"), (1, ""), (6, "i"))
    reply, options = answer_offer(POSTFIX_V6, actions=Action.ADD_HEADERS, macro_lists=lists)
    assert reply.macro_lists == lists
    assert reply.actions == Action.ADD_HEADERS | Action.SET_SYMBOL_LIST
    assert reply.encode() == bytes.fromhex(
        "000000384f000000060000010100000000000000007b636c69656e745f616464727d207b636c69656e745f6e616d657d"
        "000000000100000000066900")
    assert options.macro_request("C") == ("client_addr", "client_name")  # names normalised without braces (P-MAC-5)
    assert options.macro_request("H") == ()          # empty string = send none (Sendmail reading, P-NEG-14)
    assert options.macro_request("N") == ("i",)     # stage 6 is end-of-header (not SMTP order)
    assert options.macro_request("E") is None       # no list: the MTA's default


@pytest.mark.parametrize("offer", [Negotiate(6, 0xFF, 0x1FFFFF), POSTFIX_V4, Negotiate(6, 0, 0)])
def test_no_macro_lists_without_setsymlist_or_before_v6_P_NEG_13(offer):
    reply, options = answer_offer(offer, actions=Action.ADD_HEADERS, macro_lists=((0, "j"),))
    assert reply.macro_lists == () and options.macro_lists == ()
    assert not reply.actions & Action.SET_SYMBOL_LIST
    assert len(reply.payload()) == 12


def test_macro_request_accepts_commas_P_NEG_14():
    options = Options(6, Action.NONE, Step.NONE, ((2, "i,{mail_addr}  {auth_type}"),))
    assert options.macro_request("M") == ("i", "mail_addr", "auth_type")


# ---------------------------------------------------------------------------------------------------------
# P-NEG-9 validating the reply (MTA side)


@pytest.mark.parametrize("version", [0, 1, 7])
def test_check_reply_refuses_bad_versions_P_NEG_9_P_BAD_31(version):
    with pytest.raises(NegotiationError):
        check_reply(POSTFIX_V6, NegotiateReply(version, 0, 0))
    with pytest.raises(NegotiationError):
        check_reply(POSTFIX_V6, NegotiateReply(version, 0, 0), strict=False)


def test_check_reply_refuses_version_above_a_lower_offer_P_NEG_9():
    with pytest.raises(NegotiationError):
        check_reply(POSTFIX_V4, NegotiateReply(6, 0, 0))
    options, _ = check_reply(POSTFIX_V4, NegotiateReply(2, 0, 0))
    assert options.version == 2


def test_check_reply_refuses_actions_not_offered_in_both_modes_P_NEG_9_P_BAD_32():
    for strict in (True, False):
        with pytest.raises(NegotiationError):
            check_reply(POSTFIX_25, NegotiateReply(2, Action.CHANGE_FROM, 0), strict=strict)


def test_check_reply_protocol_bits_strict_fails_lenient_masks_P_NEG_9_P_BAD_33():
    extra = NegotiateReply(4, 0, Step.NO_HELO | Step.NO_REPLY_HELO)   # NR_HELO is not in the v4 offer 0x37f
    with pytest.raises(NegotiationError) as error:
        check_reply(POSTFIX_V4, extra)
    assert error.value.rule == "P-BAD-33"
    options, warnings = check_reply(POSTFIX_V4, extra, strict=False)
    assert options.protocol == Step.NO_HELO
    assert len(warnings) == 1 and "0x2000" in warnings[0]


def test_mta_state_lenient_masks_and_records_warning_P_NEG_9():
    state = MtaState(POSTFIX_V4, strict=False)
    state.send(POSTFIX_V4)
    assert state.receive(NegotiateReply(4, 0, Step.NO_HELO | Step.NO_REPLY_HELO)) is True
    assert state.options.protocol == Step.NO_HELO
    assert state.warnings
    strict = MtaState(POSTFIX_V4)
    strict.send(POSTFIX_V4)
    with pytest.raises(NegotiationError):
        strict.receive(NegotiateReply(4, 0, Step.NO_HELO | Step.NO_REPLY_HELO))


def test_check_reply_skips_unknown_macro_stage_with_warning_P_NEG_14_P_BAD_34():
    reply = NegotiateReply(6, Action.SET_SYMBOL_LIST, 0, ((0, "j"), (7, "x"), (0xFFFFFFFF, "y"), (5, "i")))
    options, warnings = check_reply(POSTFIX_V6, reply)
    assert options.macro_lists == ((0, "j"), (5, "i"))
    assert len(warnings) == 2
    assert options.macro_request("E") == ("i",)      # stage 5 is end-of-message


# ---------------------------------------------------------------------------------------------------------
# P-NEG-10 / P-NEG-11 effective behaviour


@pytest.mark.parametrize("version, sent_extra", [(2, set()), (3, {"U"}), (4, {"U", "T"}), (5, {"U", "T"}),
                                                 (6, {"U", "T", "K"})])
def test_version_gates_events_P_NEG_11(version, sent_extra):
    options = Options(version, Action.NONE, Step.NONE)
    assert options.sent == set("ODEAQCHMRLNB") | sent_extra
    assert options.answered == set("OECHMRLNB") | (sent_extra - {"K"})


def test_skip_and_no_reply_bits_decide_sent_and_answered_P_NEG_10():
    options = Options(6, Action.NONE, Step.NO_HELO | Step.NO_REPLY_HELO | Step.NO_REPLY_RCPT | Step.NO_BODY)
    assert "H" not in options.sent and "H" not in options.answered
    assert "R" in options.sent and "R" not in options.answered
    assert "B" not in options.sent
    assert "E" in options.answered                    # EOM is always answered
    for letter in "DAQK":
        assert letter not in options.answered


def test_every_skip_bit_matches_its_event_P_NEG_6():
    pairs = {"C": Step.NO_CONNECT, "H": Step.NO_HELO, "M": Step.NO_MAIL, "R": Step.NO_RCPT, "B": Step.NO_BODY,
             "L": Step.NO_HEADERS, "N": Step.NO_END_OF_HEADER, "U": Step.NO_UNKNOWN, "T": Step.NO_DATA}
    for letter, bit in pairs.items():
        options = Options(6, Action.NONE, bit)
        assert options.sent == set("ODEAQKCHMRTLNBU") - {letter}, letter
    no_reply = {"C": Step.NO_REPLY_CONNECT, "H": Step.NO_REPLY_HELO, "M": Step.NO_REPLY_MAIL,
                "R": Step.NO_REPLY_RCPT, "T": Step.NO_REPLY_DATA, "L": Step.NO_REPLY_HEADER,
                "N": Step.NO_REPLY_END_OF_HEADER, "B": Step.NO_REPLY_BODY, "U": Step.NO_REPLY_UNKNOWN}
    for letter, bit in no_reply.items():
        options = Options(6, Action.NONE, bit)
        assert options.answered == set("OECHMRTLNBU") - {letter}, letter
        assert letter in options.sent


def test_capability_properties_P_NEG_10():
    options = Options(6, Action.NONE, Step.SKIP | Step.RCPT_REJECTED | Step.HEADER_LEADING_SPACE)
    assert options.skip_allowed and options.rcpt_rejected and options.header_leading_space
    none = Options(6, Action.NONE, Step.NONE)
    assert not (none.skip_allowed or none.rcpt_rejected or none.header_leading_space)


# ---------------------------------------------------------------------------------------------------------
# MilterState.negotiate


def test_milter_state_negotiate_settles_options_once_P_NEG_1():
    state = MilterState()
    assert state.receive(POSTFIX_V6) is True
    reply = state.negotiate(POSTFIX_V6, actions=Action.ADD_HEADERS, protocol=Step.NO_HELO)
    assert reply == NegotiateReply(6, Action.ADD_HEADERS, Step.NO_HELO)
    assert state.options.protocol == Step.NO_HELO
    with pytest.raises(LocalProtocolError):
        state.negotiate(POSTFIX_V6)


def test_milter_state_negotiate_failure_keeps_connection_unusable_P_NEG_15():
    state = MilterState()
    state.receive(Negotiate(1, 0, 0))
    with pytest.raises(NegotiationError):
        state.negotiate(Negotiate(1, 0, 0))
    assert state.options is None
