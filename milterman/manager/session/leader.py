"""The leader: one MTA connection, its children, and the one answer the MTA gets.

Parallel stages (connect, helo, envelope-from, envelope-recipient, data, unknown):
the leader chooses the target children, :func:`~.children.fan_out` sends the command
to all of them at once and applies each answer by the stage's row of its outcome
table (M-ENV-2, M-ENV-4). Message stages (header, end-of-header, body,
end-of-message) go through the sequential :class:`~.pipeline.MessagePipeline`
(D-3, M-MSG-*). Both reach back here only through :class:`~.port.SessionPort`. The
manager rule chain (B7) runs first for every MTA command; conditions and rules read
:class:`~.facts.Facts`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from ...log import DEBUG, STATISTICS
from ...net import MilterHandler, MilterSession, Wanted
from ...protocol import (CONTINUE, DATA, Continue, Discard, EndOfMessage, Header, Macro, Mail, Negotiate, Reply,
                         strip_braces)
from ...protocol.stages import BY_LETTER, STAGE_NAMES, STAGES
from ..child import Child
from ..context import ManagerContext
from ..status import Combined, Status, status_of
from .children import fan_out, start_children
from .facts import NO_MARKS, Facts
from .negotiation import mta_request
from .pipeline import MessagePipeline


#: stages where the MTA must not get discard (P-RPL-6)
_NO_DISCARD = frozenset(stage.letter for stage in STAGES if not stage.discard_allowed)
class StageMacros(Mapping):
    """One stage's macros in the MTA's macro store, read on first use (never empty)."""

    __slots__ = ("_store", "_letter", "_values")

    def __init__(self, store, letter: str) -> None:
        self._store = store
        self._letter = letter
        self._values: dict[str, str] | None = None

    def _read(self) -> dict[str, str]:
        values = self._values
        if values is None:
            values = self._values = self._store.stage(self._letter)
        return values

    def __bool__(self) -> bool:
        return True  # made only for a stage with values (MacroStore.has_values)

    def __getitem__(self, name: str) -> str:
        return self._read()[name]

    def __iter__(self):
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())

    def items(self):  # the dict's own views: a reader iterates them without a call per macro
        return self._read().items()

    def keys(self):
        return self._read().keys()


#: (MTA offer, the children's settled options) → (stages read, macros read, the request to the MTA): one MTA
#: sends the same offer on every connection and the children settle on shared Options objects, so the
#: request (a pure function of them, D-2) is computed once, not per session
_REQUESTS: dict[tuple, tuple] = {}


class Leader(MilterHandler):
    """Serves one SMTP connection context of one MTA connection (D-4: a new one after ``K``)."""

    def __init__(self, session: MilterSession, manager: ManagerContext) -> None:
        super().__init__(session)
        self.manager = manager
        self.logger = manager.logger
        self.children: list[Child] = []
        self.offer: Negotiate | None = getattr(session, "offer", None)
        #: statuses of children that could not be reached or negotiated, counted at connect (D-14)
        self.pending_fallbacks: list[Status] = []
        self.started = time.monotonic()
        self.last_stage = "start"
        self.last_status = "pass"
        self.children_ready = False
        self.data_done = False
        #: the rule chain's decision for the MTA command in progress (B7)
        self.rule_stopped: frozenset[str] = NO_MARKS
        self.rule_stage = ""
        #: what conditions and rules read (B5.1)
        self.facts = Facts(session.id, session.macros, manager)
        self.pipeline = MessagePipeline(self, session, manager)
        self._macro_packets: dict[str, tuple[dict, bytes]] = {}
        #: the MTA's macro store (one per MTA connection, kept across ``K``), read per stage without the
        #: session's property chain; its ``packet`` gives a stage's packet as the MTA sent it
        self._macro_store = session.macros
        self._mta_packet = getattr(self._macro_store, "packet", None)
        #: counted in sessions_processing once children are started: the handler made at ``K`` may
        #: never be used nor closed (D-4)
        self._in_progress = False
        #: entered around every wait for children: the disconnect check (M-ERR-8)
        self.watch = manager.watch(self)
        #: how the reply-code check names this session in the log (M-RC-2), made once
        self._reply_context = f"[{session.id}] [manager]"

    # ================================================================ negotiation (D-2)

    def negotiate(self, offer: Negotiate) -> Wanted:
        self.offer = offer
        self.last_stage = "negotiate"
        self._start_children(offer)
        alive = tuple(child.options for child in self.children if child.negotiated and not child.quitted)
        manager = self.manager
        stages_read, macros_read = manager.stages_read, manager.macros_read
        key = (offer, alive)
        known = _REQUESTS.get(key)
        if known is not None and known[0] is stages_read and known[1] is macros_read:
            return known[2]
        wanted = mta_request(offer, alive, stages_read, macros_read)
        if len(_REQUESTS) >= 64:
            _REQUESTS.clear()
        _REQUESTS[key] = (stages_read, macros_read, wanted)
        return wanted

    def _start_children(self, offer: Negotiate) -> None:
        """Connect and negotiate every enabled child at once (M-SES-2, M-SES-3); failures count per D-14."""
        if not self._in_progress:
            self._in_progress = True
            self.manager.session_started()
        self.children = self.facts.children = start_children(self.manager, offer, self.logger, self._count_fallback)
        self.children_ready = True

    def _count_fallback(self, child: Child) -> None:
        """A child that could not be reached or negotiated answers its fallback at connect (D-14)."""
        fallback = child.definition.fallback_status
        self.manager.fallback_used(child.name)
        if fallback != Status.ACCEPT:
            self.pending_fallbacks.append(fallback)
        self.milter_end(child)

    def _ensure_children(self) -> None:
        """After ``K`` a fresh set of children, negotiated with the MTA's original offer (D-4)."""
        if not self.children_ready and self.offer is not None:
            self._start_children(self.offer)

    # ================================================================ macros (M-MAC-2)

    def stage_macros(self, letter: str) -> Mapping[str, str] | None:
        """The stage's MTA macros, read from the MTA's packet only when a child needs the values (most
        children take the packet as the MTA sent it: forward once, parse lazily); ``None`` when none."""
        store = self._macro_store
        if not store.has_values(letter):
            return None
        return StageMacros(store, letter)

    def encoded_macros(self, letter: str, macros: dict[str, str] | None) -> bytes | None:
        """The stage's macro packet, encoded once for every child that asked for no macro list.

        The MTA's macro store keeps one dict per stage until the next ``D`` replaces it, so the
        cache is valid while the dict is the same object (the cache holds it, so it stays alive).
        """
        if not macros:
            return None
        relayed = self._mta_macro_packet(letter)
        if relayed is not None:
            return relayed
        cached = self._macro_packets.get(letter)
        if cached is not None and cached[0] is macros:
            return cached[1]
        packet = Macro(letter, tuple(sorted((strip_braces(name), value) for name, value in macros.items()))).encode()
        self._macro_packets[letter] = (macros, packet)
        return packet

    def _mta_macro_packet(self, letter: str) -> bytes | None:
        """The stage's macro packet as the MTA sent it, header included, passed on untouched (forward
        once): a child that filters macros or gets macros from a rule is sent its own packet anyway
        (:meth:`Child.begin`). ``None`` when the MTA sent none for the stage."""
        packet = self._mta_packet
        return packet(letter) if packet is not None else None

    # ================================================================ parallel stages (M-ENV-*)

    def expire(self, child: Child, reason: str, combined: Combined | None = None) -> None:
        """M-ERR-1: the child is gone for this MTA session; its fallback is counted (D-14, M-ERR-3)."""
        child.expire(reason)
        self.manager.fallback_used(child.name)
        if combined is not None:
            combined.add(child.definition.fallback_status)
        self.milter_end(child)

    def _alive(self) -> list[Child]:
        return [child for child in self.children if not child.quitted]

    def manager_fallback(self, reason: str) -> Reply:
        """M-ERR-7: the manager itself cannot go on; exactly one reply (fix of M-ERR-7a)."""
        none_reached = self.children_ready and not any(child.negotiated for child in self.children)
        self.manager.manager_error(self.session.id, reason, none_reached)
        combined = Combined()
        combined.add(self.manager.fallback_status)
        return self.reply(combined)

    def reply(self, combined: Combined) -> Reply:
        """The MTA's reply from ``combined`` (P-RPL-6: no discard at connect, helo, unknown), recorded for the
        session's end line."""
        reply = combined.reply(self.logger, self._reply_context)
        if isinstance(reply, Discard) and self.session.current in _NO_DISCARD:
            reply = CONTINUE  # P-RPL-6: discard is meaningless there; children were already quitted
        self.last_status = status_of(reply).nick
        return reply

    def _connection_stage(self, command, letter: str) -> Reply:
        """connect and helo: a child that accepts, refuses or is stopped is gone for the session (M-ENV-4)."""
        self._ensure_children()
        self.last_stage = STAGE_NAMES[letter]
        ruled = self._rules(letter, command)
        if ruled is not None:
            return ruled
        combined = Combined()
        for fallback in self.pending_fallbacks:
            combined.add(fallback)  # D-14: an unreachable child answered its fallback at connect
        self.pending_fallbacks = []
        targets = []
        for child in self._alive():
            if self.stopped(child, letter, command):
                child.abort()
                child.end_status = "stop"
                child.quit()
                self.milter_end(child)
                combined.add(Status.ACCEPT)
            else:
                targets.append(child)
        if not targets and combined.status == Status.NOT_CHANGE:
            return self.manager_fallback("All milters are no longer alive.")
        fan_out(self, command, targets, combined)
        return self.reply(combined)

    def connect(self, command):
        self.facts.connect_command = command
        return self._connection_stage(command, "C")

    def helo(self, command):
        self.facts.helo_name = command.name
        return self._connection_stage(command, "H")

    def envelope_from(self, command: Mail):
        """MAIL starts a transaction: message state and message accumulators reset (M-AGG-2a fix)."""
        self._ensure_children()
        self.last_stage = "envelope-from"
        self.end_message(abort_children=True)  # a child still inside the previous message gets A
        self.pipeline.new_transaction()
        self.facts.start_transaction(command.address)
        for child in self.children:
            child.recipients = []
        ruled = self._rules("M", command)
        if ruled is not None:
            return ruled
        combined = Combined()
        for fallback in self.pending_fallbacks:
            combined.add(fallback)
        self.pending_fallbacks = []
        alive = self._alive()
        if not alive:
            return self.manager_fallback("All milters are no longer alive.")
        targets = []
        # without RCPT events from the MTA (D-2) no child can have refused every recipient (M-ENV-6)
        mta_options = self.session.options
        no_recipients = mta_options is not None and "R" not in mta_options.sent
        for child in alive:
            child.recipients_accepted = 1 if no_recipients else 0
            child.skip_body = False
            if self.stopped(child, "M", command):
                child.in_message = False  # M-AC-6: not in this message; evaluated again at the next MAIL
                combined.add(Status.CONTINUE)
                continue
            child.in_message = True
            targets.append(child)
        fan_out(self, command, targets, combined)
        reply = self.reply(combined)
        if combined.status.is_refusal:
            self.abort_message()
        return reply

    def envelope_recipient(self, command):
        self.last_stage = "envelope-recipient"
        ruled = self._rules("R", command)
        if ruled is not None:
            return ruled
        targets = [child for child in self.children if child.in_message and not child.quitted]
        if not targets:
            return self.manager_fallback("None of milters are processing message.")
        rejected_by_mta = self.session.macros.get("rcpt_mailer") == "error"
        combined = Combined()
        sending = []
        for child in targets:
            if rejected_by_mta and not (child.options and child.options.rcpt_rejected):
                continue  # P-PRX-3, M-ENV-8 fix: only children that asked see MTA-rejected recipients
            if self.stopped(child, "R", command):
                combined.add(Status.CONTINUE)  # this recipient is not sent to it; it stays (M-AC-6)
                continue
            sending.append(child)
        fan_out(self, command, sending, combined)
        if combined.status == Status.NOT_CHANGE:
            combined.add(Status.CONTINUE)
        reply = self.reply(combined)
        if not combined.status.is_refusal:
            self.facts.recipients.append(command.address)
        if combined.status == Status.DISCARD:
            self.abort_message()  # M-ENV-5: a discard at RCPT ends the message for every child
        return reply

    def data(self, command):
        self.last_stage = "data"
        ruled = self._rules("T", command)
        if ruled is not None:
            return ruled
        return self._data_stage(command)

    def _data_stage(self, command) -> Reply:
        """M-ENV-1: only children with a recipient of their own take part; a data stop leaves the
        message and counts continue (M-AC-7 fix)."""
        processing = [child for child in self.children if child.in_message and not child.quitted]
        if not processing:
            return self.manager_fallback("None of milters are processing message.")
        combined = Combined()
        targets = []
        for child in processing:
            if child.recipients_accepted == 0:
                child.abort()
                continue
            if self.stopped(child, "T", command):
                child.abort()
                combined.add(Status.CONTINUE)
                continue
            targets.append(child)
        if not targets and combined.status == Status.NOT_CHANGE:
            combined.add(Status.ACCEPT)
        fan_out(self, command, targets, combined)
        reply = self.reply(combined)
        self.data_done = True
        if combined.status.is_refusal:
            self.abort_message()
        return reply

    def unknown(self, command):
        self.last_stage = "unknown"
        ruled = self._rules("U", command)
        if ruled is not None:
            return ruled
        targets = self._alive()
        if not targets:
            return self.manager_fallback("All milters are no longer alive.")
        combined = Combined()
        fan_out(self, command, targets, combined)
        return self.reply(combined)

    # ================================================================ message stages (D-3, M-MSG-*)

    def _emulate_data(self) -> Reply | None:
        """M-ENV-7: the MTA skipped DATA although it speaks v4+: run the data stage first."""
        mta_options = self.session.options
        if self.data_done or mta_options is None or mta_options.version < 4 or "T" not in mta_options.sent:
            return None
        reply = self._data_stage(DATA)
        return None if isinstance(reply, Continue) else reply

    def _message_command(self, letter: str, command) -> Reply | None:
        """What every message stage does first: the rule chain (B7), DATA emulation when the MTA
        skipped it (M-ENV-7), and the waiting list at the first one (M-MSG-1)."""
        self.last_stage = STAGE_NAMES[letter]
        ruled = self._rules(letter, command)
        if ruled is not None:
            return ruled
        if self.pipeline.message is None:
            early = self._emulate_data()
            if early is not None:
                return early
            self.facts.message = self.pipeline.start(self.children)
        return None

    def header(self, command: Header):
        early = self._message_command("L", command)
        return early if early is not None else self.pipeline.header(command)

    def end_of_header(self, command):
        early = self._message_command("N", command)
        return early if early is not None else self.pipeline.end_of_header(command)

    def body(self, command):
        early = self._message_command("B", command)
        return early if early is not None else self.pipeline.body(command)

    def end_of_message(self, command: EndOfMessage):
        early = self._message_command("E", command)
        return early if early is not None else self.pipeline.end_of_message(command)

    # ================================================================ abort, quit (M-MSG-8, M-SES-6)

    def abort_message(self) -> None:
        """Every child in the message gets ``A``; the message state and the shelf are dropped (M-AC-4)."""
        self.facts.drop_marks()
        for child in self.children:
            if child.in_message and not child.quitted:
                child.abort()
        self.end_message()

    def end_message(self, abort_children: bool = False) -> None:
        """The message is over; with ``abort_children`` a child still inside it gets ``A`` first."""
        if abort_children:
            for child in self.children:
                if child.in_message and not child.quitted:
                    child.abort()
        self.pipeline.close()
        self.facts.message = None
        self.data_done = False

    def abort(self):
        self.abort_message()

    def close(self):
        """MTA quit, EOF or error: every child gets ``Q`` (M-SES-6); the statistics lines (D-11)."""
        self.end_message()
        elapsed = time.monotonic() - self.started
        if self.logger.enabled(STATISTICS):
            self.logger.statistics(f"[session][end][{self.last_stage}][{self.last_status}][{elapsed:g}]"
                                   f"({self.session.id})")
        for child in self.children:
            if not child.quitted:
                child.quit()
                self.milter_end(child)
        self.children = self.facts.children = []
        self.children_ready = False
        self.watch.close()
        if self._in_progress:
            self._in_progress = False
            self.manager.sessions_processing -= 1
            self.manager.recorder.session_finished(self.last_status, elapsed)
        self.manager.session_finished()

    def interrupted(self, interrupt: BaseException) -> Reply:
        """M-ERR-8: the SMTP client went away while children were working."""
        from ..disconnect import ClientDisconnected, answer_disconnect

        if not isinstance(interrupt, ClientDisconnected):
            raise interrupt
        return answer_disconnect(self)

    def protocol_error(self, error):
        """The MTA broke the protocol: answer with the manager's fallback when a reply is owed."""
        for child in self.children:
            if not child.quitted:
                child.quit()
        if self.session.state.awaiting is None:
            return None
        combined = Combined()
        combined.add(self.manager.fallback_status)
        return combined.reply()

    # ================================================================ the manager rule chain (B7)

    def _rules(self, letter: str, command) -> Reply | None:
        """Run the rule chain for an MTA command (never for replays, C-RULE-5).

        Returns the reply when a terminal rule answered the MTA itself (C-RULE-3); otherwise
        records which children a skip/only rule stopped and the macros to add (C-RULE-2, -4).
        """
        self.rule_stopped = NO_MARKS
        self.rule_stage = letter
        for child in self.children:
            if child.macros_extra:
                child.macros_extra.pop(letter, None)  # M-MAC-4: macros set for the previous command of the stage
        outcome = self.manager.apply_rules(self.facts, letter, command)
        if outcome is None:
            return None
        if outcome.terminal is None:
            self.rule_stopped = outcome.stopped
            if outcome.macros:
                for child in self.children:
                    child.macros_extra.setdefault(letter, {}).update(outcome.macros)
            return None
        return self._terminal(letter, outcome)

    def _terminal(self, letter: str, outcome) -> Reply:
        """The session goes on as if every targeted child had answered the rule's status (C-RULE-3)."""
        status = outcome.terminal
        combined = Combined()
        combined.add(status, outcome.reply)
        stage = BY_LETTER[letter]
        if stage.content:
            self.abort_message()
        elif stage.refusal == "connection":
            if status != Status.CONTINUE:
                for child in self._alive():
                    child.end_status = status.nick
                    child.quit()
                    self.milter_end(child)
        elif stage.refusal == "message":
            if status.is_refusal:
                self.abort_message()
            else:
                for child in self.children:
                    if child.in_message:
                        child.abort()
        elif stage.refusal == "recipient":
            if status == Status.DISCARD:
                self.abort_message()
            elif status == Status.ACCEPT:
                for child in self.children:
                    if child.in_message:
                        child.abort()
        return self.reply(combined)

    # ================================================================ conditions and statistics

    def stopped(self, child: Child, letter: str, command) -> bool:
        """Is the child stopped here: by a rule (C-RULE-2, checked first, C-RULE-6) or one of its
        applicable conditions (M-AC-2)?"""
        if self.rule_stopped and letter == self.rule_stage and child.name in self.rule_stopped:
            child.stage = STAGE_NAMES[letter]  # its last stage is the one it was stopped at
            return True
        conditions = child.definition.conditions
        if not conditions:
            return False
        if self.manager.conditions_stop(self.facts, child, letter, command):
            child.stage = STAGE_NAMES[letter]
            return True
        return False

    def milter_end(self, child: Child) -> None:
        """ST-MILTER-END, once per child per session."""
        if child.ended:
            return
        child.ended = True
        self.manager.child_ended(child.name, child.end_status)
        if self.logger.enabled(STATISTICS):
            self.logger.statistics(f"[milter][end][{child.stage}][{child.end_status}][{child.waited:g}]"
                                   f"({child.id}): {child.name}")
        if self.logger.enabled(DEBUG):
            self.logger.debug(f"[{child.id}] [manager][child][end] [{child.name}]")
