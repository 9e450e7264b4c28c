"""The two session state machines (P-SM-*): one for each side of a milter socket.

:class:`MilterState` is what a milter (our test client, the manager's MTA-facing
side) runs: it accepts commands only where the grammar of P-SM-1 allows them,
says which need a reply under the negotiated no-reply bits, and refuses replies
our own code must never send. :class:`MtaState` is the mirror for the side that
plays the MTA (our test server, the manager's child side).

Both walk one grammar (:class:`_Grammar`, the stage table's message steps and
refusals); a breach is the peer's (:class:`UnexpectedMessage`) on the milter side and
ours (:class:`LocalProtocolError`) on the MTA side. Neither does I/O.
"""

from __future__ import annotations

from .errors import LocalProtocolError, MalformedPacket, ProtocolError, UnexpectedMessage
from .macros import MacroStore
from .messages import (
    Command,
    CONTINUE as _CONTINUE,
    ConnectionFailure,
    Discard,
    Macro,
    Modification,
    Negotiate,
    NegotiateReply,
    Progress,
    Quarantine,
    ReplaceBody,
    Reply,
    ReplyCode,
    Skip,
)
from .negotiation import Options, answer_offer, check_reply
from .replycode import parse_reply_text
from .stages import BY_LETTER, END_OF_MESSAGE_STEP, MESSAGE_STEPS, NO_REPLY_BITS

# Connection phases
INIT = "init"                 # waiting for OPTNEG
NEGOTIATED = "negotiated"     # options settled, no SMTP-connection command yet (also after K)
CONNECTED = "connected"       # connection context running
REFUSED = "refused"           # a connection-level decision ended it: only D, A, Q, K may follow
CLOSED = "closed"             # QUIT seen

__all__ = ["CLOSED", "CONNECTED", "END_OF_MESSAGE_STEP", "INIT", "MESSAGE_STEPS", "NEGOTIATED", "REFUSED",
           "MilterState", "MtaState", "check_final_reply"]

#: what a final reply does to the session, by what a refusal at the answered stage ends (P-SM-6);
#: ``None`` keeps the message step, ``0`` ends the message, ``"refused"`` ends the connection
_DECISIONS = {
    "connection": {"d": None},            # reject/tempfail/accept end the connection; discard is ignored
    "recipient": {"a": 0, "d": 0, "*": None},  # reject/tempfail refuse this recipient only
    "message": {"*": 0},
    "nothing": {"*": None},               # UNKNOWN: the MTA's own error stands
}
_REFUSED = "refused"
#: the rules a modification breaks: the peer's (P-BAD-*) and ours (P-MOD-*)
_MODIFICATION_RULES = {False: ("P-BAD-38", "P-BAD-37", "P-BAD-43"), True: ("P-MOD-2", "P-MOD-1", "P-MOD-11")}


def _next_message_step(step: int, letter: str, mail_skipped: bool) -> int | None:
    """The message step after ``letter``, or ``None`` when the move goes backwards (P-SM-8)."""
    order, repeats = MESSAGE_STEPS[letter]
    if letter == "M":
        return order  # a new MAIL inside a message implies an abort
    if step == 0:
        return order if mail_skipped else None
    if step < order or (step == order and repeats):
        return order
    return None


def _decision_effect(letter: str, reply: Reply, message_step: int) -> tuple[bool, int]:
    """(connection refused?, new message step) after final ``reply`` to ``letter`` (P-SM-6)."""
    kind = reply.LETTER
    if kind == "c" or kind == "s":
        return False, 0 if letter == "E" else message_step
    if kind == "4" or (kind == "y" and reply.text[:3] == "421"):
        return True, 0  # the MTA answers 421 and ends the SMTP session (P-RPL-11, P-CODE-8)
    table = _DECISIONS[BY_LETTER[letter].refusal]
    effect = table.get(kind, table.get("*", _REFUSED))
    if effect == _REFUSED:
        return True, 0
    return False, message_step if effect is None else effect


class _Grammar:
    """What both sides track: phase, message step, the reply owed, the end-of-message modifications."""

    __slots__ = ("phase", "message_step", "options", "awaiting", "strict", "warnings", "_body_replaced",
                 "_modified_after_body")
    #: the error class of a breach of the grammar on this side
    _FAIL: type[ProtocolError] = UnexpectedMessage

    def __init__(self, strict: bool) -> None:
        self.phase = INIT
        self.message_step = 0
        self.options: Options | None = None
        #: the letter of the command whose final reply is owed, if any
        self.awaiting: str | None = None
        self.strict = strict
        #: notes about tolerated mistakes (P-BAD-18, P-BAD-22, P-NEG-12), for the log; cleared by the reader
        self.warnings: list[str] = []
        self._body_replaced = False
        self._modified_after_body = False

    @property
    def in_message(self) -> bool:
        return self.message_step != 0

    def _fail(self, message: str, rule: str, mta_rule: str | None = None) -> ProtocolError:
        """The breach as this side reports it; ``mta_rule`` where the MTA side cites another rule."""
        if mta_rule is not None and self._FAIL is LocalProtocolError:
            rule = mta_rule
        return self._FAIL(message, rule)

    def _opening(self, letter: str) -> None:
        """Refuse a command while a reply is owed or after QUIT (P-RPL-1, P-SM-4); called only when one holds."""
        if self.awaiting is not None:
            raise self._fail(f"command {letter!r} arrived while the reply to {self.awaiting!r} is owed", "P-RPL-1")
        if self.phase == CLOSED:
            raise self._fail(f"command {letter!r} after QUIT", "P-SM-4")

    def _event(self, letter: str, options: Options) -> None:
        """Advance over an SMTP-event command (P-SM-1, P-SM-8); ``H`` or ``M`` inside a message implies an abort."""
        if letter == "C":
            if self.phase != NEGOTIATED:
                raise self._fail("CONNECT after the connection context started", "P-SM-8", "P-SM-1")
        elif letter in MESSAGE_STEPS:
            step = _next_message_step(self.message_step, letter, options.mail_skipped)
            if step is None:
                where = f"message step {self.message_step}" if self.message_step else "no open message"
                raise self._fail(f"command {letter!r} out of order ({where})", "P-BAD-21", "P-SM-1")
            if letter == "M" or letter == "E":  # each end of message has its own modifications (P-MOD-11)
                self._body_replaced = False
                self._modified_after_body = False
            self.message_step = step
        elif letter == "H":
            self.message_step = 0
        self.phase = CONNECTED

    def _modification(self, reply: Modification, awaiting: str, options: Options, local: bool) -> None:
        """A modification is allowed: negotiated, at end of message, replace-body packets consecutive (P-MOD-*)."""
        action_rule, outside_rule, replace_rule = _MODIFICATION_RULES[local]
        fail = LocalProtocolError if local else UnexpectedMessage
        name = type(reply).__name__
        if not options.action_bits & reply.ACTION:
            raise fail(f"{name} needs an action that was not negotiated", action_rule)
        if isinstance(reply, Quarantine) and not local:
            return  # accepted after any command, as Postfix does (P-BAD-44)
        if awaiting != "E":
            raise fail(f"{name} outside end of message", outside_rule)
        if isinstance(reply, ReplaceBody):
            if self._modified_after_body:
                raise fail("replace-body packets must be consecutive", replace_rule)
            self._body_replaced = True
        elif self._body_replaced:
            self._modified_after_body = True

    def check_modification(self, reply: Modification) -> None:
        """Refuse a modification our own milter code asks for at the end of message it is answering, as the
        milter side of a socket would (P-MOD-2, P-MOD-11); used where a milter runs without a socket."""
        assert self.options is not None
        self._modification(reply, self.awaiting or "", self.options, local=True)

    def _final(self, awaiting: str, reply: Reply) -> bool:
        """Account for the final reply to ``awaiting`` (P-SM-6); ``True`` when it ended the connection."""
        self.awaiting = None
        refused, self.message_step = _decision_effect(awaiting, reply, self.message_step)
        if refused:
            self.phase = REFUSED
        return refused


#: answers to the offers seen, by offer and wishes: one MTA sends the same offer on every connection, and
#: the reply and options are immutable, so each connection need not compute them again
_ANSWERS: dict[tuple, tuple[NegotiateReply, Options]] = {}


class MilterState(_Grammar):
    """Milter-side session state: legal commands, replies owed, replies allowed (P-SM-8)."""

    __slots__ = ("macros",)

    def __init__(self, *, strict: bool = True) -> None:
        super().__init__(strict)
        self.macros = MacroStore()

    def receive(self, command: Command) -> bool:
        """Account for one command from the MTA; ``True`` when it needs a reply.

        Raises :class:`UnexpectedMessage` for a command the grammar forbids here
        (P-BAD-9, P-BAD-21), and when a command arrives while our reply is owed.
        """
        letter = command.LETTER
        phase = self.phase
        if self.awaiting is not None or phase == CLOSED:
            self._opening(letter)
        if phase == INIT:
            if letter != "O":
                raise UnexpectedMessage(f"command {letter!r} before option negotiation", "P-NEG-1")
            self.awaiting = "O"
            self.macros.clear()
            return True
        if letter == "D":
            assert isinstance(command, Macro)
            if not self.macros.receive(command):
                self.warnings.append(f"ignored macros for unknown stage {command.stage!r} (P-BAD-18)")
            if command.dropped:
                self.warnings.append(f"ignored malformed macro data: {command.dropped} (P-BAD-18)")
            return False
        if letter == "O":
            raise UnexpectedMessage("second option negotiation on one connection", "P-BAD-9")
        if letter == "A":
            self.message_step = 0
            self.macros.command_arrived("A")
            return False
        if letter == "Q" or letter == "K":
            if letter == "K" and self.options is not None and self.options.version < 6:
                self.warnings.append("QUIT_NC on a connection negotiated below version 6 (P-NEG-11)")
            self.phase = CLOSED if letter == "Q" else NEGOTIATED
            self.message_step = 0
            self.macros.clear()
            return False
        if phase == REFUSED:
            raise UnexpectedMessage(f"command {letter!r} after the connection was refused or accepted", "P-SM-6")
        options = self.options
        assert options is not None
        suppressed = letter not in options.sent
        if suppressed:
            self.warnings.append(f"MTA sent {letter!r} although negotiation suppressed it (P-BAD-22)")
        self._event(letter, options)
        if letter in "CHMR":
            self.macros.command_arrived(letter)
        if letter == "E" or letter in options.answered or (
                suppressed and not options.protocol_bits & NO_REPLY_BITS[letter]):
            # a suppressed event sent anyway is processed and answered unless its no-reply bit is set (P-BAD-22)
            self.awaiting = letter
            return True
        return False

    def negotiate(self, offer: Negotiate, **wanted) -> NegotiateReply:
        """Answer the pending OPTNEG with :func:`answer_offer` and settle the options."""
        if self.awaiting != "O":
            raise LocalProtocolError("no negotiation is pending", "P-NEG-1")
        try:
            key: tuple | None = (offer, tuple(sorted(wanted.items())))
            settled = _ANSWERS.get(key)  # type: ignore[arg-type]
        except TypeError:  # an unhashable wish (a list of macro lists): computed each time
            key = settled = None
        if settled is None:
            settled = answer_offer(offer, **wanted)
            if key is not None:
                if len(_ANSWERS) >= 256:
                    _ANSWERS.clear()
                _ANSWERS[key] = settled
        reply, options = settled
        self.options = options
        self.awaiting = None
        self.phase = NEGOTIATED
        return reply

    def check_send(self, reply: Reply) -> None:
        """Refuse a reply our side may not send now (P-RPL-*, P-MOD-1, P-MOD-2); update state on a final one."""
        awaiting = self.awaiting
        if reply is _CONTINUE and awaiting is not None and awaiting != "O":
            self.awaiting = None  # the common answer: what _final does for it, without the checks (P-SM-6)
            if awaiting == "E":
                self.message_step = 0
            return
        if awaiting is None:
            raise LocalProtocolError(f"reply {reply.LETTER!r} sent while no command awaits one", "P-RPL-1")
        if isinstance(reply, NegotiateReply) or awaiting == "O":
            raise LocalProtocolError("negotiation replies go through negotiate()", "P-NEG-3")
        options = self.options
        assert options is not None
        if not reply.FINAL:
            if awaiting != "E":
                raise LocalProtocolError(f"{type(reply).__name__} outside end of message", "P-MOD-1")
            if isinstance(reply, Modification):
                self._modification(reply, awaiting, options, local=True)
            elif not isinstance(reply, Progress):
                raise LocalProtocolError(f"unexpected non-final reply {reply!r}", "P-RPL-1")
            return
        check_final_reply(awaiting, reply, options)
        self._final(awaiting, reply)


#: the skipped letters of a state whose milter skipped nothing (shared)
_NOTHING_SKIPPED: frozenset[str] = frozenset()


def check_final_reply(awaiting: str, reply: Reply, options: Options) -> None:
    """Refuse a final reply to ``awaiting`` the milter side may not send (P-RPL-6, P-RPL-8, P-RPL-12, reply text);
    also used where a milter's methods are called without a socket (milterman.milter.inprocess)."""
    if isinstance(reply, Skip) and (awaiting != "B" or not options.skip_allowed):
        raise LocalProtocolError("skip is only sent for body chunks with SKIP negotiated", "P-RPL-8")
    if isinstance(reply, Discard) and not BY_LETTER[awaiting].discard_allowed:
        raise LocalProtocolError("discard is meaningless at connect, helo and unknown", "P-RPL-6")
    if isinstance(reply, ConnectionFailure):
        raise LocalProtocolError("connection-failure is accepted by no MTA", "P-RPL-12")
    if isinstance(reply, ReplyCode):
        try:
            parse_reply_text(reply.text)
        except MalformedPacket as error:
            raise LocalProtocolError(f"invalid reply text: {error}", error.rule) from None


class MtaState(_Grammar):
    """MTA-side session state: what we may send, which replies are owed and legal (P-SM-9, P-SM-10)."""

    __slots__ = ("offer", "skipped")
    _FAIL = LocalProtocolError

    def __init__(self, offer: Negotiate, *, strict: bool = True) -> None:
        super().__init__(strict)
        self.offer = offer
        #: event letters the milter answered with skip in this message (Postfix style, P-RPL-8); a set
        #: of its own only once there is one (most milters never skip: a held session has one per child)
        self.skipped: set[str] | frozenset[str] = _NOTHING_SKIPPED

    def will_send(self, letter: str) -> bool:
        """Whether the event should go to this milter now (skip bits, version, earlier skip replies)."""
        options = self.options
        if options is None or self.phase in (REFUSED, CLOSED):
            return False
        if letter in MESSAGE_STEPS and letter != "M" and self.message_step == 0:
            if not options.mail_skipped:
                return False  # the message is over for this milter (P-SM-6)
        return letter in options.sent and letter not in self.skipped

    @property
    def can_quit(self) -> bool:
        """QUIT may be sent now: negotiated, not closed, no reply awaited (P-SM-4, P-RPL-1)."""
        return self.awaiting is None and self.phase not in (INIT, CLOSED)

    def send(self, command: Command) -> bool:
        """Account for a command we are about to send; ``True`` when a reply must be awaited.

        Raises :class:`LocalProtocolError` for a command the options or the
        grammar forbid (P-NEG-10, P-NEG-11, P-SM-1).
        """
        letter = command.LETTER
        phase = self.phase
        if self.awaiting is not None or phase == CLOSED:
            self._opening(letter)
        if phase == INIT:
            if command != self.offer:
                raise LocalProtocolError("the first command must be our negotiation offer", "P-NEG-1")
            self.awaiting = "O"
            return True
        if letter == "O":
            raise LocalProtocolError("a second negotiation on one socket", "P-NEG-1")
        if letter == "D":
            return False
        if letter == "Q":
            self.phase = CLOSED
            return False
        options = self.options
        assert options is not None
        if letter == "A" or letter == "K":
            if letter == "K":
                if options.version < 6:
                    raise LocalProtocolError("QUIT_NC needs protocol version 6", "P-NEG-11")
                self.phase = NEGOTIATED
            self.message_step = 0
            self.skipped = _NOTHING_SKIPPED
            return False
        if phase == REFUSED:
            raise LocalProtocolError(f"sending {letter!r} after the milter ended the connection", "P-SM-6")
        if letter not in options.sent:
            raise LocalProtocolError(f"event {letter!r} is suppressed by the negotiated options", "P-NEG-10")
        if letter in self.skipped:
            raise LocalProtocolError(f"the milter skipped further {letter!r} events", "P-RPL-8")
        self._event(letter, options)
        if letter == "M":
            self.skipped = _NOTHING_SKIPPED
        if letter == "E" or letter in options.answered:
            self.awaiting = letter
            return True
        return False

    def receive(self, reply: Reply) -> bool:
        """Account for one packet from the milter; ``True`` when it was the final reply.

        Raises :class:`UnexpectedMessage` (or :class:`NegotiationError`) when the
        milter must be failed (P-BAD-31 … P-BAD-45).
        """
        awaiting = self.awaiting
        if reply is _CONTINUE and awaiting is not None and awaiting != "O":
            # the common answer: what the checks and _final below do for it, without them (P-SM-6)
            self.awaiting = None
            if awaiting == "E":
                self.message_step = 0
            if self.message_step == 0:
                self.skipped = _NOTHING_SKIPPED
            return True
        if awaiting is None:
            raise UnexpectedMessage(f"reply {reply.LETTER!r} while no reply is awaited", "P-BAD-45")
        if awaiting == "O":
            if not isinstance(reply, NegotiateReply):
                raise UnexpectedMessage(f"reply {reply.LETTER!r} instead of the negotiation reply", "P-BAD-31")
            self.options, self.warnings = check_reply(self.offer, reply, strict=self.strict)
            self.awaiting = None
            self.phase = NEGOTIATED
            return True
        if isinstance(reply, NegotiateReply):
            raise UnexpectedMessage("negotiation reply outside negotiation", "P-BAD-31")
        options = self.options
        assert options is not None
        if isinstance(reply, ConnectionFailure):
            raise UnexpectedMessage("connection-failure reply", "P-BAD-35")
        if not reply.FINAL:
            if not isinstance(reply, Progress):
                assert isinstance(reply, Modification)
                self._modification(reply, awaiting, options, local=False)
            return False
        if isinstance(reply, Skip):
            if not options.skip_allowed:
                raise UnexpectedMessage("skip without SMFIP_SKIP negotiated", "P-RPL-8")
            if awaiting == "E" or awaiting not in MESSAGE_STEPS:  # Postfix: only inside a message (P-RPL-8)
                raise UnexpectedMessage(f"skip in reply to {awaiting!r}", "P-RPL-8")
            self.skipped = self.skipped | {awaiting}
        if not self._final(awaiting, reply) and (awaiting == "E" or self.message_step == 0):
            self.skipped = _NOTHING_SKIPPED
        return True
