"""The manager-level rule chain ``[[rule]]`` (C-RULE-1…6).

Run by the leader once per MTA command, before any child gets it, never for replays
(C-RULE-5); the leader applies the outcome (terminal reply, skip/only stops checked
before conditions, C-RULE-6, macros for every child).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from ..config.model import Configuration, RuleSettings
from ..log import DEBUG, Logger
from ..log import logger as default_logger
from ..protocol import ReplyCode, format_reply_text
from ..protocol.stages import STAGE_LETTERS
from .context import RuleOutcome
from .predicates import Scope, Test, add_macros, compile_match, match_reads
from .status import Status, status_named


class CompiledRule:
    """One ``[[rule]]`` ready to run: its test and a precomputed effect."""

    __slots__ = ("settings", "test", "terminal", "reply", "stopped", "macros", "final", "label")

    def __init__(self, settings: RuleSettings, test: Test | None, milter_names: tuple[str, ...]) -> None:
        self.settings = settings
        self.test = test
        self.label = settings.name or f"{settings.stage}:{settings.action}"
        #: C-RULE-3: accept / reject / temporary-failure / discard
        self.terminal: Status | None = status_named(settings.action) if settings.terminal else None
        reply = settings.reply
        self.reply = (ReplyCode(format_reply_text(reply.code, reply.xcode, reply.text or ""))
                      if reply is not None and settings.action in ("reject", "temporary-failure") else None)
        listed = frozenset(name for name in milter_names
                           if any(fnmatchcase(name, pattern) for pattern in settings.milters))
        #: C-RULE-2: skip stops the listed milters, only every other one
        if settings.action == "skip":
            self.stopped = listed
        elif settings.action == "only":
            self.stopped = frozenset(milter_names) - listed
        else:
            self.stopped = frozenset()
        #: C-RULE-4
        self.macros = dict(settings.set_macros) if settings.action == "set-macro" else {}
        self.final = settings.final


class RuleChain:
    """``(facts, letter, command) -> RuleOutcome | None`` over the rules of that stage (C-RULE-1…4).

    Rules of the stage run in file order; each matching rule takes effect; a ``final`` one
    ends the evaluation; a terminal one ends it too and discards what earlier rules did.
    None when nothing matched (the leader then has nothing to do). Falsy when there is no rule.
    """

    def __init__(self, configuration: Configuration, site, logger: Logger | None = None) -> None:
        self.logger = logger or default_logger
        names = tuple(milter.name for milter in configuration.milters)
        by_letter: dict[str, list[CompiledRule]] = {}
        reads: set[str] = set()
        macros: dict[str, list[str]] = {}
        for settings in configuration.rules:
            letter = STAGE_LETTERS[settings.stage]
            test = compile_match(settings.match, letter, site)
            by_letter.setdefault(letter, []).append(CompiledRule(settings, test, names))
            stages, read_macros = match_reads(settings.match, letter)
            reads |= stages
            for macro_letter, macro_names in read_macros.items():
                add_macros(macros, macro_letter, macro_names)
        self.by_letter = {letter: tuple(rules) for letter, rules in by_letter.items()}
        #: D-2: MTA stages and macros the rules read
        self.reads = frozenset(reads)
        self.macros = {letter: tuple(names) for letter, names in macros.items()}

    def __bool__(self) -> bool:
        return bool(self.by_letter)

    def __call__(self, facts, letter: str, command) -> RuleOutcome | None:
        rules = self.by_letter.get(letter)
        if not rules:
            return None
        scope = Scope(facts, None, letter, command)
        stopped: frozenset[str] = frozenset()
        macros: dict[str, str] = {}
        matched = False
        for rule in rules:
            if rule.test is not None and not rule.test(scope):
                continue
            if self.logger.enabled(DEBUG):
                self.logger.debug(f"[{facts.session_id}] [manager][rule][match] [{rule.label}] {letter}")
            if rule.terminal is not None:
                return RuleOutcome(terminal=rule.terminal, reply=rule.reply)  # C-RULE-3
            matched = True
            if rule.stopped:
                stopped = stopped | rule.stopped
            if rule.macros:
                macros.update(rule.macros)
            if rule.final:
                break
        if not matched or (not stopped and not macros):
            return None
        return RuleOutcome(stopped=stopped, macros=macros)
