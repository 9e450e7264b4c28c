"""A :class:`~milterman.milter.Milter` subclass behind the milter-side session runner.

:class:`MilterAdapter` is the :class:`~milterman.net.MilterHandler` that
:class:`~milterman.net.MilterSession` drives: it turns typed commands into stage-method
calls, checks each result is exactly one final reply, and makes a new instance per
SMTP transaction. Negotiation asks only for the implemented stages (the skip and
no-reply bits of every other one are set); the session answers the rest itself.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from ..net.milter import MilterHandler, MilterSession, Wanted
from ..protocol import Family, Negotiate, Reply, Step
from ..protocol.messages import to_bytes
from ..protocol.stages import STAGES as STAGE_TABLE
from .api import MACRO_STAGES, REPLY_TYPES, Connection, Milter, MilterUsageError, check_milter_class

_FAMILIES = {Family.INET: "inet", Family.INET6: "inet6", Family.UNIX: "unix"}


class Plan:
    """What a milter class asks for in negotiation, worked out once per class."""

    __slots__ = ("cls", "functions", "protocol", "macro_lists", "abort", "close")

    def __init__(self, cls: type[Milter]) -> None:
        self.cls = cls
        #: stage name → the subclass's function (None: not implemented, never negotiated)
        self.functions: dict[str, Callable | None] = {}
        protocol = 0
        for stage in STAGE_TABLE:
            function = getattr(cls, stage.handler)
            implemented = function is not getattr(Milter, stage.handler)
            self.functions[stage.handler] = function if implemented else None
            if not implemented:  # neither sent nor answered (end of message has no such bits: 0)
                protocol |= stage.skip_bit | stage.no_reply_bit
        if self.functions["body"] is not None:
            protocol |= int(Step.SKIP)  # body() may answer SKIP
        self.protocol = protocol
        self.macro_lists = tuple((int(MACRO_STAGES[stage]), " ".join(names))
                                 for stage, names in dict(cls.macros_wanted).items())
        self.abort = cls.abort if cls.abort is not Milter.abort else None
        self.close = cls.close if cls.close is not Milter.close else None


#: class → its plan: checked and worked out once per class, not per connection (a reloaded module's class is new)
_plans: "weakref.WeakKeyDictionary[type, Plan]" = weakref.WeakKeyDictionary()


def plan_for(cls: type[Milter]) -> Plan:
    """Check ``cls`` (:func:`check_milter_class`) and work out its negotiation, once per class."""
    plan = _plans.get(cls)
    if plan is None:
        plan = _plans[cls] = Plan(check_milter_class(cls))
    return plan


class MilterAdapter(MilterHandler):
    """One SMTP connection context served by instances of one :class:`Milter` subclass."""

    def __init__(self, session: MilterSession, plan: Plan) -> None:
        super().__init__(session)
        self.plan = plan
        self.connection = Connection()
        self.milter: Milter | None = None
        #: the current instance's transaction is over: the next event gets a new instance
        self.finished = False
        self.in_transaction = False
        #: the stage method running now (changes to the message are checked against it)
        self.stage: str | None = None

    def negotiate(self, offer: Negotiate) -> Wanted:
        plan = self.plan
        return Wanted(actions=offer.actions, protocol=plan.protocol, macro_lists=plan.macro_lists)

    # ------------------------------------------------------------------ instances

    def _instance(self) -> Milter:
        milter = self.milter
        if milter is None or self.finished:
            milter = self.plan.cls()
            object.__setattr__(milter, "_milterman", self)
            object.__setattr__(milter, "connection", self.connection)
            self.milter = milter
            self.finished = False
            self.in_transaction = False
        return milter

    def _call(self, name: str, *arguments: object) -> Reply:
        function = self.plan.functions[name]
        milter = self._instance()
        if function is None:  # negotiated away; sent anyway by an MTA that cannot skip it
            return None  # type: ignore[return-value]
        self.stage = name
        try:
            result = function(milter, *arguments)
        finally:
            self.stage = None
        if not isinstance(result, REPLY_TYPES):
            raise MilterUsageError(f"{type(milter).__qualname__}.{name}() returned {result!r}: a stage method "
                                   f"returns exactly one reply (CONTINUE, ACCEPT, REJECT, TEMPFAIL, DISCARD, "
                                   f"SKIP or reply(...))")
        return result

    # ------------------------------------------------------------------ stages

    def connect(self, command) -> Reply:
        connection = self.connection
        connection.hostname = command.hostname
        connection.family = _FAMILIES.get(command.family, "unknown")
        connection.address = command.address
        connection.port = command.port
        return self._call("connect", command.hostname, connection.family, command.address, command.port)

    def helo(self, command) -> Reply:
        self.connection.helo = command.name
        return self._call("helo", command.name)

    def envelope_from(self, command) -> Reply:
        if self.in_transaction:  # the previous transaction ended without an end of message or abort
            self.finished = True
        self._instance()
        self.in_transaction = True
        return self._call("envelope_from", command.address, command.args)

    def envelope_recipient(self, command) -> Reply:
        return self._call("envelope_recipient", command.address, command.args)

    def data(self, command) -> Reply:
        return self._call("data")

    def unknown(self, command) -> Reply:
        return self._call("unknown", command.command)

    def header(self, command) -> Reply:
        return self._call("header", command.name, to_bytes(command.value))

    def end_of_header(self, command) -> Reply:
        return self._call("end_of_header")

    def body(self, command) -> Reply:
        return self._call("body", command.chunk)

    def end_of_message(self, command) -> Reply:
        try:
            return self._call("end_of_message")
        finally:
            self.finished = True

    def abort(self) -> None:
        milter = self.milter
        if milter is None or self.finished:
            return
        self.finished = True
        if self.plan.abort is not None:
            self.plan.abort(milter)

    def close(self) -> None:
        if self.milter is not None and self.plan.close is not None:
            self.plan.close(self.milter)


def handler_factory(cls: type[Milter]) -> Callable[[MilterSession], MilterAdapter]:
    """The ``handler_factory`` of :class:`~milterman.net.MilterSession` for ``cls`` (checked once here)."""
    plan = plan_for(cls)
    return lambda session: MilterAdapter(session, plan)
