"""What every leader of one serving process shares: the settings it runs with and the counters.

A leader copies the child definitions when its MTA connection negotiates (M-SES-2);
manager-level settings are read live from here.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from ..log import DEBUG, STATISTICS, Logger
from ..log import logger as default_logger
from .child import ChildDefinition
from .disconnect import NO_WATCH, DisconnectCheck, Watch, connection_facts
from .health import HealthBoard
from .metrics import Recorder
from .status import Status


@dataclass
class RuleOutcome:
    """What the manager rule chain decided for one MTA command (B7, C-RULE-1…6)."""

    #: a terminal action: the manager answers the MTA itself with this status (C-RULE-3)
    terminal: Status | None = None
    #: the SMTP text for a terminal reject / temporary-failure (``y``), already formatted
    reply: object = None
    #: names of the children stopped for this stage by skip / only (C-RULE-2)
    stopped: frozenset[str] = frozenset()
    #: macros added to every child for this stage (C-RULE-4)
    macros: dict[str, str] = field(default_factory=dict)


@dataclass
class ManagerContext:
    """Settings and counters of one serving process (per worker, M-WRK-1)."""

    definitions: tuple[ChildDefinition, ...] = ()
    fallback_status: Status = Status.ACCEPT
    chunk_size: int = 65535
    #: stage letters some condition or rule reads: never suppressed towards the MTA (D-2)
    stages_read: frozenset[str] = frozenset()
    #: macro names conditions and rules read, per stage letter (added to the MTA macro request, D-2)
    macros_read: dict[str, tuple[str, ...]] = field(default_factory=dict)
    logger: Logger = default_logger
    #: (facts, child, stage letter, command) → True when a condition stops the child (M-AC-2)
    condition_evaluator: Callable | None = None
    #: (facts, stage letter, command) → RuleOutcome or None (B7); None when no rule exists
    rule_evaluator: Callable | None = None
    sessions_processing: int = 0
    #: sessions finished, in ``_finished[0]`` (a machine number, see metrics.Tally): :attr:`sessions_finished`
    _finished: array = field(default_factory=lambda: array("q", (0,)))
    _pending_finished: int = 0
    max_pending_finished_sessions: int = 0
    #: the process's counters: the controller's status and the metrics endpoint (D-7)
    recorder: Recorder = field(default_factory=Recorder)
    #: the disconnect check (M-ERR-8), None when off
    disconnect: DisconnectCheck | None = None

    def watch(self, leader):
        """The disconnect watch of one leader (a no-op without the check, M-ERR-8)."""
        if self.disconnect is None:
            return NO_WATCH
        return Watch(self.disconnect, lambda: connection_facts(leader.session, leader.facts.connect_command),
                     self.logger, leader.session.id)
    #: each child's health in this process, shared by its sessions (made from ``definitions``)
    health: HealthBoard | None = None
    #: "All milters are no longer alive" for a session that reached no child is logged (until one is reached)
    unreachable_reported: bool = False

    def __post_init__(self) -> None:
        if self.health is None:
            self.health = HealthBoard(self.definitions, self.logger)

    def manager_error(self, session_id: int, reason: str, none_reached: bool) -> None:
        """The line for a session the manager answers itself (M-ERR-7).

        With no child configured at all this is every session's normal path, announced once at
        start: not an error per mail (issue 8). When children are configured but none of the
        session could be reached (``none_reached``), the down lines explain it: the error line is
        written once until a session reaches a child again, then at debug level.
        """
        logger = self.logger
        if not self.definitions:
            if logger.enabled(DEBUG):
                logger.debug(f"[{session_id}] [manager] no child milter: {reason}")
        elif none_reached:
            if self.unreachable_reported:
                if logger.enabled(DEBUG):
                    logger.debug(f"[{session_id}] [manager][error] {reason}")
            else:
                self.unreachable_reported = True
                logger.error(f"[{session_id}] [manager][error] {reason} (no child could be reached; "
                             f"said once until a session reaches one again)")
        else:
            logger.error(f"[{session_id}] [manager][error] {reason}")

    def conditions_stop(self, facts, child, letter: str, command) -> bool:
        if self.condition_evaluator is None:
            return False
        try:
            return bool(self.condition_evaluator(facts, child, letter, command))
        except Exception as error:  # M-AC-2: a stopper that raises means "don't stop"
            self.logger.error(f"[{child.id}] [manager][condition][error] [{child.name}] {error!r}")
            return False

    def apply_rules(self, facts, letter: str, command) -> RuleOutcome | None:
        if self.rule_evaluator is None:
            return None
        try:
            return self.rule_evaluator(facts, letter, command)
        except Exception as error:  # a rule that cannot be evaluated does not match (C-COND-1)
            self.logger.error(f"[{facts.session_id}] [manager][rule][error] {error!r}")
            return None

    def child_ended(self, name: str, status: str) -> None:
        self.recorder.child(name).ended.add(status)

    def fallback_used(self, name: str) -> None:
        """The child failed and its fallback status answered for it in this session (D-14, M-ERR-3)."""
        self.recorder.child(name).fallbacks += 1

    def statistics(self) -> dict:
        """This process's counters: sessions finished and in progress, each child's end statuses and health;
        ``counters`` holds everything that only grows (summed over workers by the master)."""
        counters = self.recorder.snapshot()
        return {"sessions_finished": self.sessions_finished, "sessions_processing": self.sessions_processing,
                "children": {name: child["ended"] for name, child in counters["children"].items()},
                "child_health": self.health.statistics(), "counters": counters}

    def close(self) -> None:
        """Stop bringing children back and close the kept connections (the process serves a new
        configuration now, or stops)."""
        self.health.close()

    def session_started(self) -> None:
        """A leader started its children (the recorder counts its end with its last status); the peak of
        concurrent sessions bounds the connections each child's pool keeps."""
        self.sessions_processing += 1
        self.recorder.started += 1
        if self.sessions_processing > self.health.peak:
            self.health.peak = self.sessions_processing

    @property
    def sessions_finished(self) -> int:
        return self._finished[0]

    def session_finished(self) -> None:
        """ST-FINISHED, batched by max_pending_finished_sessions (M-FIN-1)."""
        self._finished[0] += 1
        self._pending_finished += 1
        if self._pending_finished > self.max_pending_finished_sessions or not self.max_pending_finished_sessions:
            if self.logger.enabled(STATISTICS):
                self.logger.statistics(f"[sessions][finished] {self.sessions_finished}(+{self._pending_finished}) "
                                       f"{self.sessions_processing}")
            self._pending_finished = 0
