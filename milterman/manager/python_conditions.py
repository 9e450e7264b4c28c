"""Applicable conditions written in Python: ``[[condition]] python = "module:Class"``.

Where the original let a site write a stopper in Ruby (an LDAP or database lookup, a
test no predicate expresses), milterman calls a Python object instead. The class is
instantiated once per (re)load in each worker; each of its methods named after a
stage (``connect``, ``helo``, ``envelope_from``, ``envelope_recipient``, ``data``,
``header``, ``end_of_header``, ``body``, ``end_of_message``) is a stopper: it gets a
read-only :class:`FactsView` of the session and returns whether to stop the child. It runs
in the session's greenlet, so a slow lookup delays that session only if it yields
(gevent-aware libraries do). An exception counts as "do not stop" and is logged once
per session and condition, with its traceback, at error level.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from ..log import Logger
from ..log import logger as default_logger
from ..protocol.stages import STAGE_NAMES, STAGES
from .builtin_conditions import Condition
from .predicates import Scope, authenticated, mta_kind

#: Python method name → stage letter (every stage a condition can stop at: not unknown)
METHODS = {stage.handler: stage.letter for stage in STAGES if stage.name != "unknown"}


def resolve(reference: str, fresh: bool = False) -> object:
    """``"package.module:Name"`` → the object; ImportError or AttributeError when it is not there.

    ``fresh``: import the module again if it was imported before, so a reload sees edited code.
    """
    module_name, _, attribute = reference.partition(":")
    target: object = importlib.import_module(module_name)
    if fresh:
        target = importlib.reload(target)  # type: ignore[arg-type]
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def load_condition_object(reference: str, fresh: bool = False) -> object:
    """The stopper object of a reference: a class is instantiated (without arguments), anything else used as is."""
    target = resolve(reference, fresh)
    return target() if isinstance(target, type) else target


class _Macros(Mapping):
    """The macros the child would see (set by conditions on it, else from the MTA), read-only."""

    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    def _all(self) -> dict[str, str]:
        values = self._scope.facts.macros.merged()
        child = self._scope.child
        if child is not None and child.macros_extra:
            for extra in child.macros_extra.values():
                values.update(extra)
        return values

    def __getitem__(self, name: str) -> str:
        value = self._scope.macro(name.strip("{}") if name.startswith("{") else name)
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


class FactsView:
    """What a Python condition sees of a session: attributes only, nothing it can change but ``shelf``."""

    __slots__ = ("_scope",)

    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    @property
    def stage(self) -> str:
        """The stage being evaluated, e.g. ``"envelope-recipient"``."""
        return STAGE_NAMES[self._scope.letter]

    @property
    def client_address(self) -> str | None:
        """The SMTP client's IP address as text; None for a unix or unknown connection."""
        client = self._scope.client()
        return str(client.ip) if client is not None and client.ip is not None else None

    @property
    def client_name(self) -> str | None:
        """The client's host name as the MTA resolved it (``[address]`` or ``unknown`` when it could not)."""
        client = self._scope.client()
        return client.host if client is not None else None

    @property
    def client_family(self) -> str | None:
        """``inet``, ``inet6``, ``unix`` or ``unknown``."""
        client = self._scope.client()
        return client.family if client is not None else None

    @property
    def helo(self) -> str | None:
        scope = self._scope
        return scope.command.name if scope.letter == "H" else scope.facts.helo_name

    @property
    def envelope_from(self) -> str | None:
        """The MAIL FROM argument as the MTA sent it (with angle brackets)."""
        scope = self._scope
        return scope.command.address if scope.letter == "M" else scope.facts.sender

    @property
    def envelope_recipient(self) -> str | None:
        """The RCPT TO argument being evaluated (envelope-recipient stage only)."""
        scope = self._scope
        return scope.command.address if scope.letter == "R" else None

    @property
    def recipients(self) -> tuple[str, ...]:
        """The recipients of the transaction so far."""
        return tuple(self._scope.recipients())

    @property
    def macros(self) -> Mapping[str, str]:
        return _Macros(self._scope)

    @property
    def authenticated(self) -> bool:
        """SMTP AUTH succeeded (the ``auth_type`` or ``auth_authen`` macro is present)."""
        return authenticated(self._scope)

    @property
    def mta(self) -> str:
        """``postfix``, ``sendmail`` or ``other``, from the ``v`` macro."""
        return mta_kind(self._scope.macro("v"))

    @property
    def shelf(self) -> dict:
        """The transaction's shelf: a dict the stages of one transaction share (emptied at MAIL FROM)."""
        return self._scope.facts.shelf

    @property
    def header(self) -> tuple[str, str] | None:
        scope = self._scope
        return (scope.command.name, scope.command.value) if scope.letter == "L" else None

    @property
    def body(self) -> bytes | None:
        scope = self._scope
        return bytes(scope.command.chunk) if scope.letter == "B" else None

    @property
    def facts(self) -> Mapping[str, object]:
        """Everything above as one read-only mapping (for logging)."""
        names = ("stage", "client_address", "client_name", "client_family", "helo", "envelope_from",
                 "envelope_recipient", "recipients", "authenticated", "mta")
        return MappingProxyType({name: getattr(self, name) for name in names})


def python_condition(name: str, reference: str, logger: Logger | None = None) -> Condition:
    """A :class:`Condition` whose stoppers are the stage methods of the object ``reference`` names."""
    logger = logger or default_logger
    target = load_condition_object(reference)
    stoppers = {}
    for method_name, letter in METHODS.items():
        method = getattr(target, method_name, None)
        if callable(method):
            stoppers[letter] = _stopper(name, reference, method, logger)
    return Condition(name, stoppers)


def _stopper(name: str, reference: str, method, logger: Logger):
    def stopper(scope: Scope) -> bool:
        try:
            return bool(method(FactsView(scope)))
        except Exception:  # the site's code: "do not stop", logged once per session and condition
            logged = scope.facts.condition_errors
            if name not in logged:
                scope.facts.condition_errors = logged | {name}
                text = traceback.format_exc().rstrip().replace("\n", "\n  ")
                logger.error(f"[{scope.facts.session_id}] [manager][condition][error] [{scope.child.name}] [{name}] "
                             f"{reference}: exception (counted as do not stop):\n  {text}")
            return False

    return stopper
