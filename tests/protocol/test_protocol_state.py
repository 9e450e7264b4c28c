"""The two session state machines (P-SM-*, P-RPL-*, P-MOD-1/2/11, P-NEG-10)."""

from __future__ import annotations

import pytest

from milterman.protocol import (ABORT, ACCEPT, CONTINUE, DATA, DISCARD, END_OF_HEADER, END_OF_MESSAGE, PROGRESS,
                                QUIT, QUIT_NEW_CONNECTION, REJECT, SHUTDOWN, SKIP, TEMPFAIL, Action, AddHeader,
                                AddRcpt, AddRcptWithParameters, Body, ChangeFrom, ChangeHeader, Connect,
                                ConnectionFailure, DeleteRcpt, Header, Helo, InsertHeader, LocalProtocolError,
                                Macro, Mail, MilterState, MtaState, Negotiate, NegotiateReply, ProtocolError,
                                Quarantine, Rcpt, ReplaceBody, ReplyCode, Step, UnexpectedMessage, Unknown,
                                answer_offer)

OFFER = Negotiate(6, 0x1FF, 0x1FFFFF)
CONNECT = Connect("client.example.org", "4", 50000, "192.0.2.10")
HELO = Helo("client.example.org")
MAIL = Mail("<alice@example.org>")
RCPT = Rcpt("<bob@example.net>")
HEADER = Header("Subject", "Hello")
BODY = Body(b"hello\r\n")
UNKNOWN = Unknown("XFOO")
EOM = END_OF_MESSAGE
BY_LETTER = {"C": CONNECT, "H": HELO, "M": MAIL, "R": RCPT, "T": DATA, "L": HEADER, "N": END_OF_HEADER,
             "B": BODY, "E": EOM, "U": UNKNOWN, "A": ABORT, "Q": QUIT, "K": QUIT_NEW_CONNECTION,
             "D": Macro("M", (("i", "Q"),))}


def milter_state(*, actions: int = Action.ALL, protocol: int = 0, offer: Negotiate = OFFER) -> MilterState:
    state = MilterState()
    assert state.receive(offer) is True
    state.negotiate(offer, actions=actions, protocol=protocol)
    return state


def mta_state(*, actions: int = Action.ALL, protocol: int = 0, offer: Negotiate = OFFER,
              version: int | None = None) -> MtaState:
    state = MtaState(offer)
    assert state.send(offer) is True
    reply, _ = answer_offer(offer, actions=actions, protocol=protocol)
    if version is not None:
        reply = NegotiateReply(version, reply.actions, reply.protocol)
    assert state.receive(reply) is True
    return state


class Pair:
    """Both machines side by side; every step must be accepted by both, with the same verdict."""

    def __init__(self, **wanted) -> None:
        self.milter = milter_state(**wanted)
        self.mta = mta_state(**wanted)
        assert self.milter.options == self.mta.options

    def send(self, letters: str, answer=CONTINUE) -> None:
        """Send each command; answer those that need it with ``answer``."""
        for letter in letters:
            command = BY_LETTER[letter]
            needs = self.milter.receive(command)
            assert self.mta.send(command) == needs, letter
            if needs:
                self.reply(answer)

    def command(self, letter: str) -> bool:
        command = BY_LETTER[letter]
        needs = self.milter.receive(command)
        assert self.mta.send(command) == needs
        return needs

    def reply(self, reply) -> bool:
        self.milter.check_send(reply)
        return self.mta.receive(reply)


def connected(**wanted) -> Pair:
    pair = Pair(**wanted)
    pair.send("CH")
    return pair


# ---------------------------------------------------------------------------------------------------------
# negotiation phase (P-NEG-1, P-BAD-9)


@pytest.mark.parametrize("letter", list("CHMRTLNBEAUDQK"))
def test_nothing_before_optneg_P_NEG_1(letter):
    with pytest.raises(UnexpectedMessage):
        MilterState().receive(BY_LETTER[letter])
    with pytest.raises(LocalProtocolError):
        MtaState(OFFER).send(BY_LETTER[letter])


def test_mta_first_command_must_be_its_own_offer_P_NEG_1():
    with pytest.raises(LocalProtocolError):
        MtaState(OFFER).send(Negotiate(2, 0x3F, 0x7F))


def test_second_optneg_closes_P_NEG_1_P_BAD_9():
    state = milter_state()
    with pytest.raises(UnexpectedMessage) as error:
        state.receive(OFFER)
    assert error.value.rule == "P-BAD-9"
    with pytest.raises(LocalProtocolError):
        mta_state().send(OFFER)


def test_negotiation_reply_only_during_negotiation_P_NEG_3_P_BAD_31():
    state = mta_state()
    state.send(CONNECT)
    with pytest.raises(UnexpectedMessage):
        state.receive(NegotiateReply(6, 0, 0))
    with pytest.raises(LocalProtocolError):
        milter_state().check_send(NegotiateReply(6, 0, 0))
    fresh = MilterState()
    fresh.receive(OFFER)
    with pytest.raises(LocalProtocolError):
        fresh.check_send(CONTINUE)             # the OPTNEG reply goes through negotiate()


def test_mta_refuses_anything_but_optneg_reply_first_P_BAD_31():
    for reply in (CONTINUE, PROGRESS, ReplyCode("550 5.7.1 no")):
        state = MtaState(OFFER)
        state.send(OFFER)
        with pytest.raises(UnexpectedMessage):
            state.receive(reply)


# ---------------------------------------------------------------------------------------------------------
# P-SM-8 order rules


@pytest.mark.parametrize("sequence", ["MRRTLLNBBE", "ME", "MLE", "MNBE", "MBE", "MTE", "MRTE", "MRLNE", "MRNBBE",
                                      "MRE", "MTLLLBE"])
def test_forward_moves_are_accepted_P_SM_8(sequence):
    pair = connected()
    pair.send(sequence)
    assert pair.milter.in_message is False     # the final reply to EOM closed the message (P-SM-2)
    pair.send(sequence)                        # and the next message may follow


@pytest.mark.parametrize("sequence", ["R", "T", "L", "N", "B", "E", "MRTR", "MLT", "MNL", "MBL", "MBN", "MTT",
                                      "MNN", "MLR", "MBT", "MEE", "MRER"])
def test_backward_moves_are_protocol_errors_P_SM_8_P_BAD_21(sequence):
    pair = connected()
    pair.send(sequence[:-1])
    last = BY_LETTER[sequence[-1]]
    with pytest.raises(UnexpectedMessage) as error:
        pair.milter.receive(last)
    assert error.value.rule == "P-BAD-21"
    with pytest.raises(LocalProtocolError):
        pair.mta.send(last)


@pytest.mark.parametrize("sequence", ["R", "RR", "T", "L", "N", "B", "E", "RTLNBE"])
def test_without_mail_event_a_message_starts_anywhere_P_SM_2(sequence):
    pair = connected(protocol=Step.NO_MAIL)
    pair.send(sequence)
    if sequence[-1] == "E":
        pair.send(sequence)


def test_connect_once_per_connection_context_P_SM_8():
    pair = connected()
    with pytest.raises(UnexpectedMessage):
        pair.milter.receive(CONNECT)
    with pytest.raises(LocalProtocolError):
        pair.mta.send(CONNECT)


def test_helo_and_unknown_any_time_after_negotiation_P_SM_8():
    pair = Pair(protocol=Step.NO_CONNECT)
    pair.send("HUHUMRU")
    pair.send("H")                     # HELO inside a message: implied abort (below)
    pair.send("UMRTE")


def test_new_mail_inside_a_message_implies_abort_P_SM_8():
    pair = connected()
    pair.send("MRRTL")
    pair.send("M")
    assert pair.milter.in_message
    pair.send("RTLNBE")


def test_helo_inside_a_message_implies_abort_P_SM_8():
    pair = connected()
    pair.send("MRL")
    pair.send("H")
    assert pair.milter.in_message is False and pair.mta.message_step == 0
    with pytest.raises(UnexpectedMessage):
        pair.milter.receive(RCPT)
    pair.send("MRE")


def test_abort_ends_the_message_only_P_SM_3_P_CMD_12():
    pair = connected()
    pair.send("MRTL")
    assert pair.command("A") is False
    assert pair.milter.in_message is False
    with pytest.raises(UnexpectedMessage):
        pair.milter.receive(HEADER)                    # the message is gone
    pair.send("MRE")                                   # the connection is not


def test_abort_outside_a_message_is_harmless_P_SM_3():
    pair = Pair()
    assert pair.command("A") is False                  # even before CONNECT
    pair.send("C")
    for _ in range(3):
        assert pair.command("A") is False              # Postfix repeats it
    pair.send("HMRE")
    pair.send("AA")
    pair.send("MRE")
    assert pair.milter.warnings == []


def test_macro_never_needs_a_reply_anywhere_P_CMD_2():
    pair = Pair()
    for letters in ("", "C", "HM", "RTLNB", "E"):
        pair.send(letters)
        assert pair.command("D") is False


def test_quit_ends_everything_P_SM_4():
    pair = connected()
    pair.send("MR")
    assert pair.command("Q") is False
    for letter in "DCHMAQK":
        with pytest.raises(UnexpectedMessage):
            pair.milter.receive(BY_LETTER[letter])
        with pytest.raises(LocalProtocolError):
            pair.mta.send(BY_LETTER[letter])


def test_quit_nc_returns_to_pre_connect_with_options_kept_P_SM_5_P_CMD_14():
    pair = connected(actions=Action.ADD_HEADERS, protocol=Step.NO_REPLY_HELO)
    options = pair.milter.options
    pair.send("MR")
    assert pair.command("K") is False
    assert pair.milter.options is options and pair.milter.in_message is False
    assert pair.mta.will_send("C")
    pair.send("C")                                     # a new CONNECT, no new OPTNEG
    assert pair.command("H") is False                  # the no-reply bit still applies
    pair.send("MRE")
    pair.send("K")
    pair.send("CH")


def test_quit_nc_needs_version_6_on_the_mta_side_P_NEG_11():
    state = mta_state(offer=Negotiate(4, 0x1FF, 0x37F))
    state.send(CONNECT)
    state.receive(CONTINUE)
    with pytest.raises(LocalProtocolError):
        state.send(QUIT_NEW_CONNECTION)


# ---------------------------------------------------------------------------------------------------------
# replies owed (P-RPL-1, P-NEG-10, P-BAD-45)


def test_a_command_while_a_reply_is_owed_is_an_error_P_RPL_1():
    pair = connected()
    assert pair.command("M") is True
    with pytest.raises(UnexpectedMessage):
        pair.milter.receive(RCPT)
    with pytest.raises(LocalProtocolError):
        pair.mta.send(RCPT)
    with pytest.raises(UnexpectedMessage):
        pair.milter.receive(Macro("R"))              # not even a macro


def test_a_second_final_reply_is_refused_P_RPL_1_P_BAD_45():
    pair = connected()
    pair.command("M")
    assert pair.reply(CONTINUE) is True
    with pytest.raises(LocalProtocolError):
        pair.milter.check_send(CONTINUE)
    with pytest.raises(UnexpectedMessage) as error:
        pair.mta.receive(CONTINUE)
    assert error.value.rule == "P-BAD-45"


@pytest.mark.parametrize("letter", list("DAK"))
def test_no_reply_to_macro_abort_quit_nc_P_RPL_1_P_BAD_45(letter):
    pair = connected()
    pair.send("M")
    assert pair.command(letter) is False
    with pytest.raises(LocalProtocolError):
        pair.milter.check_send(CONTINUE)
    with pytest.raises(UnexpectedMessage):
        pair.mta.receive(CONTINUE)


NO_REPLY_BITS = {"C": Step.NO_REPLY_CONNECT, "H": Step.NO_REPLY_HELO, "M": Step.NO_REPLY_MAIL,
                 "R": Step.NO_REPLY_RCPT, "T": Step.NO_REPLY_DATA, "L": Step.NO_REPLY_HEADER,
                 "N": Step.NO_REPLY_END_OF_HEADER, "B": Step.NO_REPLY_BODY, "U": Step.NO_REPLY_UNKNOWN}
PATH_TO = {"C": "", "H": "C", "M": "CH", "R": "CHM", "T": "CHMR", "L": "CHMRT", "N": "CHMRTL", "B": "CHMRTLN",
           "U": "CH"}


@pytest.mark.parametrize("letter", list(NO_REPLY_BITS))
def test_no_reply_bits_change_what_needs_a_reply_P_NEG_6_P_NEG_10(letter):
    with_reply = Pair()
    with_reply.send(PATH_TO[letter])
    assert with_reply.command(letter) is True
    silent = Pair(protocol=NO_REPLY_BITS[letter])
    silent.send(PATH_TO[letter])
    assert silent.command(letter) is False
    with pytest.raises(LocalProtocolError):
        silent.milter.check_send(CONTINUE)
    with pytest.raises(UnexpectedMessage):
        silent.mta.receive(CONTINUE)


def test_eom_is_always_answered_P_CMD_11_P_NEG_10():
    every = 0
    for bit in NO_REPLY_BITS.values():
        every |= bit
    pair = Pair(protocol=every)
    for letter in "CHMRTLNB":
        assert pair.command(letter) is False
    assert pair.command("E") is True
    assert pair.reply(ACCEPT) is True


def test_every_final_reply_ends_the_wait_P_RPL_1():
    for final in (CONTINUE, ACCEPT, REJECT, TEMPFAIL, DISCARD, ReplyCode("451 4.7.1 later"), SHUTDOWN):
        pair = connected()
        pair.send("MR")
        assert pair.command("E") is True
        assert pair.reply(final) is True
        assert pair.milter.awaiting is None and pair.mta.awaiting is None


# ---------------------------------------------------------------------------------------------------------
# effect of decisions (P-SM-6)


def test_reject_at_rcpt_is_per_recipient_P_RPL_4_P_SM_6():
    pair = connected()
    pair.send("M")
    for answer in (REJECT, TEMPFAIL, ReplyCode("550 5.1.1 unknown user")):
        pair.command("R")
        pair.reply(answer)
        assert pair.milter.in_message and pair.mta.will_send("R")
    pair.send("RTE")


@pytest.mark.parametrize("answer", [ACCEPT, DISCARD])
def test_accept_or_discard_at_rcpt_ends_the_message_P_RPL_3_P_RPL_6(answer):
    pair = connected()
    pair.send("M")
    pair.command("R")
    pair.reply(answer)
    assert pair.milter.in_message is False
    assert pair.mta.will_send("R") is False and pair.mta.will_send("E") is False
    with pytest.raises(UnexpectedMessage):
        pair.milter.receive(RCPT)
    pair.send("AMRE")                                 # Postfix's abort, then the next transaction


@pytest.mark.parametrize("letter", list("MTLNB"))
@pytest.mark.parametrize("answer", [ACCEPT, REJECT, TEMPFAIL, DISCARD])
def test_decision_in_the_message_ends_it_P_SM_6_P_BODY_5(letter, answer):
    pair = connected()
    pair.send({"M": "", "T": "MR", "L": "MRT", "N": "MRTL", "B": "MRTLN"}[letter])
    pair.command(letter)
    pair.reply(answer)
    assert pair.milter.in_message is False
    assert not pair.mta.will_send("E")
    with pytest.raises(UnexpectedMessage):
        pair.milter.receive(EOM)
    pair.send("MRE")


@pytest.mark.parametrize("letter", ["C", "H"])
@pytest.mark.parametrize("answer", [ACCEPT, REJECT, TEMPFAIL, ReplyCode("421 4.7.0 bye")])
def test_connection_level_decision_ends_the_connection_context_P_RPL_3_P_SM_6(letter, answer):
    pair = Pair()
    pair.send(PATH_TO[letter])
    pair.command(letter)
    pair.reply(answer)
    for later in "HMU":
        assert pair.mta.will_send(later) is False
        with pytest.raises(UnexpectedMessage):
            pair.milter.receive(BY_LETTER[later])
        with pytest.raises(LocalProtocolError):
            pair.mta.send(BY_LETTER[later])
    pair.send("DA")                                    # macros and aborts stay harmless
    pair.send("K")                                     # a reused socket starts a new context
    pair.send("CHMRE")


def test_unknown_decision_does_not_end_the_message_P_SM_6():
    pair = connected()
    pair.send("MR")
    pair.command("U")
    pair.reply(REJECT)
    assert pair.milter.in_message
    pair.send("E")


# ---------------------------------------------------------------------------------------------------------
# what our milter side may send (check_send) and what our MTA side accepts (receive)


def test_skip_only_for_body_with_skip_negotiated_P_RPL_8():
    without = connected()
    without.send("MRTLN")
    without.command("B")
    with pytest.raises(LocalProtocolError):
        without.milter.check_send(SKIP)
    with pytest.raises(UnexpectedMessage):
        without.mta.receive(SKIP)

    pair = connected(protocol=Step.SKIP)
    pair.send("MRTL")
    pair.command("L")
    with pytest.raises(LocalProtocolError):
        pair.milter.check_send(SKIP)                   # our server: body only
    pair.reply(CONTINUE)
    pair.send("N")
    pair.command("B")
    assert pair.reply(SKIP) is True
    assert pair.mta.will_send("B") is False            # the MTA stops sending body chunks ...
    with pytest.raises(LocalProtocolError):
        pair.mta.send(BODY)
    assert pair.mta.will_send("E") is True             # ... and goes on with end of message
    pair.send("E")
    pair.send("MRNBE")                                 # the next message gets its body again


@pytest.mark.parametrize("letter", ["C", "H", "U", "E"])
def test_mta_refuses_skip_where_it_makes_no_sense_P_RPL_8(letter):
    state = mta_state(protocol=Step.SKIP)
    for before in PATH_TO.get(letter, "CHMR"):
        if state.send(BY_LETTER[before]):
            state.receive(CONTINUE)
    state.send(BY_LETTER[letter])
    with pytest.raises(UnexpectedMessage):
        state.receive(SKIP)


def test_mta_accepts_skip_for_headers_postfix_style_P_RPL_8():
    state = mta_state(protocol=Step.SKIP)
    for letter in "CHMRTL":
        state.send(BY_LETTER[letter])
        state.receive(CONTINUE)
    state.send(HEADER)
    assert state.receive(SKIP) is True
    assert state.will_send("L") is False and state.will_send("N") is True


def test_modifications_only_at_eom_P_MOD_1_P_BAD_37():
    for letter in "CHMRTLNBU":
        pair = Pair()
        pair.send(PATH_TO.get(letter, "CH") if letter != "U" else "CH")
        pair.command(letter)
        with pytest.raises(LocalProtocolError):
            pair.milter.check_send(AddHeader("X-A", "b"))
        with pytest.raises(UnexpectedMessage) as error:
            pair.mta.receive(AddHeader("X-A", "b"))
        assert error.value.rule == "P-BAD-37"


MODIFICATIONS = [
    (AddHeader("X-A", "b"), Action.ADD_HEADERS),
    (InsertHeader(0, "X-A", "b"), Action.ADD_HEADERS),
    (ChangeHeader(1, "Subject", ""), Action.CHANGE_HEADERS),
    (AddRcpt("<c@d>"), Action.ADD_RCPT),
    (AddRcptWithParameters("<c@d>", "NOTIFY=NEVER"), Action.ADD_RCPT_WITH_PARAMETERS),
    (DeleteRcpt("<bob@example.net>"), Action.DELETE_RCPT),
    (ChangeFrom("<x@y>"), Action.CHANGE_FROM),
    (ReplaceBody(b"new\r\n"), Action.CHANGE_BODY),
    (Quarantine("held"), Action.QUARANTINE),
]


@pytest.mark.parametrize("modification, action", MODIFICATIONS, ids=lambda v: getattr(v, "LETTER", None))
def test_modification_needs_its_granted_action_P_MOD_2_P_BAD_38(modification, action):
    granted = connected(actions=action)
    granted.send("MR")
    granted.command("E")
    assert granted.reply(modification) is False        # not final
    assert granted.reply(CONTINUE) is True

    others = connected(actions=Action.ALL & ~action)
    others.send("MR")
    others.command("E")
    with pytest.raises(LocalProtocolError) as local:
        others.milter.check_send(modification)
    assert local.value.rule == "P-MOD-2"
    with pytest.raises(UnexpectedMessage) as remote:
        others.mta.receive(modification)
    assert remote.value.rule == "P-BAD-38"


def test_quarantine_accepted_anywhere_by_mta_but_sent_only_at_eom_P_RPL_10_P_BAD_44():
    pair = connected()
    pair.command("M")
    with pytest.raises(LocalProtocolError):
        pair.milter.check_send(Quarantine("why"))
    assert pair.mta.receive(Quarantine("why")) is False
    assert pair.mta.receive(CONTINUE) is True


def test_progress_only_at_eom_on_milter_side_anywhere_on_mta_side_P_RPL_9():
    for letter in "CHMRTLNBU":
        pair = Pair()
        pair.send(PATH_TO[letter])
        pair.command(letter)
        with pytest.raises(LocalProtocolError):
            pair.milter.check_send(PROGRESS)
        assert pair.mta.receive(PROGRESS) is False     # not final, keeps waiting
        assert pair.mta.receive(PROGRESS) is False
        assert pair.mta.awaiting == letter
        pair.reply(CONTINUE)
    pair = connected()
    pair.send("MR")
    pair.command("E")
    for _ in range(3):
        assert pair.reply(PROGRESS) is False
    assert pair.reply(ACCEPT) is True


@pytest.mark.parametrize("letter", ["C", "H", "U"])
def test_discard_not_at_connect_helo_unknown_P_RPL_6(letter):
    state = milter_state()
    for before in PATH_TO[letter]:
        if state.receive(BY_LETTER[before]):
            state.check_send(CONTINUE)
    state.receive(BY_LETTER[letter])
    with pytest.raises(LocalProtocolError):
        state.check_send(DISCARD)
    state.check_send(CONTINUE)


@pytest.mark.parametrize("letter", list("MRTLNBE"))
def test_discard_allowed_in_message_stages_P_RPL_6(letter):
    pair = connected()
    pair.send({"M": "", "R": "M", "T": "MR", "L": "MRT", "N": "MRTL", "B": "MRTLN", "E": "MR"}[letter])
    pair.command(letter)
    assert pair.reply(DISCARD) is True


def test_connection_failure_is_never_sent_nor_accepted_P_RPL_12_P_BAD_35():
    pair = connected()
    pair.command("M")
    with pytest.raises(LocalProtocolError):
        pair.milter.check_send(ConnectionFailure.INSTANCE)
    with pytest.raises(UnexpectedMessage):
        pair.mta.receive(ConnectionFailure.INSTANCE)


def test_invalid_reply_text_is_never_sent_P_CODE_2():
    pair = connected()
    pair.command("M")
    with pytest.raises(LocalProtocolError):
        pair.milter.check_send(ReplyCode("250 2.0.0 fine"))
    pair.milter.check_send(ReplyCode("550 5.7.1 no"))


def test_shutdown_is_a_final_reply_the_mta_accepts_P_RPL_11():
    pair = connected()
    pair.command("M")
    assert pair.reply(SHUTDOWN) is True


# ---------------------------------------------------------------------------------------------------------
# replace-body packets must be consecutive (P-MOD-11, P-BAD-43)


def _at_eom(**wanted) -> Pair:
    pair = connected(actions=Action.ALL, **wanted)
    pair.send("MR")
    assert pair.command("E") is True
    return pair


@pytest.mark.parametrize("sequence", ["bbb", "hbb", "bbh", "hbbh", "b", "qbbm", "hhbbhh"])
def test_consecutive_replace_body_is_accepted_P_MOD_11(sequence):
    pair = _at_eom()
    for letter in sequence:
        assert pair.reply(_modification(letter)) is False
    assert pair.reply(CONTINUE) is True


@pytest.mark.parametrize("sequence", ["bhb", "bbhb", "bmb", "b+b", "beb", "bhhb"])
def test_interleaved_replace_body_is_refused_P_MOD_11_P_BAD_43(sequence):
    pair = _at_eom()
    for letter in sequence[:-1]:
        pair.reply(_modification(letter))
    with pytest.raises(LocalProtocolError) as local:
        pair.milter.check_send(_modification(sequence[-1]))
    assert local.value.rule == "P-MOD-11"
    with pytest.raises(UnexpectedMessage) as remote:
        pair.mta.receive(_modification(sequence[-1]))
    assert remote.value.rule == "P-BAD-43"


def _modification(letter: str):
    return {"b": ReplaceBody(b"x"), "h": AddHeader("X", "y"), "m": ChangeHeader(1, "X", ""),
            "+": AddRcpt("<a@b>"), "e": ChangeFrom("<a@b>"), "q": Quarantine("q")}[letter]


@pytest.mark.parametrize("protocol, between", [(0, "MR"), (Step.NO_MAIL, "R"), (Step.NO_MAIL, "")])
def test_replace_body_state_is_per_message_P_MOD_11(protocol, between):
    """Body replacement followed by other changes in one message must not forbid it in the next."""
    pair = connected(actions=Action.ALL, protocol=protocol)
    for _ in range(3):
        pair.send(between)
        pair.command("E")
        pair.reply(ReplaceBody(b"new"))
        pair.reply(AddHeader("X-Changed", "yes"))
        pair.reply(ACCEPT)


# ---------------------------------------------------------------------------------------------------------
# skip bits and version gating (P-NEG-10, P-NEG-11, P-BAD-22)


SKIP_BITS = {"C": Step.NO_CONNECT, "H": Step.NO_HELO, "M": Step.NO_MAIL, "R": Step.NO_RCPT, "T": Step.NO_DATA,
             "L": Step.NO_HEADERS, "N": Step.NO_END_OF_HEADER, "B": Step.NO_BODY, "U": Step.NO_UNKNOWN}


@pytest.mark.parametrize("letter", list(SKIP_BITS))
def test_mta_never_sends_a_skipped_event_P_NEG_10_P_SM_9(letter):
    state = mta_state(protocol=SKIP_BITS[letter] | Step.NO_MAIL)
    assert state.will_send(letter) is False
    with pytest.raises(LocalProtocolError):
        for before in PATH_TO[letter]:
            if before != letter and state.will_send(before):
                if state.send(BY_LETTER[before]):
                    state.receive(CONTINUE)
        state.send(BY_LETTER[letter])


@pytest.mark.parametrize("letter", list(SKIP_BITS))
def test_milter_processes_a_skipped_event_with_a_warning_P_BAD_22(letter):
    state = milter_state(protocol=SKIP_BITS[letter])
    for before in PATH_TO[letter]:
        if state.receive(BY_LETTER[before]):
            state.check_send(CONTINUE)
    assert state.warnings == []
    state.receive(BY_LETTER[letter])
    assert any("P-BAD-22" in warning for warning in state.warnings)


@pytest.mark.parametrize("version, absent", [(2, "TUK"), (3, "TK"), (4, "K"), (5, "K")])
def test_mta_respects_version_gating_P_NEG_11(version, absent):
    state = mta_state(offer=Negotiate(6, 0x1FF, 0x1FFFFF), version=version)
    for letter in absent:
        if letter != "K":
            assert state.will_send(letter) is False
    state.send(CONNECT)
    state.receive(CONTINUE)
    state.send(MAIL)
    state.receive(CONTINUE)
    state.send(RCPT)
    state.receive(CONTINUE)
    for letter in absent:
        with pytest.raises(LocalProtocolError):
            state.send(BY_LETTER[letter])


def test_will_send_follows_the_message_state_P_SM_6():
    state = mta_state()
    assert state.will_send("C") is True
    state.send(CONNECT)
    state.receive(CONTINUE)
    assert state.will_send("R") is False               # no message open
    assert state.will_send("M") is True
    state.send(MAIL)
    state.receive(CONTINUE)
    assert state.will_send("R") is True and state.will_send("E") is True
    state.send(QUIT)
    assert state.will_send("C") is False


def test_state_errors_are_protocol_errors():
    """Whatever goes wrong in a state machine is a ProtocolError (the runner closes on it)."""
    pair = connected()
    for bad in (lambda: pair.milter.receive(RCPT), lambda: pair.mta.send(RCPT),
                lambda: pair.milter.check_send(CONTINUE), lambda: pair.mta.receive(CONTINUE)):
        with pytest.raises(ProtocolError):
            bad()


def _negotiated_milter(protocol: int = 0) -> MilterState:
    from milterman.protocol import Negotiate
    milter = MilterState()
    milter.receive(Negotiate(6, 0x1FF, 0x1FFFFF))
    milter.negotiate(Negotiate(6, 0x1FF, 0x1FFFFF), actions=0x1FF, protocol=protocol)
    return milter


def test_shutdown_reply_ends_the_connection_context_P_RPL_11():
    from milterman.protocol import SHUTDOWN, Mail, Helo, UnexpectedMessage
    milter = _negotiated_milter()
    milter.receive(Mail("<a@example.org>"))
    milter.check_send(SHUTDOWN)
    with pytest.raises(UnexpectedMessage):
        milter.receive(Helo("again"))


def test_421_reply_code_ends_the_connection_context_P_CODE_8():
    from milterman.protocol import Mail, ReplyCode, Rcpt, UnexpectedMessage
    from milterman.protocol import CONTINUE
    milter = _negotiated_milter()
    milter.receive(Mail("<a@example.org>"))
    milter.check_send(CONTINUE)
    milter.receive(Rcpt("<b@example.org>"))
    milter.check_send(ReplyCode("421 4.7.0 closing"))
    with pytest.raises(UnexpectedMessage):
        milter.receive(Rcpt("<c@example.org>"))


def test_suppressed_event_sent_anyway_is_answered_P_BAD_22():
    from milterman.protocol import Helo, Step
    milter = _negotiated_milter(protocol=int(Step.NO_HELO))
    assert milter.receive(Helo("client")) is True
    assert any("P-BAD-22" in warning for warning in milter.warnings)


def test_suppressed_event_with_no_reply_bit_is_not_answered_P_BAD_22():
    from milterman.protocol import Helo, Step
    milter = _negotiated_milter(protocol=int(Step.NO_HELO | Step.NO_REPLY_HELO))
    assert milter.receive(Helo("client")) is False


def test_quit_nc_below_version_6_warns_P_NEG_11():
    from milterman.protocol import Negotiate, QUIT_NEW_CONNECTION
    milter = MilterState()
    milter.receive(Negotiate(4, 0x1FF, 0x3FF))
    milter.negotiate(Negotiate(4, 0x1FF, 0x3FF))
    milter.receive(QUIT_NEW_CONNECTION)
    assert any("P-NEG-11" in warning for warning in milter.warnings)


def test_mta_may_quit_only_when_negotiated_and_nothing_is_awaited_P_SM_4_P_RPL_1():
    state = MtaState(OFFER)
    assert not state.can_quit
    state.send(OFFER)
    assert not state.can_quit  # the negotiation reply is awaited
    state.receive(answer_offer(OFFER, actions=Action.ALL)[0])
    assert state.can_quit
    state.send(CONNECT)
    assert not state.can_quit
    state.receive(CONTINUE)
    state.send(QUIT)
    assert not state.can_quit
