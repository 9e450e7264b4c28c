"""Connection specs: ``unix:PATH``, ``inet:PORT[@HOST|@[ADDR]]``, ``inet6:…`` — the grammar, without DNS.

One home for the grammar (SH-SPEC-1, SH-SPEC-2) because both ``config`` (which checks
and holds the specs the files name) and ``net`` (which listens and connects) need it,
and ``config`` must not import ``net``. It sits at the bottom beside :mod:`milterman.log`:
standard library only, and it never looks a name up. A host name stays a name here
(``address`` empty, :attr:`ConnectionSpec.needs_lookup`); :func:`milterman.net.spec.resolve`
looks it up where the address is needed, when listening or connecting, so loading a
configuration never waits for a name server. Error messages are exact because mail
administrators paste them into searches.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field, replace

#: the listening spec when none is configured (manager.connection_spec, milter-test-client -s)
DEFAULT_SPEC = "inet:10025@[127.0.0.1]"


class SpecError(ValueError):
    """A connection spec that cannot be used; the message names the spec and the bad part (SH-SPEC-1)."""


@dataclass(frozen=True, slots=True)
class ConnectionSpec:
    """A parsed spec: ``family`` is ``unix``, ``inet`` or ``inet6``.

    ``host`` is the host part as written (``[::1]``, ``mail.example``; empty: any address);
    ``address`` the numeric address to bind or connect to: set for an address literal, empty
    for "any" and for a host name that has not been looked up yet.
    """

    family: str
    path: str = ""
    port: int = 0
    host: str = ""
    address: str = ""
    #: the spec as written, for messages (``local:`` and leading zeros kept); not part of equality
    text: str = field(default="", compare=False)

    @property
    def needs_lookup(self) -> bool:
        """A host name whose address is not known yet (net looks it up before binding or connecting)."""
        return bool(self.host) and not self.address

    @property
    def socket_family(self) -> int:
        return {"unix": socket.AF_UNIX, "inet": socket.AF_INET, "inet6": socket.AF_INET6}[self.family]

    @property
    def sockaddr(self):
        """The address tuple (or path) for ``bind``/``connect``; a host name must be looked up first."""
        if self.family == "unix":
            return self.path
        if self.needs_lookup:
            raise SpecError(f"host name not looked up yet: <{self.written}>: <{self.host}>")
        if self.family == "inet":
            return (self.address or "0.0.0.0", self.port)
        return (self.address or "::", self.port, 0, 0)

    @property
    def written(self) -> str:
        """The spec as written (or, when built by hand, in its written form: ``inet:PORT@HOST`` keeps the name)."""
        if self.text:
            return self.text
        if self.family == "unix":
            return f"unix:{self.path}"
        return f"{self.family}:{self.port}@{self.host}" if self.host else f"{self.family}:{self.port}"

    def with_address(self, address: str) -> ConnectionSpec:
        """The same spec with its host name's address (what a look-up found)."""
        return replace(self, address=address)

    def __str__(self) -> str:
        if self.family == "unix":
            return f"unix:{self.path}"
        if self.needs_lookup:
            return self.written
        address = self.address or ("0.0.0.0" if self.family == "inet" else "::")
        return f"{self.family}:{self.port}@[{address}]"

    def postfix_form(self) -> str:
        """The same endpoint as Postfix's ``smtpd_milters`` writes it (``inet:HOST:PORT``)."""
        if self.family == "unix":
            return f"unix:{self.path}"
        if self.needs_lookup:
            return f"{self.family}:{self.host}:{self.port}"
        address = self.address or ("127.0.0.1" if self.family == "inet" else "::1")
        return f"{self.family}:{'[' + address + ']' if self.family == 'inet6' else address}:{self.port}"


def parse(spec: str | None) -> ConnectionSpec:
    """Parse a connection spec without any look-up, raising :class:`SpecError` with the messages the tools print."""
    if spec is None:
        raise SpecError("spec should not be NULL")
    protocol, colon, content = spec.partition(":")
    if not colon:
        raise SpecError(f"spec doesn't have colon: <{spec}>")
    if not content:
        raise SpecError(f"spec doesn't have content: <{spec}>")
    if protocol in ("unix", "local"):
        return ConnectionSpec("unix", path=content, text=spec)
    if protocol not in ("inet", "inet6"):
        raise SpecError(f"protocol must be 'unix', 'inet' or 'inet6': <{spec}>: <{protocol}>")
    port_text, at, host = content.partition("@")
    for character in port_text:
        if not character.isdigit() or not character.isascii():
            raise SpecError(f"port number has invalid character: <{spec}>: <{character}>")
    if not port_text:
        raise SpecError(f"port number has invalid character: <{spec}>: <@>")
    port = int(port_text)
    if port > 65535:
        raise SpecError(f"port number should be less than 65536: <{spec}>: <{port_text}>")
    if not at or not host:
        return ConnectionSpec(protocol, port=port, text=spec)
    if host.startswith("["):
        if not host.endswith("]"):
            raise SpecError(f"']' is missing: <{spec}>: <{host}>")
        literal = host[1:-1]
        try:
            parsed = ipaddress.IPv4Address(literal) if protocol == "inet" else ipaddress.IPv6Address(literal)
        except ValueError:
            raise SpecError(f"invalid host address: <{spec}>: <{literal}>") from None
        return ConnectionSpec(protocol, port=port, host=host, address=str(parsed), text=spec)
    return ConnectionSpec(protocol, port=port, host=host, text=spec)


class SpecText(str):
    """A connection spec as the user wrote it (the string itself), parsed once at load: :attr:`spec`.

    The configuration holds these: they compare, render and print as the text that was
    written, and the server and the children use the parsed :attr:`spec` (no second parse,
    and no look-up at load).
    """

    spec: ConnectionSpec

    def __new__(cls, text: str) -> SpecText:
        parsed = parse(text)
        self = super().__new__(cls, text)
        self.spec = parsed
        return self

    def __reduce__(self):
        return (SpecText, (str(self),))


def format_sockaddr(family: int, address) -> str:
    """Render a peer address as the tools print it: ``inet:PORT@[A.B.C.D]``, ``unix:PATH``."""
    if family == socket.AF_INET:
        return f"inet:{address[1]}@[{address[0]}]"
    if family == socket.AF_INET6:
        return f"inet6:{address[1]}@[{address[0]}]"
    return f"unix:{address}"
