"""The :class:`Milter` base class: one method per SMTP stage, a reply returned from each.

A subclass implements only the stages it needs; the others are never asked for (the
MTA is told not to send them and not to wait for a reply). One instance serves one
SMTP transaction: a fresh one is made for the next ``MAIL FROM`` after an end of
message or an abort, so nothing from one message leaks into the next. Facts of the
whole SMTP connection (client name and address, HELO name) are in
:attr:`Milter.connection`.

What the wire carries as text (host names, addresses, ESMTP parameters, header
names) is ``str``; header values and body chunks are ``bytes``. Nothing here reads
or writes packets: the protocol core does, through :mod:`milterman.milter.runner`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..protocol import (ACCEPT, CONTINUE, DISCARD, REJECT, SKIP, TEMPFAIL, Accept, Continue, Discard, Reject,
                        Reply, ReplyCode, Skip, TempFail, format_reply_text)
from ..protocol.stages import STAGES as STAGE_TABLE

__all__ = ["Milter", "Connection", "MilterDefinitionError", "MilterUsageError", "CONTINUE", "ACCEPT", "REJECT",
           "TEMPFAIL", "DISCARD", "SKIP", "reply", "STAGES", "check_milter_class"]

#: what each stage's command carries, as the arguments of its method (the stages come from the stage table)
_ARGUMENTS: Mapping[str, tuple[str, ...]] = {
    "C": ("hostname", "family", "address", "port"), "H": ("name",), "M": ("sender", "parameters"),
    "R": ("recipient", "parameters"), "U": ("command",), "L": ("name", "value"), "B": ("chunk",)}
#: stage method → the arguments it is called with (besides ``self``), in protocol order
STAGES: Mapping[str, tuple[str, ...]] = {stage.handler: _ARGUMENTS.get(stage.letter, ()) for stage in STAGE_TABLE}
#: methods called without a reply expected
NOTIFICATIONS: Mapping[str, tuple[str, ...]] = {"abort": (), "close": ()}
#: every name an attribute may not take (it would hide the method)
CALLBACK_NAMES = frozenset(STAGES) | frozenset(NOTIFICATIONS)
#: what a stage method may return: exactly one final reply
REPLY_TYPES = (Continue, Accept, Reject, TempFail, Discard, Skip, ReplyCode)
#: stage method name → macro stage number, for :attr:`Milter.macros_wanted`
MACRO_STAGES: Mapping[str, int] = {stage.handler: int(stage.macro_stage) for stage in STAGE_TABLE
                                   if stage.macro_stage is not None}


class MilterDefinitionError(TypeError):
    """A :class:`Milter` subclass that cannot work as written (refused when it is defined or loaded)."""


class MilterUsageError(RuntimeError):
    """A callback did something the protocol does not allow at that point (wrong reply, late change)."""


def reply(code: int | str, text: str | Sequence[str] = "", enhanced: str | None = None) -> ReplyCode:
    """A reject (5xx) or temporary failure (4xx) with its own SMTP text, e.g. ``reply(550, "no", "5.7.1")``.

    ``text`` may have several lines (a list or a string with newlines); ``%`` is sent as
    written. Without ``enhanced``, ``X.0.0`` of the code's class is used.
    """
    return ReplyCode(format_reply_text(code, enhanced, text if isinstance(text, str) else tuple(text)))


@dataclass
class Connection:
    """Facts of the SMTP connection, shared by every instance made for it."""

    hostname: str = ""
    #: ``inet``, ``inet6``, ``unix`` or ``unknown``
    family: str = "unknown"
    address: str = ""
    port: int = 0
    #: the HELO/EHLO argument once given
    helo: str | None = None


def _describe(value: object) -> str:
    kind = type(value).__name__
    return f"a {kind} ({value!r})" if isinstance(value, (str, bytes, int, float, bool, type(None))) else f"a {kind}"


def _class_problems(cls: type) -> list[str]:
    """Stage names hidden by non-methods, and stage methods that cannot take their arguments."""
    problems = []
    for name in sorted(CALLBACK_NAMES):
        for klass in cls.__mro__:
            if name in vars(klass):
                value = vars(klass)[name]
                break
        else:
            continue
        if klass is Milter:
            continue
        if not inspect.isfunction(value):
            problems.append(f"{klass.__qualname__}.{name} is {_describe(value)}, not a method: an attribute named "
                            f"like the stage {name!r} hides the callback; rename the attribute")
            continue
        arguments = STAGES[name] if name in STAGES else NOTIFICATIONS[name]
        try:
            inspect.signature(value).bind(None, *arguments)
        except TypeError:
            wanted = ", ".join(("self", *arguments))
            problems.append(f"{klass.__qualname__}.{name} must accept ({wanted})")
    wanted = getattr(cls, "macros_wanted", {})
    for stage in wanted:
        if stage not in MACRO_STAGES:
            problems.append(f"{cls.__qualname__}.macros_wanted: no stage {stage!r} "
                            f"(one of {', '.join(MACRO_STAGES)})")
    return problems


def check_milter_class(cls: object) -> type:
    """Refuse, with a message naming the problem, what cannot serve as a milter; return the class.

    Besides the class itself, one instance is made: an attribute set in ``__init__`` that hides
    a stage method (``self.body = []``) is found at start, not with the first mail.
    """
    if not (isinstance(cls, type) and issubclass(cls, Milter)):
        raise MilterDefinitionError(f"{cls!r} is not a subclass of milterman.milter.Milter")
    problems = _class_problems(cls)
    if problems:
        raise MilterDefinitionError("; ".join(problems))
    try:
        cls()
    except MilterDefinitionError:
        raise
    except Exception as error:
        raise MilterDefinitionError(f"{cls.__qualname__}() fails: {type(error).__name__}: {error}") from None
    return cls


class Milter:
    """Base class of a milter: implement the stages you need, each returning one reply.

    Replies: :data:`CONTINUE`, :data:`ACCEPT` (stop filtering, deliver), :data:`REJECT`,
    :data:`TEMPFAIL`, :data:`DISCARD` (accept and drop) and :func:`reply` (a custom SMTP
    code and text); :data:`SKIP` from :meth:`body` (no more body chunks). The changes to
    the message (:meth:`add_header` … :meth:`progress`) are allowed in
    :meth:`end_of_message` only.
    """

    #: macros to ask the MTA for, per stage: ``{"connect": ["j", "{daemon_name}"]}`` (the MTA may ignore it)
    macros_wanted: ClassVar[Mapping[str, Iterable[str]]] = {}
    #: the facts of the SMTP connection (set before any stage method runs)
    connection: Connection

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        problems = _class_problems(cls)
        if problems:
            raise MilterDefinitionError("; ".join(problems))

    def __setattr__(self, name: str, value: object) -> None:
        if name in CALLBACK_NAMES:
            raise MilterDefinitionError(f"{type(self).__qualname__}: attribute {name!r} would hide the stage "
                                        f"method of that name; choose another attribute name")
        object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ stages (documented, not negotiated)

    def connect(self, hostname: str, family: str, address: str, port: int) -> Reply:
        """The SMTP client connected (``family``: inet, inet6, unix or unknown)."""
        raise NotImplementedError

    def helo(self, name: str) -> Reply:
        """HELO/EHLO with its argument."""
        raise NotImplementedError

    def envelope_from(self, sender: str, parameters: tuple[str, ...]) -> Reply:
        """MAIL FROM: the address as the client wrote it (``<a@b>``) and the ESMTP parameters."""
        raise NotImplementedError

    def envelope_recipient(self, recipient: str, parameters: tuple[str, ...]) -> Reply:
        """RCPT TO: one recipient (``<a@b>``) and its ESMTP parameters."""
        raise NotImplementedError

    def data(self) -> Reply:
        """DATA: the message follows."""
        raise NotImplementedError

    def unknown(self, command: str) -> Reply:
        """An SMTP command the MTA did not know (it will refuse it whatever the reply)."""
        raise NotImplementedError

    def header(self, name: str, value: bytes) -> Reply:
        """One header field: its name and its value as sent (folded lines kept)."""
        raise NotImplementedError

    def end_of_header(self) -> Reply:
        """All header fields were sent."""
        raise NotImplementedError

    def body(self, chunk: bytes) -> Reply:
        """A piece of the body (up to 65535 bytes; CRLF line ends as the MTA sends them)."""
        raise NotImplementedError

    def end_of_message(self) -> Reply:
        """The whole message was sent: the place for changes and the final decision."""
        raise NotImplementedError

    def abort(self) -> None:
        """The current message was given up (RSET, a refusal, a lost client); no reply."""

    def close(self) -> None:
        """The SMTP connection ended; called once, on the last instance made for it."""

    # ------------------------------------------------------------------ what callbacks use

    def macro(self, name: str, default: str | None = None) -> str | None:
        """A macro's value from the MTA (``"i"`` or ``"{i}"``), newest stage first."""
        return self._milterman.session.macros.get(name, default)

    @property
    def macros(self) -> dict[str, str]:
        """Every macro the MTA has sent that is still valid (later stages win)."""
        return self._milterman.session.macros.merged()

    def add_header(self, name: str, value: str | bytes) -> None:
        """Append a header field."""
        self._changes("add_header").add_header(name, _text(value))

    def insert_header(self, index: int, name: str, value: str | bytes) -> None:
        """Insert a header field before the ``index``-th one (0: first)."""
        self._changes("insert_header").insert_header(index, name, _text(value))

    def change_header(self, name: str, value: str | bytes, index: int = 1) -> None:
        """Change the ``index``-th (from 1) header field called ``name``."""
        self._changes("change_header").change_header(name, index, _text(value))

    def delete_header(self, name: str, index: int = 1) -> None:
        """Delete the ``index``-th (from 1) header field called ``name``."""
        self._changes("delete_header").change_header(name, index, "")

    def add_recipient(self, recipient: str, parameters: str | Sequence[str] | None = None) -> None:
        """Add an envelope recipient, optionally with ESMTP parameters (``["NOTIFY=NEVER"]``)."""
        if parameters is not None and not isinstance(parameters, str):
            parameters = " ".join(parameters)
        self._changes("add_recipient").add_recipient(recipient, parameters)

    def delete_recipient(self, recipient: str) -> None:
        """Remove an envelope recipient (as it was given at RCPT TO)."""
        self._changes("delete_recipient").delete_recipient(recipient)

    def change_sender(self, sender: str, parameters: str | Sequence[str] | None = None) -> None:
        """Replace the envelope sender, optionally with ESMTP parameters."""
        if parameters is not None and not isinstance(parameters, str):
            parameters = " ".join(parameters)
        self._changes("change_sender").change_from(sender, parameters)

    def replace_body(self, data: bytes) -> None:
        """Replace the body; call it again to stream more (the first call discards the original)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise MilterUsageError(f"replace_body takes bytes, not {type(data).__name__}")
        self._changes("replace_body").replace_body(bytes(data))

    def quarantine(self, reason: str) -> None:
        """Put the message in the MTA's hold queue with this reason."""
        self._changes("quarantine").quarantine(reason)

    def progress(self) -> None:
        """Tell the MTA we are still working (restarts its timeout); sent at once."""
        self._changes("progress").progress()

    def _changes(self, what: str):
        runner = self._milterman
        if runner.stage != "end_of_message":
            where = f"in {runner.stage}" if runner.stage else "outside a stage method"
            raise MilterUsageError(f"{type(self).__qualname__}.{what}() {where}: changes to the message are "
                                   f"only allowed in end_of_message")
        return runner.session


def _text(value: str | bytes) -> str:
    """Header values may be given as bytes; the wire form is kept byte for byte."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "surrogateescape")
    raise MilterUsageError(f"a header value is str or bytes, not {type(value).__name__}")


_ = (ACCEPT, CONTINUE, DISCARD, REJECT, SKIP, TEMPFAIL)  # re-exported reply constants
