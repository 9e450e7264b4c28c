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
    """Per-connection macro values of the milter side."""

    __slots__ = ("_stages",)

    def __init__(self) -> None:
        self._stages: dict[str, dict[str, str]] = {}

    def define(self, stage: str, macros: tuple[tuple[str, str], ...]) -> bool:
        """Replace a stage's values; ``False`` (and nothing stored) for an unknown letter (P-BAD-18)."""
        if stage not in _RANK:
            return False
        self._stages[stage] = dict(macros)
        return True

    def command_arrived(self, letter: str) -> None:
        """Clear the stages later than ``letter`` (P-MAC-6); ``A`` clears the message stages."""
        cleared = _CLEARS.get(letter)
        if cleared and self._stages:
            for stage in cleared:
                self._stages.pop(stage, None)

    def clear(self) -> None:
        """Forget everything (OPTNEG, QUIT, QUIT_NC)."""
        self._stages.clear()

    def get(self, name: str, default: str | None = None) -> str | None:
        """The newest value of ``name`` (with or without braces)."""
        name = strip_braces(name)
        stages = self._stages
        for stage in _NEWEST_FIRST:
            values = stages.get(stage)
            if values and name in values:
                return values[name]
        return default

    def stage(self, letter: str) -> dict[str, str]:
        """The values defined for one stage letter (empty if none)."""
        return self._stages.get(letter, {})

    def merged(self) -> dict[str, str]:
        """Every visible macro, newer stages shadowing older ones."""
        result: dict[str, str] = {}
        for stage in STAGE_ORDER:
            values = self._stages.get(stage)
            if values:
                result.update(values)
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
