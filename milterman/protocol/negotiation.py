"""Option negotiation on both sides (P-NEG-*).

:func:`answer_offer` computes a milter's reply from the MTA's offer and what the
application wants (P-NEG-8); :func:`check_reply` validates a milter's reply on
the MTA side (P-NEG-9). Both produce the same :class:`Options`, from which each
side derives which events are sent and which are answered (P-NEG-10, P-NEG-11).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from .errors import NegotiationError
from .flags import (
    CAPABILITY_STEPS,
    MAX_DATA_SIZE_1M,
    MAX_DATA_SIZE_256K,
    MAX_DATA_SIZE_DEFAULT,
    MAX_VERSION,
    MDS_STEPS,
    NO_REPLY_STEPS,
    SKIP_STEPS,
    Action,
    MacroStage,
    Step,
)
from .messages import Negotiate, NegotiateReply, strip_braces
from .stages import EVENT_FLAGS, MACRO_STAGE_LETTERS  # EVENT_FLAGS: also read from here by older callers

_MACRO_NAME_SPLIT = re.compile(r"[\s,]+")
_NO_MAIL = int(Step.NO_MAIL)
_HEADER_LEADING_SPACE = int(Step.HEADER_LEADING_SPACE)
_SKIP = int(Step.SKIP)
_RCPT_REJECTED = int(Step.RCPT_REJECTED)
_SET_SYMBOL_LIST = int(Action.SET_SYMBOL_LIST)
_MDS = int(MDS_STEPS)
_MDS_1M = int(Step.MDS_1M)
_MDS_256K = int(Step.MDS_256K)
#: the bits a milter may ask for, besides MDS (P-NEG-8 steps 4-6)
_ANSWERABLE = int(SKIP_STEPS | NO_REPLY_STEPS | CAPABILITY_STEPS)


@functools.lru_cache(maxsize=256)
def _event_letters(version: int, protocol: int) -> tuple[frozenset[str], frozenset[str]]:
    """The letters sent and answered under ``version`` and ``protocol`` (P-NEG-10, P-NEG-11).

    Shared by every :class:`Options` with the same words: a manager holds one per child per
    session, and two frozensets each would be the largest part of a held session.
    """
    sent = {"O", "D", "E", "A", "Q"}
    if version >= 6:
        sent.add("K")
    answered = {"O", "E"}
    for letter, (skip_bit, no_reply_bit, since) in EVENT_FLAGS.items():
        if version >= since and not protocol & skip_bit:
            sent.add(letter)
            if not protocol & no_reply_bit:
                answered.add(letter)
    return frozenset(sent), frozenset(answered)


@dataclass(frozen=True, slots=True)
class Options:
    """The settled result of a negotiation, fixed for the life of the socket (P-NEG-9)."""

    version: int
    actions: Action
    protocol: Step
    macro_lists: tuple[tuple[int, str], ...] = ()
    #: letters of the events the MTA sends (P-NEG-10)
    sent: frozenset[str] = field(init=False, repr=False, compare=False)
    #: letters of the commands the milter answers
    answered: frozenset[str] = field(init=False, repr=False, compare=False)
    #: plain-int copies of the flag words and the one test made per command (IntFlag arithmetic is slow)
    action_bits: int = field(init=False, repr=False, compare=False)
    protocol_bits: int = field(init=False, repr=False, compare=False)
    mail_skipped: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        protocol = int(self.protocol)
        object.__setattr__(self, "action_bits", int(self.actions))
        object.__setattr__(self, "protocol_bits", protocol)
        object.__setattr__(self, "mail_skipped", bool(protocol & _NO_MAIL))
        sent, answered = _event_letters(self.version, protocol)
        object.__setattr__(self, "sent", sent)
        object.__setattr__(self, "answered", answered)

    @property
    def max_data_size(self) -> int:
        """The negotiated packet data limit (P-FRM-3, P-NEG-12); body chunks stay at 65535."""
        protocol = self.protocol_bits  # plain ints: IntFlag's & is three Python calls
        if protocol & _MDS_1M:
            return MAX_DATA_SIZE_1M
        if protocol & _MDS_256K:
            return MAX_DATA_SIZE_256K
        return MAX_DATA_SIZE_DEFAULT

    @property
    def header_leading_space(self) -> bool:
        """Header values travel with their leading space (P-MOD-6)."""
        return bool(self.protocol_bits & _HEADER_LEADING_SPACE)

    @property
    def skip_allowed(self) -> bool:
        return bool(self.protocol_bits & _SKIP)

    @property
    def rcpt_rejected(self) -> bool:
        return bool(self.protocol_bits & _RCPT_REJECTED)

    def macro_request(self, letter: str) -> tuple[str, ...] | None:
        """Macro names (without braces) the milter asked for at ``letter``'s stage; ``None`` = MTA default (P-NEG-14).

        An empty string means "send none", as Sendmail reads it. Unknown stage
        numbers were skipped when the reply was checked.
        """
        for stage, names in self.macro_lists:
            if MACRO_STAGE_LETTERS.get(stage) == letter:
                return tuple(strip_braces(name) for name in _MACRO_NAME_SPLIT.split(names) if name)
        return None


@functools.lru_cache(maxsize=256)
def shared_options(version: int, actions: int, protocol: int, macro_lists: tuple[tuple[int, str], ...]) -> Options:
    """The :class:`Options` for these words, one object for all the connections that settle on them
    (they are immutable; a manager holds one per child per session)."""
    return Options(version, Action(actions), Step(protocol), macro_lists)


def answer_offer(offer: Negotiate, *, actions: int = Action.NONE, protocol: int = Step.NONE,
                 macro_lists: tuple[tuple[int, str], ...] = (), required_actions: int = Action.NONE,
                 max_version: int = MAX_VERSION) -> tuple[NegotiateReply, Options]:
    """The milter's reply to ``offer`` and the options it settles (P-NEG-8).

    ``actions``/``protocol`` are what the application would like; bits the MTA
    did not offer are dropped (the runner answers unwanted events itself with
    ``c``), except ``required_actions``, whose absence makes negotiation fail.
    Raises :class:`NegotiationError` when the connection must be closed.
    """
    if offer.version < 2:
        raise NegotiationError(f"MTA offers protocol version {offer.version}; at least 2 is needed", "P-BAD-7")
    version = min(max_version, offer.version)
    offered_actions = int(offer.actions or Action.V1)
    offered_protocol = int(offer.protocol or Step.V1)
    actions, protocol, required_actions = int(actions), int(protocol), int(required_actions)
    if required_actions & ~offered_actions:
        missing = Action(required_actions & ~offered_actions)
        raise NegotiationError(f"MTA does not offer the required actions {missing!r}", "P-BAD-8")
    reply_actions = actions & offered_actions
    lists: tuple[tuple[int, str], ...] = ()
    if macro_lists and offered_actions & _SET_SYMBOL_LIST and version >= 6:
        lists = tuple((int(stage), names) for stage, names in macro_lists)
        reply_actions |= _SET_SYMBOL_LIST
    reply_protocol = protocol & ~_MDS & offered_protocol & _ANSWERABLE
    for bit in (_MDS_1M, _MDS_256K):
        if protocol & bit and offered_protocol & bit:
            reply_protocol |= bit
            break
    reply = NegotiateReply(version, int(reply_actions), int(reply_protocol), lists)
    return reply, shared_options(version, int(reply_actions), int(reply_protocol), lists)


def check_reply(offer: Negotiate, reply: NegotiateReply, *, strict: bool = True) -> tuple[Options, list[str]]:
    """Validate a milter's negotiation reply against our offer (P-NEG-9, P-BAD-31..34).

    Returns the options and a list of warnings (masked bits in lenient mode,
    skipped unknown macro stages). Raises :class:`NegotiationError` when the
    milter must be failed.
    """
    warnings: list[str] = []
    if reply.version < 2 or reply.version > offer.version:
        raise NegotiationError(f"milter answered protocol version {reply.version} to an offer of "
                               f"{offer.version}", "P-BAD-31")
    extra_actions = reply.actions & ~offer.actions
    if extra_actions:
        raise NegotiationError(f"milter requests actions 0x{extra_actions:x} that were not offered", "P-BAD-32")
    protocol = reply.protocol
    extra_protocol = protocol & ~offer.protocol
    if extra_protocol:
        if strict:
            raise NegotiationError(f"milter requests protocol bits 0x{extra_protocol:x} that were not offered",
                                   "P-BAD-33")
        warnings.append(f"masked protocol bits 0x{extra_protocol:x} that were not offered (P-BAD-33)")
        protocol &= offer.protocol
    lists = []
    for stage, names in reply.macro_lists:
        if stage not in MacroStage._value2member_map_:
            warnings.append(f"skipped macro list for unknown stage {stage} (P-BAD-34)")
            continue
        lists.append((stage, names))
    return shared_options(reply.version, reply.actions, protocol, tuple(lists)), warnings
