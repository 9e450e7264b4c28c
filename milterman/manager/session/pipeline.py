"""The message pipeline of one MTA session: header, end-of-header, body, end-of-message (D-3, M-MSG-*).

The live child gets the MTA's packets; when it leaves (accept, stop, end of message),
the next child gets a replay of the *current* headers and body, so each child sees the
earlier children's edits (M-MSG-4, M-EOM-2, M-BODY-3). At the end the MTA gets the
recipient edits as they came, then the body, the header diff, the sender change and
the quarantine reason, then the combined status (M-EOM-1).

The pipeline reaches the rest of the session only through
:class:`~milterman.manager.session.port.SessionPort`, which the leader implements; it never
imports the leader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...log import DEBUG, STATISTICS
from ...protocol import (CONTINUE, END_OF_HEADER, AddHeader, AddRcpt, AddRcptWithParameters, Body, ChangeFrom,
                         ChangeHeader, Continue, DeleteRcpt, EndOfMessage, Header, InsertHeader, LocalProtocolError,
                         Quarantine, ReplaceBody, Reply, Skip)
from ...protocol.stages import STAGE_NAMES
from ..child import ChildFailure
from ..disconnect import NO_WATCH
from ..message import POSTFIX, SENDMAIL, Message, describe, header_edits
from ..status import Combined, Status, status_of

if TYPE_CHECKING:
    from ..child import Child
    from ..context import ManagerContext
    from .port import SessionPort


class MessagePipeline:
    """The message in progress of one MTA session and the children still waiting for it (M-MSG-1)."""

    def __init__(self, port: SessionPort, session, manager: ManagerContext) -> None:
        self.port = port
        #: the MTA side: ``id``, ``options``, ``macros``, ``queue()``, ``progress()``
        self.session = session
        #: ``chunk_size`` (M-BODY-2) and ``logger``
        self.manager = manager
        self.logger = manager.logger
        self.message: Message | None = None
        #: W: the children still to see the message, the live one first (M-MSG-1)
        self.waiting: list[Child] = []
        #: the combined status of the transaction's message stages (M-AGG-1, reset per MAIL: M-AGG-2a)
        self.status = Combined()
        self._body_replacer: Child | None = None
        self._body_error: OSError | None = None
        #: stage letter → (macros, encoded packet) for the MTA command in progress: the MTA's macros do not
        #: change while one of its commands is handled, so each stage's are looked up once, not per child step
        self._stage_macros: dict[str, tuple] = {}
        #: a child changed the headers since the last snapshot (H0): only then is there a header diff to send
        self._headers_edited = False

    @property
    def mta_options(self):
        """The options settled with the MTA (P-PRX-5, M-MSG-10)."""
        return self.session.options

    # ================================================================ life of a message

    def new_transaction(self) -> None:
        """MAIL: the message statuses of the previous transaction are forgotten (M-AGG-2a)."""
        self.status = Combined()

    def start(self, children: list[Child]) -> Message:
        """First message stage: W = processing children with a recipient of their own (M-MSG-1)."""
        self.message = Message()
        waiting = []
        for child in children:
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
        return self.message

    def close(self) -> None:
        """The message, its buffer and the waiting list are dropped (end of message, abort, M-MSG-8)."""
        if self.message is not None:
            self.message.close()
        self.message = None
        self.waiting = []
        self._body_replacer = None
        self._body_error = None

    # ================================================================ the MTA's message commands

    def header(self, command: Header) -> Reply:
        self._stage_macros = {}
        self.message.headers.append(command.name, command.value)
        return self._advance("L")

    def end_of_header(self, command) -> Reply:
        self._stage_macros = {}
        self.message.end_of_header = True
        return self._advance("N")

    def body(self, command: Body) -> Reply:
        self._stage_macros = {}
        try:
            self.message.body.append(command.chunk)
            return self._advance("B", command.chunk)
        except OSError as error:
            return self._body_failure(error)

    def end_of_message(self, command: EndOfMessage) -> Reply:
        """M-MSG-3…5: every waiting child in turn, then the modifications and the combined status."""
        self._stage_macros = {}
        message = self.message
        message.end_of_message_chunk = command.chunk
        message.headers.begin_edits(self._mta_kind())  # the MTA's own entries, for its rules (D-16)
        message.original_headers = message.headers.snapshot()  # H0 (M-MSG-3)
        self._headers_edited = False
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
                message.headers.end_child()
            self._emit_modifications()
        except OSError as error:
            return self._body_failure(error)
        combined = self.status
        if combined.status == Status.NOT_CHANGE:
            combined.add(Status.CONTINUE)
        reply = self.port.reply(combined)
        self.port.end_message()
        return reply

    def _body_failure(self, error: OSError) -> Reply:
        """The body buffer's temporary file failed: a manager error (M-BODY-1, M-ERR-7): the manager's
        fallback answers, every child leaves the message."""
        reply = self.port.manager_fallback(f"body buffer: {error.strerror or error}")
        self.port.abort_message()
        return reply

    # ================================================================ live delivery and replay

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
        return self.port.reply(self.status) if self.status.status else self._all_left()

    def _all_left(self) -> Reply:
        """M-MSG-7: every child left before EOM: the MTA gets the combined status (accept)."""
        combined = Combined()
        combined.add(Status.ACCEPT)
        return self.port.reply(combined)

    def _catch_up(self, child: Child, live_chunk: bytes | None = None, through_eom: bool = False):
        """Send ``child`` what it has not seen yet: headers, EOH, body (and EOM when asked).

        Returns ``None`` when the child is up to date and continuing, ``True`` when it left the
        waiting list (accept, stop, evaluation refusal, expiry with fallback accept), or the
        reply for the MTA when it refused (every child is then aborted).
        """
        message = self.message
        port = self.port
        headers = message.headers.items
        count = len(headers)  # the list and the body stay as they are while a child catches up (edits come at EOM)
        if child.sent_headers < count:
            mta_options = self.session.options
            mta_leading_space = bool(mta_options and mta_options.header_leading_space)
            child_options = child.options
            child_leading_space = bool(child_options and child_options.header_leading_space)
            strip_space = mta_leading_space and not child_leading_space
            while child.sent_headers < count:
                name, value = headers[child.sent_headers]
                child.sent_headers += 1
                if strip_space and value[:1] == " ":
                    value = value[1:]
                header = Header(name, value)
                if port.stopped(child, "L", header):
                    return self._leave(child, "stop")
                outcome = self._step(child, header)
                if outcome is not None:
                    return outcome
        if message.end_of_header and not child.sent_end_of_header:
            child.sent_end_of_header = True
            if port.stopped(child, "N", END_OF_HEADER):
                return self._leave(child, "stop")
            outcome = self._step(child, END_OF_HEADER)
            if outcome is not None:
                return outcome
        body = message.body
        size = len(body)
        if child.sent_body < size and not child.skip_body:
            if live_chunk is not None and child.sent_body == size - len(live_chunk):
                pieces = [live_chunk]
            else:
                pieces = body.passed_on(self.manager.chunk_size)  # a replaced body as the MTA passes it (D-16)
            for piece in pieces:
                child.sent_body += len(piece)
                if child.skip_body:
                    continue
                chunk = Body(piece)
                if port.stopped(child, "B", chunk):
                    return self._leave(child, "stop")
                outcome = self._step(child, chunk)
                if outcome is not None:
                    return outcome
            child.sent_body = size
        if through_eom:
            eom = EndOfMessage(message.end_of_message_chunk)
            if port.stopped(child, "E", eom):
                return self._leave(child, "stop")
            return self._step(child, eom)
        return None

    def _step(self, child: Child, command):
        """One message-stage command to one child and what its answer means (M-MSG-6)."""
        letter = command.LETTER
        if letter != "E" and not child.will_send(letter):
            return None
        port = self.port
        stage = self._stage_macros.get(letter)
        if stage is None:
            macros = port.stage_macros(letter)
            stage = self._stage_macros[letter] = (macros, port.encoded_macros(letter, macros))
        macros, encoded = stage
        if letter == "E":
            child.client.on_modification = lambda modification: self._modification(child, modification)
            child.client.on_progress = self._relay_progress
        watch = port.watch
        try:
            if watch is NO_WATCH:
                response = child.exchange(command, macros, encoded)
            else:
                with watch:
                    response = child.exchange(command, macros, encoded)
        except ChildFailure as error:
            return self._pipeline_failure(child, str(error))
        finally:
            if letter == "E" and child.client is not None:  # only end of message set them
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
                self.status.add(Status.CONTINUE)
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
        reply = self.port.reply(combined)
        if letter == "E":
            self._emit_modifications()
        self.port.abort_message()
        self.port.milter_end(child)
        return reply

    def _leave(self, child: Child, how: str) -> bool:
        """The child leaves the waiting list: accept counted, ``A`` for a stopped child (M-AC-6)."""
        self.status.add(Status.ACCEPT)
        child.end_status = how
        if how == "stop":
            child.abort()
        child.in_message = False
        return True

    def _pipeline_failure(self, child: Child, reason: str):
        """M-ERR-3 (fixed): fallback accept → continue with the next child, edits kept; otherwise the
        fallback answers the MTA at once and every child is aborted."""
        fallback = child.definition.fallback_status
        self.port.expire(child, reason)
        if fallback == Status.ACCEPT:
            self.status.add(Status.ACCEPT)
            return True
        combined = Combined()
        combined.add(fallback)
        reply = self.port.reply(combined)
        self.port.abort_message()  # M-ERR-3: the fallback answers at once, without the edits collected so far
        return reply

    def _relay_progress(self) -> None:
        """A child's PROGRESS goes to the MTA at once (M-MSG-6)."""
        try:
            self.session.progress()
        except LocalProtocolError:
            pass

    # ================================================================ end-of-message modifications (M-EOM-*)

    def _modification(self, child: Child, modification: Reply) -> None:
        """Apply one child's end-of-message request to the message (M-EOM-1, M-EOM-2, M-BODY-3)."""
        message = self.message
        if child.definition.evaluation_mode:
            self.logger.info(f"[{child.id}] [manager][evaluation][ignore] [{child.name}] {modification!r}")
            if isinstance(modification, (AddHeader, InsertHeader, ChangeHeader)) and modification.value:
                self._header_statistics(child, modification)
            return
        if self.logger.enabled(DEBUG):
            self.logger.debug(f"[{child.id}] [manager][modification][child] [{child.name}] {describe(modification)}")
        if isinstance(modification, (AddRcpt, AddRcptWithParameters, DeleteRcpt)):
            self._to_mta(modification)  # forwarded at once, in arrival order (M-EOM-1 step 1)
            return
        if isinstance(modification, ReplaceBody):
            try:
                if child is not self._body_replacer:
                    self._body_replacer = child
                    message.body.start_replacement(self._mta_kind())
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
            self._headers_edited = True
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
            return
        if self.logger.enabled(DEBUG):
            self.logger.debug(f"[{self.session.id}] [manager][modification][mta] {describe(modification)}")

    def _mta_kind(self) -> str:
        """Whose rules the message follows (D-16): Postfix when macro ``v`` names it, else Sendmail's."""
        return POSTFIX if "postfix" in (self.session.macros.get("v") or "").lower() else SENDMAIL

    def _emit_modifications(self) -> None:
        """Everything but the recipients, in the order of M-EOM-1 (steps 2–5)."""
        message = self.message
        if message is None:
            return
        if message.body_replaced:
            # Postfix gets the body as it would pass it on; Sendmail the last child's bytes as sent, which
            # it turns into what it delivers by its own rules (D-16)
            size = self.manager.chunk_size
            body = message.body
            pieces = body.passed_on(size) if self._mta_kind() == POSTFIX else body.pieces(size)
            for piece in pieces if len(body) else [b""]:
                self._to_mta(ReplaceBody(piece))
        edited = self._headers_edited  # unedited headers have no diff against their snapshot (M-EOM-3)
        for edit in header_edits(message.original_headers, message.headers) if edited else ():
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
        if edited:
            message.original_headers = message.headers.snapshot()
            self._headers_edited = False

    def _header_statistics(self, child: Child, modification) -> None:
        if self.logger.enabled(STATISTICS):
            self.logger.statistics(f"[milter][header][add]({child.id}): <{modification.name}>=<{modification.value}>: "
                                   f"{child.name}")
