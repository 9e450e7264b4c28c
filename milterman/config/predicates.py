"""Stages, the predicates of B5.1 and ``match`` tables, parsed into values the manager can evaluate.

A ``match`` becomes a :class:`Match`: a tuple of :class:`Predicate` ``(name,
negated, value)`` in file order plus the ``recipients`` quantifier. Values are
already typed (compiled :class:`~.values.Regex`, ``ipaddress`` networks, lower-cased
domains, :class:`TimeWindow`…), so evaluation is a lookup on ``name``. Whether a
predicate can be used at a stage ("available at" column of B5.1) is checked at
load time: a predicate used before its data exists is an error, not a silent
false (decision: the spec's column is enforced).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..protocol.stages import NAMES
from .errors import Invalid, show
from .values import (Boolean, Choice, Context, Domain, Kind, ListOf, NetworkKind, Regex, RegexKind, Status, Text,
                     expect)

#: C-TOML-5 stages, in protocol order (the protocol's stage table)
STAGES = NAMES
#: stages a ``[[condition.rule]]`` may use (B5: "unknown" not allowed, M-AC-1)
CONDITION_STAGES = tuple(stage for stage in STAGES if stage != "unknown")
#: the order used for "available at X →" (unknown is not in it: it may come at any time)
_ORDER = CONDITION_STAGES
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Predicate:
    """One ``match`` entry: ``name`` without ``not_``; ``negated`` for the ``not_`` form; ``value`` typed."""

    name: str
    negated: bool
    value: object

    @property
    def key(self) -> str:
        """The TOML key it was written with."""
        return ("not_" if self.negated else "") + self.name


@dataclass(frozen=True)
class Match:
    """C-COND-1 / B5.1: all predicates must hold; empty = always. ``recipients`` is the any/all quantifier."""

    predicates: tuple[Predicate, ...] = ()
    recipients: str = "any"

    def __bool__(self) -> bool:
        return bool(self.predicates) or self.recipients != "any"


@dataclass(frozen=True)
class HeaderMatch:
    """``header = { name = regex, value = regex }``; a missing part matches anything."""

    name: Regex | None = None
    value: Regex | None = None


@dataclass(frozen=True)
class TimeWindow:
    """``time = { hours = "HH:MM-HH:MM", days = [...] }``; minutes since midnight, end inclusive, may wrap."""

    start: int | None = None
    end: int | None = None
    days: tuple[str, ...] = ()

    @property
    def hours(self) -> str | None:
        if self.start is None or self.end is None:
            return None
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"


@dataclass(frozen=True)
class PredicateSpec:
    """A predicate of B5.1: its value kind, from which stage on it is available, and its help text."""

    name: str
    kind: Kind
    available: str  # "all", a stage ("from this stage on"), or "body" with only=True
    help: str
    only: bool = False

    def available_at(self, stage: str) -> bool:
        """B5.1 "available at": at ``unknown`` only what is known from connect (decision)."""
        if self.available == "all":
            return True
        if stage == "unknown":
            return self.available == "connect"
        if self.only:
            return stage == self.available
        return _ORDER.index(stage) >= _ORDER.index(self.available)

    @property
    def available_label(self) -> str:
        if self.available == "all":
            return "all"
        return self.available if self.only else f"{self.available} →"


def strip_braces(name: str) -> str:
    """Macro names are accepted with or without braces and kept without (M-AC-4)."""
    return name[1:-1] if len(name) > 2 and name.startswith("{") and name.endswith("}") else name


class HeaderKind(Kind):
    label = "{ name = regex, value = regex }"

    def parse(self, raw: object, context: Context) -> HeaderMatch:
        expect(raw, dict, "a table { name = regex, value = regex }")
        parts = {}
        for key, value in raw.items():
            if key not in ("name", "value"):
                raise Invalid(f"unknown key (accepted: name, value), got {show(key)}", f".{key}")
            try:
                parts[key] = RegexKind().parse(value, context)
            except Invalid as error:
                raise error.under(f".{key}") from None
        if not parts:
            raise Invalid("needs name, value or both")
        return HeaderMatch(parts.get("name"), parts.get("value"))

    def dump(self, value: object) -> object:
        header: HeaderMatch = value  # type: ignore[assignment]
        return {key: part.text for key, part in (("name", header.name), ("value", header.value)) if part}


class MacroKind(Kind):
    """``macro = { name = regex | true | false }`` → tuple of ``(name, Regex | bool)``."""

    label = "table: macro name → regex, true (present) or false (absent)"

    def parse(self, raw: object, context: Context) -> tuple:
        expect(raw, dict, "a table of macro name → regex or boolean")
        if not raw:
            raise Invalid("must not be empty")
        result: dict[str, object] = {}
        for key, value in raw.items():
            name = strip_braces(key)
            if not name:
                raise Invalid("empty macro name", f".{key!r}")
            if name in result:
                raise Invalid(f"macro {show(name)} is listed twice", f".{key}")
            if isinstance(value, bool):
                result[name] = value
            elif isinstance(value, str):
                try:
                    result[name] = RegexKind().parse(value, context)
                except Invalid as error:
                    raise error.under(f".{key}") from None
            else:
                raise Invalid(f"expected a regex or a boolean, got {show(value)}", f".{key}")
        return tuple(result.items())

    def dump(self, value: object) -> object:
        return {name: (item if isinstance(item, bool) else item.text) for name, item in value}  # type: ignore


class BoolOrZones(Kind):
    """``dnsbl_listed``: a boolean, or an array of zones (listed in any of them)."""

    label = "boolean or array of zones"

    def parse(self, raw: object, context: Context) -> bool | tuple[str, ...]:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, list):
            return ListOf(Domain(), unique=True, nonempty=True).parse(raw, context)
        raise Invalid(f"expected a boolean or an array of zones, got {show(raw)}")

    def dump(self, value: object) -> object:
        return value if isinstance(value, bool) else list(value)  # type: ignore[arg-type]


class MilterStatusKind(Kind):
    """``milter_status = { "name" = [statuses] }`` → tuple of ``(milter, statuses)``."""

    label = 'table: milter name → array of statuses (+ "quitted")'
    statuses = ListOf(Status(extra=("quitted",)), unique=True, nonempty=True)

    def parse(self, raw: object, context: Context) -> tuple:
        expect(raw, dict, "a table of milter name → array of statuses")
        if not raw:
            raise Invalid("must not be empty")
        result = []
        for name, value in raw.items():
            try:
                result.append((name, self.statuses.parse(value, context)))
            except Invalid as error:
                raise error.under(f".{name}") from None
        return tuple(result)

    def dump(self, value: object) -> object:
        return {name: list(statuses) for name, statuses in value}  # type: ignore[attr-defined]


_HOURS = re.compile(r"\A(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})\Z", re.ASCII)


class TimeKind(Kind):
    label = '{ hours = "HH:MM-HH:MM", days = ["mon", …] }'
    days = ListOf(Choice(DAYS), unique=True, nonempty=True)

    def parse(self, raw: object, context: Context) -> TimeWindow:
        expect(raw, dict, 'a table { hours = "HH:MM-HH:MM", days = [...] }')
        unknown = [key for key in raw if key not in ("hours", "days")]
        if unknown:
            raise Invalid(f"unknown key (accepted: hours, days), got {show(unknown[0])}", f".{unknown[0]}")
        if not raw:
            raise Invalid("needs hours, days or both")
        start = end = None
        if "hours" in raw:
            hours = raw["hours"]
            found = _HOURS.match(hours) if isinstance(hours, str) else None
            values = [int(part) for part in found.groups()] if found else []
            if not found or values[0] > 23 or values[2] > 23 or values[1] > 59 or values[3] > 59:
                raise Invalid(f'expected "HH:MM-HH:MM" (00:00-23:59), got {show(hours)}', ".hours")
            start, end = values[0] * 60 + values[1], values[2] * 60 + values[3]
        days: tuple = ()
        if "days" in raw:
            try:
                parsed = self.days.parse(raw["days"], context)
            except Invalid as error:
                raise error.under(".days") from None
            days = tuple(day for day in DAYS if day in parsed)
        return TimeWindow(start, end, days)

    def dump(self, value: object) -> object:
        window: TimeWindow = value  # type: ignore[assignment]
        table: dict[str, object] = {}
        if window.hours is not None:
            table["hours"] = window.hours
        if window.days:
            table["days"] = list(window.days)
        return table


def _regexes(flags: int = 0) -> ListOf:
    return ListOf(RegexKind(flags), nonempty=True)


_STRINGS = ListOf(Text(), nonempty=True)
_DOMAINS = ListOf(Domain(leading_dot=True), nonempty=True)

#: B5.1, one entry per predicate (the single place the table lives; the guide is generated from it)
PREDICATES: Mapping[str, PredicateSpec] = {spec.name: spec for spec in (
    PredicateSpec("client_address", ListOf(NetworkKind(), nonempty=True), "all",
                  "SMTP client IP is inside one of them (unix/unknown: false)"),
    PredicateSpec("client_family", ListOf(Choice(("inet", "inet6", "unix", "unknown")), nonempty=True), "all",
                  "family of the connect address is one of them"),
    PredicateSpec("client_local", Boolean(), "all",
                  "locality of M-AC-B2 (with [remote_network]) equals the value; unknown family never matches"),
    PredicateSpec("client_host", _regexes(), "all", "connect host name matches one regex"),
    PredicateSpec("client_host_exact", _STRINGS, "all", "connect host name equals one string"),
    PredicateSpec("client_resolved", Boolean(), "all", "host is neither `[…]` nor `unknown` ⇔ value"),
    PredicateSpec("helo", _regexes(), "helo", "HELO/EHLO argument matches"),
    PredicateSpec("envelope_from", _regexes(), "envelope-from", "raw MAIL argument (with `<>`) matches"),
    PredicateSpec("envelope_from_domain", _DOMAINS, "envelope-from",
                  "lower-cased domain of `<user@domain>` equals one; `.example.com` also matches subdomains"),
    PredicateSpec("envelope_recipient", _regexes(), "envelope-recipient",
                  "at envelope-recipient the current RCPT argument matches; later: see `recipients`"),
    PredicateSpec("envelope_recipient_domain", _DOMAINS, "envelope-recipient",
                  "as `envelope_from_domain`, for the recipient"),
    PredicateSpec("header", HeaderKind(), "header",
                  "at header: the current header; later: any header received so far"),
    PredicateSpec("body", _regexes(re.MULTILINE), "body", "the current body chunk matches (re.MULTILINE)",
                  only=True),
    PredicateSpec("authenticated", Boolean(), "envelope-from", "`auth_type` or `auth_authen` macro present ⇔ value"),
    PredicateSpec("macro", MacroKind(), "all", "every listed macro matches / is present (true) / is absent (false)"),
    PredicateSpec("mta", Choice(("postfix", "sendmail", "other")), "all",
                  "`v` macro contains Postfix / Sendmail / neither"),
    PredicateSpec("stressed", Boolean(), "all", "M-AC-B5 stress state ⇔ value"),
    PredicateSpec("s25r", Boolean(), "connect", "M-AC-B1 says the client looks dynamic ⇔ value"),
    PredicateSpec("dnsbl_listed", BoolOrZones(), "connect", "listed in any (of the given) [dnsbl] zones"),
    PredicateSpec("trusted_envelope_from_domain", Boolean(), "envelope-from", "M-AC-B6 trust match ⇔ value"),
    PredicateSpec("milter_status", MilterStatusKind(), "all",
                  "that sibling child's last recorded status is one of them"),
    PredicateSpec("flag", _STRINGS, "all", "one of these transaction-shelf flags is set"),
    PredicateSpec("time", TimeKind(), "all", "local time inside the window (may wrap past midnight)"),
)}

RECIPIENT_PREDICATES = ("envelope_recipient", "envelope_recipient_domain")
RECIPIENTS = Choice(("any", "all"))


def parse_match(raw: object, context: Context) -> tuple[Match, list[Invalid]]:
    """Parse a ``match`` table; returns the match (bad entries left out) and every problem found."""
    problems: list[Invalid] = []
    if not isinstance(raw, dict):
        return Match(), [Invalid(f"expected a table of predicates, got {show(raw)}")]
    predicates = []
    recipients = "any"
    for key, value in raw.items():
        negated = key.startswith("not_")
        name = key[4:] if negated else key
        if key == "recipients":
            try:
                recipients = RECIPIENTS.parse(value, context)
            except Invalid as error:
                problems.append(error.under(f".{key}"))
            continue
        spec = PREDICATES.get(name)
        if spec is None:
            hint = " (recipients cannot be negated)" if name == "recipients" else ""
            problems.append(Invalid(f"unknown predicate {show(key)}{hint} (see B5.1)", f".{key}"))
            continue
        try:
            predicates.append(Predicate(name, negated, spec.kind.parse(value, context)))
        except Invalid as error:
            problems.append(error.under(f".{key}"))
    return Match(tuple(predicates), recipients), problems


def stage_problems(match: Match, stage: str) -> list[Invalid]:
    """B5.1 "available at": predicates (and ``recipients``) used at a stage where their data does not exist."""
    problems = []
    for predicate in match.predicates:
        spec = PREDICATES[predicate.name]
        if not spec.available_at(stage):
            problems.append(Invalid(f"not available at stage {show(stage)} (available at: {spec.available_label})",
                                    f".{predicate.key}"))
    if match.recipients != "any":
        if stage == "unknown" or _ORDER.index(stage) < _ORDER.index("data"):
            problems.append(Invalid(f"not available at stage {show(stage)} (available at: data →)", ".recipients"))
        elif not any(predicate.name in RECIPIENT_PREDICATES for predicate in match.predicates):
            problems.append(Invalid("needs envelope_recipient or envelope_recipient_domain in the same match",
                                    ".recipients"))
    return problems


def dump_match(match: Match) -> dict[str, object]:
    """The ``match`` table as TOML values, in the order it was read (D-8 round trip)."""
    table = {predicate.key: PREDICATES[predicate.name].kind.dump(predicate.value) for predicate in match.predicates}
    if match.recipients != "any":
        table["recipients"] = match.recipients
    return table
