"""What the manager offers each child and asks of the MTA (D-2, M-NEG-1, M-NEG-3, M-MAC-3): values only.

The children's options are the real :class:`~milterman.protocol.Options` a child's reply
settles (``check_reply``), so each case reads as "the MTA offered …, the children answered …".
"""

from __future__ import annotations

from milterman.manager.session.negotiation import child_offer, macro_lists, mta_request
from milterman.protocol import Action, MacroStage, Negotiate, NegotiateReply, Step, check_reply

FULL = Negotiate(6, int(Action.ALL), int(Step.ALL | Step.MDS_256K | Step.MDS_1M))


def settled(protocol: int = 0, actions: int = int(Action.ALL), lists=(), offer: Negotiate = FULL):
    """The options a child settles by answering ``offer`` with these values."""
    options, warnings = check_reply(offer, NegotiateReply(6, actions, protocol, tuple(lists)))
    assert warnings == []
    return options


def test_M_NEG_1_every_child_gets_the_mta_offer_with_the_version_capped_at_6():
    """M-NEG-1, D-2: the MTA's actions and protocol bits as offered, version min(offer, 6)."""
    assert child_offer(Negotiate(6, 0x1FF, 0x1FFFFF)) == Negotiate(6, 0x1FF, 0x1FFFFF)
    assert child_offer(Negotiate(7, 0x3F, 0x7F)) == Negotiate(6, 0x3F, 0x7F)
    assert child_offer(Negotiate(2, 0x0F, 0x3F)) == Negotiate(2, 0x0F, 0x3F)


def test_M_NEG_3_spec_example_with_the_py_fixes():
    """M-NEG-3's example (child 1: NR_CONN|NR_HDR|NOBODY, child 2: the same plus SKIP) under D-2: no
    no-reply bit reaches the MTA (M-NEG-3a), no-body survives because both children skip the body,
    skip because one child asked; the actions are the whole offer, as both children asked all of them."""
    alive = [settled(0x1090), settled(0x1490)]
    wanted = mta_request(FULL, alive, frozenset(), {})
    assert wanted.protocol == int(Step.NO_BODY | Step.SKIP)
    assert wanted.actions == int(Action.ALL)
    assert wanted.macro_lists == ()


def test_M_NEG_3b_actions_never_more_than_offered_nor_than_the_children_asked():
    """M-NEG-3b / D-2: actions = MTA offer ∩ OR of the children's requests."""
    offer = Negotiate(6, int(Action.ADD_HEADERS | Action.CHANGE_BODY), int(Step.ALL))
    alive = [settled(actions=int(Action.ADD_HEADERS), offer=offer), settled(actions=0, offer=offer)]
    assert mta_request(offer, alive, frozenset(), {}).actions == int(Action.ADD_HEADERS)


def test_D_2_an_event_is_skipped_only_when_every_child_skips_it_and_nothing_reads_it():
    """D-2: no-helo only when every child set it; a condition reading helo keeps it; MAIL always comes."""
    everything_off = int(Step.NO_HELO | Step.NO_MAIL | Step.NO_UNKNOWN)
    one = settled(everything_off, actions=0)
    other = settled(int(Step.NO_HELO | Step.NO_MAIL), actions=0)
    assert mta_request(FULL, [one, other], frozenset(), {}).protocol == int(Step.NO_HELO)
    assert mta_request(FULL, [one, other], frozenset({"H"}), {}).protocol == 0
    assert mta_request(FULL, [one], frozenset(), {}).protocol == int(Step.NO_HELO | Step.NO_UNKNOWN)


def test_M_EOM_3_headers_are_asked_for_when_header_edits_are_possible():
    """M-EOM-3: header edits are a diff against the MTA's headers, so no-headers is not asked then."""
    no_headers = int(Step.NO_HEADERS)
    assert mta_request(FULL, [settled(no_headers, actions=int(Action.ADD_HEADERS))], frozenset(), {}).protocol == 0
    assert mta_request(FULL, [settled(no_headers, actions=int(Action.CHANGE_BODY))], frozenset(),
                       {}).protocol == no_headers


def test_M_NEG_3a_D_2_no_reply_and_size_bits_never_go_to_the_mta_capabilities_when_one_child_asks():
    """M-NEG-3a: no-reply bits are never advertised; MDS bits neither; rcpt-rejected and
    header-leading-space when at least one child asked (D-2)."""
    asking = settled(int(Step.NO_REPLY_CONNECT | Step.NO_REPLY_BODY | Step.MDS_1M | Step.RCPT_REJECTED))
    plain = settled(int(Step.HEADER_LEADING_SPACE))
    wanted = mta_request(FULL, [asking, plain], frozenset(), {})
    assert wanted.protocol == int(Step.RCPT_REJECTED | Step.HEADER_LEADING_SPACE)


def test_M_NEG_4_without_a_negotiated_child_nothing_is_asked():
    """M-NEG-4 / D-2: no child negotiated: no action, no skip, no macro list (the fallback answers later)."""
    wanted = mta_request(FULL, [], frozenset({"C"}), {"C": ("v",)})
    assert (wanted.actions, wanted.protocol, wanted.macro_lists) == (0, 0, ())


def test_M_MAC_3_D_2_macro_lists_are_the_union_plus_what_conditions_read():
    """M-MAC-3, D-2: per stage the union of the children's names (in order, no duplicates) plus the
    names conditions and rules read; the set-symbol-list action is asked when offered."""
    one = settled(lists=[(int(MacroStage.CONNECT), "j {daemon_name}"), (int(MacroStage.MAIL), "{auth_type}")])
    two = settled(lists=[(int(MacroStage.CONNECT), "{daemon_name} _"), (int(MacroStage.MAIL), "")])
    lists = macro_lists([one, two], {"C": ("v", "j"), "M": ("auth_authen",)})
    assert lists == ((int(MacroStage.CONNECT), "j {daemon_name} _ v"),
                     (int(MacroStage.MAIL), "{auth_type} {auth_authen}"))
    wanted = mta_request(FULL, [one, two], frozenset(), {"C": ("v", "j"), "M": ("auth_authen",)})
    assert wanted.macro_lists == lists and wanted.actions & int(Action.SET_SYMBOL_LIST)


def test_M_MAC_3_no_list_where_a_child_relies_on_the_mta_defaults():
    """D-2: a stage where one child asked no list gets no list at all (that child needs the defaults)."""
    one = settled(lists=[(int(MacroStage.CONNECT), "j"), (int(MacroStage.HELO), "{tls_version}")])
    two = settled(lists=[(int(MacroStage.HELO), "{cert_subject}")])
    assert macro_lists([one, two], {}) == ((int(MacroStage.HELO), "{tls_version} {cert_subject}"),)
    offer = Negotiate(6, int(Action.ALL) & ~int(Action.SET_SYMBOL_LIST), int(Step.ALL))
    assert not mta_request(offer, [one, two], frozenset(), {}).actions & int(Action.SET_SYMBOL_LIST)
