"""The one table of milter stages: command letter, names, bits and grammar facts (P-CMD-0, P-NEG-6, P-SM-1).

Every module that needs "which letter is envelope-from", "what is the no-reply bit of
DATA" or "which handler method serves HEADER" reads it here; nothing else spells the
stage vocabulary out. The table holds the ten SMTP-event stages in protocol order
(C-TOML-5); the derived mappings below are plain dicts and ints for the per-packet path.
"""

from __future__ import annotations

from dataclasses import dataclass

from .flags import MacroStage, Step


@dataclass(frozen=True, slots=True)
class Stage:
    """One SMTP-event stage of the milter protocol."""

    #: the command byte on the wire (SMFIC_*), also the stage letter of its macro packet (P-MAC-1)
    letter: str
    #: the name configurations, logs and tools use (C-TOML-5): ``envelope-from``
    name: str
    #: the milter handler method that serves it: ``envelope_from``
    handler: str
    #: SMFIP_NO*: asks the MTA not to send the event (P-NEG-6); 0 when it cannot be skipped
    skip_bit: int
    #: SMFIP_NR_*: the milter will not reply to it (P-NEG-11); 0 when a reply is always owed
    no_reply_bit: int
    #: the lowest protocol version that defines the event (P-CMD-0)
    since: int
    #: SMFIM_* number of its own macro list (P-NEG-13), or None when it has none
    macro_stage: MacroStage | None
    #: the letter whose macro list serves this stage (itself, or the nearest earlier list, M-MAC-3)
    macro_list: str
    #: position inside a message (1 = MAIL … 7 = end of message), 0 outside one (P-SM-1)
    message_step: int
    #: may repeat at its message step (RCPT, HEADER, BODY)
    repeats: bool
    #: what a reject or tempfail at this stage ends (P-SM-6): ``connection``, ``message``,
    #: ``recipient`` (that recipient only) or ``nothing`` (UNKNOWN: the MTA's own error stands)
    refusal: str
    #: carries the message content (header, end-of-header, body, end-of-message), not the envelope
    content: bool

    @property
    def discard_allowed(self) -> bool:
        """Discard means something here: inside a message, not at connect, helo or unknown (P-RPL-6)."""
        return self.refusal in ("message", "recipient")


def _stage(letter: str, name: str, skip: Step | int, no_reply: Step | int, since: int, macro_stage, macro_list: str,
           message_step: int, repeats: bool, refusal: str) -> Stage:
    return Stage(letter, name, name.replace("-", "_"), int(skip), int(no_reply), since, macro_stage, macro_list,
                 message_step, repeats, refusal, letter in "LNBE")


#: The stages in protocol order (C-TOML-5).
STAGES: tuple[Stage, ...] = (
    _stage("C", "connect", Step.NO_CONNECT, Step.NO_REPLY_CONNECT, 2, MacroStage.CONNECT, "C", 0, False, "connection"),
    _stage("H", "helo", Step.NO_HELO, Step.NO_REPLY_HELO, 2, MacroStage.HELO, "H", 0, False, "connection"),
    _stage("M", "envelope-from", Step.NO_MAIL, Step.NO_REPLY_MAIL, 2, MacroStage.MAIL, "M", 1, False, "message"),
    _stage("R", "envelope-recipient", Step.NO_RCPT, Step.NO_REPLY_RCPT, 2, MacroStage.RCPT, "R", 2, True,
           "recipient"),
    _stage("T", "data", Step.NO_DATA, Step.NO_REPLY_DATA, 4, MacroStage.DATA, "T", 3, False, "message"),
    _stage("U", "unknown", Step.NO_UNKNOWN, Step.NO_REPLY_UNKNOWN, 3, None, "C", 0, False, "nothing"),
    _stage("L", "header", Step.NO_HEADERS, Step.NO_REPLY_HEADER, 2, None, "T", 4, True, "message"),
    _stage("N", "end-of-header", Step.NO_END_OF_HEADER, Step.NO_REPLY_END_OF_HEADER, 2, MacroStage.END_OF_HEADER,
           "N", 5, False, "message"),
    _stage("B", "body", Step.NO_BODY, Step.NO_REPLY_BODY, 2, None, "N", 6, True, "message"),
    _stage("E", "end-of-message", 0, 0, 2, MacroStage.END_OF_MESSAGE, "E", 7, False, "message"),
)

#: letter → stage
BY_LETTER: dict[str, Stage] = {stage.letter: stage for stage in STAGES}
#: name (``envelope-from``) → stage
BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
#: every stage letter, in protocol order
LETTERS = "".join(stage.letter for stage in STAGES)
#: every stage name, in protocol order (C-TOML-5)
NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)

#: letter → name, with OPTNEG's ``negotiate`` (the "last stage" of logs and statistics)
STAGE_NAMES: dict[str, str] = {"O": "negotiate", **{stage.letter: stage.name for stage in STAGES}}
#: name → letter
STAGE_LETTERS: dict[str, str] = {stage.name: stage.letter for stage in STAGES}
#: letter → handler method name
HANDLER_METHODS: dict[str, str] = {stage.letter: stage.handler for stage in STAGES}
#: letter → SMFIP_NO* bit (only the stages that have one)
SKIP_BITS: dict[str, int] = {stage.letter: stage.skip_bit for stage in STAGES if stage.skip_bit}
#: letter → SMFIP_NR_* bit (only the stages that have one)
NO_REPLY_BITS: dict[str, int] = {stage.letter: stage.no_reply_bit for stage in STAGES if stage.no_reply_bit}
#: letter → (skip bit, no-reply bit, lowest version), for the stages negotiation can switch off (P-NEG-10, P-NEG-11)
EVENT_FLAGS: dict[str, tuple[int, int, int]] = {
    stage.letter: (stage.skip_bit, stage.no_reply_bit, stage.since) for stage in STAGES if stage.skip_bit}
#: SMFIM_* stage number → the letter its macros travel with (P-NEG-13)
MACRO_STAGE_LETTERS: dict[MacroStage, str] = {
    stage.macro_stage: stage.letter for stage in STAGES if stage.macro_stage is not None}
#: letter → SMFIM_* stage number, for the stages with a macro list of their own
MACRO_LETTER_STAGES: dict[str, MacroStage] = {letter: number for number, letter in MACRO_STAGE_LETTERS.items()}
#: letter → the letter whose macro list serves it (M-MAC-3)
MACRO_LIST_LETTERS: dict[str, str] = {stage.letter: stage.macro_list for stage in STAGES}
#: letter → (message step, may repeat) for the commands inside a message (P-SM-1)
MESSAGE_STEPS: dict[str, tuple[int, bool]] = {
    stage.letter: (stage.message_step, stage.repeats) for stage in STAGES if stage.message_step}
#: the message step of end of message
END_OF_MESSAGE_STEP = BY_LETTER["E"].message_step
#: letters of the content stages (header … end-of-message); the others are connection and envelope stages
CONTENT_LETTERS = frozenset(stage.letter for stage in STAGES if stage.content)
#: letters of the envelope and connection stages (connect … data, unknown)
ENVELOPE_LETTERS = frozenset(stage.letter for stage in STAGES if not stage.content)
#: every SMFIP_NO* bit of the table
ALL_SKIP_BITS = sum(SKIP_BITS.values())


def stage_name(letter: str, default: str | None = None) -> str:
    """The name of ``letter``'s stage (``negotiate`` for OPTNEG); ``default`` (or the letter) if none."""
    return STAGE_NAMES.get(letter, letter if default is None else default)


__all__ = ["ALL_SKIP_BITS", "BY_LETTER", "BY_NAME", "CONTENT_LETTERS", "END_OF_MESSAGE_STEP", "ENVELOPE_LETTERS",
           "EVENT_FLAGS", "HANDLER_METHODS", "LETTERS", "MACRO_LETTER_STAGES", "MACRO_LIST_LETTERS",
           "MACRO_STAGE_LETTERS", "MESSAGE_STEPS", "NAMES", "NO_REPLY_BITS", "SKIP_BITS", "STAGES", "STAGE_LETTERS",
           "STAGE_NAMES", "Stage", "stage_name"]
