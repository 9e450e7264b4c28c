"""Applicable conditions and the builder the manager application calls.

``build(configuration)`` compiles everything once per (re)load:

* the ten built-in conditions (M-AC-B1…B7), every ``[[restrict_accounts]]`` (M-AC-B8)
  and every ``[[condition]]`` (C-COND-1) into :class:`Condition` objects;
* per milter, a :class:`ConditionChain` (its conditions in ``applicable_conditions``
  order, with the stoppers grouped by stage letter) to put in
  ``ChildDefinition.conditions``;
* the condition evaluator the leader calls before writing a command to a child
  (``ManagerContext.condition_evaluator``, M-AC-2) and the ``[[rule]]`` chain
  (``ManagerContext.rule_evaluator``, B7);
* what conditions and rules read, for the negotiation with the MTA (D-2).

Macros a condition sets on a child (M-MAC-4) go to ``child.macros_extra[letter]`` and are
written with that child's command of the stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from ..config.model import ConditionDefinition, ConditionRule, Configuration
from ..config.predicates import CONDITION_STAGES
from ..log import DEBUG, Logger
from ..log import logger as default_logger
from ..protocol.stages import STAGE_LETTERS
from .builtin_conditions import (SENDMAIL_COMPATIBLE_MACROS, Condition, Resolver, Site, builtin_conditions,
                                 restrict_accounts_condition)
from .predicates import Scope, add_macros, compile_match, match_reads
from .python_conditions import python_condition
from .rules import RuleChain

__all__ = ["Built", "Condition", "ConditionChain", "Site", "build", "compile_condition", "condition_evaluator",
           "SENDMAIL_COMPATIBLE_MACROS"]


class ConditionChain(tuple):
    """The conditions of one milter in attachment order (M-AC-2), a tuple with ``by_letter``: per stage
    letter the ``(condition, stopper)`` pairs to run, so a stage nobody reads costs one dict lookup."""

    by_letter: dict[str, tuple[tuple[Condition, Callable[[Scope], bool]], ...]]

    def __new__(cls, conditions=()) -> ConditionChain:
        chain = super().__new__(cls, conditions)
        by_letter: dict[str, list] = {}
        for condition in chain:
            for letter, stopper in condition.stoppers.items():
                by_letter.setdefault(letter, []).append((condition, stopper))
        chain.by_letter = {letter: tuple(pairs) for letter, pairs in by_letter.items()}
        return chain


def _first_match(rules: tuple[tuple, ...]) -> Callable[[Scope], bool]:
    """C-COND-1: the first rule whose match holds sets its macros and flags and decides; none → apply."""

    def stopper(scope: Scope) -> bool:
        for test, stop, macros, flags in rules:
            if test is None or test(scope):
                if macros:
                    scope.child.macros_extra.setdefault(scope.letter, {}).update(macros)
                if flags:
                    scope.facts.flags.update(flags)
                return stop
        return False

    return stopper


def compile_condition(definition: ConditionDefinition, site: Site) -> Condition:
    """A ``[[condition]]`` (B5) as a :class:`Condition`: one first-match stopper per stage it has rules for."""
    stoppers = {}
    reads: set[str] = set()
    macros: dict[str, list[str]] = {}
    for stage in CONDITION_STAGES:
        rules: tuple[ConditionRule, ...] = definition.rules_for(stage)
        if not rules:
            continue
        letter = STAGE_LETTERS[stage]
        compiled = []
        for rule in rules:
            compiled.append((compile_match(rule.match, letter, site), rule.action == "stop", dict(rule.set_macros),
                             tuple(rule.set_flags)))
            stages, names = match_reads(rule.match, letter)
            reads |= stages
            for macro_letter, macro_names in names.items():
                add_macros(macros, macro_letter, macro_names)
        stoppers[letter] = _first_match(tuple(compiled))
    return Condition(definition.name, stoppers, frozenset(reads),
                     {letter: tuple(names) for letter, names in macros.items()})


def condition_evaluator(logger: Logger | None = None) -> Callable[..., bool]:
    """``(facts, child, letter, command) -> bool``: does one of the child's conditions stop it (M-AC-2)?

    Conditions run in attachment order and stop at the first "stop"; a stopper that raises
    counts as "don't stop" and the next one runs (M-AC-2).
    """
    logger = logger or default_logger
    #: plain tuples (a caller copied the chain with ``tuple()``) → their grouping, computed once
    grouped: dict[int, tuple[tuple, dict]] = {}

    def evaluate(facts, child, letter: str, command) -> bool:
        conditions = child.definition.conditions
        by_letter = getattr(conditions, "by_letter", None)
        if by_letter is None:
            entry = grouped.get(id(conditions))
            if entry is None or entry[0] is not conditions:
                if len(grouped) > 1024:
                    grouped.clear()
                entry = grouped[id(conditions)] = (conditions, ConditionChain(conditions).by_letter)
            by_letter = entry[1]
        pairs = by_letter.get(letter)
        if not pairs:
            return False
        scope = Scope(facts, child, letter, command)
        for condition, stopper in pairs:
            try:
                if stopper(scope):
                    if logger.enabled(DEBUG):
                        logger.debug(f"[{child.id}] [manager][condition][stop] [{child.name}] "
                                     f"[{condition.name}] {letter}")
                    return True
            except Exception as error:  # M-AC-2: a stopper that raises means "don't stop"
                logger.error(f"[{child.id}] [manager][condition][error] [{child.name}] [{condition.name}] "
                             f"{error!r}")
        return False

    return evaluate


class Built(NamedTuple):
    """What :func:`build` gives the manager application (fields of ``ManagerContext`` and ``ChildDefinition``)."""

    #: ``ManagerContext.condition_evaluator``
    condition_evaluator: Callable[..., bool]
    #: ``ManagerContext.rule_evaluator``; None when there is no ``[[rule]]``
    rule_evaluator: Callable | None
    #: milter name → ``ChildDefinition.conditions`` (a :class:`ConditionChain`, possibly empty)
    conditions_per_milter: dict[str, ConditionChain]
    #: ``ManagerContext.stages_read`` (D-2)
    stages_read: frozenset[str]
    #: ``ManagerContext.macros_read`` (D-2)
    macros_read: dict[str, tuple[str, ...]]


def build(configuration: Configuration, *, resolver: Resolver | None = None,
          clock: Callable[[], time.struct_time] | None = None, stress_threshold: int | None = None,
          logger: Logger | None = None) -> Built:
    """Compile the conditions and rules of ``configuration`` (B4, B5, B7, M-AC-*).

    ``resolver`` replaces the DNS lookups of M-AC-B7 (``resolve(names, timeout) -> {name:
    addresses}``), ``clock`` the local time of ``time`` predicates, ``stress_threshold`` the
    ``[stress]`` value (and its detection); all three exist for tests. ``stages_read`` and
    ``macros_read`` cover the conditions attached to enabled milters and every rule (D-2).
    """
    logger = logger or default_logger
    site = Site(configuration, resolver=resolver, clock=clock, stress_threshold=stress_threshold, logger=logger)
    defined: dict[str, Condition] = builtin_conditions(site)
    for restriction in configuration.restrict_accounts:
        defined[restriction.condition_name] = restrict_accounts_condition(restriction)
    for definition in configuration.conditions:
        if definition.python is not None:
            defined[definition.name] = python_condition(definition.name, definition.python, logger)
        else:
            defined[definition.name] = compile_condition(definition, site)

    per_milter: dict[str, ConditionChain] = {}
    used: dict[str, Condition] = {}
    for milter in configuration.milters:
        chain = []
        for name in milter.applicable_conditions:
            condition = defined.get(name)
            if condition is None:
                raise ValueError(f"milter {milter.name!r}: unknown applicable condition {name!r}")
            chain.append(condition)
            if milter.enabled:
                used[name] = condition
        per_milter[milter.name] = ConditionChain(chain)

    rules = RuleChain(configuration, site, logger)
    stages: set[str] = set(rules.reads)
    macros: dict[str, list[str]] = {}
    for letter, names in rules.macros.items():
        add_macros(macros, letter, names)
    for condition in used.values():
        stages |= condition.reads
        for letter, names in condition.macros.items():
            add_macros(macros, letter, names)
    return Built(condition_evaluator(logger), rules if rules else None, per_milter, frozenset(stages),
                 {letter: tuple(names) for letter, names in macros.items() if names})
