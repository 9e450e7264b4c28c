"""The session's parts in process: real children over in-memory clients, the MTA side, a port stand-in.

Used by the pipeline and fan-out tests (D-3, M-ENV-*, M-MSG-*): the children are the real
:class:`~milterman.manager.child.Child` objects over a client that keeps the real MTA-side
protocol state (so a command sent out of order fails the test) and answers from a script;
the MTA side records what the manager would write to it; :class:`Port` is the leader's side
of :class:`~milterman.manager.session.port.SessionPort`.
"""

from __future__ import annotations

from contextlib import nullcontext

from milterman.log import Logger
from milterman.manager.child import Child, ChildDefinition
from milterman.manager.session.pipeline import MessagePipeline
from milterman.manager.status import Combined, Status
from milterman.net import Response, Timeouts
from milterman.protocol import (CONTINUE, DATA, PROGRESS, TEMPFAIL, Action, Connect, Helo, Mail, MtaState,
                                Negotiate, NegotiateReply, Options, Rcpt, Step)
from milterman.protocol.macros import MacroStore

OFFER = Negotiate(6, int(Action.ALL), int(Step.ALL))
#: every end-of-message action but the macro-list request
ACTIONS = int(Action.ALL) & ~int(Action.SET_SYMBOL_LIST)
HEADERS = (("From", "<sender@example.org>"), ("Subject", "hello"))
BODY = (b"line 1\r\n", b"line 2\r\n")


class MemoryClient:
    """A child's MTA-side client without a socket: the real protocol state, replies from a script.

    ``script`` maps a command letter to what the child answers to every command of that letter:
    a reply, a list of packets ending with the final reply, or an exception to raise (a timeout,
    a closed socket). Letters not in the script are answered ``c``.
    """

    def __init__(self, script: dict, protocol: int = 0) -> None:
        self.state = MtaState(OFFER)
        self.state.send(OFFER)
        self.state.receive(NegotiateReply(6, ACTIONS, protocol))
        self.script = script
        self.commands: list = []
        #: when set, ("begin" | "collect", letter, name) of every command, shared by several clients
        self.journal: list | None = None
        self.name = ""
        self.on_modification = None
        self.on_progress = None
        self.waited = 0.0
        self.closed = False

    @property
    def options(self) -> Options:
        return self.state.options

    @property
    def letters(self) -> list[str]:
        return [command.LETTER for command in self.commands]

    def will_send(self, letter: str) -> bool:
        return self.state.will_send(letter)

    def queue_encoded_macros(self, letter: str, encoded: bytes) -> bool:
        return True

    def queue_macros(self, letter: str, macros) -> None:
        pass

    def begin(self, command) -> bool:
        expects = self.state.send(command)
        self.commands.append(command)
        if self.journal is not None:
            self.journal.append(("begin", command.LETTER, self.name))
        return expects

    def collect(self, letter: str) -> Response:
        if self.journal is not None:
            self.journal.append(("collect", letter, self.name))
        answer = self.script.get(letter, CONTINUE)
        if isinstance(answer, Exception):
            raise answer
        packets = answer if isinstance(answer, list) else [answer]
        modifications = []
        for packet in packets:
            if self.state.receive(packet):
                return Response(packet, modifications)
            if packet == PROGRESS:
                if self.on_progress is not None:
                    self.on_progress()
            else:
                modifications.append(packet)
                if self.on_modification is not None:
                    self.on_modification(packet)
        raise AssertionError(f"script for {letter!r} has no final reply")

    def close(self, send_quit: bool = True) -> None:
        self.closed = True


class MtaSide:
    """The MTA connection as the pipeline sees it: options, macros, the packets queued for the MTA."""

    def __init__(self, actions: int = ACTIONS, protocol: int = 0) -> None:
        self.id = 1
        self.options = Options(6, Action(actions), Step(protocol))
        self.macros = MacroStore()
        self.queued: list = []
        self.progressed = 0

    def queue(self, reply) -> None:
        self.queued.append(reply)

    def progress(self) -> None:
        self.progressed += 1


class Port:
    """The leader's side of :class:`SessionPort`, in memory; ``events`` records what was asked of it."""

    watch = nullcontext()
    logger = Logger()

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self.pipeline: MessagePipeline | None = None
        self.events: list = []
        #: child name → stage letters at which a condition stops it
        self.stops: dict[str, str] = {}

    def stopped(self, child: Child, letter: str, command) -> bool:
        return letter in self.stops.get(child.name, "")

    def stage_macros(self, letter: str):
        return None

    def encoded_macros(self, letter: str, macros):
        return None

    def expire(self, child: Child, reason: str, combined: Combined | None = None) -> None:
        child.expire(reason, log=False)
        if combined is not None:
            combined.add(child.definition.fallback_status)
        self.events.append(("expire", child.name, reason))

    def milter_end(self, child: Child) -> None:
        self.events.append(("end", child.name, child.end_status))

    def reply(self, combined: Combined):
        return combined.reply()

    def manager_fallback(self, reason: str):
        self.events.append(("fallback", reason))
        return TEMPFAIL

    def abort_message(self) -> None:
        self.events.append("abort")
        for child in self.children:
            if child.in_message and not child.quitted:
                child.abort()
        self.pipeline.close()

    def end_message(self) -> None:
        self.events.append("end-message")
        self.pipeline.close()


#: the commands a child has been sent before the part under test, by letter
ENVELOPE = {"C": Connect("client.example", "4", 40000, "192.0.2.1"), "H": Helo("client.example"),
            "M": Mail("<sender@example.org>"), "R": Rcpt("<rcpt@example.net>"), "T": DATA}


def child(name: str, script: dict | None = None, *, protocol: int = 0, fallback: Status = Status.ACCEPT,
          evaluation: bool = False, through: str = "CHMRT") -> Child:
    """A negotiated child that has been sent the commands of ``through`` (answered ``c``); through DATA
    (the default) it is in the message with a recipient of its own."""
    made = Child(ChildDefinition(name, None, fallback_status=fallback, timeouts=Timeouts(), retry_delay=10.0,
                                 evaluation_mode=evaluation), Logger())
    made.client = MemoryClient({}, protocol)
    made.client.name = name
    made.negotiated = True
    for letter in through:
        made.exchange(ENVELOPE[letter], None)
    made.client.script = script or {}
    made.in_message = "M" in through
    made.recipients_accepted = 1 if "R" in through else 0
    return made
