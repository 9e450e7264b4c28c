"""One immutable type per milter command (P-CMD), reply (P-RPL) and modification (P-MOD).

Each type knows its command letter, how to build its payload and how to read
one back. Strings are ``str`` decoded as UTF-8 with ``surrogateescape``, so any
octets round-trip losslessly (P-STR-4); bodies stay ``bytes``.

Payload readers raise :class:`MalformedPacket` and nothing else; the framing
and dispatch live in :mod:`milterman.protocol.codec`.
"""

from __future__ import annotations

import ipaddress
import socket as _socket
import struct
from dataclasses import dataclass, field
from typing import ClassVar

from .errors import MalformedPacket
from .flags import Action
from .replycode import ParsedReply, parse_reply_text, unescape_percent

_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_HEADER = struct.Struct(">IB")
NUL = b"\0"


def to_str(data: bytes) -> str:
    """Wire octets to text without loss (P-STR-4)."""
    return data.decode("utf-8", "surrogateescape")


def to_bytes(text: str) -> bytes:
    """Text back to the exact wire octets."""
    return text.encode("utf-8", "surrogateescape")


def _one_string(data: bytes, what: str, rule: str) -> str:
    """Exactly one NUL-terminated string and nothing after it (P-STR-1, P-STR-5)."""
    end = data.find(NUL)
    if end < 0:
        raise MalformedPacket(f"{what} lacks its NUL terminator", rule)
    if end != len(data) - 1:
        raise MalformedPacket(f"{what} has {len(data) - end - 1} bytes after its NUL", "P-STR-5")
    return to_str(data[:end])


def _strings(data: bytes, what: str, rule: str, strict: bool) -> list[str]:
    """A list of NUL-terminated strings filling the payload (P-STR-2)."""
    last = data.rfind(NUL)
    if last < 0:
        raise MalformedPacket(f"{what} lacks a NUL terminator", rule)
    if last != len(data) - 1:
        if strict:
            raise MalformedPacket(f"{what} has {len(data) - last - 1} bytes after its last NUL", "P-BAD-13")
        data = data[: last + 1]
    # decoded once, then split: UTF-8 never hides a NUL inside a sequence, so this is to_str per part
    return to_str(data[:-1]).split("\0")


def _no_data(cls: type, data: bytes, strict: bool, rule: str) -> None:
    if data and strict:
        raise MalformedPacket(f"{cls.__name__} carries {len(data)} unexpected data bytes", rule)


def strip_braces(name: str) -> str:
    """``{daemon_name}`` → ``daemon_name``; ``{i}`` → ``i`` (P-MAC-5)."""
    if len(name) > 2 and name[0] == "{" and name[-1] == "}":
        return name[1:-1]
    return name


def wire_macro_name(name: str) -> str:
    """Names longer than one character travel in braces (P-MAC-5)."""
    if len(name) > 1 and not name.startswith("{"):
        return "{" + name + "}"
    return name


class Message:
    """Base of every packet type; ``LETTER`` is the command byte on the wire.

    Every concrete type also has a class method ``from_payload(data, strict)``
    that reads its payload or raises :class:`MalformedPacket`.
    """

    __slots__ = ()
    LETTER: ClassVar[str] = ""
    #: The cached wire form of payload-less packets.
    WIRE: ClassVar[bytes | None] = None

    def payload(self) -> bytes:
        """The data part of the packet (everything after the command byte)."""
        return b""

    def encode(self) -> bytes:
        """The complete packet: 4-byte length, command byte, payload (P-FRM-1)."""
        wire = self.WIRE
        if wire is not None:
            return wire
        data = self.payload()
        return _HEADER.pack(len(data) + 1, ord(self.LETTER)) + data


class Command(Message):
    """A packet the MTA sends to a milter (SMFIC_*)."""

    __slots__ = ()


class Reply(Message):
    """A packet a milter sends to the MTA (SMFIR_* and the negotiation reply)."""

    __slots__ = ()
    #: True for the replies that answer a command (P-RPL-1).
    FINAL: ClassVar[bool] = True


class _Empty:
    """Mixin for packets without data: a singleton with a cached wire form."""

    __slots__ = ()
    NO_DATA_RULE: ClassVar[str] = "P-CMD-16"

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True):
        _no_data(cls, data, strict, cls.NO_DATA_RULE)
        return cls.INSTANCE  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))


def _empty_type(name: str, base: type, letter: str, doc: str, *, final: bool = True) -> type:
    """Make a payload-less packet type with a singleton ``INSTANCE`` and a cached wire form."""
    namespace = {"__slots__": (), "__doc__": doc, "__module__": __name__, "LETTER": letter,
                 "WIRE": _HEADER.pack(1, ord(letter)),
                 "NO_DATA_RULE": "P-RPL-14" if base is Reply else "P-CMD-16"}
    if base is Reply:
        namespace["FINAL"] = final
    cls = type(name, (_Empty, base), namespace)
    cls.INSTANCE = cls()
    return cls


# --------------------------------------------------------------------------------------------
# Commands, MTA → milter (section 2)


@dataclass(frozen=True, slots=True)
class Negotiate(Command):
    """SMFIC_OPTNEG: the MTA's offer (P-CMD-1, P-NEG-2)."""

    LETTER: ClassVar[str] = "O"
    version: int
    actions: int
    protocol: int

    def payload(self) -> bytes:
        return _U32.pack(self.version) + _U32.pack(self.actions) + _U32.pack(self.protocol)

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "Negotiate":
        if len(data) < 12:
            raise MalformedPacket(f"negotiation offer has {len(data)} data bytes, needs 12", "P-NEG-2")
        if len(data) > 12 and strict:
            raise MalformedPacket(f"negotiation offer has {len(data) - 12} extra bytes", "P-NEG-2")
        version, actions, protocol = struct.unpack_from(">III", data)
        return cls(version, actions, protocol)


@dataclass(frozen=True, slots=True)
class Macro(Command):
    """SMFIC_MACRO: name/value pairs for the command named by ``stage`` (P-CMD-2, P-MAC-1).

    Names are kept without braces (P-MAC-5). ``dropped`` says what a lenient read
    left out of a malformed packet (P-BAD-18), for the log. The milter side's decoder
    gives a :class:`ReceivedMacro` instead, read only when something asks for the values.
    """

    LETTER: ClassVar[str] = "D"
    stage: str
    macros: tuple[tuple[str, str], ...] = ()
    dropped: str = ""

    def payload(self) -> bytes:
        parts = [to_bytes(self.stage)]
        for name, value in self.macros:
            parts.append(to_bytes(wire_macro_name(name)) + NUL + to_bytes(value) + NUL)
        return b"".join(parts)

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "Macro":
        if not data:
            raise MalformedPacket("macro packet without a stage letter", "P-BAD-17")
        macros, dropped = _macro_pairs(data[1:])
        return cls(to_str(data[:1]), macros, dropped)  # surrogateescape: a non-ASCII stage byte re-encodes (P-STR-4)

    def as_dict(self) -> dict[str, str]:
        """The pairs as a mapping; a later duplicate wins (P-MAC-4)."""
        return dict(self.macros)


def _macro_pairs(rest: bytes) -> tuple[tuple[tuple[str, str], ...], str]:
    """The pairs of a macro packet after its stage byte, and what a lenient read dropped (P-MAC-5, P-BAD-18)."""
    dropped = ""
    last = rest.rfind(NUL)
    if last != len(rest) - 1:
        dropped = "unterminated tail"
        rest = rest[: last + 1]
    # decoded once, then split (as _strings)
    strings = to_str(rest[:-1]).split("\0") if rest else []
    if len(strings) % 2:
        dropped = "name without a value"
        strings.pop()
    pairs = tuple([(strip_braces(name), value) for name, value in zip(strings[0::2], strings[1::2], strict=True)])
    return pairs, dropped


class ReceivedMacro(Macro):
    """A macro packet as the MTA sent it: kept whole and read only when the values are asked for.

    Most macro packets are never looked at (nothing reads the stage, or the manager only
    passes them on), so the decoder stores the wire bytes; ``macros`` is parsed on first
    use, ``dropped`` is found with two scans of the bytes, and :meth:`encode` gives the
    received packet itself, length header included (the bytes a relay forwards unchanged).
    Equal to a :class:`Macro` with the same stage, pairs and ``dropped``.
    """

    __slots__ = ("wire", "_pairs")

    def __init__(self, wire: bytes) -> None:
        """``wire``: one complete ``D`` packet with at least its stage byte (the decoder checked P-BAD-17)."""
        object.__setattr__(self, "wire", wire)
        object.__setattr__(self, "stage", to_str(wire[5:6]))
        object.__setattr__(self, "_pairs", None)

    @property
    def macros(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        pairs = self._pairs
        if pairs is None:
            pairs = _macro_pairs(self.wire[6:])[0]
            object.__setattr__(self, "_pairs", pairs)
        return pairs

    @property
    def dropped(self) -> str:  # type: ignore[override]
        """As :func:`_macro_pairs` says it, without splitting: the last NUL and the parity of the NULs."""
        wire = self.wire
        if len(wire) == 6:
            return ""
        if wire.count(NUL, 6) % 2:
            return "name without a value"
        return "" if wire[-1] == 0 else "unterminated tail"

    def encode(self) -> bytes:
        return self.wire

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Macro):
            return NotImplemented
        return (self.stage, self.macros, self.dropped) == (other.stage, other.macros, other.dropped)

    def __hash__(self) -> int:
        return hash((self.stage, self.macros, self.dropped))

    def __repr__(self) -> str:
        return f"Macro(stage={self.stage!r}, macros={self.macros!r}, dropped={self.dropped!r})"


class Family:
    """SMFIC_CONNECT address family bytes (P-CON-1)."""

    INET = "4"
    INET6 = "6"
    UNIX = "L"
    UNKNOWN = "U"


@dataclass(frozen=True, slots=True)
class Connect(Command):
    """SMFIC_CONNECT: client host name, family, port and address as sent (P-CON-1).

    ``address`` keeps the wire form (Sendmail's ``IPv6:`` prefix included) so the
    packet re-encodes exactly; :attr:`ip` gives the normalised address (P-CON-4).
    """

    LETTER: ClassVar[str] = "C"
    hostname: str
    family: str = Family.UNKNOWN
    port: int = 0
    address: str = ""

    def payload(self) -> bytes:
        head = to_bytes(self.hostname) + NUL + to_bytes(self.family)
        if self.family == Family.UNKNOWN:
            return head
        return head + _U16.pack(self.port) + to_bytes(self.address) + NUL

    @property
    def ip(self) -> str:
        """The address without an ``IPv6:`` prefix or brackets (P-CON-4)."""
        address = self.address
        if address[:1] == "[" and address[-1:] == "]":
            address = address[1:-1]
        if address[:5].lower() == "ipv6:":
            address = address[5:]
        return address

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "Connect":
        end = data.find(NUL)
        if end < 0:
            raise MalformedPacket("connect host name lacks its NUL", "P-CON-5")
        hostname = to_str(data[:end])
        if end + 1 >= len(data):
            raise MalformedPacket("connect packet lacks the family byte", "P-CON-5")
        family = chr(data[end + 1])
        if family == Family.UNKNOWN:
            if end + 2 != len(data) and strict:
                raise MalformedPacket("connect family 'U' followed by data", "P-CON-5")
            return cls(hostname, family)
        if family not in "46L":
            raise MalformedPacket(f"connect family {family!r} is not one of 4 6 L U", "P-CON-5")
        rest = data[end + 2:]
        if len(rest) < 3:
            raise MalformedPacket("connect packet truncated inside port or address", "P-CON-5")
        port = _U16.unpack_from(rest)[0]
        address = _one_string(rest[2:], "connect address", "P-CON-5")
        message = cls(hostname, family, port, address)
        if family == Family.INET:
            if not _valid_address(_socket.AF_INET, message.ip, ipaddress.IPv4Address):
                raise MalformedPacket(f"connect address {address!r} is not IPv4", "P-CON-5")
        elif family == Family.INET6:
            if not _valid_address(_socket.AF_INET6, message.ip, ipaddress.IPv6Address):
                raise MalformedPacket(f"connect address {address!r} is not IPv6", "P-CON-5")
        return message


def _valid_address(family: int, text: str, parse) -> bool:
    """``text`` is an address of ``family`` as :mod:`ipaddress` reads it; ``inet_pton`` first, which takes
    only forms ipaddress takes too and costs a fraction of it (ipaddress decides the rest)."""
    try:
        _socket.inet_pton(family, text)
        return True
    except (OSError, ValueError):
        pass
    try:
        parse(text)
        return True
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Helo(Command):
    """SMFIC_HELO: the HELO/EHLO argument (P-CMD-4)."""

    LETTER: ClassVar[str] = "H"
    name: str

    def payload(self) -> bytes:
        return to_bytes(self.name) + NUL

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "Helo":
        if not data:
            raise MalformedPacket("HELO without data", "P-BAD-10")
        return cls(_one_string(data, "HELO name", "P-BAD-11"))


@dataclass(frozen=True, slots=True)
class _Envelope(Command):
    address: str
    args: tuple[str, ...] = ()

    def payload(self) -> bytes:
        return b"".join(to_bytes(part) + NUL for part in (self.address, *self.args))

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True):
        if not data:
            raise MalformedPacket(f"{cls.__name__} without data", "P-BAD-10")
        parts = _strings(data, cls.__name__, "P-BAD-12", strict)
        return cls(parts[0], tuple(parts[1:]))


@dataclass(frozen=True, slots=True)
class Mail(_Envelope):
    """SMFIC_MAIL: envelope sender as written by the client, then one string per ESMTP argument (P-CMD-5)."""

    LETTER: ClassVar[str] = "M"


@dataclass(frozen=True, slots=True)
class Rcpt(_Envelope):
    """SMFIC_RCPT: one recipient and its ESMTP arguments (P-CMD-6)."""

    LETTER: ClassVar[str] = "R"


Data = _empty_type("Data", Command, "T", "SMFIC_DATA (P-CMD-7).")


@dataclass(frozen=True, slots=True)
class Header(Command):
    """SMFIC_HEADER: one header field, name without colon (P-CMD-8)."""

    LETTER: ClassVar[str] = "L"
    name: str
    value: str

    def payload(self) -> bytes:
        return to_bytes(self.name) + NUL + to_bytes(self.value) + NUL

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "Header":
        if not data:
            raise MalformedPacket("HEADER without data", "P-BAD-10")
        if data[-1:] != NUL:
            raise MalformedPacket("HEADER value lacks its NUL", "P-BAD-14")
        parts = to_str(data[:-1]).split("\0")  # decoded once, then split (as _strings)
        if len(parts) < 2:
            raise MalformedPacket("HEADER has a name but no value", "P-BAD-14")
        if len(parts) > 2 and strict:
            raise MalformedPacket("HEADER carries more than two strings", "P-BAD-15")
        return cls(parts[0], parts[1])


EndOfHeader = _empty_type("EndOfHeader", Command, "N", "SMFIC_EOH (P-CMD-9).")


@dataclass(frozen=True, slots=True)
class Body(Command):
    """SMFIC_BODY: one raw chunk of the body (P-CMD-10, P-BODY-1).

    ``wire``: the whole packet as received, when the decoder had it as one object (the MTA's
    block held just this packet); :meth:`encode` gives it back, so a relayed chunk is not copied
    again on its way out. Not part of equality.
    """

    LETTER: ClassVar[str] = "B"
    chunk: bytes
    wire: bytes | None = field(default=None, compare=False, repr=False)

    def payload(self) -> bytes:
        return bytes(self.chunk)

    def encode(self) -> bytes:
        wire = self.wire
        if wire is not None:
            return wire
        return _HEADER.pack(len(self.chunk) + 1, 0x42) + self.chunk

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "Body":
        if not data:
            raise MalformedPacket("BODY without data", "P-BAD-10")
        return cls(data)

    def __repr__(self) -> str:
        return f"Body(<{len(self.chunk)} bytes>)"


@dataclass(frozen=True, slots=True)
class EndOfMessage(Command):
    """SMFIC_BODYEOB; ``chunk`` is only ever non-empty in lenient mode (P-CMD-11, P-BAD-20)."""

    LETTER: ClassVar[str] = "E"
    chunk: bytes = b""

    def payload(self) -> bytes:
        return bytes(self.chunk)

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "EndOfMessage":
        if data:
            if strict:
                raise MalformedPacket(f"end-of-message carries {len(data)} data bytes", "P-BAD-20")
            return cls(data)
        return END_OF_MESSAGE


END_OF_MESSAGE = EndOfMessage()


Abort = _empty_type("Abort", Command, "A", "SMFIC_ABORT: ends the current message only (P-CMD-12, P-SM-3).")
Quit = _empty_type("Quit", Command, "Q", "SMFIC_QUIT (P-CMD-13).")
QuitNewConnection = _empty_type("QuitNewConnection", Command, "K",
                                "SMFIC_QUIT_NC: a new SMTP connection follows on this socket (P-CMD-14, D-4).")


@dataclass(frozen=True, slots=True)
class Unknown(Command):
    """SMFIC_UNKNOWN: an SMTP command line the MTA did not recognise (P-CMD-15)."""

    LETTER: ClassVar[str] = "U"
    command: str

    def payload(self) -> bytes:
        return to_bytes(self.command) + NUL

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "Unknown":
        if not data:
            raise MalformedPacket("UNKNOWN without data", "P-BAD-10")
        return cls(_one_string(data, "UNKNOWN command", "P-BAD-11"))


# --------------------------------------------------------------------------------------------
# Replies, milter → MTA (section 3)


@dataclass(frozen=True, slots=True)
class NegotiateReply(Reply):
    """The milter's OPTNEG answer, with its macro-list requests (P-NEG-3, P-NEG-13).

    ``macro_lists`` holds ``(stage number, space-separated names)`` in wire order.
    """

    LETTER: ClassVar[str] = "O"
    version: int
    actions: int
    protocol: int
    macro_lists: tuple[tuple[int, str], ...] = ()

    def payload(self) -> bytes:
        parts = [_U32.pack(self.version), _U32.pack(self.actions), _U32.pack(self.protocol)]
        for stage, names in self.macro_lists:
            parts.append(_U32.pack(stage) + to_bytes(names) + NUL)
        return b"".join(parts)

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "NegotiateReply":
        if len(data) < 12:
            raise MalformedPacket(f"negotiation reply has {len(data)} data bytes, needs 12", "P-NEG-3")
        version, actions, protocol = struct.unpack_from(">III", data)
        lists = []
        position = 12
        while position < len(data):
            if len(data) - position < 5:
                raise MalformedPacket("truncated macro-list entry in negotiation reply", "P-BAD-34")
            stage = _U32.unpack_from(data, position)[0]
            end = data.find(NUL, position + 4)
            if end < 0:
                raise MalformedPacket("macro list lacks its NUL", "P-BAD-34")
            lists.append((stage, to_str(data[position + 4:end])))
            position = end + 1
        return cls(version, actions, protocol, tuple(lists))


Continue = _empty_type("Continue", Reply, "c", "SMFIR_CONTINUE (P-RPL-2).")
Accept = _empty_type("Accept", Reply, "a", "SMFIR_ACCEPT (P-RPL-3).")
Reject = _empty_type("Reject", Reply, "r", "SMFIR_REJECT (P-RPL-4).")
TempFail = _empty_type("TempFail", Reply, "t", "SMFIR_TEMPFAIL (P-RPL-5).")
Discard = _empty_type("Discard", Reply, "d", "SMFIR_DISCARD (P-RPL-6).")
Skip = _empty_type("Skip", Reply, "s", "SMFIR_SKIP (P-RPL-8).")
Shutdown = _empty_type("Shutdown", Reply, "4", "SMFIR_SHUTDOWN, Postfix only (P-RPL-11).")
ConnectionFailure = _empty_type("ConnectionFailure", Reply, "f",
                                "SMFIR_CONN_FAIL: decodable; no MTA accepts it and we never send it (P-RPL-12).")


Progress = _empty_type("Progress", Reply, "p", "SMFIR_PROGRESS: not final, restarts the reader's timeout (P-RPL-9).",
                       final=False)


@dataclass(frozen=True, slots=True)
class ReplyCode(Reply):
    """SMFIR_REPLYCODE: a reject or tempfail with its own SMTP text (P-RPL-7, section 8).

    ``text`` is the wire text (``%%`` still doubled) so the packet re-encodes
    exactly; :attr:`smtp_text` is what the SMTP client sees.
    """

    LETTER: ClassVar[str] = "y"
    text: str

    def payload(self) -> bytes:
        return to_bytes(self.text) + NUL

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "ReplyCode":
        text = _one_string(data, "reply text", "P-CODE-1")
        parse_reply_text(text)
        return cls(text)

    @classmethod
    def from_payload_unchecked(cls, data: bytes, strict: bool = True) -> "ReplyCode":
        """Only the NUL framing is checked: for a reader that judges the text itself (M-RC-2)."""
        return cls(_one_string(data, "reply text", "P-CODE-1"))

    @property
    def parsed(self) -> ParsedReply:
        """Code, enhanced code and line texts (P-CODE-2..5)."""
        return parse_reply_text(self.text)

    @property
    def code(self) -> str:
        return self.text[:3]

    @property
    def is_temporary(self) -> bool:
        """A 4xx text is a tempfail, a 5xx one a reject (P-CODE-3)."""
        return self.text[:1] == "4"

    @property
    def smtp_text(self) -> str:
        """The text with ``%%`` undone and lone ``%`` dropped (P-CODE-6, P-BAD-41)."""
        return unescape_percent(self.text)


class Modification(Reply):
    """A request only valid at end of message (P-MOD-1); ``ACTION`` is the :class:`Action` bit it needs, as a
    plain int for the per-packet check (P-MOD-2)."""

    __slots__ = ()
    FINAL: ClassVar[bool] = False
    ACTION: ClassVar[int] = 0


def _header_index(data: bytes, what: str) -> tuple[int, bytes]:
    if len(data) < 4:
        raise MalformedPacket(f"{what} lacks its index", "P-BAD-39")
    index = _U32.unpack_from(data)[0]
    if index >= 0x80000000:
        raise MalformedPacket(f"{what} index 0x{index:x} is out of range", "P-MOD-5a")
    return index, data[4:]


def _header_pair(data: bytes, what: str, allow_empty_name: bool = False) -> tuple[str, str]:
    if data[-1:] != NUL:
        raise MalformedPacket(f"{what} value lacks its NUL", "P-BAD-39")
    parts = data[:-1].split(NUL)
    if len(parts) != 2:
        raise MalformedPacket(f"{what} must carry exactly a name and a value", "P-BAD-39")
    if not parts[0] and not allow_empty_name:
        raise MalformedPacket(f"{what} with an empty header name", "P-BAD-42")
    return to_str(parts[0]), to_str(parts[1])


@dataclass(frozen=True, slots=True)
class Quarantine(Modification):
    """SMFIR_QUARANTINE: put the message on hold with a reason (P-RPL-10)."""

    LETTER: ClassVar[str] = "q"
    ACTION: ClassVar[int] = int(Action.QUARANTINE)
    reason: str

    def payload(self) -> bytes:
        return to_bytes(self.reason) + NUL

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "Quarantine":
        reason = _one_string(data, "quarantine reason", "P-BAD-39")
        if not reason:
            raise MalformedPacket("quarantine reason is empty", "P-RPL-10")
        return cls(reason)


@dataclass(frozen=True, slots=True)
class AddHeader(Modification):
    """SMFIR_ADDHEADER: append a header (P-MOD-3)."""

    LETTER: ClassVar[str] = "h"
    ACTION: ClassVar[int] = int(Action.ADD_HEADERS)
    name: str
    value: str

    def payload(self) -> bytes:
        return to_bytes(self.name) + NUL + to_bytes(self.value) + NUL

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "AddHeader":
        return cls(*_header_pair(data, "add-header"))


@dataclass(frozen=True, slots=True)
class InsertHeader(Modification):
    """SMFIR_INSHEADER: insert at a 0-based position over all headers (P-MOD-4)."""

    LETTER: ClassVar[str] = "i"
    ACTION: ClassVar[int] = int(Action.ADD_HEADERS)
    index: int
    name: str
    value: str

    def payload(self) -> bytes:
        return _U32.pack(self.index) + to_bytes(self.name) + NUL + to_bytes(self.value) + NUL

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "InsertHeader":
        index, rest = _header_index(data, "insert-header")
        return cls(index, *_header_pair(rest, "insert-header"))


@dataclass(frozen=True, slots=True)
class ChangeHeader(Modification):
    """SMFIR_CHGHEADER: change the ``index``-th (1-based) header of that name; empty value deletes (P-MOD-5)."""

    LETTER: ClassVar[str] = "m"
    ACTION: ClassVar[int] = int(Action.CHANGE_HEADERS)
    index: int
    name: str
    value: str

    def payload(self) -> bytes:
        return _U32.pack(self.index) + to_bytes(self.name) + NUL + to_bytes(self.value) + NUL

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "ChangeHeader":
        index, rest = _header_index(data, "change-header")
        return cls(index, *_header_pair(rest, "change-header"))


@dataclass(frozen=True, slots=True)
class AddRcpt(Modification):
    """SMFIR_ADDRCPT (P-MOD-7)."""

    LETTER: ClassVar[str] = "+"
    ACTION: ClassVar[int] = int(Action.ADD_RCPT)
    recipient: str

    def payload(self) -> bytes:
        return to_bytes(self.recipient) + NUL

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "AddRcpt":
        recipient = _one_string(data, "add-recipient", "P-BAD-39")
        if not recipient:
            raise MalformedPacket("add-recipient with an empty address", "P-MOD-7")
        return cls(recipient)


def _address_and_args(data: bytes, what: str) -> tuple[str, str | None]:
    if data[-1:] != NUL:
        raise MalformedPacket(f"{what} lacks its NUL", "P-BAD-39")
    parts = data[:-1].split(NUL)
    if len(parts) > 2:
        raise MalformedPacket(f"{what} carries more than one argument string", "P-MOD-8")
    if not parts[0]:
        raise MalformedPacket(f"{what} with an empty address", "P-MOD-10")
    return to_str(parts[0]), (to_str(parts[1]) if len(parts) == 2 else None)


def _address_and_args_payload(address: str, args: str | None) -> bytes:
    """The address, then at most one space-separated argument string (P-MOD-8, P-MOD-10)."""
    data = to_bytes(address) + NUL
    return data if args is None else data + to_bytes(args) + NUL


@dataclass(frozen=True, slots=True)
class AddRcptWithParameters(Modification):
    """SMFIR_ADDRCPT_PAR: recipient and optionally one space-separated argument string (P-MOD-8)."""

    LETTER: ClassVar[str] = "2"
    ACTION: ClassVar[int] = int(Action.ADD_RCPT_WITH_PARAMETERS)
    recipient: str
    args: str | None = None

    def payload(self) -> bytes:
        return _address_and_args_payload(self.recipient, self.args)

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "AddRcptWithParameters":
        return cls(*_address_and_args(data, "add-recipient-with-parameters"))


@dataclass(frozen=True, slots=True)
class DeleteRcpt(Modification):
    """SMFIR_DELRCPT (P-MOD-9)."""

    LETTER: ClassVar[str] = "-"
    ACTION: ClassVar[int] = int(Action.DELETE_RCPT)
    recipient: str

    def payload(self) -> bytes:
        return to_bytes(self.recipient) + NUL

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "DeleteRcpt":
        recipient = _one_string(data, "delete-recipient", "P-BAD-39")
        if not recipient:
            raise MalformedPacket("delete-recipient with an empty address", "P-MOD-9")
        return cls(recipient)


@dataclass(frozen=True, slots=True)
class ChangeFrom(Modification):
    """SMFIR_CHGFROM: new envelope sender and optional argument string (P-MOD-10)."""

    LETTER: ClassVar[str] = "e"
    ACTION: ClassVar[int] = int(Action.CHANGE_FROM)
    sender: str
    args: str | None = None

    def payload(self) -> bytes:
        return _address_and_args_payload(self.sender, self.args)

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "ChangeFrom":
        return cls(*_address_and_args(data, "change-from"))


@dataclass(frozen=True, slots=True)
class ReplaceBody(Modification):
    """SMFIR_REPLBODY: one piece of the replacement body (P-MOD-11)."""

    LETTER: ClassVar[str] = "b"
    ACTION: ClassVar[int] = int(Action.CHANGE_BODY)
    chunk: bytes

    def payload(self) -> bytes:
        return bytes(self.chunk)

    @classmethod
    def from_payload(cls, data: bytes, strict: bool = True) -> "ReplaceBody":
        return cls(data)

    def __repr__(self) -> str:
        return f"ReplaceBody(<{len(self.chunk)} bytes>)"


COMMAND_TYPES: dict[str, type[Command]] = {
    cls.LETTER: cls for cls in (Negotiate, Macro, Connect, Helo, Mail, Rcpt, Data, Header, EndOfHeader,
                                Body, EndOfMessage, Abort, Quit, QuitNewConnection, Unknown)
}
REPLY_TYPES: dict[str, type[Reply]] = {
    cls.LETTER: cls for cls in (NegotiateReply, Continue, Accept, Reject, TempFail, Discard, Skip, Shutdown,
                                ConnectionFailure, Progress, ReplyCode, Quarantine, AddHeader, InsertHeader,
                                ChangeHeader, AddRcpt, AddRcptWithParameters, DeleteRcpt, ChangeFrom,
                                ReplaceBody)
}

CONTINUE = Continue.INSTANCE
ACCEPT = Accept.INSTANCE
REJECT = Reject.INSTANCE
TEMPFAIL = TempFail.INSTANCE
DISCARD = Discard.INSTANCE
SKIP = Skip.INSTANCE
PROGRESS = Progress.INSTANCE
SHUTDOWN = Shutdown.INSTANCE
DATA = Data.INSTANCE
END_OF_HEADER = EndOfHeader.INSTANCE
ABORT = Abort.INSTANCE
QUIT = Quit.INSTANCE
QUIT_NEW_CONNECTION = QuitNewConnection.INSTANCE
