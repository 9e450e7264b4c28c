"""The leader: one MTA connection, its children, and the one answer the MTA gets.

Parallel stages (connect, helo, envelope-from, envelope-recipient, data, unknown)
go to every target child at once and are answered when all have answered (M-ENV-2).
Message stages (header, end-of-header, body, end-of-message) run through a
sequential pipeline: the live child gets the MTA's packets, later children a replay
of the current headers and body at their turn, so each sees the earlier children's
edits (D-3, M-MSG-*). At the end the MTA gets the header diff, the body, the
envelope edits and the combined status (M-EOM-1).
"""

from __future__ import annotations

import time

from ..log import DEBUG, STATISTICS
from ..net import MilterHandler, MilterSession, Wanted
from ..protocol import (CONTINUE, END_OF_HEADER, Action, AddHeader, AddRcpt, AddRcptWithParameters, Body,
                        ChangeFrom, ChangeHeader, Continue, DeleteRcpt, Discard, EndOfMessage, Header,
                        InsertHeader, LocalProtocolError, Macro, MacroStage, Mail, Negotiate, Options, Quarantine,
                        ReplaceBody, Reply, Skip, Step, strip_braces)
from ..protocol.flags import CAPABILITY_STEPS, MDS_STEPS, SKIP_STEPS
from ..protocol.negotiation import EVENT_FLAGS
from .child import STAGE_NAMES, Child, ChildFailure
from .context import ManagerContext
from .message import Message, header_diff
from .status import Combined, Status, status_of

#: parallel stages and their letters
PARALLEL = {"C", "H", "M", "R", "T", "U"}


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
        self.message: Message | None = None
        self.waiting: list[Child] = []
        self.message_status = Combined()
        self.started = time.monotonic()
        self.last_stage = "start"
        self.last_status = "pass"
        self.macros: dict[str, dict[str, str]] = {}
        self.shelf: dict[str, str] = {}
        self.children_ready = False
        self.data_done = False
        self._body_replacer: Child | None = None
        self._body_error: OSError | None = None
        #: the rule chain's decision for the MTA command in progress (B7)
        self.rule_stopped: frozenset[str] = frozenset()
        self.rule_stage = ""
        # What conditions and rules read (B5.1): the SMTP facts of this session so far
        self.connect_command = None            # the MTA's Connect
        self.helo_name: str | None = None
        self.sender: str | None = None         # raw MAIL argument of the current transaction
        self.recipients: list[str] = []        # RCPTs the manager accepted in this transaction
        self.flags: set[str] = set()           # transaction-shelf flags (B5 set_flags)
        self.mta_options: Options | None = session.options
        self._macro_packets: dict[str, tuple[dict, bytes]] = {}
        #: counted in sessions_processing once children are started: the handler made at ``K`` may
        #: never be used nor closed (D-4)
        self._in_progress = False
        #: entered around every wait for children: the disconnect check (M-ERR-8)
        self._watch = manager.watch(self)

    # ================================================================ negotiation (D-2)

    def negotiate(self, offer: Negotiate) -> Wanted:
        self.session.offer = offer
        self.offer = offer
        self.last_stage = "negotiate"
        self._start_children(offer)
        return self._wanted(offer)

    def negotiated(self, options: Options) -> None:
        self.mta_options = options

    def _child_offer(self, offer: Negotiate) -> Negotiate:
        """Every child gets the MTA's original offer, version capped at 6 (D-2, M-NEG-1)."""
        return Negotiate(min(offer.version, 6), offer.actions, offer.protocol)

    def _start_children(self, offer: Negotiate) -> None:
        """Connect and negotiate every enabled child at once (M-SES-2, M-SES-3); failures count per D-14."""
        import gevent

        if not self._in_progress:
            self._in_progress = True
            self.manager.sessions_processing += 1
        child_offer = self._child_offer(offer)
        health = self.manager.health
        health.last_offer = child_offer
        children = [Child(definition, self.logger) for definition in self.manager.definitions]
        self.children = children

        def connect(child: Child) -> tuple[Exception, bool] | None:
            """None when connected, else (the failure, whether the log already has it)."""
            try:
                child.connect(child_offer)
            except ChildFailure as failure:
                health.of(child.definition).failed(str(failure))  # the one "down" line
                return failure, True
            except Exception as failure:  # a bug must not leave the MTA without an answer
                return ChildFailure(f"internal error: {failure!r}"), False
            health.of(child.definition).succeeded()
            return None

        # A child known to be down is not tried: its fallback counts at once (D-14)
        jobs = {}
        for child in children:
            state = health.of(child.definition)
            if state.down:
                child.skip(f"down: {state.last_error}")
                self._count_fallback(child)
            else:
                jobs[child] = gevent.spawn(connect, child)
        gevent.joinall(list(jobs.values()))
        for child, job in jobs.items():
            if job.value is None:
                continue
            error, logged = job.value
            child.expire(f"negotiate: {error}", log=not logged)
            self._count_fallback(child)
        if self.manager.unreachable_reported and any(child.negotiated for child in children):
            self.manager.unreachable_reported = False
        self.children_ready = True

    def _count_fallback(self, child: Child) -> None:
        """A child that could not be reached or negotiated answers its fallback at connect (D-14)."""
        fallback = child.definition.fallback_status
        if fallback != Status.ACCEPT:
            self.pending_fallbacks.append(fallback)
        self._milter_end(child)

    def _wanted(self, offer: Negotiate) -> Wanted:
        """The reply to the MTA, from the children's settled options (D-2)."""
        alive = [child.options for child in self.children if child.negotiated and not child.quitted]
        requested_actions = 0
        for options in alive:
            requested_actions |= options.actions
        actions = offer.actions & requested_actions
        protocol = 0
        if alive:
            skips = int(SKIP_STEPS)
            for options in alive:
                skips &= options.protocol
            for letter in self.manager.stages_read:
                bit = EVENT_FLAGS.get(letter, (0,))[0]
                skips &= ~bit
            skips &= ~int(Step.NO_MAIL)  # MAIL delimits the manager's transactions (M-ENV-1, M-AGG-2a)
            if actions & (Action.ADD_HEADERS | Action.CHANGE_HEADERS):
                skips &= ~int(Step.NO_HEADERS)  # header edits are a diff against the MTA's headers (M-EOM-3)
            protocol |= skips
            for bit in (Step.SKIP, Step.RCPT_REJECTED, Step.HEADER_LEADING_SPACE):
                if any(options.protocol & bit for options in alive):
                    protocol |= bit
        macro_lists = self._macro_lists(alive)
        if macro_lists:
            actions |= Action.SET_SYMBOL_LIST & offer.actions
        return Wanted(actions=actions, protocol=protocol & ~int(MDS_STEPS) & (SKIP_STEPS | CAPABILITY_STEPS),
                      macro_lists=macro_lists)

    def _macro_lists(self, alive: list[Options]) -> tuple[tuple[int, str], ...]:
        """Per stage: the union of the children's lists plus what conditions read; none where a child
        relies on the MTA's defaults (D-2, M-MAC-3)."""
        lists = []
        for stage in MacroStage:
            letter = {0: "C", 1: "H", 2: "M", 3: "R", 4: "T", 5: "E", 6: "N"}[int(stage)]
            names: list[str] = []
            for options in alive:
                requested = options.macro_request(letter)
                if requested is None:
                    names = []
                    break
                names.extend(name for name in requested if name not in names)
            else:
                if alive:
                    for name in self.manager.macros_read.get(letter, ()):
                        if name not in names:
                            names.append(name)
                    lists.append((int(stage), " ".join(name if len(name) == 1 else "{" + name + "}"
                                                       for name in names)))
        return tuple(lists)

    def _ensure_children(self) -> None:
        """After ``K`` a fresh set of children, negotiated with the MTA's original offer (D-4)."""
        if not self.children_ready and self.offer is not None:
            self._start_children(self.offer)

    # ================================================================ macros

    def _stage_macros(self, letter: str) -> dict[str, str] | None:
        return self.session.macros.stage(letter) or None

    def _encoded_macros(self, letter: str, macros: dict[str, str] | None) -> bytes | None:
        """The stage's macro packet, encoded once for every child that asked for no macro list.

        The MTA's macro store keeps one dict per stage until the next ``D`` replaces it, so the
        cache is valid while the dict is the same object (the cache holds it, so it stays alive).
        """
        if not macros:
            return None
        cached = self._macro_packets.get(letter)
        if cached is not None and cached[0] is macros:
            return cached[1]
        packet = Macro(letter, tuple(sorted((strip_braces(name), value) for name, value in macros.items()))).encode()
        self._macro_packets[letter] = (macros, packet)
        return packet

    # ================================================================ parallel stages (M-ENV-*)

    def _parallel(self, command, targets: list[Child], combined: Combined, account) -> None:
        """Send ``command`` to every target, then collect each reply against its own deadline."""
        letter = command.LETTER
        macros = self._stage_macros(letter)
        encoded = self._encoded_macros(letter, macros)
        pending: list[Child] = []
        for child in targets:
            if not child.will_send(letter):
                account(child, CONTINUE, combined)  # M-ENV-3: the child asked not to get this event
                continue
            try:
                if child.begin(command, macros, encoded):
                    pending.append(child)
                else:
                    account(child, CONTINUE, combined)  # its own no-reply bit: don't wait (D-2)
            except ChildFailure as error:
                self._expire(child, str(error), combined)
        for child, response in zip(pending, self._collect_all(pending, letter), strict=True):
            if isinstance(response, ChildFailure):
                self._expire(child, str(response), combined)
                continue
            if response.modifications or isinstance(response.final, Skip):
                odd = response.modifications[0] if response.modifications else response.final
                self._expire(child, f"{STAGE_NAMES[letter]}: unexpected {type(odd).__name__} outside end of "
                                    f"message (M-ENV-4)", combined)
                continue
            account(child, response.final, combined)

    def _collect_all(self, pending: list[Child], letter: str) -> list:
        """Every pending child's reply (or ChildFailure), one after another: each child is held to its
        own deadline, since a reply already waiting is taken even after that deadline (M-ERR-2)."""
        results = []
        with self._watch:
            for child in pending:
                try:
                    results.append(child.collect(letter))
                except ChildFailure as failure:
                    results.append(failure)
        return results

    def _expire(self, child: Child, reason: str, combined: Combined | None) -> None:
        """M-ERR-1: the child is gone for this MTA session; its fallback is counted (D-14, M-ERR-3)."""
        child.expire(reason)
        if combined is not None:
            combined.add(child.definition.fallback_status)
        self._milter_end(child)

    def _counted(self, child: Child, reply: Reply) -> Status:
        """What a child's answer counts as: an evaluation child's refusal counts as accept (M-EVAL-1)."""
        status = status_of(reply)
        child.last_status = status.nick
        if child.definition.evaluation_mode and status.is_refusal:
            return Status.ACCEPT
        return status

    def _alive(self) -> list[Child]:
        return [child for child in self.children if not child.quitted]

    def _manager_fallback(self, reason: str) -> Reply:
        """M-ERR-7: the manager itself cannot go on; exactly one reply (fix of M-ERR-7a).

        With no child configured at all this is every session's normal path, announced once at
        start: not an error per mail (issue 8). When children are configured but none of the
        session could be reached, the down lines explain it: the error line is written once until
        a session reaches a child again, then at debug level.
        """
        if not self.manager.definitions:
            if self.logger.enabled(DEBUG):
                self.logger.debug(f"[{self.session.id}] [manager] no child milter: {reason}")
        elif self.children_ready and not any(child.negotiated for child in self.children):
            if self.manager.unreachable_reported:
                if self.logger.enabled(DEBUG):
                    self.logger.debug(f"[{self.session.id}] [manager][error] {reason}")
            else:
                self.manager.unreachable_reported = True
                self.logger.error(f"[{self.session.id}] [manager][error] {reason} (no child could be reached; "
                                  f"said once until a session reaches one again)")
        else:
            self.logger.error(f"[{self.session.id}] [manager][error] {reason}")
        combined = Combined()
        combined.add(self.manager.fallback_status)
        return self._reply(combined)

    def _reply(self, combined: Combined) -> Reply:
        reply = combined.reply(self.logger, f"[{self.session.id}] [manager]")
        letter = self.session.current or ""
        if letter in ("C", "H", "U") and isinstance(reply, Discard):
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
            if self._stopped(child, letter, command):
                child.abort()
                child.end_status = "stop"
                child.quit()
                self._milter_end(child)
                combined.add(Status.ACCEPT)
            else:
                targets.append(child)
        if not targets and combined.status == Status.NOT_CHANGE:
            return self._manager_fallback("All milters are no longer alive.")

        def account(child: Child, reply: Reply, combined: Combined) -> None:
            if isinstance(reply, Discard):
                self._expire(child, f"{STAGE_NAMES[letter]}: discard is not valid here (P-RPL-6)", combined)
                return
            status = self._counted(child, reply)
            combined.add(status, reply if not child.definition.evaluation_mode else None)
            if status_of(reply) != Status.CONTINUE:
                child.end_status = status_of(reply).nick
                child.quit()
                self._milter_end(child)

        self._parallel(command, targets, combined, account)
        return self._reply(combined)

    def connect(self, command):
        self.connect_command = command
        return self._connection_stage(command, "C")

    def helo(self, command):
        self.helo_name = command.name
        return self._connection_stage(command, "H")

    def envelope_from(self, command: Mail):
        """MAIL starts a transaction: message state and message accumulators reset (M-AGG-2a fix)."""
        self._ensure_children()
        self.last_stage = "envelope-from"
        self._end_message(abort_children=True)  # a child still inside the previous message gets A
        self.message_status = Combined()
        self.shelf = {}
        self.flags = set()
        self.sender = command.address
        self.recipients = []
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
            return self._manager_fallback("All milters are no longer alive.")
        targets = []
        # without RCPT events from the MTA (D-2) no child can have refused every recipient (M-ENV-6)
        no_recipients = self.mta_options is not None and "R" not in self.mta_options.sent
        for child in alive:
            child.recipients_accepted = 1 if no_recipients else 0
            child.skip_body = False
            if self._stopped(child, "M", command):
                child.in_message = False  # M-AC-6: not in this message; evaluated again at the next MAIL
                combined.add(Status.CONTINUE)
                continue
            child.in_message = True
            targets.append(child)

        def account(child: Child, reply: Reply, combined: Combined) -> None:
            status = self._counted(child, reply)
            combined.add(status, None if child.definition.evaluation_mode else reply)
            if status_of(reply) != Status.CONTINUE:
                child.in_message = False  # accept/refusal at MAIL: the child leaves the message

        self._parallel(command, targets, combined, account)
        reply = self._reply(combined)
        if combined.status.is_refusal:
            self._abort_message()
        return reply

    def envelope_recipient(self, command):
        self.last_stage = "envelope-recipient"
        ruled = self._rules("R", command)
        if ruled is not None:
            return ruled
        targets = [child for child in self.children if child.in_message and not child.quitted]
        if not targets:
            return self._manager_fallback("None of milters are processing message.")
        rejected_by_mta = self.session.macros.get("rcpt_mailer") == "error"
        combined = Combined()
        sending = []
        for child in targets:
            if rejected_by_mta and not (child.options and child.options.rcpt_rejected):
                continue  # P-PRX-3, M-ENV-8 fix: only children that asked see MTA-rejected recipients
            if self._stopped(child, "R", command):
                combined.add(Status.CONTINUE)  # this recipient is not sent to it; it stays (M-AC-6)
                continue
            sending.append(child)

        def account(child: Child, reply: Reply, combined: Combined) -> None:
            status = self._counted(child, reply)
            combined.add(status, None if child.definition.evaluation_mode else reply)
            real = status_of(reply)
            if real != Status.TEMPORARY_FAILURE and real != Status.REJECT:
                child.recipients.append(command.address)
            if real == Status.CONTINUE:
                child.recipients_accepted += 1
            elif real == Status.ACCEPT:
                child.recipients_accepted += 1
                child.in_message = False  # accept at RCPT: the child leaves the message (M-ENV-4)
            elif real == Status.DISCARD:
                child.recipients_accepted += 1

        self._parallel(command, sending, combined, account)
        if combined.status == Status.NOT_CHANGE:
            combined.add(Status.CONTINUE)
        reply = self._reply(combined)
        if not combined.status.is_refusal:
            self.recipients.append(command.address)
        if combined.status == Status.DISCARD:
            self._abort_message()  # M-ENV-5: a discard at RCPT ends the message for every child
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
            return self._manager_fallback("None of milters are processing message.")
        combined = Combined()
        targets = []
        for child in processing:
            if child.recipients_accepted == 0:
                child.abort()
                continue
            if self._stopped(child, "T", command):
                child.abort()
                combined.add(Status.CONTINUE)
                continue
            targets.append(child)
        if not targets and combined.status == Status.NOT_CHANGE:
            combined.add(Status.ACCEPT)

        def account(child: Child, reply: Reply, combined: Combined) -> None:
            status = self._counted(child, reply)
            combined.add(status, None if child.definition.evaluation_mode else reply)
            if status_of(reply) != Status.CONTINUE:
                child.in_message = False

        self._parallel(command, targets, combined, account)
        reply = self._reply(combined)
        self.data_done = True
        if combined.status.is_refusal:
            self._abort_message()
        return reply

    def unknown(self, command):
        self.last_stage = "unknown"
        ruled = self._rules("U", command)
        if ruled is not None:
            return ruled
        targets = self._alive()
        if not targets:
            return self._manager_fallback("All milters are no longer alive.")
        combined = Combined()

        def account(child: Child, reply: Reply, combined: Combined) -> None:
            if isinstance(reply, Discard):
                self._expire(child, "unknown: discard is not valid here (P-RPL-6)", combined)
                return
            status = self._counted(child, reply)
            combined.add(status, None if child.definition.evaluation_mode else reply)
            if status_of(reply) != Status.CONTINUE:
                if status_of(reply) == Status.ACCEPT:
                    self.logger.error(f"[{child.id}] [manager][child][unknown] [{child.name}] accept is not "
                                      f"valid for an unknown command")
                child.end_status = status_of(reply).nick
                child.quit()
                self._milter_end(child)

        self._parallel(command, targets, combined, account)
        return self._reply(combined)

    # ================================================================ the message pipeline (M-MSG-*)

    def _pipeline_start(self) -> bool:
        """First message stage: W = processing children with a recipient of their own (M-MSG-1)."""
        if self.message is None:
            self.message = Message()
            waiting = []
            for child in self.children:
                if not child.in_message or child.quitted:
                    continue
                if child.recipients_accepted == 0:
                    child.abort()
                    continue
                child.sent_headers = 0
                child.sent_end_of_header = False
                child.sent_body = 0
                waiting.append(child)
            self.waiting = waiting
            return True
        return False

    def _emulate_data(self) -> Reply | None:
        """M-ENV-7: the MTA skipped DATA although it speaks v4+: run the data stage first."""
        from ..protocol import DATA

        if (self.data_done or self.mta_options is None or self.mta_options.version < 4
                or "T" not in self.mta_options.sent):
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
        if self.message is None:
            early = self._emulate_data()
            if early is not None:
                return early
            self._pipeline_start()
        return None

    def header(self, command: Header):
        early = self._message_command("L", command)
        if early is not None:
            return early
        self.message.headers.append(command.name, command.value)
        return self._advance("L")

    def end_of_header(self, command):
        early = self._message_command("N", command)
        if early is not None:
            return early
        self.message.end_of_header = True
        return self._advance("N")

    def body(self, command: Body):
        early = self._message_command("B", command)
        if early is not None:
            return early
        try:
            self.message.body.append(command.chunk)
            return self._advance("B", command.chunk)
        except OSError as error:
            return self._body_failure(error)

    def _body_failure(self, error: OSError) -> Reply:
        """The body buffer's temporary file failed: a manager error (M-BODY-1, M-ERR-7): the manager's
        fallback answers, every child leaves the message."""
        reply = self._manager_fallback(f"body buffer: {error.strerror or error}")
        self._abort_message()
        return reply

    def _advance(self, letter: str, chunk: bytes | None = None) -> Reply:
        """Bring the live child up to date; when it leaves, the next one replays (M-MSG-2, M-MSG-6)."""
        while self.waiting:
            child = self.waiting[0]
            outcome = self._catch_up(child, live_chunk=chunk)
            if outcome is None:
                return CONTINUE
            if isinstance(outcome, Reply):
                return outcome
            self.waiting.pop(0)  # the child left: the next one replays everything so far
            chunk = None
        return self._reply(self.message_status) if self.message_status.status else self._all_left()

    def _all_left(self) -> Reply:
        """M-MSG-7: every child left before EOM: the MTA gets the combined status (accept)."""
        combined = Combined()
        combined.add(Status.ACCEPT)
        return self._reply(combined)

    def _catch_up(self, child: Child, live_chunk: bytes | None = None, through_eom: bool = False):
        """Send ``child`` what it has not seen yet: headers, EOH, body (and EOM when asked).

        Returns ``None`` when the child is up to date and continuing, ``True`` when it left the
        waiting list (accept, stop, evaluation refusal, expiry with fallback accept), or the
        reply for the MTA when it refused (every child is then aborted).
        """
        message = self.message
        mta_leading_space = bool(self.mta_options and self.mta_options.header_leading_space)
        child_leading_space = bool(child.options and child.options.header_leading_space)
        strip_space = mta_leading_space and not child_leading_space
        headers = message.headers.items
        while child.sent_headers < len(headers):
            name, value = headers[child.sent_headers]
            child.sent_headers += 1
            if strip_space and value[:1] == " ":
                value = value[1:]
            header = Header(name, value)
            if self._stopped(child, "L", header):
                return self._leave(child, "stop")
            outcome = self._step(child, header)
            if outcome is not None:
                return outcome
        if message.end_of_header and not child.sent_end_of_header:
            child.sent_end_of_header = True
            if self._stopped(child, "N", END_OF_HEADER):
                return self._leave(child, "stop")
            outcome = self._step(child, END_OF_HEADER)
            if outcome is not None:
                return outcome
        body = message.body
        if child.sent_body < len(body) and not child.skip_body:
            if live_chunk is not None and child.sent_body == len(body) - len(live_chunk):
                pieces = [live_chunk]
            else:
                pieces = body.pieces(self.manager.chunk_size)
            for piece in pieces:
                child.sent_body += len(piece)
                if child.skip_body:
                    continue
                chunk = Body(piece)
                if self._stopped(child, "B", chunk):
                    return self._leave(child, "stop")
                outcome = self._step(child, chunk)
                if outcome is not None:
                    return outcome
            child.sent_body = len(body)
        if through_eom:
            eom = EndOfMessage(message.end_of_message_chunk)
            if self._stopped(child, "E", eom):
                return self._leave(child, "stop")
            return self._step(child, eom)
        return None

    def _step(self, child: Child, command):
        """One message-stage command to one child and what its answer means (M-MSG-6)."""
        letter = command.LETTER
        if letter != "E" and not child.will_send(letter):
            return None
        macros = self._stage_macros(letter)
        encoded = self._encoded_macros(letter, macros)
        if letter == "E":
            child.client.on_modification = lambda modification: self._modification(child, modification)
            child.client.on_progress = self._relay_progress
        try:
            with self._watch:
                response = child.exchange(command, macros, encoded)
        except ChildFailure as error:
            return self._pipeline_failure(child, str(error))
        finally:
            if child.client is not None:
                child.client.on_modification = None
                child.client.on_progress = None
        if response is None:
            return None  # the child's own no-reply bit
        final = response.final
        if isinstance(final, Skip):
            if letter != "B":
                return self._pipeline_failure(child, f"{STAGE_NAMES[letter]}: skip outside body (M-MSG-6)")
            child.skip_body = True
            return None
        if isinstance(final, Continue):
            if letter == "E":
                child.end_status = "pass"
                # M-AGG-1: this child's continue beats the accepts of children that left earlier
                self.message_status.add(Status.CONTINUE)
                return True
            return None
        real = status_of(final)
        child.last_status = real.nick
        if real == Status.ACCEPT or child.definition.evaluation_mode:
            return self._leave(child, real.nick)  # M-EVAL-3 fix: an evaluation refusal behaves like accept
        # a refusal: reply at once, abort every child (M-MSG-6); at EOM the edits so far go first
        combined = Combined()
        combined.add(real, final)
        child.end_status = real.nick
        reply = self._reply(combined)
        if letter == "E":
            self._emit_modifications()
        self._abort_message()
        self._milter_end(child)
        return reply

    def _leave(self, child: Child, how: str) -> bool:
        """The child leaves the waiting list: accept counted, ``A`` for a stopped child (M-AC-6)."""
        self.message_status.add(Status.ACCEPT)
        child.end_status = how
        if how == "stop":
            child.abort()
        child.in_message = False
        return True

    def _pipeline_failure(self, child: Child, reason: str):
        """M-ERR-3 (fixed): fallback accept → continue with the next child, edits kept; otherwise the
        fallback answers the MTA at once and every child is aborted."""
        fallback = child.definition.fallback_status
        self._expire(child, reason, None)
        if fallback == Status.ACCEPT:
            self.message_status.add(Status.ACCEPT)
            return True
        combined = Combined()
        combined.add(fallback)
        reply = self._reply(combined)
        self._abort_message()  # M-ERR-3: the fallback answers at once, without the edits collected so far
        return reply

    def _relay_progress(self) -> None:
        """A child's PROGRESS goes to the MTA at once (M-MSG-6)."""
        try:
            self.session.progress()
        except LocalProtocolError:
            pass

    # ================================================================ end of message (M-EOM-*)

    def end_of_message(self, command: EndOfMessage):
        early = self._message_command("E", command)
        if early is not None:
            return early
        message = self.message
        message.end_of_message_chunk = command.chunk
        message.original_headers = list(message.headers.items)  # H0 (M-MSG-3)
        try:
            while self.waiting:
                child = self.waiting[0]
                outcome = self._catch_up(child, through_eom=True)
                if self._body_error is not None:
                    raise self._body_error
                if isinstance(outcome, Reply):
                    return outcome
                self.waiting.pop(0)
                child.in_message = False  # still alive: its [milter][end] line follows [session][end]
            self._emit_modifications()
        except OSError as error:
            return self._body_failure(error)
        combined = self.message_status
        if combined.status == Status.NOT_CHANGE:
            combined.add(Status.CONTINUE)
        reply = self._reply(combined)
        self._end_message(abort_children=False)
        return reply

    def _modification(self, child: Child, modification: Reply) -> None:
        """Apply one child's end-of-message request to the message (M-EOM-1, M-EOM-2, M-BODY-3)."""
        message = self.message
        if child.definition.evaluation_mode:
            self.logger.info(f"[{child.id}] [manager][evaluation][ignore] [{child.name}] {modification!r}")
            if isinstance(modification, (AddHeader, InsertHeader, ChangeHeader)) and modification.value:
                self._header_statistics(child, modification)
            return
        if isinstance(modification, (AddRcpt, AddRcptWithParameters, DeleteRcpt)):
            self._to_mta(modification)  # forwarded at once, in arrival order (M-EOM-1 step 1)
            return
        if isinstance(modification, ReplaceBody):
            try:
                if child is not self._body_replacer:
                    self._body_replacer = child
                    message.body.clear()
                message.body.append(modification.chunk)
            except OSError as error:
                self._body_error = error  # answered after this child's reply is read (M-BODY-1)
            message.body_replaced = True
            return
        if isinstance(modification, (AddHeader, InsertHeader, ChangeHeader)):
            value = modification.value
            mta_leading_space = bool(self.mta_options and self.mta_options.header_leading_space)
            if mta_leading_space and value and not (child.options and child.options.header_leading_space):
                if value[:1] != " ":
                    value = " " + value  # M-MSG-10
            if isinstance(modification, AddHeader):
                message.headers.add(modification.name, value)
            elif isinstance(modification, InsertHeader):
                message.headers.insert(modification.index, modification.name, value)
            else:
                message.headers.change(modification.name, modification.index, value)
            if modification.value:
                self._header_statistics(child, modification)
            return
        if isinstance(modification, ChangeFrom):
            message.change_from = modification  # only the last one counts (M-EOM-1 step 4)
            return
        if isinstance(modification, Quarantine):
            message.quarantine_reason = modification.reason

    def _to_mta(self, modification: Reply) -> None:
        """Queue a modification for the MTA unless it was not granted there (P-PRX-5: drop and log)."""
        options = self.mta_options
        if options is None or not options.action_bits & modification.ACTION:
            self.logger.warning(f"[{self.session.id}] [manager][modification][drop] {modification!r}: the MTA did "
                                f"not grant that action")
            return
        try:
            self.session.queue(modification)
        except LocalProtocolError as error:
            self.logger.error(f"[{self.session.id}] [manager][modification][drop] {modification!r}: {error}")

    def _emit_modifications(self) -> None:
        """Everything but the recipients, in the order of M-EOM-1 (steps 2–5)."""
        message = self.message
        if message is None:
            return
        if message.body_replaced:
            for piece in message.body.pieces(self.manager.chunk_size) if len(message.body) else [b""]:
                self._to_mta(ReplaceBody(piece))
        postfix = "postfix" in (self.session.macros.get("v") or "").lower()
        for edit in header_diff(message.original_headers, message.headers.items, insert_offset=1 if postfix else 0):
            self._to_mta(edit)
            if self.logger.enabled(STATISTICS) and edit.value:
                self.logger.statistics(f"[session][header][add]({self.session.id}): <{edit.name}>=<{edit.value}>")
        if message.change_from is not None:
            self._to_mta(message.change_from)
        if message.quarantine_reason is not None:
            self._to_mta(Quarantine(message.quarantine_reason))
        message.body_replaced = False
        message.change_from = None
        message.quarantine_reason = None
        message.original_headers = list(message.headers.items)

    def _header_statistics(self, child: Child, modification) -> None:
        if self.logger.enabled(STATISTICS):
            self.logger.statistics(f"[milter][header][add]({child.id}): <{modification.name}>=<{modification.value}>: "
                                   f"{child.name}")

    # ================================================================ abort, quit (M-MSG-8, M-SES-6)

    def _abort_message(self) -> None:
        """Every child in the message gets ``A``; the message state and the shelf are dropped (M-AC-4)."""
        self.shelf = {}
        self.flags = set()
        for child in self.children:
            if child.in_message and not child.quitted:
                child.abort()
        self._end_message(abort_children=False)

    def _end_message(self, abort_children: bool) -> None:
        if abort_children:
            for child in self.children:
                if child.in_message and not child.quitted:
                    child.abort()
        if self.message is not None:
            self.message.close()
        self.message = None
        self.waiting = []
        self._body_replacer = None
        self._body_error = None
        self.data_done = False

    def abort(self):
        self._abort_message()

    def close(self):
        """MTA quit, EOF or error: every child gets ``Q`` (M-SES-6); the statistics lines (D-11)."""
        self._end_message(abort_children=False)
        elapsed = time.monotonic() - self.started
        if self.logger.enabled(STATISTICS):
            self.logger.statistics(f"[session][end][{self.last_stage}][{self.last_status}][{elapsed:g}]"
                                   f"({self.session.id})")
        for child in self.children:
            if not child.quitted:
                child.quit()
                self._milter_end(child)
        self.children = []
        self.children_ready = False
        self._watch.close()
        if self._in_progress:
            self._in_progress = False
            self.manager.sessions_processing -= 1
        self.manager.session_finished()

    def interrupted(self, interrupt: BaseException) -> Reply:
        """M-ERR-8: the SMTP client went away while children were working."""
        from .disconnect import ClientDisconnected, answer_disconnect

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
        self.rule_stopped = frozenset()
        self.rule_stage = letter
        for child in self.children:
            if child.macros_extra:
                child.macros_extra.pop(letter, None)  # M-MAC-4: macros set for the previous command of the stage
        outcome = self.manager.apply_rules(self, letter, command)
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
        if letter in ("C", "H"):
            if status != Status.CONTINUE:
                for child in self._alive():
                    child.end_status = status.nick
                    child.quit()
                    self._milter_end(child)
        elif letter in ("M", "T"):
            if status.is_refusal:
                self._abort_message()
            else:
                for child in self.children:
                    if child.in_message:
                        child.abort()
        elif letter == "R":
            if status == Status.DISCARD:
                self._abort_message()
            elif status == Status.ACCEPT:
                for child in self.children:
                    if child.in_message:
                        child.abort()
        elif letter in ("L", "N", "B", "E"):
            self._abort_message()
        return self._reply(combined)

    # ================================================================ conditions and statistics

    def _stopped(self, child: Child, letter: str, command) -> bool:
        """Is the child stopped here: by a rule (C-RULE-2, checked first, C-RULE-6) or one of its
        applicable conditions (M-AC-2)?"""
        if letter == self.rule_stage and child.name in self.rule_stopped:
            child.stage = STAGE_NAMES[letter]  # its last stage is the one it was stopped at
            return True
        conditions = child.definition.conditions
        if not conditions:
            return False
        if self.manager.conditions_stop(self, child, letter, command):
            child.stage = STAGE_NAMES[letter]
            return True
        return False

    def _milter_end(self, child: Child) -> None:
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
