"""One child milter as one MTA session sees it: its connection, options and standing (M-SES-3, M-ERR-*).

The child side speaks as an MTA would, through :class:`milterman.net.MtaClient`;
every failure (timeout, protocol error, closed socket) becomes :class:`ChildFailure`,
and the leader then counts the child's fallback status (M-ERR-1, D-14).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..log import DEBUG, Logger
from ..net import ConnectionSpec, MilterIOError, MtaClient, Response, Timeouts
from ..net.milter import next_id
from ..protocol import ABORT, QUIT, Command, Negotiate, Options, ProtocolError
from ..protocol.stages import STAGE_NAMES, stage_name
from .pool import FIRST_REPLY_SECONDS
from .status import Status

__all__ = ["STAGE_NAMES", "Child", "ChildDefinition", "ChildFailure"]  # STAGE_NAMES: the leader reads it here


@dataclass(frozen=True)
class ChildDefinition:
    """What the manager needs to know about one configured child milter ([[milter]], B3)."""

    name: str
    spec: ConnectionSpec
    #: fallback status, timeouts and retry delay come from the [[milter]] settings (their defaults are the schema's)
    fallback_status: Status
    timeouts: Timeouts
    #: the first wait before an attempt to bring the child back (doubled after each failed attempt)
    retry_delay: float
    evaluation_mode: bool = False
    #: the child's applicable conditions in attachment order (a ConditionChain from conditions.build, M-AC-*)
    conditions: tuple = ()
    #: the child's ``command`` as a :class:`milterman.manager.launcher.CommandLaunch` (M-LAU-1), or None
    launch: object = None
    #: this child's counters in the serving process (:class:`milterman.manager.metrics.ChildRecord`), or None
    record: object = field(default=None, compare=False, repr=False)
    #: an in-process child: its milterman.milter.Milter subclass (``spec`` is then None; see manager/inprocess.py)
    milter_class: object = None
    #: keep its connection across SMTP sessions with ``K`` (manager/pool.py; ``reuse_connection``)
    reuse_connection: bool = False


class ChildFailure(Exception):
    """The child cannot go on for this MTA session (M-ERR-1); its fallback status applies."""


class Child:
    """One child of one MTA session."""

    __slots__ = ("definition", "id", "logger", "client", "quitted", "in_message", "recipients_accepted",
                 "last_status", "stage", "end_status", "skip_body", "macros_extra", "started", "failure",
                 "negotiated", "sent_headers", "sent_end_of_header", "sent_body", "ended", "recipients", "begun",
                 "pool", "_unproven")

    def __init__(self, definition: ChildDefinition, logger: Logger) -> None:
        self.definition = definition
        self.id = next_id()
        self.logger = logger
        self.client: MtaClient | None = None
        self.negotiated = False
        self.quitted = False
        #: "processing the current message" (M-ENV-1)
        self.in_message = False
        self.recipients_accepted = 0
        #: the last status recorded for this child (sibling conditions, B5.1 milter_status)
        self.last_status: str | None = None
        self.stage = "start"
        #: final status for the statistics line (ST-MILTER-END)
        self.end_status = "pass"
        self.skip_body = False
        #: macros set by conditions, per stage letter (M-MAC-4)
        self.macros_extra: dict[str, dict[str, str]] = {}
        self.started = time.monotonic()
        self.failure: str | None = None
        #: how much of the current message this child has been sent (replay, M-MSG-4)
        self.sent_headers = 0
        self.sent_end_of_header = False
        self.sent_body = 0
        self.ended = False
        #: RCPT arguments of this transaction sent to this child and not refused by it (B5.1 recipients)
        self.recipients: list[str] = []
        #: when the command awaiting a reply was sent (the stage latency of the metrics)
        self.begun = 0.0
        #: where the connection goes back at the end of the session (manager/pool.py), or None
        self.pool = None
        #: a kept connection's commands until its first reply, to send again on a fresh one; None: proven
        self._unproven: list | None = None

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def options(self) -> Options | None:
        return self.client.options if self.client is not None else None

    # ------------------------------------------------------------------ connection

    def reuse(self, pool, offer: Negotiate) -> bool:
        """Take a connection kept from an earlier session and negotiated with ``offer`` (manager/pool.py);
        ``False``: none is there and :meth:`connect` must be called. At the end of the session the
        connection goes back to ``pool`` (:meth:`quit`)."""
        self.pool = pool
        if pool is None:
            return False
        started = time.monotonic()
        client = pool.take(offer)
        if client is None:
            return False
        self.stage = "negotiate"
        self.client = client
        client.waited = 0.0
        self._unproven = []
        # a child that does not take K may stay silent: its first reply is awaited briefly (pool.py)
        timeouts = self.definition.timeouts
        client.timeouts = Timeouts(timeouts.connection, timeouts.writing, min(timeouts.reading, FIRST_REPLY_SECONDS),
                                   min(timeouts.end_of_message, FIRST_REPLY_SECONDS))
        if self.definition.record is not None:
            self.definition.record.observe("O", time.monotonic() - started)
        self.negotiated = True
        if self.logger.enabled(DEBUG):
            self.logger.debug(f"[{self.id}] [manager][child][reuse] [{self.name}] a kept connection")
        return True

    def connect(self, offer: Negotiate, observe: bool = True) -> None:
        """Connect and negotiate with the MTA's original offer (M-NEG-1, D-2), once (``observe``: the
        negotiation's latency counts in the metrics; not for a second connection in one session).

        No retry here: a failure marks the child down, and bringing it back (launching its
        command, waiting, trying again) is the health keeper's job, off every session's path.
        """
        self.open(offer)
        try:
            answer = self.client.collect("O")
        except (MilterIOError, ProtocolError) as error:
            answer = error
        self.negotiated_with(answer, observe)

    def open(self, offer: Negotiate) -> None:
        """The first half of :meth:`connect`: connect and send the offer without waiting for the
        answer (a session starts all its children before it reads any answer, :meth:`negotiated_with`)."""
        definition = self.definition
        self.stage = "negotiate"
        self.begun = time.monotonic()
        try:
            self.client = MtaClient.open(definition.spec, offer, timeouts=definition.timeouts,
                                         check_reply_text=False)
        except MilterIOError as error:
            raise self._failure(error, "connect: ") from None
        try:
            self.client.begin(self.client.state.offer)
        except (MilterIOError, ProtocolError) as error:
            self.client.close(send_quit=False)
            raise self._failure(error, "negotiation failed: ") from None

    def negotiated_with(self, answer: Response | Exception, observe: bool = True) -> None:
        """The second half of :meth:`connect`: the child's answer to the offer (P-NEG-9), or its failure."""
        if isinstance(answer, Exception):
            self.client.close(send_quit=False)
            raise self._failure(answer, "negotiation failed: ")
        definition = self.definition
        if definition.record is not None and observe:
            definition.record.observe("O", time.monotonic() - self.begun)
        for warning in self.client.state.warnings:
            self.logger.warning(f"[{self.id}] [manager][child][negotiate] [{self.name}] {warning}")
        self.negotiated = True

    def skip(self, reason: str) -> None:
        """The child is known to be down: not tried in this session, its fallback counts (D-14).

        Logged at debug level only: the log has one line when the child went down.
        """
        self.stage = "negotiate"
        self.failure = reason
        self.end_status = "error"
        self.quitted = True
        if self.logger.enabled(DEBUG):
            self.logger.debug(f"[{self.id}] [manager][child][skip] [{self.name}] {reason}")

    # ------------------------------------------------------------------ commands

    def will_send(self, letter: str) -> bool:
        return self.client is not None and not self.quitted and self.client.will_send(letter)

    def answers(self, letter: str) -> bool:
        """Does this child reply to ``letter``? (its own no-reply bits, honoured: D-2, M-NEG-3a)."""
        options = self.client.options
        return letter == "E" or (options is not None and letter in options.answered)

    def begin(self, command: Command, macros: dict[str, str] | None, encoded: bytes | None = None,
              packet: bytes | None = None) -> bool:
        """Write the stage's macros and ``command``; ``True`` when a reply is owed.

        ``encoded`` is the same macros as one packet, and ``packet`` the command encoded, both shared
        by the children (M-MAC-2): encoded once per stage, not once per child.
        """
        letter = command.LETTER
        self.stage = STAGE_NAMES.get(letter, self.stage)
        if self.macros_extra:  # most children never get macros from a rule: no lookup for them
            extra = self.macros_extra.get(letter)
            if extra:
                macros = {**(macros or {}), **extra}
                encoded = None
        if self._unproven is not None:  # kept to be sent again: the values as they are now, not read later
            self._unproven.append((command, dict(macros) if macros else macros, encoded))
        client = self.client
        try:
            if macros and (encoded is None or not client.queue_encoded_macros(letter, encoded)):
                client.queue_macros(letter, macros)
            self.begun = time.monotonic()
            if packet is not None and getattr(client, "fileno", None) is not None:
                return client.begin(command, packet)
            return client.begin(command)
        except (MilterIOError, ProtocolError) as error:
            if self._unproven is not None:
                return self._afresh(error)
            raise self._failure(error, f"{stage_name(letter)}: ") from None

    def collect(self, letter: str) -> Response:
        try:
            response = self.client.collect(letter)
        except (MilterIOError, ProtocolError) as error:
            return self.collected(letter, error)
        return self.collected(letter, response)

    def collected(self, letter: str, response: Response | Exception) -> Response:
        """What :meth:`collect` makes of the client's outcome (a response, or the failure read for this
        child by :func:`milterman.net.mta.collect_all`): a :class:`ChildFailure` or the response; a kept
        connection that failed is replaced by a fresh one, read again."""
        if isinstance(response, Exception):
            if self._unproven is None:
                raise self._failure(response, f"{stage_name(letter)}: ")
            if not self._afresh(response):
                raise ChildFailure(f"{stage_name(letter)}: no reply owed on a fresh connection")
            return self.collect(letter)
        if self._unproven is not None:
            self._unproven = None
            self.client.timeouts = self.definition.timeouts
        if response.final.LETTER in ("4", "f"):
            # M-ERR-5 Py: shutdown / connection-failure from a child is a child failure (M-ERR-1, fallback)
            raise ChildFailure(f"{stage_name(letter)}: the milter answered "
                               f"{type(response.final).__name__}")
        record = self.definition.record
        if record is not None:
            record.replied(letter, response.final, time.monotonic() - self.begun)
        return response

    def _afresh(self, error: Exception) -> bool:
        """A kept connection failed before its first reply: the child is not reused for a while
        (pool.py), and a fresh connection, negotiated with the same offer, gets the commands sent
        since the connection was taken, so the mail never gets the child's fallback because of
        reuse. Returns what the last of them returned (a reply is owed); a failure here is the
        child's own (ChildFailure)."""
        sent, self._unproven = self._unproven, None
        old = self.client
        if isinstance(error, MilterIOError) and error.kind.endswith("timeout"):
            self.pool.failed(f"a kept connection did not answer its first command within "
                             f"{FIRST_REPLY_SECONDS:g} s", for_good=True)
        else:
            self.pool.failed(f"a kept connection failed on its first command ({error})")
        old.close(send_quit=False)
        stage = self.stage
        self.connect(old.state.offer, observe=False)
        self.stage = stage
        client = self.client
        client.waited = old.waited
        client.on_progress, client.on_modification = old.on_progress, old.on_modification
        owed = False
        for command, macros, encoded in sent:
            if command.LETTER == "A":
                if client.state.can_quit:
                    owed = self._send_again(command)
                continue
            if not client.will_send(command.LETTER):
                raise ChildFailure(f"{stage_name(command.LETTER)}: not negotiated on a fresh connection")
            try:
                if macros and (encoded is None or not client.queue_encoded_macros(command.LETTER, encoded)):
                    client.queue_macros(command.LETTER, macros)
            except ProtocolError as failure:
                raise self._failure(failure, f"{stage_name(command.LETTER)}: ") from None
            owed = self._send_again(command)
        return owed

    def _send_again(self, command: Command) -> bool:
        self.begun = time.monotonic()
        try:
            return self.client.begin(command)
        except (MilterIOError, ProtocolError) as failure:
            raise self._failure(failure, f"{stage_name(command.LETTER)}: ") from None

    def _failure(self, error: Exception, where: str) -> ChildFailure:
        """The ChildFailure for ``error``; a timeout is counted by its kind for the metrics."""
        record = self.definition.record
        if record is not None and isinstance(error, MilterIOError):
            record.failed(error.kind)
        return ChildFailure(f"{where}{error}")

    def exchange(self, command: Command, macros: dict[str, str] | None,
                 encoded: bytes | None = None, packet: bytes | None = None) -> Response | None:
        if not self.begin(command, macros, encoded, packet):
            return None
        return self.collect(command.LETTER)

    def abort(self) -> None:
        """Send ``A`` (the child leaves the message); failures only quit the child."""
        self.in_message = False
        self.skip_body = False
        if self.client is None or self.quitted:
            return
        if self._unproven is not None:
            self._unproven.append((ABORT, None, None))
        try:
            self.client.begin(ABORT)
        except (MilterIOError, ProtocolError) as error:
            if self._unproven is None:
                self.expire(f"abort: {error}")
                return
            try:
                self._afresh(error)
            except ChildFailure as failure:
                self.expire(f"abort: {failure}")

    def quit(self) -> None:
        """The child's part of the SMTP session is over (M-SES-6); idempotent.

        A child that ended cleanly keeps its connection for a later session: ``K`` and back to its
        pool (manager/pool.py); otherwise, or when the pool does not keep it, ``Q`` and close.
        """
        if self.quitted:
            return
        self.quitted = True
        self.in_message = False
        client = self.client
        if client is None:
            return
        state = client.state
        try:
            if self.pool is not None and self.failure is None and state.can_quit:
                if state.message_step:
                    client.begin(ABORT)  # the child leaves the message before the next session
                if self.pool.give(client):
                    return
            if state.can_quit:
                client.begin(QUIT)
        except (MilterIOError, ProtocolError):
            pass
        client.close(send_quit=False)

    def expire(self, reason: str, log: bool = True) -> None:
        """M-ERR-1: quitted for the rest of the MTA session (the caller counts the fallback).

        ``log=False`` when the line is already in the log (a child that went down says so once).
        """
        self.failure = reason
        if log:
            self.logger.error(f"[{self.id}] [manager][child][error] [{self.name}] {reason}")
        elif self.logger.enabled(DEBUG):
            self.logger.debug(f"[{self.id}] [manager][child][error] [{self.name}] {reason}")
        self.end_status = "error"
        self.quitted = True
        self.in_message = False
        if self.client is not None:
            self.client.close(send_quit=False)

    @property
    def waited(self) -> float:
        return self.client.waited if self.client is not None else 0.0
