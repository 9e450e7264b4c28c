"""Value kinds of the schema: how a TOML value is checked, converted, rendered and documented.

Each kind turns the raw value ``tomllib`` gives into the typed value the
configuration holds (``parse``), back into a TOML value for ``--show-config``
(``dump``, D-8), from a command-line string into a raw value (``from_text``), and
names itself for the guide and ``--help`` (``label``). Parsers raise
:class:`~.errors.Invalid` with a message that shows the bad value (C-TOML-4).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..log import SYSLOG_FACILITIES, LogLevelError, parse_level
from ..spec import SpecError, SpecText
from .errors import Invalid, show, type_name

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: C-TOML-5: statuses (with the alias ``tempfail``)
STATUSES = ("accept", "temporary-failure", "reject", "discard")
STATUS_ALIASES = {"tempfail": "temporary-failure"}


class Octal(int):
    """An int that the TOML writer prints as ``0o660`` (C-TOML-5: modes are TOML octal integers)."""


@dataclass(frozen=True)
class Context:
    """What a parser needs besides the value: the directory relative paths are resolved against (C-TOML-2)."""

    base_dir: str


@dataclass(frozen=True)
class Regex:
    """A regex compiled at load time (C-TOML-5: Python ``re``, ``re.search``, ``re.ASCII``).

    ``text`` is kept so that rendering writes back exactly what was read; equality
    compares ``text`` and ``flags`` only.
    """

    text: str
    flags: int = re.ASCII
    compiled: re.Pattern = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.compiled is None:
            object.__setattr__(self, "compiled", re.compile(self.text, self.flags))

    def search(self, text: str) -> re.Match | None:
        """C-TOML-5: search semantics, like Ruby's ``=~``."""
        return self.compiled.search(text)


class Kind:
    """Base of the value kinds; subclasses override what differs."""

    label = "value"

    def parse(self, raw: object, context: Context) -> object:
        """The typed value of a raw TOML value; raises :class:`Invalid` naming the value (C-TOML-4)."""
        raise NotImplementedError

    def dump(self, value: object) -> object:
        """The TOML value that parses back to ``value`` (D-8)."""
        return value

    def from_text(self, text: str) -> object:
        """A command-line string as the raw TOML value it stands for."""
        return text


def expect(raw: object, kinds: type | tuple[type, ...], wanted: str) -> None:
    """Type check with the TOML names of the types (bool is not an integer here)."""
    if isinstance(raw, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise Invalid(f"expected {wanted}, got {show(raw)} ({type_name(raw)})")
    if not isinstance(raw, kinds):
        raise Invalid(f"expected {wanted}, got {show(raw)} ({type_name(raw)})")


class Boolean(Kind):
    label = "boolean"

    def parse(self, raw: object, context: Context) -> bool:
        expect(raw, bool, "a boolean (true or false)")
        return bool(raw)


class Integer(Kind):
    def __init__(self, minimum: int | None = None, maximum: int | None = None):
        self.minimum, self.maximum = minimum, maximum

    @property
    def label(self) -> str:
        if self.minimum is not None and self.minimum == self.maximum:
            return f"integer {self.minimum}"
        if self.minimum is not None and self.maximum is not None:
            return f"integer {self.minimum}..{self.maximum}"
        if self.minimum is not None:
            return f"integer ≥ {self.minimum}"
        return "integer"

    def check_range(self, value: int, shown: str) -> None:
        low, high = self.minimum, self.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            if low == high:
                raise Invalid(f"must be {self.render_bound(low)}, got {shown}")  # type: ignore[arg-type]
            if low is not None and high is not None:
                raise Invalid(f"must be {self.render_bound(low)}..{self.render_bound(high)}, got {shown}")
            if low is not None:
                raise Invalid(f"must be ≥ {self.render_bound(low)}, got {shown}")
            raise Invalid(f"must be ≤ {self.render_bound(high)}, got {shown}")

    def render_bound(self, bound: int) -> str:
        return str(bound)

    def parse(self, raw: object, context: Context) -> int:
        expect(raw, int, "an integer")
        self.check_range(int(raw), str(raw))
        return int(raw)

    def from_text(self, text: str) -> object:
        try:
            return int(text.strip(), 10)
        except ValueError:
            raise Invalid(f"expected an integer, got {show(text)}") from None


class NumericId(Kind):
    """A numeric user or group id given as text (``--user-id``): digits only, kept as text."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.label = what

    def parse(self, raw: object, context: Context) -> str:
        return self.from_text(str(raw))  # type: ignore[return-value]

    def from_text(self, text: str) -> object:
        if not text.isdigit():
            raise Invalid(f"invalid {self.what}: <{text}>")
        return text


class Mode(Integer):
    """A permission mode: TOML octal integer (``0o660``); on the command line octal digits (``660``/``0660``)."""

    label = "octal integer (0o660)"

    def __init__(self) -> None:
        super().__init__(0, 0o7777)

    def render_bound(self, bound: int) -> str:
        return oct(bound)

    def parse(self, raw: object, context: Context) -> int:
        expect(raw, int, "an octal integer such as 0o660")
        self.check_range(int(raw), oct(int(raw)))
        return int(raw)

    def dump(self, value: object) -> object:
        return Octal(value)

    def from_text(self, text: str) -> object:
        stripped = text.strip()
        if stripped.lower().startswith("0o"):
            stripped = stripped[2:]
        try:
            return int(stripped, 8)
        except ValueError:
            raise Invalid(f"expected an octal mode such as 0660, got {show(text)}") from None


class Number(Kind):
    """A float (integers accepted); ``positive``: > minimum, else ≥ minimum. Never inf or nan."""

    def __init__(self, minimum: float = 0.0, positive: bool = False):
        self.minimum, self.positive = minimum, positive

    @property
    def label(self) -> str:
        return f"float {'>' if self.positive else '≥'} {self.minimum:g}"

    def parse(self, raw: object, context: Context) -> float:
        expect(raw, (int, float), "a number")
        value = float(raw)
        if not math.isfinite(value):
            raise Invalid(f"must be a finite number, got {show(raw)}")
        if value < self.minimum or (self.positive and value == self.minimum):
            raise Invalid(f"must be {'>' if self.positive else '≥'} {self.minimum:g}, got {show(raw)}")
        return value

    def from_text(self, text: str) -> object:
        try:
            return float(text)
        except ValueError:
            raise Invalid(f"expected a number, got {show(text)}") from None


class Text(Kind):
    label = "string"

    def parse(self, raw: object, context: Context) -> str:
        expect(raw, str, "a string")
        if not raw:
            raise Invalid("must not be empty")
        return raw


class Path(Text):
    """A file name; relative names are resolved against the file's directory (C-TOML-2)."""

    def __init__(self, dash_means_stdout: bool = False):
        self.dash_means_stdout = dash_means_stdout

    @property
    def label(self) -> str:
        return "path (\"-\" = standard output)" if self.dash_means_stdout else "path"

    def parse(self, raw: object, context: Context) -> str:
        text = super().parse(raw, context)
        if self.dash_means_stdout and text == "-":
            return text
        return os.path.normpath(os.path.join(context.base_dir, os.path.expanduser(text)))


class Spec(Text):
    """A connection spec, parsed by the grammar of :mod:`milterman.spec` without any look-up.

    The value is a :class:`~milterman.spec.SpecText`: the text as written, with the parsed
    spec attached. A host name is kept as a name (looking it up is the manager's check, off
    the master's signal loop, and the network layer's when it connects).
    """

    def __init__(self, loopback_only: bool = False):
        self.loopback_only = loopback_only

    label = "connection spec"

    def parse(self, raw: object, context: Context) -> SpecText:
        text = super().parse(raw, context)
        try:
            parsed = SpecText(text)
        except SpecError as error:
            raise Invalid(f"invalid spec {show(text)}: {error}") from None
        if self.loopback_only:
            problem = loopback_problem(parsed)
            if problem:
                raise Invalid(problem)
        return parsed


def loopback_problem(text: str, address: str | None = None) -> str | None:
    """D-7: why ``text`` is no controller spec (a unix socket or a loopback inet socket), or None.

    A host name passes until it is looked up; its ``address`` is checked then.
    """
    spec = SpecText(text).spec
    if spec.family == "unix":
        return None
    address = address if address is not None else spec.address
    if spec.needs_lookup and not address:
        return None
    if not address or not ipaddress.ip_address(address).is_loopback:
        return f"must be a unix socket or a loopback address (D-7), got {show(text)}"
    return None


class Choice(Kind):
    """One of a fixed set; case-insensitive, ``_`` accepted for ``-``; ``refused`` values get their own message."""

    def __init__(self, choices: Sequence[str], aliases: Mapping[str, str] | None = None,
                 refused: Mapping[str, str] | None = None):
        self.choices = tuple(choices)
        self.aliases = dict(aliases or {})
        self.refused = dict(refused or {})

    @property
    def label(self) -> str:
        return " | ".join(f'"{choice}"' for choice in self.choices)

    def parse(self, raw: object, context: Context) -> str:
        expect(raw, str, "a string")
        folded = raw.strip().lower().replace("_", "-")
        folded = self.aliases.get(folded, folded)
        if folded in self.refused:
            raise Invalid(f"{show(raw)} {self.refused[folded]}; accepted values: {self.accepted()}")
        if folded not in self.choices:
            raise Invalid(f"must be one of {self.accepted()}, got {show(raw)}")
        return folded

    def accepted(self) -> str:
        names = list(self.choices) + sorted(self.aliases)
        return ", ".join(f'"{name}"' for name in names)


class Refused(Kind):
    """A key of the original the project does not implement (D-17): any value is refused with ``reason``,
    which says what to use instead."""

    label = "refused"

    def __init__(self, reason: str):
        self.reason = reason

    def parse(self, raw: object, context: Context) -> object:
        raise Invalid(self.reason)


class Status(Choice):
    """C-TOML-5 statuses; ``tempfail`` is normalised to ``temporary-failure``."""

    def __init__(self, extra: Sequence[str] = ()):
        super().__init__(STATUSES + tuple(extra), STATUS_ALIASES)


class Facility(Choice):
    """A syslog facility name; unknown names are refused here rather than mapped to mail."""

    def __init__(self) -> None:
        super().__init__(sorted(SYSLOG_FACILITIES))

    label = "syslog facility (mail, daemon, local0…local7, …)"


class LogLevel(Kind):
    """``"a|b"`` or an array of level names; stored joined by ``|``."""

    label = 'level expression "a|b" or array of strings'

    def parse(self, raw: object, context: Context) -> str:
        if isinstance(raw, list):
            for index, item in enumerate(raw):
                try:
                    expect(item, str, "a level name")
                except Invalid as error:
                    raise error.under(f"[{index}]") from None
            text = "|".join(raw)
        else:
            expect(raw, str, "a level expression (string) or an array of level names")
            text = raw
        try:
            parse_level(text)
        except LogLevelError as error:
            raise Invalid(f"invalid level {show(raw)}: {error}") from None
        return text


class ListOf(Kind):
    """An array; each item parsed by ``item`` (errors name the index); ``unique``: duplicates refused.

    ``nonempty``: an empty array is refused (used for predicates, where ``[]`` could never match).
    """

    def __init__(self, item: Kind, unique: bool = False, nonempty: bool = False):
        self.item, self.unique, self.nonempty = item, unique, nonempty

    @property
    def label(self) -> str:
        return f"array of {self.item.label}"

    def parse(self, raw: object, context: Context) -> tuple:
        expect(raw, list, "an array")
        if self.nonempty and not raw:
            raise Invalid("must not be empty (an empty array never matches)")
        values, errors = [], []
        for index, element in enumerate(raw):
            try:
                value = self.item.parse(element, context)
            except Invalid as error:
                errors.append(error.under(f"[{index}]"))
                continue
            if self.unique and value in values:
                errors.append(Invalid(f"{show(element)} is listed twice", f"[{index}]"))
            values.append(value)
        if errors:
            raise Invalid(errors[0].message, errors[0].subkey, tuple(errors[1:]))
        return tuple(values)

    def dump(self, value: object) -> object:
        return [self.item.dump(element) for element in value]  # type: ignore[attr-defined]

    def from_text(self, text: str) -> object:
        return [self.item.from_text(part.strip()) for part in text.split(",") if part.strip()]


class RegexKind(Kind):
    """A Python regex compiled with ``re.ASCII`` plus ``flags`` (C-TOML-5)."""

    def __init__(self, flags: int = 0, label: str = "regex"):
        self.flags = re.ASCII | flags
        self.label = label

    def parse(self, raw: object, context: Context) -> Regex:
        expect(raw, str, "a regex (string)")
        return compile_regex(raw, self.flags)

    def dump(self, value: object) -> object:
        return value.text  # type: ignore[attr-defined]


def compile_regex(text: str, flags: int = re.ASCII) -> Regex:
    """Compile or raise :class:`Invalid` naming the regex; Ruby's ``\\z`` gets a hint (Python: ``\\Z``)."""
    try:
        return Regex(text, flags | re.ASCII)
    except re.error as error:
        hint = " (Python writes Ruby's \\z as \\Z)" if "bad escape \\z" in str(error) else ""
        raise Invalid(f"invalid regex {show(text)}: {error}{hint}") from None


class NetworkKind(Kind):
    """An IPv4/IPv6 address or CIDR; host bits are masked as Ruby's IPAddr did ("10.1.2.3/8" = 10.0.0.0/8)."""

    label = "IP address or CIDR"

    def parse(self, raw: object, context: Context) -> Network:
        expect(raw, str, "an IP address or CIDR (string)")
        try:
            return ipaddress.ip_network(raw.strip(), strict=False)
        except ValueError:
            raise Invalid(f"invalid IP address or CIDR {show(raw)}") from None

    def dump(self, value: object) -> object:
        network: Network = value  # type: ignore[assignment]
        if network.prefixlen == network.max_prefixlen:
            return str(network.network_address)
        return str(network)


class AddressKind(Kind):
    label = "IP address"

    def parse(self, raw: object, context: Context) -> str:
        expect(raw, str, "an IP address (string)")
        try:
            return str(ipaddress.ip_address(raw.strip()))
        except ValueError:
            raise Invalid(f"invalid IP address {show(raw)}") from None


_ENTRY_POINT = re.compile(r"\A[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*\Z", re.ASCII)


class EntryPoint(Text):
    """C-TOML-1: a Python function named ``"package.module:function"``."""

    label = '"module:function"'

    def parse(self, raw: object, context: Context) -> str:
        text = super().parse(raw, context)
        if not _ENTRY_POINT.match(text):
            raise Invalid(f'must look like "package.module:function", got {show(raw)}')
        return text


class ClassReference(EntryPoint):
    """``[[condition]] python``: a Python class (or object) named ``"package.module:Class"``."""

    label = '"module:Class"'


class Checker(Text):
    """B3 ``manager.connection_checkers``: ``"netstat"`` or ``"python:module:function"``."""

    label = '"netstat" or "python:module:function"'

    def parse(self, raw: object, context: Context) -> str:
        text = super().parse(raw, context)
        if text == "netstat" or (text.startswith("python:") and _ENTRY_POINT.match(text[7:])):
            return text
        raise Invalid(f'must be "netstat" or "python:package.module:function", got {show(raw)}')


_DOMAIN = re.compile(r"\A\.?[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?\Z", re.ASCII)


class Domain(Text):
    """A mail domain, lower-cased at load; ``leading_dot``: ``.example.com`` also matches subdomains (B5.1)."""

    def __init__(self, leading_dot: bool = False):
        self.leading_dot = leading_dot

    label = "domain"

    def parse(self, raw: object, context: Context) -> str:
        text = super().parse(raw, context).strip().lower()
        if not _DOMAIN.match(text) or (text.startswith(".") and not self.leading_dot):
            raise Invalid(f"invalid domain {show(raw)}")
        return text


class CommandOptions(Kind):
    """A7/B3: a string (appended as is) or an array (each element one argv word, D-10)."""

    label = "string or array of strings"

    def parse(self, raw: object, context: Context) -> str | tuple[str, ...]:
        if isinstance(raw, list):
            for index, item in enumerate(raw):
                if not isinstance(item, str):
                    raise Invalid(f"expected a string, got {show(item)} ({type_name(item)})", f"[{index}]")
            return tuple(raw)
        expect(raw, str, "a string or an array of strings")
        return raw

    def dump(self, value: object) -> object:
        return list(value) if isinstance(value, tuple) else value


class AnyTable(Kind):
    """A table of scalars or arrays of scalars (``database.extra_options``, handed to hooks as is)."""

    label = "table"

    def parse(self, raw: object, context: Context) -> dict:
        expect(raw, dict, "a table")
        for key, value in raw.items():
            items = value if isinstance(value, list) else [value]
            for item in items:
                if not isinstance(item, (str, int, float, bool)) or isinstance(item, float) and not math.isfinite(item):
                    raise Invalid(f"expected a string, number, boolean or array of them, got {show(item)}",
                                  f".{key}")
        return dict(raw)

    def dump(self, value: object) -> object:
        return dict(value)  # type: ignore[call-overload]


@dataclass(frozen=True)
class DnsblService:
    """One DNSBL zone and the answer that means "listed" (None: any answer) (M-AC-B7)."""

    zone: str
    expect: Network | None = None


class DnsblServiceKind(Kind):
    """B4 ``dnsbl.services`` item: ``{ zone = "…", expect = "127.0.0.2" or "127.0.0.0/24" }``."""

    label = '{ zone = "…", expect = "IP or CIDR" }'

    def parse(self, raw: object, context: Context) -> DnsblService:
        expect(raw, dict, "a table { zone = \"…\", expect = \"…\" }")
        unknown = sorted(set(raw) - {"zone", "expect"})
        if unknown:
            raise Invalid(f"unknown key (accepted: zone, expect), got {show(unknown[0])}", f".{unknown[0]}")
        if "zone" not in raw:
            raise Invalid("is required", ".zone")
        try:
            zone = Domain().parse(raw["zone"], context)
        except Invalid as error:
            raise error.under(".zone") from None
        network = None
        if "expect" in raw:
            try:
                network = NetworkKind().parse(raw["expect"], context)
            except Invalid as error:
                raise error.under(".expect") from None
        return DnsblService(zone, network)

    def dump(self, value: object) -> object:
        service: DnsblService = value  # type: ignore[assignment]
        table: dict[str, object] = {"zone": service.zone}
        if service.expect is not None:
            table["expect"] = NetworkKind().dump(service.expect)
        return table
