"""Macro values as a milter sees them (P-MAC-2, P-MAC-5, P-MAC-6), and as the MTA side sends them (P-NEG-14).

Values arrive per stage letter and are replaced per stage; a command clears
the stages after it; a lookup searches the newest stage first, and ``x`` and
``{x}`` name the same macro.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from .messages import Macro, strip_braces

if TYPE_CHECKING:
    from .negotiation import Options

#: Stage letters from oldest to newest (Postfix's ``L``/``B`` sit with EOH/EOM, P-MAC-2).
STAGE_ORDER = "CUHMRTLNBE"
_RANK = {letter: rank for rank, letter in enumerate(STAGE_ORDER)}
_NEWEST_FIRST = STAGE_ORDER[::-1]
#: command letter → the stages its arrival clears (everything after it)
_CLEARS = {
    "C": STAGE_ORDER[1:],
    "H": STAGE_ORDER[_RANK["H"] + 1:],
    "M": STAGE_ORDER[_RANK["M"] + 1:],
    "R": STAGE_ORDER[_RANK["R"] + 1:],
    "A": STAGE_ORDER[_RANK["M"]:],
}


class MacroStore:
    """Per-connection macro values of the milter side.

    Each stage keeps its last macro packet as received (P-MAC-6: a later ``D`` for the same
    stage replaces it); the values are read out of it only when something asks for them, once
    per packet, so a stage nobody looks at costs no parsing. :meth:`packet` gives the packet
    itself, for a relay that passes it on unchanged.
    """

    __slots__ = ("_packets", "_values")

    def __init__(self) -> None:
        self._packets: dict[str, Macro] = {}
        #: the values of the packets read so far (same dict until the stage's packet is replaced)
        self._values: dict[str, dict[str, str]] = {}

    def receive(self, packet: Macro) -> bool:
        """Keep ``packet`` as its stage's macros; ``False`` (and nothing stored) for an unknown letter (P-BAD-18)."""
        stage = packet.stage
        if stage not in _RANK:
            return False
        self._packets[stage] = packet
        values = self._values
        if stage in values:  # membership and del, not pop(): no call when the stage was not read
            del values[stage]
        return True

    def define(self, stage: str, macros: tuple[tuple[str, str], ...]) -> bool:
        """Replace a stage's values; ``False`` (and nothing stored) for an unknown letter (P-BAD-18)."""
        return self.receive(Macro(stage, tuple(macros)))

    def command_arrived(self, letter: str) -> None:
        """Clear the stages later than ``letter`` (P-MAC-6); ``A`` clears the message stages."""
        packets = self._packets
        if packets and letter in _CLEARS:
            values = self._values
            for stage in _CLEARS[letter]:
                if stage in packets:  # membership and del: no call for the stages that hold nothing
                    del packets[stage]
                    if stage in values:
                        del values[stage]

    def clear(self) -> None:
        """Forget everything (OPTNEG, QUIT, QUIT_NC)."""
        self._packets.clear()
        self._values.clear()

    def packet(self, letter: str) -> bytes | None:
        """The stage's last macro packet exactly as the MTA sent it, length header included (``None``: none)."""
        packet = self._packets.get(letter)
        return None if packet is None else packet.encode()

    def stage(self, letter: str) -> dict[str, str]:
        """The values defined for one stage letter (empty if none); the same dict until a new packet comes."""
        values = self._values.get(letter)
        if values is None:
            packet = self._packets.get(letter)
            if packet is None:
                return {}
            values = self._values[letter] = dict(packet.macros)
        return values

    def has_values(self, letter: str) -> bool:
        """Whether :meth:`stage` would give any value for ``letter``, without reading a packet that was not
        read yet: a received packet holds a name/value pair exactly when it has two NULs after its stage."""
        values = self._values.get(letter)
        if values is not None:
            return bool(values)
        packet = self._packets.get(letter)
        if packet is None:
            return False
        wire = getattr(packet, "wire", None)
        if wire is None:
            return bool(packet.macros)
        return wire.count(b"\0", 6) >= 2

    def get(self, name: str, default: str | None = None) -> str | None:
        """The newest value of ``name`` (with or without braces)."""
        name = strip_braces(name)
        packets = self._packets
        needle = None
        for stage in _NEWEST_FIRST:
            if stage in packets:  # membership first: no call for the stages that hold nothing
                packet = packets[stage]
                wire = getattr(packet, "wire", None)
                if wire is not None and stage not in self._values:
                    # a packet not read yet is read only when the name's octets are in it at all
                    if needle is None:
                        needle = name.encode("utf-8", "surrogateescape")
                    if needle not in wire:
                        continue
                values = self.stage(stage)
                if name in values:
                    return values[name]
        return default

    def merged(self) -> dict[str, str]:
        """Every visible macro, newer stages shadowing older ones."""
        result: dict[str, str] = {}
        for stage in STAGE_ORDER:
            if stage in self._packets:
                result.update(self.stage(stage))
        return result


def macro_packet(options: Options | None, stage: str,
                 macros: Mapping[str, str] | Iterable[tuple[str, str]]) -> Macro | None:
    """The macro packet the MTA side sends a milter for ``stage`` (P-NEG-14, P-MAC-5).

    Only the names the milter asked for at that stage when it sent a list (with or
    without braces alike), sorted; ``None`` when nothing is left to send.
    """
    items = macros.items() if isinstance(macros, Mapping) else macros
    normalized = {strip_braces(name): value for name, value in items}
    requested = options.macro_request(stage) if options is not None else None
    if requested is not None:
        wanted = {strip_braces(name) for name in requested}
        normalized = {name: value for name, value in normalized.items() if name in wanted}
    if not normalized:
        return None
    return Macro(stage, tuple(sorted(normalized.items())))
