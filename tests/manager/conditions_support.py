"""The session's real facts and stand-in children, to drive conditions and rules without sockets.

:class:`Driver` plays one MTA session against the compiled conditions and rules the way
the leader does: the ``[[rule]]`` chain first (C-RULE-6), then each child's conditions
just before the command would be written to it (M-AC-2), keeping the session's facts
(connect, HELO, sender, recipients, headers, flags) up to date as the leader does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from milterman.config import load_string
from milterman.manager.conditions import Built, build
from milterman.manager.session.facts import Facts
from milterman.protocol import Body, Connect, Data, EndOfHeader, EndOfMessage, Header, Helo, Mail, Rcpt
from milterman.protocol.macros import MacroStore

MILTER = """
[[milter]]
name = "{name}"
connection_spec = "inet:{port}@[127.0.0.1]"
applicable_conditions = {conditions}
"""


def toml_list(items) -> str:
    return "[" + ", ".join('"' + item + '"' for item in items) + "]"


def configuration(text: str = "", milters: dict[str, list[str]] | None = None):
    """``version = 1`` + ``text`` + one ``[[milter]]`` per entry of ``milters`` (name → condition names)."""
    parts = ["version = 1\n"]
    for index, (name, conditions) in enumerate((milters or {}).items()):
        parts.append(MILTER.format(name=name, port=20000 + index, conditions=toml_list(conditions)))
    parts.append(text)
    return load_string("".join(parts))


class FakeResolver:
    """``resolve(names, timeout)`` answering from a table; records every question (M-AC-B7, no network)."""

    def __init__(self, answers: dict[str, tuple[str, ...]] | None = None, fail: bool = False) -> None:
        self.answers = answers or {}
        self.fail = fail
        self.asked: list[str] = []

    def __call__(self, names, timeout):
        self.asked.extend(names)
        if self.fail:
            raise OSError("resolver down")
        return {name: self.answers[name] for name in names if name in self.answers}


def clock_at(text: str):
    """A clock fixed at ``YYYY-MM-DD HH:MM`` local time."""
    moment = time.strptime(text, "%Y-%m-%d %H:%M")
    return lambda: moment


@dataclass
class FakeDefinition:
    name: str
    conditions: tuple = ()


@dataclass
class FakeChild:
    definition: FakeDefinition
    id: int = 1
    last_status: str | None = None
    quitted: bool = False
    in_message: bool = False
    recipients: list = field(default_factory=list)
    macros_extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.definition.name


@dataclass
class FakeHeaders:
    items: list = field(default_factory=list)


@dataclass
class FakeMessage:
    headers: FakeHeaders = field(default_factory=FakeHeaders)


@dataclass
class FakeManager:
    sessions_processing: int = 1


POSTFIX = {"v": "Postfix 3.7.11"}


class Driver:
    """One MTA session against the conditions of ``configuration`` (every enabled milter becomes a child)."""

    def __init__(self, config, *, resolver=None, clock=None, stress_threshold: int | None = 0,
                 sessions: int = 1) -> None:
        """``stress_threshold`` None: as configured (-1 detects); the default 0 keeps tests off /proc."""
        self.built: Built = build(config, resolver=resolver or FakeResolver(), clock=clock,
                                  stress_threshold=stress_threshold)
        self.config = config
        self.sessions = sessions
        self.new_session()

    def new_session(self) -> None:
        """A fresh MTA session: new leader facts, new children (the compiled conditions are kept)."""
        self.leader = Facts(7, MacroStore(), FakeManager(self.sessions))
        for index, milter in enumerate(milter for milter in self.config.milters if milter.enabled):
            definition = FakeDefinition(milter.name, self.built.conditions_per_milter[milter.name])
            self.leader.children.append(FakeChild(definition, id=index + 1))
        self.outcome = None

    def child(self, name: str) -> FakeChild:
        return next(child for child in self.leader.children if child.name == name)

    def macros(self, name: str, letter: str) -> dict:
        return dict(self.child(name).macros_extra.get(letter, {}))

    def stop(self, name: str, command) -> bool:
        """The condition evaluator alone, for one child (M-AC-2)."""
        child = self.child(name)
        return bool(self.built.condition_evaluator(self.leader, child, command.LETTER, command))

    def send(self, command, macros: dict | None = None) -> dict[str, bool]:
        """One MTA command: rules, then every eligible child's conditions; ``{child: stopped}``."""
        leader = self.leader
        letter = command.LETTER
        store = leader.macros
        if macros is not None:
            store.define(letter, tuple(macros.items()))
        store.command_arrived(letter)
        if letter == "C":
            leader.connect_command = command
        elif letter == "H":
            leader.helo_name = command.name
        elif letter == "M":
            leader.flags = set()
            leader.shelf = {}
            leader.sender = command.address
            leader.recipients = []
            leader.message = None
            for child in leader.children:
                child.recipients = []
                child.in_message = not child.quitted
        for child in leader.children:
            child.macros_extra.pop(letter, None)  # the leader's _rules does this per MTA command
        stopped_by_rule: frozenset[str] = frozenset()
        self.outcome = None
        if self.built.rule_evaluator is not None:
            self.outcome = self.built.rule_evaluator(leader, letter, command)
            if self.outcome is not None and self.outcome.terminal is None:
                stopped_by_rule = self.outcome.stopped
                for child in leader.children:
                    if self.outcome.macros:
                        child.macros_extra.setdefault(letter, {}).update(self.outcome.macros)
        if letter == "L":
            if leader.message is None:
                leader.message = FakeMessage()
            leader.message.headers.items.append((command.name, command.value))
        result = {}
        for child in leader.children:
            if child.quitted or (letter not in "CH" and not child.in_message):
                continue
            if child.name in stopped_by_rule:
                result[child.name] = True
                continue
            stopped = bool(child.definition.conditions) and self.stop(child.name, command)
            result[child.name] = stopped
            if stopped and letter in "CH":
                child.quitted = True
            elif stopped and letter in "MTLNBE":
                child.in_message = False
            elif not stopped and letter == "R":
                child.recipients.append(command.address)
        if letter == "R" and (self.outcome is None or self.outcome.terminal is None):
            leader.recipients.append(command.address)
        return result

    # -- conveniences

    def connect(self, host: str = "mail.example.org", address: str = "192.0.2.10", family: str | None = None,
                port: int = 40000, macros: dict | None = None) -> dict[str, bool]:
        if family is None:
            family = "6" if ":" in address else ("L" if address.startswith("/") else ("U" if not address else "4"))
        if family == "U":
            return self.send(Connect(host, "U"), macros)
        return self.send(Connect(host, family, port, address), macros)

    def helo(self, name: str = "mail.example.org", macros: dict | None = None) -> dict[str, bool]:
        return self.send(Helo(name), macros)

    def mail(self, address: str = "<alice@example.org>", macros: dict | None = None) -> dict[str, bool]:
        return self.send(Mail(address), macros)

    def rcpt(self, address: str = "<bob@example.com>", macros: dict | None = None) -> dict[str, bool]:
        return self.send(Rcpt(address), macros)

    def data(self, macros: dict | None = None) -> dict[str, bool]:
        return self.send(Data(), macros)

    def header(self, name: str, value: str) -> dict[str, bool]:
        return self.send(Header(name, value))

    def end_of_header(self) -> dict[str, bool]:
        return self.send(EndOfHeader())

    def body(self, chunk: bytes) -> dict[str, bool]:
        return self.send(Body(chunk))

    def end_of_message(self) -> dict[str, bool]:
        return self.send(EndOfMessage())
