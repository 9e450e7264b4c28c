"""What conditions and rules may read of one MTA session (B5.1, M-AC-*).

Predicates, built-in and Python conditions and the ``[[rule]]`` chain see the session
through this object only, never through the leader: the SMTP facts so far (connect,
HELO, sender, recipients, the headers of the message in progress), the MTA's macros,
the session's children and their last answers, and the per-transaction marks
conditions may set (``flags``, ``shelf``). The leader keeps it up to date.
"""

from __future__ import annotations

from typing import Protocol


class Counters(Protocol):
    """Where the number of sessions being processed lives (the stress conditions, M-AC-B5)."""

    sessions_processing: int


#: no logged condition errors, no stopped children: shared by every session until it has some
NO_MARKS: frozenset[str] = frozenset()


class Facts:
    """One MTA session as conditions see it; the leader writes, conditions read (and mark ``flags``, ``shelf``)."""

    __slots__ = ("session_id", "macros", "children", "connect_command", "helo_name", "sender", "recipients",
                 "message", "flags", "shelf", "condition_errors", "_counters")

    def __init__(self, session_id: int, macros, counters: Counters) -> None:
        #: the session's id, for log lines
        self.session_id = session_id
        #: the MTA's macros as the session holds them (a MacroStore, P-MAC-6)
        self.macros = macros
        #: this session's children: ``name``, ``quitted``, ``last_status`` (B5.1 ``milter_status``)
        self.children: list = []
        #: the MTA's Connect command (M-AC-3); None before connect
        self.connect_command = None
        self.helo_name: str | None = None
        #: the raw MAIL argument of the current transaction
        self.sender: str | None = None
        #: RCPT arguments the manager accepted in this transaction (B5.1 ``recipients`` for rules)
        self.recipients: list[str] = []
        #: the message in progress (its ``headers.items`` so far), None outside one
        self.message = None
        #: transaction flags (B5 ``set_flags``, M-AC-B8), emptied at MAIL and at abort
        self.flags: set[str] = set()
        #: what Python conditions keep for the rest of the transaction, emptied at MAIL and at abort
        self.shelf: dict = {}
        #: names of Python conditions whose exception was logged in this session (once each)
        self.condition_errors: frozenset[str] = NO_MARKS  # replaced (rarely) by a larger frozenset
        self._counters = counters

    @property
    def sessions_processing(self) -> int:
        """Sessions this serving process is working on now (M-AC-B5 stress)."""
        return self._counters.sessions_processing

    def start_transaction(self, sender: str | None) -> None:
        """MAIL: a new transaction starts with no recipient and no marks (M-AGG-2a)."""
        self.sender = sender
        self.recipients = []
        self.drop_marks()

    def drop_marks(self) -> None:
        """The transaction's flags and shelf are forgotten (MAIL, abort: M-AC-4)."""
        self.flags = set()
        self.shelf = {}
