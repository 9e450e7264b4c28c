"""A milter driven in the same process: its callbacks called directly with the MTA side's command objects.

:class:`InProcessClient` offers what :class:`~milterman.net.MtaClient` offers (negotiate,
``will_send``, ``begin``/``collect``, ``send``, ``close``) but no packet is encoded or decoded
and there is one state machine, the MTA side's :class:`~milterman.protocol.MtaState`. A
command is handed to the class's :class:`~milterman.milter.runner.MilterAdapter` (the
dispatcher milter-run uses: a new instance per transaction, abort honoured, exactly one reply
per event); what the milter side of a socket adds is done here in a few lines each: the
negotiation a socket milter would answer (only the implemented stages, cached per class and
offer), its macros per stage (filtered by its macro-list request, P-NEG-14, P-MAC-6), the
abort implied by MAIL or HELO inside a message (P-SM-8), the replies it may not send (P-RPL-6,
P-RPL-8, P-MOD-2, P-MOD-11) and the end of its connection context.

The milter answers in :meth:`InProcessClient.begin`, under the reading (or end-of-message)
timeout: a callback that waits cooperatively (gevent) is interrupted when it expires, one that
computes past it has its reply thrown away; either way the MTA side sees the timeout it would
see from a socket. ``progress()`` restarts it. :meth:`InProcessClient.collect` hands the answer
out.
"""

from __future__ import annotations

import time
import traceback
import weakref
from collections.abc import Iterable, Mapping

from gevent import get_hub, getcurrent

from ..log import ERROR, Logger, logger as default_logger
from ..net import MilterIOError, Response, Timeouts
from ..net.milter import ModificationCalls, next_id
from ..protocol import (CONTINUE, QUIT, Command,
                        Continue, LocalProtocolError, MacroStore, MtaState, Negotiate,
                        Options, ProtocolError, ReceivedMacro, Reply, answer_offer, strip_braces)
from ..protocol.stages import BY_LETTER, HANDLER_METHODS
from ..protocol.state import NEGOTIATED, check_final_reply
from .api import Milter
from .runner import MilterAdapter, Plan, plan_for

#: command letter → the adapter's method for it (unbound: no per-connection binding)
_DISPATCH = {letter: getattr(MilterAdapter, name) for letter, name in HANDLER_METHODS.items()}


class _Expired(Exception):
    """Raised into a callback that waits past its timeout."""


class _NoSocket:
    """Where a socket would be: bytes written to it directly (the manager's disconnect check writes ABORT and
    QUIT) are dropped; :meth:`InProcessClient.close` ends the milter's connection context instead."""

    def send(self, data: bytes) -> int:
        return len(data)

    def sendall(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class _Negotiated:
    """What a class settles with one offer (the options a socket would settle, P-NEG-8, P-NEG-9) and its macro
    requests per stage letter (P-NEG-14), worked out once."""

    __slots__ = ("options", "requests")

    def __init__(self, plan: Plan, offer: Negotiate) -> None:
        _, self.options = answer_offer(offer, actions=offer.actions, protocol=plan.protocol,
                                       macro_lists=plan.macro_lists)
        self.requests: dict[str, frozenset[str] | None] = {}
        for letter in BY_LETTER:
            requested = self.options.macro_request(letter)
            self.requests[letter] = None if requested is None else frozenset(requested)


#: class → offer → its negotiation (a reloaded module's class is a new key)
_negotiated: "weakref.WeakKeyDictionary[type, dict[Negotiate, _Negotiated]]" = weakref.WeakKeyDictionary()


def _negotiation(cls: type[Milter], plan: Plan, offer: Negotiate) -> _Negotiated:
    offers = _negotiated.get(cls)
    if offers is None:
        offers = _negotiated[cls] = {}
    settled = offers.get(offer)
    if settled is None:
        settled = _Negotiated(plan, offer)
        if len(offers) < 32:  # an MTA offers one thing; never grow without bound
            offers[offer] = settled
    return settled


class InProcessClient(ModificationCalls):
    """The MTA side of a milter class run in this process (what :class:`~milterman.net.MtaClient` offers).

    ``reraise``: a callback's exception leaves :meth:`begin` as it is (tests want the traceback);
    otherwise it is logged and becomes a broken connection, as a crashed milter would be.
    The milter's changes and macro lookups reach this object too (the adapter's ``session``).
    """

    #: the manager's disconnect check writes to a child's socket; nothing travels here
    sock = _NoSocket()

    def __init__(self, cls: type[Milter], offer: Negotiate, *, timeouts: Timeouts | None = None,
                 logger: Logger = default_logger, reraise: bool = False, session_id: int | None = None) -> None:
        self.cls = cls
        self.plan = plan_for(cls)
        self.timeouts = timeouts or Timeouts()
        self.state = MtaState(offer)
        #: whether the event goes to this milter now (skip bits, an earlier refusal or skip: the MTA side's rules)
        self.will_send = self.state.will_send
        self.logger = logger
        self.id = next_id() if session_id is None else session_id
        self.reraise = reraise
        #: the macros the milter sees (P-MAC-6), as its side of a socket would keep them
        self.macros = MacroStore()
        self.adapter = MilterAdapter(self, self.plan)
        #: seconds spent running the milter (the manager's per-child elapsed time)
        self.waited = 0.0
        #: called for each PROGRESS / modification (the manager relays them at once)
        self.on_progress = None
        self.on_modification = None
        #: nothing more can be sent: the milter failed, timed out or its context ended
        self.finished = False
        self._ended = False
        self._requests: dict[str, frozenset[str] | None] = {}
        self._response: Response | None = None
        self._changes: list[Reply] = []
        self._progressed = 0
        #: one loop timer per timeout value, armed around each run of the milter (cheaper than a Timeout each time)
        self._timers: dict[float, object] = {}
        self._timer = None
        self._timeout = self.timeouts.reading
        self._deadline = 0.0

    @classmethod
    def start(cls, milter_class: type[Milter], offer: Negotiate, *, timeouts: Timeouts | None = None,
              logger: Logger = default_logger, reraise: bool = False,
              session_id: int | None = None) -> "InProcessClient":
        """A new connection context of ``milter_class`` (not yet negotiated)."""
        return cls(milter_class, offer, timeouts=timeouts, logger=logger, reraise=reraise, session_id=session_id)

    # ------------------------------------------------------------------ the MTA side

    @property
    def options(self) -> Options | None:
        return self.state.options

    def negotiate(self) -> Options:
        """Settle what the class asks for with the offer, as a socket milter would (P-NEG-8, P-NEG-9)."""
        state = self.state
        state.send(state.offer)
        settled = _negotiation(self.cls, self.plan, state.offer)
        state.options, state.awaiting, state.phase = settled.options, None, NEGOTIATED
        self._requests = settled.requests
        return settled.options

    def queue_macros(self, stage: str, macros: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        """The milter gets the stage's macros, only those it asked for (P-NEG-14); names without braces."""
        items = macros.items() if type(macros) is dict or isinstance(macros, Mapping) else macros
        requested = self._requests.get(stage)
        if requested is None:
            values = {strip_braces(name): value for name, value in items}
        else:
            values = {name: value for name, value in ((strip_braces(name), value) for name, value in items)
                      if name in requested}
        if values:
            self.macros.define(stage, sorted(values.items()))

    def queue_encoded_macros(self, stage: str, packet: bytes) -> bool:
        """The stage's packet (the MTA's, as the socket children get it) kept whole when the milter asked for
        no list at ``stage``: read only if the milter asks for a macro, as the milter side of a socket keeps
        it (P-MAC-6); ``False``: the milter filters this stage, :meth:`queue_macros` takes the values."""
        requests = self._requests
        if stage not in requests or requests[stage] is not None:
            return False
        return self.macros.receive(ReceivedMacro(packet))

    def send(self, command: Command) -> Response | None:
        """``command`` to the milter; its answer when one is owed."""
        if not self.begin(command):
            return None
        return self.collect(command.LETTER)

    def begin(self, command: Command) -> bool:
        """Run the milter on ``command``; ``True`` when it owes a reply (:meth:`collect` hands it out)."""
        if self.finished:
            raise MilterIOError("closed", "connection closed by the milter")
        state = self.state
        in_message = state.message_step != 0
        owed = state.send(command)
        self._response = None
        self._run(command, in_message, owed)
        return owed

    def collect(self, letter: str) -> Response:
        """The answer of the command begun last; its modifications go to ``on_modification`` first."""
        response = self._response
        if response is None:
            raise LocalProtocolError(f"no reply to {letter!r} is owed", "P-RPL-1")
        self._response = None
        if self.on_modification is not None:
            for modification in response.modifications:
                self.on_modification(modification)
        return response

    def close(self, send_quit: bool = True) -> None:
        """QUIT when it may still be sent, then the end of the milter's connection context (abort, close)."""
        if send_quit and not self.finished and self.state.can_quit:
            try:
                self.send(QUIT)
            except (MilterIOError, ProtocolError):
                pass
        self.finished = True
        if not self._ended:
            self._ended = True
            message_open = self.state.message_step != 0
            self._timeout = self.timeouts.reading
            self._arm()
            try:
                if message_open:
                    self.adapter.abort()
                self.adapter.close()
            except _Expired:
                self.logger.error(f"[{self.id}] [milter][error][callback] abort or close ran past the "
                                  f"{self._timeout:g} s reading timeout")
            except Exception as error:
                if self.reraise:
                    raise
                self._log(error)
            finally:
                self._timer.stop()
                self._timer = None
        for timer in self._timers.values():
            timer.close()
        self._timers.clear()

    # ------------------------------------------------------------------ running the milter

    def _run(self, command: Command, in_message: bool, owed: bool) -> None:
        """Call the milter for one command; an owed answer is kept for :meth:`collect`. Failures raise
        :class:`MilterIOError` (the milter is then finished), as from a socket."""
        letter = command.LETTER
        adapter = self.adapter
        started = time.monotonic()
        self._timeout = self.timeouts.end_of_message if letter == "E" else self.timeouts.reading
        self._deadline = started + self._timeout
        self._progressed = 0
        self._changes = changes = []
        self._arm()
        try:
            method = _DISPATCH.get(letter)
            if method is not None:
                if letter in "CHMR":
                    self.macros.command_arrived(letter)  # the later stages' macros are gone (P-MAC-6)
                if in_message and (letter == "M" or letter == "H"):
                    adapter.abort()  # a new MAIL or HELO inside a message implies an abort (P-SM-8)
                if letter == "E" and command.chunk:  # type: ignore[attr-defined]
                    adapter.body(command)  # data on end of message is a last body chunk (P-BAD-20)
                reply = method(adapter, command)
            else:
                reply = self._other(command, in_message)
            if owed:
                reply = reply or CONTINUE
                if type(reply) is not Continue:
                    check_final_reply(letter, reply, self.state.options)
                self.state.receive(reply)
        except _Expired:
            self.finished = True
            raise MilterIOError("end-of-message timeout" if letter == "E" else "reading timeout") from None
        except Exception as error:
            self.finished = True
            if self.reraise:
                raise
            if isinstance(error, ProtocolError) and not isinstance(error, MilterIOError):
                raise MilterIOError("io", f"the milter broke the protocol: {error}") from None
            self._log(error)
            raise MilterIOError("io", f"the milter failed: {type(error).__name__}: {error}") from None
        finally:
            self._timer.stop()
            self._timer = None
            ended = time.monotonic()
            self.waited += ended - started
        if owed:
            if ended > self._deadline:  # computed past the timeout (it could not be cut): reply dropped
                self.finished = True
                raise MilterIOError("end-of-message timeout" if letter == "E" else "reading timeout")
            self._response = Response(reply, changes, self._progressed)

    def _other(self, command: Command, in_message: bool) -> None:
        """ABORT, QUIT, QUIT_NC and macros as the milter's side of a socket takes them (no reply)."""
        letter = command.LETTER
        if letter == "A":
            self.macros.command_arrived("A")
            if in_message:
                self.adapter.abort()  # only with an open message (P-SM-3)
        elif letter == "Q":
            self.macros.clear()
            self.finished = self._ended = True
            self.adapter.close()
        elif letter == "K":
            self.macros.clear()
            self.adapter.close()
            self.adapter = MilterAdapter(self, self.plan)
        elif letter == "D":
            self.queue_macros(command.stage, command.macros)  # type: ignore[attr-defined]
        return None

    def _arm(self) -> None:
        """Start the timer of the current timeout: it throws :class:`_Expired` into this greenlet if it waits."""
        timer = self._timers.get(self._timeout)
        if timer is None:  # repeating, so that again() counts the whole timeout from now (a stopped libev
            #                timer started again would only wait for what was left of it)
            timer = self._timers[self._timeout] = get_hub().loop.timer(self._timeout, self._timeout)
        timer.again(getcurrent().throw, _Expired, update=True)
        self._timer = timer

    def _log(self, error: BaseException) -> None:
        logger = self.logger
        if logger.enabled(ERROR):
            lines = traceback.format_exception(type(error), error, error.__traceback__)
            logger.error(f"[{self.id}] [milter][error][callback] {type(error).__name__}: {error} | "
                         + " | ".join(line.rstrip().replace("\n", " | ") for line in lines[-4:-1]))

    # ------------------------------------------------------------------ what the milter's calls reach

    def _modify(self, modification: Reply) -> None:
        """A modification, refused as a socket milter's side refuses it (P-MOD-2, P-MOD-11)."""
        self.state.check_modification(modification)
        self._changes.append(modification)

    def progress(self) -> None:
        """The milter is still working: a new timeout from now, and the MTA side hears of it at once (P-SM-12)."""
        self._progressed += 1
        self._deadline = time.monotonic() + self._timeout
        if self._timer is not None:
            self._arm()
        if self.on_progress is not None:
            self.on_progress()
