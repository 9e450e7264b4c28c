"""What the manager offers each child and what it asks of the MTA (D-2, M-NEG-*, M-MAC-3).

Pure functions of the MTA's offer, the children's settled options and what the
configured conditions and rules read: no sockets, no state, so every rule of the
negotiation can be checked with values alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ...net import Wanted
from ...protocol import Action, MacroStage, Negotiate, Options, Step
from ...protocol.flags import CAPABILITY_STEPS, SKIP_STEPS
from ...protocol.stages import MACRO_STAGE_LETTERS, SKIP_BITS

#: the highest protocol version offered to a child (M-NEG-1)
CHILD_MAX_VERSION = 6
_HEADER_ACTIONS = Action.ADD_HEADERS | Action.CHANGE_HEADERS


def child_offer(offer: Negotiate) -> Negotiate:
    """Every child gets the MTA's original offer, version capped at 6 (D-2, M-NEG-1)."""
    return Negotiate(min(offer.version, CHILD_MAX_VERSION), offer.actions, offer.protocol)


def mta_request(offer: Negotiate, alive: Sequence[Options], stages_read: Iterable[str],
                macros_read: Mapping[str, Sequence[str]]) -> Wanted:
    """The reply to the MTA from the negotiated children's options (D-2, M-NEG-3, M-NEG-3a, M-NEG-3b).

    Actions: what the MTA offered and some child asked for. Events: skipped only when every child
    asked to skip them and no condition or rule reads them; MAIL is always asked for (it delimits
    transactions, M-AGG-2a) and so are headers when header edits are possible (they are a diff
    against the MTA's headers, M-EOM-3). Capabilities: when any child asked. No-reply bits never.
    """
    requested_actions = 0
    for options in alive:
        requested_actions |= options.actions
    actions = offer.actions & requested_actions
    protocol = 0
    if alive:
        skips = int(SKIP_STEPS)
        for options in alive:
            skips &= options.protocol
        for letter in stages_read:
            skips &= ~SKIP_BITS.get(letter, 0)
        skips &= ~int(Step.NO_MAIL)
        if actions & _HEADER_ACTIONS:
            skips &= ~int(Step.NO_HEADERS)
        protocol |= skips
        for options in alive:
            protocol |= options.protocol & CAPABILITY_STEPS
    lists = macro_lists(alive, macros_read)
    if lists:
        actions |= Action.SET_SYMBOL_LIST & offer.actions
    # skip bits and capabilities only: never a no-reply (M-NEG-3a) nor a data-size bit
    return Wanted(actions=actions, protocol=int(protocol), macro_lists=lists)


def macro_lists(alive: Sequence[Options], macros_read: Mapping[str, Sequence[str]]) -> tuple[tuple[int, str], ...]:
    """Per macro stage: the union of the children's lists plus what conditions and rules read; no list
    for a stage where a child relies on the MTA's default macros (D-2, M-MAC-3)."""
    if not alive:
        return ()
    lists = []
    for stage in MacroStage:
        letter = MACRO_STAGE_LETTERS[stage]
        names: list[str] = []
        for options in alive:
            requested = options.macro_request(letter)
            if requested is None:
                break
            names.extend(name for name in requested if name not in names)
        else:
            for name in macros_read.get(letter, ()):
                if name not in names:
                    names.append(name)
            lists.append((int(stage), " ".join(name if len(name) == 1 else "{" + name + "}" for name in names)))
    return tuple(lists)
