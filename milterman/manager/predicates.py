"""The predicates of B5.1 compiled into small functions of a :class:`Scope`.

A ``match`` table (already parsed by :mod:`milterman.config.predicates`) becomes one
callable ``test(scope) -> bool`` per rule, built once when the configuration is
loaded: the stage of the rule is known then, so "at envelope-recipient the current
RCPT, later the recipients so far" and similar choices are made at build time and
the per-command path only reads what it needs.

Semantics shared by every predicate (C-COND-1, B5.1):

* all predicates of a ``match`` must hold; an empty ``match`` always holds;
* an array value holds if **any** element matches;
* ``not_<name>`` negates the predicate as a whole (after the ``recipients``
  quantifier: ``not_envelope_recipient`` with ``recipients = "all"`` means "not
  every recipient matches");
* data that does not exist (no HELO was given, no header yet, a DNS failure) makes
  the predicate itself false, so its ``not_`` form holds.

The site-dependent facts (S25R, locality, trust, stress, DNSBL, the clock) come from
a :class:`~milterman.manager.builtin_conditions.Site`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

from ..config.predicates import DAYS, HeaderMatch, Match, Predicate, TimeWindow
from ..protocol import Family
from ..protocol.stages import MACRO_LIST_LETTERS

if TYPE_CHECKING:
    from .builtin_conditions import Site

#: P-CON-1 family byte → B5.1 ``client_family`` name
FAMILIES = {Family.INET: "inet", Family.INET6: "inet6", Family.UNIX: "unix", Family.UNKNOWN: "unknown"}

Test = Callable[["Scope"], bool]


class Client(NamedTuple):
    """The SMTP client of a session as the connect command gave it (M-AC-3)."""

    host: str
    family: str  # inet, inet6, unix, unknown
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None


@lru_cache(maxsize=4096)
def client_of(connect) -> Client:
    """Host, family name and parsed IP of a ``Connect`` (cached: a session asks many times)."""
    family = FAMILIES.get(connect.family, "unknown")
    ip = None
    if family in ("inet", "inet6"):
        try:
            ip = ipaddress.ip_address(connect.ip)
        except ValueError:
            family = "unknown"
    return Client(connect.hostname, family, ip)


class Scope:
    """What one evaluation sees: the session's :class:`~milterman.manager.session.facts.Facts`, the child
    (None for ``[[rule]]``), the stage letter, the command."""

    __slots__ = ("facts", "child", "letter", "command")

    def __init__(self, facts, child, letter: str, command) -> None:
        self.facts = facts
        self.child = child
        self.letter = letter
        self.command = command

    def client(self) -> Client | None:
        """The connect facts; None when the MTA sent no connect (M-AC-3)."""
        connect = self.command if self.letter == "C" else self.facts.connect_command
        return client_of(connect) if connect is not None else None

    def macro(self, name: str) -> str | None:
        """A macro as the child sees it (M-AC-4): set by a condition or rule on it, else from the MTA."""
        child = self.child
        if child is not None and child.macros_extra:
            for values in child.macros_extra.values():
                if name in values:
                    return values[name]
        return self.facts.macros.get(name)

    def set_macro(self, name: str, value: str) -> None:
        """M-MAC-4: the macro goes to this child with the command of the current stage."""
        self.child.macros_extra.setdefault(self.letter, {})[name] = value

    def recipients(self) -> list[str]:
        """B5.1 ``recipients``: sent to this child and not refused (conditions) or accepted by the manager (rules)."""
        child = self.child
        return child.recipients if child is not None else self.facts.recipients


# ------------------------------------------------------------------------------------------- small helpers

_POSTFIX = re.compile(r"\bpostfix\b", re.IGNORECASE)
_SENDMAIL = re.compile(r"\bsendmail\b", re.IGNORECASE)


def mta_kind(version: str | None) -> str:
    """B5.1 ``mta``: ``postfix`` when ``v`` names Postfix (word, any case, M-AC-4), ``sendmail``, else ``other``."""
    if version:
        if _POSTFIX.search(version):
            return "postfix"
        if _SENDMAIL.search(version):
            return "sendmail"
    return "other"


def is_postfix(scope: Scope) -> bool:
    """M-AC-4 ``postfix?``."""
    version = scope.macro("v")
    return bool(version) and _POSTFIX.search(version) is not None


def authenticated(scope: Scope) -> bool:
    """M-AC-4 ``authenticated?``: ``auth_type`` or ``auth_authen`` present, any value, even empty."""
    return scope.macro("auth_type") is not None or scope.macro("auth_authen") is not None


def address_domain(address: str | None) -> str | None:
    """The lower-cased domain of ``<user@domain>`` (brackets optional, last ``@``); None without one."""
    if not address:
        return None
    if address[:1] == "<" and address[-1:] == ">":
        address = address[1:-1]
    _user, at, domain = address.rpartition("@")
    domain = domain.lower().rstrip(".")
    return domain if at and domain else None


def strip_brackets(address: str) -> str:
    """One pair of angle brackets removed (M-AC-B8)."""
    if len(address) >= 2 and address[0] == "<" and address[-1] == ">":
        return address[1:-1]
    return address


def is_resolved(host: str) -> bool:
    """B5.1 ``client_resolved``: neither ``[address]`` nor ``unknown``."""
    return host != "unknown" and not (host[:1] == "[" and host[-1:] == "]")


def _domain_matcher(entries: tuple[str, ...]) -> Callable[[str | None], bool]:
    """B5.1 domain lists: exact, and ``.example.com`` = that domain and its subdomains."""
    exact = set()
    suffixes = []
    for entry in entries:
        entry = entry.rstrip(".")
        if entry.startswith("."):
            exact.add(entry[1:])
            suffixes.append(entry)
        else:
            exact.add(entry)
    suffix_tuple = tuple(suffixes)

    def matches(domain: str | None) -> bool:
        if domain is None:
            return False
        return domain in exact or (bool(suffix_tuple) and domain.endswith(suffix_tuple))

    return matches


def _any_regex(regexes: tuple) -> Callable[[str | None], bool]:
    patterns = tuple(regex.compiled for regex in regexes)

    def matches(text: str | None) -> bool:
        if text is None:
            return False
        for pattern in patterns:
            if pattern.search(text) is not None:
                return True
        return False

    return matches


def _body_text(chunk: bytes) -> str:
    """A body chunk as text for ``body`` regexes: UTF-8 (undecodable bytes kept as surrogates), CRLF → LF so
    that ``$`` with ``re.MULTILINE`` matches at line ends (B9 example)."""
    return bytes(chunk).decode("utf-8", "surrogateescape").replace("\r\n", "\n")


def in_window(window: TimeWindow, now) -> bool:
    """B5.1 ``time``: local time inside ``hours`` (end inclusive, may wrap past midnight) on one of ``days``.

    For the part of a wrapping window after midnight the day checked is the previous day
    (``fri`` 22:00-02:00 covers Saturday 01:00).
    """
    minute = now.tm_hour * 60 + now.tm_min
    day = now.tm_wday
    if window.start is not None and window.end is not None:
        start, end = window.start, window.end
        if start <= end:
            if not start <= minute <= end:
                return False
        elif minute >= start:
            pass
        elif minute <= end:
            day = (day - 1) % 7
        else:
            return False
    return not window.days or DAYS[day] in window.days


# ------------------------------------------------------------------------------------------- factories
# Each factory: (value, stage letter of the rule, site, recipients quantifier) → test(scope) -> bool.


def _client_address(networks, letter, site, quantifier) -> Test:
    def test(scope: Scope) -> bool:
        client = scope.client()
        ip = client.ip if client is not None else None
        if ip is None:
            return False
        for network in networks:
            if ip in network:
                return True
        return False

    return test


def _client_family(families, letter, site, quantifier) -> Test:
    wanted = frozenset(families)

    def test(scope: Scope) -> bool:
        client = scope.client()
        return (client.family if client is not None else "unknown") in wanted

    return test


def _client_local(value, letter, site, quantifier) -> Test:
    def test(scope: Scope) -> bool:
        local = site.locality(scope.client())
        return local is not None and local == value

    return test


def _client_host(regexes, letter, site, quantifier) -> Test:
    matches = _any_regex(regexes)

    def test(scope: Scope) -> bool:
        client = scope.client()
        return client is not None and matches(client.host)

    return test


def _client_host_exact(hosts, letter, site, quantifier) -> Test:
    wanted = frozenset(hosts)

    def test(scope: Scope) -> bool:
        client = scope.client()
        return client is not None and client.host in wanted

    return test


def _client_resolved(value, letter, site, quantifier) -> Test:
    def test(scope: Scope) -> bool:
        client = scope.client()
        return client is not None and is_resolved(client.host) == value

    return test


def _helo(regexes, letter, site, quantifier) -> Test:
    matches = _any_regex(regexes)
    if letter == "H":
        return lambda scope: matches(scope.command.name)
    return lambda scope: matches(scope.facts.helo_name)


def _sender(letter: str) -> Callable[[Scope], str | None]:
    if letter == "M":
        return lambda scope: scope.command.address
    return lambda scope: scope.facts.sender


def _envelope_from(regexes, letter, site, quantifier) -> Test:
    matches = _any_regex(regexes)
    sender = _sender(letter)
    return lambda scope: matches(sender(scope))


def _envelope_from_domain(domains, letter, site, quantifier) -> Test:
    matches = _domain_matcher(domains)
    sender = _sender(letter)
    return lambda scope: matches(address_domain(sender(scope)))


def _recipient_test(per_address: Callable[[str], bool], letter: str, quantifier: str) -> Test:
    """At envelope-recipient the current RCPT; later every/any recipient so far (B5.1 ``recipients``).

    No recipient at all: false (nothing to quantify over)."""
    if letter == "R":
        return lambda scope: per_address(scope.command.address)
    if quantifier == "all":
        def test(scope: Scope) -> bool:
            recipients = scope.recipients()
            if not recipients:
                return False
            for recipient in recipients:
                if not per_address(recipient):
                    return False
            return True
    else:
        def test(scope: Scope) -> bool:
            for recipient in scope.recipients():
                if per_address(recipient):
                    return True
            return False
    return test


def _envelope_recipient(regexes, letter, site, quantifier) -> Test:
    return _recipient_test(_any_regex(regexes), letter, quantifier)


def _envelope_recipient_domain(domains, letter, site, quantifier) -> Test:
    matches = _domain_matcher(domains)
    return _recipient_test(lambda address: matches(address_domain(address)), letter, quantifier)


def _header(value: HeaderMatch, letter, site, quantifier) -> Test:
    name_pattern = value.name.compiled if value.name is not None else None
    value_pattern = value.value.compiled if value.value is not None else None

    def one(name: str, text: str) -> bool:
        return ((name_pattern is None or name_pattern.search(name) is not None)
                and (value_pattern is None or value_pattern.search(text) is not None))

    if letter == "L":
        return lambda scope: one(scope.command.name, scope.command.value)

    def test(scope: Scope) -> bool:
        message = scope.facts.message
        if message is None:
            return False
        for name, text in message.headers.items:
            if one(name, text):
                return True
        return False

    return test


def _body(regexes, letter, site, quantifier) -> Test:
    patterns = tuple(regex.compiled for regex in regexes)

    def test(scope: Scope) -> bool:
        chunk = getattr(scope.command, "chunk", None)
        if not chunk:
            return False
        text = _body_text(chunk)
        for pattern in patterns:
            if pattern.search(text) is not None:
                return True
        return False

    return test


def _authenticated(value, letter, site, quantifier) -> Test:
    return lambda scope: authenticated(scope) == value


def _macro(entries, letter, site, quantifier) -> Test:
    checks = tuple((name, expected if isinstance(expected, bool) else expected.compiled)
                   for name, expected in entries)

    def test(scope: Scope) -> bool:
        for name, expected in checks:
            current = scope.macro(name)
            if expected is True:
                if current is None:
                    return False
            elif expected is False:
                if current is not None:
                    return False
            elif current is None or expected.search(current) is None:
                return False
        return True

    return test


def _mta(value, letter, site, quantifier) -> Test:
    return lambda scope: mta_kind(scope.macro("v")) == value


def _stressed(value, letter, site, quantifier) -> Test:
    return lambda scope: site.stressed(scope.facts) == value


def _s25r(value, letter, site, quantifier) -> Test:
    def test(scope: Scope) -> bool:
        client = scope.client()
        return client is not None and site.s25r_applies(client) == value

    return test


def _dnsbl_listed(value, letter, site, quantifier) -> Test:
    zones = None if isinstance(value, bool) else tuple(value)
    wanted = value if isinstance(value, bool) else True

    def test(scope: Scope) -> bool:
        client = scope.client()
        ip = client.ip if client is not None else None
        return site.dnsbl_listed(ip, zones) == wanted

    return test


def _trusted_envelope_from_domain(value, letter, site, quantifier) -> Test:
    sender = _sender(letter)
    return lambda scope: site.trusted_sender(sender(scope)) == value


def _milter_status(entries, letter, site, quantifier) -> Test:
    checks = tuple((name, frozenset(statuses)) for name, statuses in entries)

    def test(scope: Scope) -> bool:
        children = scope.facts.children
        for name, statuses in checks:
            for child in children:
                if child.name == name:
                    if (child.quitted and "quitted" in statuses) or child.last_status in statuses:
                        break
                    return False
            else:
                return False  # no such child in this session
        return True

    return test


def _flag(flags, letter, site, quantifier) -> Test:
    wanted = tuple(flags)

    def test(scope: Scope) -> bool:
        current = scope.facts.flags
        for flag in wanted:
            if flag in current:
                return True
        return False

    return test


def _time(window: TimeWindow, letter, site, quantifier) -> Test:
    return lambda scope: in_window(window, site.now())


FACTORIES: dict[str, Callable[..., Test]] = {
    "client_address": _client_address, "client_family": _client_family, "client_local": _client_local,
    "client_host": _client_host, "client_host_exact": _client_host_exact, "client_resolved": _client_resolved,
    "helo": _helo, "envelope_from": _envelope_from, "envelope_from_domain": _envelope_from_domain,
    "envelope_recipient": _envelope_recipient, "envelope_recipient_domain": _envelope_recipient_domain,
    "header": _header, "body": _body, "authenticated": _authenticated, "macro": _macro, "mta": _mta,
    "stressed": _stressed, "s25r": _s25r, "dnsbl_listed": _dnsbl_listed,
    "trusted_envelope_from_domain": _trusted_envelope_from_domain, "milter_status": _milter_status,
    "flag": _flag, "time": _time,
}
#: evaluated last: they may wait for the network
_EXPENSIVE = frozenset({"dnsbl_listed"})


def _negate(test: Test) -> Test:
    return lambda scope: not test(scope)


def compile_predicate(predicate: Predicate, letter: str, site: Site, quantifier: str = "any") -> Test:
    """One B5.1 predicate for a rule of stage ``letter``; ``not_`` applied."""
    test = FACTORIES[predicate.name](predicate.value, letter, site, quantifier)
    return _negate(test) if predicate.negated else test


def compile_match(match: Match, letter: str, site: Site) -> Test | None:
    """C-COND-1 / B5.1: all predicates must hold; None for an empty match (always holds).

    Network-bound predicates (``dnsbl_listed``) are moved last so that a cheaper false
    predicate spares the lookup; predicates have no side effects, so order is free.
    """
    predicates = sorted(match.predicates, key=lambda predicate: predicate.name in _EXPENSIVE)
    tests = tuple(compile_predicate(predicate, letter, site, match.recipients) for predicate in predicates)
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]

    def test(scope: Scope) -> bool:
        for one in tests:
            if not one(scope):
                return False
        return True

    return test


# ------------------------------------------------------------------------------------------- what they read (D-2)

#: the MTA stage whose command a predicate needs (it is recorded when the MTA sends it)
PREDICATE_STAGES = {
    "client_address": "C", "client_family": "C", "client_local": "C", "client_host": "C",
    "client_host_exact": "C", "client_resolved": "C", "s25r": "C", "dnsbl_listed": "C",
    "helo": "H", "envelope_from": "M", "envelope_from_domain": "M", "trusted_envelope_from_domain": "M",
    "authenticated": "M", "envelope_recipient": "R", "envelope_recipient_domain": "R", "header": "L",
    "body": "B", "mta": "C",
}
#: macros a predicate reads, by the stage the MTA is asked them at (M-MAC-3)
PREDICATE_MACROS = {"authenticated": {"M": ("auth_type", "auth_authen")}, "mta": {"C": ("v",)}}


def macro_list_letter(letter: str) -> str:
    """The macro-list stage (SETSYMLIST) that serves a stage, its own or the nearest earlier one (M-MAC-3)."""
    return MACRO_LIST_LETTERS[letter]


def add_macros(target: dict[str, list[str]], letter: str, names) -> None:
    """Append macro names (no duplicates, order kept) to ``target[letter]``."""
    entry = target.setdefault(letter, [])
    for name in names:
        if name not in entry:
            entry.append(name)


def match_reads(match: Match, letter: str) -> tuple[set[str], dict[str, list[str]]]:
    """D-2: the MTA stages (letters) and macros (per macro-list letter) a rule of stage ``letter`` reads."""
    stages = {letter}
    macros: dict[str, list[str]] = {}
    for predicate in match.predicates:
        stage = PREDICATE_STAGES.get(predicate.name)
        if stage is not None:
            stages.add(stage)
        for macro_letter, names in PREDICATE_MACROS.get(predicate.name, {}).items():
            add_macros(macros, macro_letter, names)
        if predicate.name == "macro":
            add_macros(macros, macro_list_letter(letter), [name for name, _expected in predicate.value])
    return stages, macros
