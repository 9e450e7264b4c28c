"""Option-negotiation flags, stage numbers and their printable names (P-NEG-5, P-NEG-6, P-NEG-13).

The names printed by the tools follow the manuals, so they are declared here next to
the bits they describe rather than in each tool.
"""

from __future__ import annotations

import enum

#: The highest protocol version we speak (P-NEG-4).
MAX_VERSION = 6
#: Data-size limits (P-FRM-3).
MAX_DATA_SIZE_DEFAULT = 65535
MAX_DATA_SIZE_256K = 262143
MAX_DATA_SIZE_1M = 1048575
BODY_CHUNK_SIZE = 65535


class Action(enum.IntFlag):
    """SMFIF_*: what the milter may do at end of message (P-NEG-5)."""

    ADD_HEADERS = 0x001
    CHANGE_BODY = 0x002
    ADD_RCPT = 0x004
    DELETE_RCPT = 0x008
    CHANGE_HEADERS = 0x010
    QUARANTINE = 0x020
    CHANGE_FROM = 0x040
    ADD_RCPT_WITH_PARAMETERS = 0x080
    SET_SYMBOL_LIST = 0x100

    NONE = 0
    V1 = 0x0F
    V2 = 0x3F
    ALL = 0x1FF


class Step(enum.IntFlag):
    """SMFIP_*: skip, no-reply and capability bits of the protocol word (P-NEG-6)."""

    NO_CONNECT = 0x000001
    NO_HELO = 0x000002
    NO_MAIL = 0x000004
    NO_RCPT = 0x000008
    NO_BODY = 0x000010
    NO_HEADERS = 0x000020
    NO_END_OF_HEADER = 0x000040
    NO_REPLY_HEADER = 0x000080
    NO_UNKNOWN = 0x000100
    NO_DATA = 0x000200
    SKIP = 0x000400
    RCPT_REJECTED = 0x000800
    NO_REPLY_CONNECT = 0x001000
    NO_REPLY_HELO = 0x002000
    NO_REPLY_MAIL = 0x004000
    NO_REPLY_RCPT = 0x008000
    NO_REPLY_DATA = 0x010000
    NO_REPLY_UNKNOWN = 0x020000
    NO_REPLY_END_OF_HEADER = 0x040000
    NO_REPLY_BODY = 0x080000
    HEADER_LEADING_SPACE = 0x100000
    MDS_256K = 0x10000000
    MDS_1M = 0x20000000

    NONE = 0
    V1 = 0x3F
    V2 = 0x7F
    ALL = 0x1FFFFF


#: Bits that ask the MTA not to send an event.
SKIP_STEPS = (Step.NO_CONNECT | Step.NO_HELO | Step.NO_MAIL | Step.NO_RCPT | Step.NO_BODY
              | Step.NO_HEADERS | Step.NO_END_OF_HEADER | Step.NO_UNKNOWN | Step.NO_DATA)
#: Bits with which the milter promises not to reply.
NO_REPLY_STEPS = (Step.NO_REPLY_HEADER | Step.NO_REPLY_CONNECT | Step.NO_REPLY_HELO
                  | Step.NO_REPLY_MAIL | Step.NO_REPLY_RCPT | Step.NO_REPLY_DATA
                  | Step.NO_REPLY_UNKNOWN | Step.NO_REPLY_END_OF_HEADER | Step.NO_REPLY_BODY)
#: Capability bits.
CAPABILITY_STEPS = Step.SKIP | Step.RCPT_REJECTED | Step.HEADER_LEADING_SPACE
MDS_STEPS = Step.MDS_256K | Step.MDS_1M
#: Bits the MTA strips before checking a reply against its offer (SMFI_INTERNAL, P-NEG-12).
INTERNAL_STEPS = 0x70000000


class MacroStage(enum.IntEnum):
    """SMFIM_*: stage numbers of the macro-list request; note EOM=5, EOH=6 (P-NEG-13)."""

    CONNECT = 0
    HELO = 1
    MAIL = 2
    RCPT = 3
    DATA = 4
    END_OF_MESSAGE = 5
    END_OF_HEADER = 6


ACTION_NAMES = (
    (Action.ADD_HEADERS, "add-headers"),
    (Action.CHANGE_BODY, "change-body"),
    (Action.ADD_RCPT, "add-envelope-recipient"),
    (Action.DELETE_RCPT, "delete-envelope-recipient"),
    (Action.CHANGE_HEADERS, "change-headers"),
    (Action.QUARANTINE, "quarantine"),
    (Action.CHANGE_FROM, "change-envelope-from"),
    (Action.ADD_RCPT_WITH_PARAMETERS, "add-envelope-recipient-with-parameters"),
    (Action.SET_SYMBOL_LIST, "set-symbol-list"),
)

STEP_NAMES = (
    (Step.NO_CONNECT, "no-connect"),
    (Step.NO_HELO, "no-helo"),
    (Step.NO_MAIL, "no-envelope-from"),
    (Step.NO_RCPT, "no-envelope-recipient"),
    (Step.NO_BODY, "no-body"),
    (Step.NO_HEADERS, "no-headers"),
    (Step.NO_END_OF_HEADER, "no-end-of-header"),
    (Step.NO_REPLY_HEADER, "no-reply-header"),
    (Step.NO_UNKNOWN, "no-unknown"),
    (Step.NO_DATA, "no-data"),
    (Step.SKIP, "skip"),
    (Step.RCPT_REJECTED, "envelope-recipient-rejected"),
    (Step.NO_REPLY_CONNECT, "no-reply-connect"),
    (Step.NO_REPLY_HELO, "no-reply-helo"),
    (Step.NO_REPLY_MAIL, "no-reply-envelope-from"),
    (Step.NO_REPLY_RCPT, "no-reply-envelope-recipient"),
    (Step.NO_REPLY_DATA, "no-reply-data"),
    (Step.NO_REPLY_UNKNOWN, "no-reply-unknown"),
    (Step.NO_REPLY_END_OF_HEADER, "no-reply-end-of-header"),
    (Step.NO_REPLY_BODY, "no-reply-body"),
    (Step.HEADER_LEADING_SPACE, "header-value-with-leading-space"),
)


def _flag_names(value: int, table: tuple, type_name: str) -> str:
    names = []
    known = 0
    for bit, name in table:
        known |= bit
        if value & bit:
            names.append(name)
    text = "|".join(names)
    unknown = value & ~known
    if unknown:
        text += f" (unknown flags: {type_name}:0x{unknown:x})"
    return text


def action_names(actions: int) -> str:
    """Render action bits as the manual prints them (``add-headers|change-body``)."""
    return _flag_names(int(actions), ACTION_NAMES, "MilterActionFlags")


def step_names(steps: int) -> str:
    """Render protocol bits as the manual prints them."""
    return _flag_names(int(steps), STEP_NAMES, "MilterStepFlags")
