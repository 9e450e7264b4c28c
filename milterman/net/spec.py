"""Connection specs: ``unix:PATH``, ``inet:PORT[@HOST|@[ADDR]]``, ``inet6:…``.

Parsing is exact about its error messages (SH-SPEC-1) because mail administrators
paste them into searches; host names are resolved once, when the spec is parsed.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass


class SpecError(ValueError):
    """A connection spec that cannot be used; the message names the spec and the bad part."""


@dataclass(frozen=True, slots=True)
class ConnectionSpec:
    """A parsed spec: ``family`` is ``unix``, ``inet`` or ``inet6``."""

    family: str
    path: str = ""
    port: int = 0
    host: str = ""          # as written (empty: any address)
    address: str = ""       # numeric address to bind/connect to

    @property
    def socket_family(self) -> int:
        return {"unix": socket.AF_UNIX, "inet": socket.AF_INET, "inet6": socket.AF_INET6}[self.family]

    @property
    def sockaddr(self):
        """The address tuple (or path) for ``bind``/``connect``."""
        if self.family == "unix":
            return self.path
        if self.family == "inet":
            return (self.address or "0.0.0.0", self.port)
        return (self.address or "::", self.port, 0, 0)

    def __str__(self) -> str:
        if self.family == "unix":
            return f"unix:{self.path}"
        address = self.address or ("0.0.0.0" if self.family == "inet" else "::")
        return f"{self.family}:{self.port}@[{address}]"

    def postfix_form(self) -> str:
        """The same endpoint as Postfix's ``smtpd_milters`` writes it (``inet:HOST:PORT``)."""
        if self.family == "unix":
            return f"unix:{self.path}"
        address = self.address or ("127.0.0.1" if self.family == "inet" else "::1")
        return f"{self.family}:{'[' + address + ']' if self.family == 'inet6' else address}:{self.port}"


def parse_spec(spec: str | None) -> ConnectionSpec:
    """Parse a connection spec, raising :class:`SpecError` with the messages the tools print."""
    if spec is None:
        raise SpecError("spec should not be NULL")
    protocol, colon, content = spec.partition(":")
    if not colon:
        raise SpecError(f"spec doesn't have colon: <{spec}>")
    if not content:
        raise SpecError(f"spec doesn't have content: <{spec}>")
    if protocol in ("unix", "local"):
        return ConnectionSpec("unix", path=content)
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
        return ConnectionSpec(protocol, port=port)
    family = socket.AF_INET if protocol == "inet" else socket.AF_INET6
    if host.startswith("["):
        if not host.endswith("]"):
            raise SpecError(f"']' is missing: <{spec}>: <{host}>")
        literal = host[1:-1]
        try:
            parsed = ipaddress.IPv4Address(literal) if protocol == "inet" else ipaddress.IPv6Address(literal)
        except ValueError:
            raise SpecError(f"invalid host address: <{spec}>: <{literal}>") from None
        return ConnectionSpec(protocol, port=port, host=host, address=str(parsed))
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        reason = error.strerror if isinstance(error, socket.gaierror) else str(error)
        raise SpecError(f"invalid host address: <{spec}>: <{host}>: {reason}") from None
    return ConnectionSpec(protocol, port=port, host=host, address=infos[0][4][0])


def format_sockaddr(family: int, address) -> str:
    """Render a peer address as the tools print it: ``inet:PORT@[A.B.C.D]``, ``unix:PATH``."""
    if family == socket.AF_INET:
        return f"inet:{address[1]}@[{address[0]}]"
    if family == socket.AF_INET6:
        return f"inet6:{address[1]}@[{address[0]}]"
    return f"unix:{address}"
