"""What the session's parts need of the leader that owns them: the port it implements.

The message pipeline and the envelope fan-out reach the rest of the session only through
these members, so neither imports the leader (no cycle) and both can be driven in
process by a stand-in.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from ...log import Logger
from ...protocol import Reply

if TYPE_CHECKING:
    from ..child import Child
    from ..status import Combined


class SessionPort(Protocol):
    """What the pipeline and the fan-out need of the session that owns them (the leader implements it)."""

    #: entered around every wait for a child (the disconnect check, M-ERR-8)
    watch: AbstractContextManager
    logger: Logger

    def stopped(self, child: Child, letter: str, command) -> bool:
        """Is ``child`` stopped before ``command`` by a rule or one of its conditions (C-RULE-2, M-AC-2)?"""

    def stage_macros(self, letter: str) -> dict[str, str] | None:
        """The MTA's macros of the stage (M-MAC-2)."""

    def encoded_macros(self, letter: str, macros: dict[str, str] | None) -> bytes | None:
        """The same macros as one encoded packet, shared by the children that take them as they are."""

    def expire(self, child: Child, reason: str, combined: Combined | None = None) -> None:
        """The child is gone for the session; its fallback counted in ``combined`` (M-ERR-1, D-14)."""

    def milter_end(self, child: Child) -> None:
        """The child's end line, once per session (ST-MILTER-END)."""

    def reply(self, combined: Combined) -> Reply:
        """The reply for the MTA from a combined status (recorded for the session's end line)."""

    def manager_fallback(self, reason: str) -> Reply:
        """The manager itself cannot go on: its fallback status answers (M-ERR-7)."""

    def abort_message(self) -> None:
        """Every child in the message gets ``A``; the message and the transaction marks go (M-AC-4)."""

    def end_message(self) -> None:
        """The message is over (its reply given); the children stay in the session."""
