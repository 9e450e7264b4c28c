"""The header list as the MTA holds it, and the edits that reproduce it there (D-16, M-EOM-2, M-EOM-3, P-MOD-4).

A chain of milters behind Postfix or Sendmail edits the MTA's own header list, which holds entries no
milter is shown: the MTA's own ``Received:`` (both MTAs), and in Sendmail its default-header slots and
headers deleted earlier in the message (kept as empty slots). Where a header lands depends on them, so
the manager keeps the same list: :class:`Headers` applies each child's ``h``/``i``/``m`` the way the
MTA does (``kind`` ``"postfix"`` or ``"sendmail"``), later children are replayed its visible entries,
and :func:`header_edits` turns the final list into the edits that make the MTA's list the same.

What each MTA does (measured with Postfix 3.7 and Sendmail 8.17 chaining scripted milters):

* both match names in ``m`` ASCII case-insensitively; an ``m`` past the last occurrence with a value
  adds the header; ``i`` counts the MTA's own ``Received:`` (index 0 lands above it), past the end
  appends;
* Postfix: ``h`` appends; ``m`` counts the headers milters see, renames to the milter's spelling, and
  a delete removes the header;
* Sendmail: its list starts with hidden entries (Return-Path, its Received:, then the default-header
  slots Resent-Date, Date, Resent-From, From, Full-Name, Resent-Message-Id, Message-Id); ``i n``
  links the header after entry n; ``h`` fills a default or earlier-deleted slot of that name, else
  goes before the first entry of that name, else appends; ``m`` counts the message's own headers,
  including ones deleted by the same milter, keeps the stored name, and a delete leaves an empty slot
  (a slot of a milter that finished no longer counts).
"""

from __future__ import annotations

from ..protocol import AddHeader, ChangeHeader, InsertHeader, Reply

POSTFIX = "postfix"
SENDMAIL = "sendmail"

#: Sendmail's default header lines (proto.m4), in its list after Return-Path and its Received:
SENDMAIL_DEFAULTS = ("Resent-Date", "Date", "Resent-From", "From", "Full-Name", "Resent-Message-Id", "Message-Id")


class Entry:
    """One entry of the MTA's list. ``user``: a header of the message (not one of the MTA's own);
    ``value is None``: an empty slot (Sendmail); ``trace``: the MTA's own Received:. ``folded``: the name
    lowercased, once (``h`` and ``m`` match names case-insensitively; a rename by ``m`` keeps the fold)."""

    __slots__ = ("name", "value", "user", "trace", "folded")

    def __init__(self, name: str, value: str | None, user: bool = True, trace: bool = False,
                 folded: str | None = None) -> None:
        self.name = name
        self.value = value
        self.user = user
        self.trace = trace
        self.folded = name.lower() if folded is None else folded

    @property
    def visible(self) -> bool:
        """Shown to milters (and so to later children)."""
        return self.user and self.value is not None

    def __repr__(self) -> str:
        flags = ("" if self.user else "!user") + (" trace" if self.trace else "")
        return f"<{self.name}: {self.value!r}{' ' + flags if flags else ''}>"


#: Sendmail's hidden entries after its Received:, as (name, folded name): lowercased once
_SENDMAIL_SLOTS = tuple((name, name.lower()) for name in SENDMAIL_DEFAULTS)


def mta_prefix(kind: str) -> list[Entry]:
    """The entries the MTA holds before the message's first header (never shown to milters)."""
    own = Entry("Received", "(the MTA's own)", user=False, trace=True, folded="received")
    if kind == POSTFIX:
        return [own]
    return [Entry("Return-Path", None, user=False, folded="return-path"), own,
            *[Entry(name, None, user=False, folded=folded) for name, folded in _SENDMAIL_SLOTS]]


class Headers:
    """H: the headers of the message as the MTA holds them (M-EOM-2 as revised by D-16).

    Until :meth:`begin_edits` the list holds the MTA's headers only (they arrive before the kind of
    MTA matters); ``items`` is the visible list, cached (the live child reads it per header).
    """

    __slots__ = ("kind", "entries", "_visible")

    def __init__(self, items: list[tuple[str, str]] | None = None, *, kind: str | None = None) -> None:
        self.kind: str | None = None
        self.entries: list[Entry] = [Entry(name, value) for name, value in items or ()]
        self._visible: list[tuple[str, str]] | None = None
        if kind is not None:
            self.begin_edits(kind)

    @property
    def items(self) -> list[tuple[str, str]]:
        """The (name, value) pairs a milter would be shown, in order."""
        if self._visible is None:
            self._visible = [(entry.name, entry.value) for entry in self.entries if entry.visible]
        return self._visible

    def append(self, name: str, value: str) -> None:
        """A header from the MTA."""
        self.entries.append(Entry(name, value))
        if self._visible is not None:
            self._visible.append((name, value))

    def begin_edits(self, kind: str) -> None:
        """Children start editing: put the MTA's hidden entries in front (``kind``: postfix or sendmail)."""
        if self.kind is None:
            self.kind = kind
            self.entries[:0] = mta_prefix(kind)
            self._visible = None

    def snapshot(self) -> list[tuple[Entry, str, str | None, bool]]:
        """Each entry with its name, value and user flag now (H0 for :func:`header_edits`)."""
        return [(entry, entry.name, entry.value, entry.user) for entry in self.entries]

    # ---------------------------------------------------------------- a child's requests

    def add(self, name: str, value: str) -> None:
        """``h``."""
        self._visible = None
        if self.kind == POSTFIX:
            self.entries.append(Entry(name, value))
            return
        lowered = name.lower()
        for entry in self.entries:  # Sendmail first fills a default or finished-delete slot of that name
            if not entry.user and not entry.trace and entry.folded == lowered:
                entry.value = value
                entry.user = True
                return
        self._sendmail_add(name, value, lowered)

    def _sendmail_add(self, name: str, value: str, lowered: str | None = None) -> None:
        if lowered is None:
            lowered = name.lower()
        for position, entry in enumerate(self.entries):
            if entry.folded == lowered:
                self.entries.insert(position, Entry(name, value, folded=lowered))
                return
        self.entries.append(Entry(name, value, folded=lowered))

    def insert(self, index: int, name: str, value: str) -> None:
        """``i``: 0-based, counting the MTA's own Received: (Sendmail: after entry ``index``)."""
        self._visible = None
        position = index if self.kind == POSTFIX else index + 1
        self.entries.insert(min(position, len(self.entries)), Entry(name, value))

    def change(self, name: str, index: int, value: str) -> None:
        """``m``: the ``index``-th (1-based) header of that name, any case; an empty value deletes it."""
        self._visible = None
        target = self.occurrence(name, max(index, 1))
        if target is None:
            if value:
                if self.kind == POSTFIX:
                    self.entries.append(Entry(name, value))
                else:
                    self._sendmail_add(name, value)
            return
        if self.kind == POSTFIX:
            if value:
                target.name = name
                target.value = value
            else:
                self.entries.remove(target)
            return
        target.value = value or None
        if value:
            target.user = True

    def occurrence(self, name: str, index: int) -> Entry | None:
        """The entry ``m name index`` reaches in this MTA, or None."""
        lowered = name.lower()
        fallback = None
        for entry in self.entries:
            if entry.folded != lowered:
                continue
            counted = entry.visible if self.kind == POSTFIX else entry.user
            if counted:
                index -= 1
                if index <= 0:
                    return entry
            elif self.kind != POSTFIX and not entry.trace:
                fallback = entry  # Sendmail changes a default slot when the message has no such header
        return fallback

    def end_child(self) -> None:
        """A child finished its end of message: in Sendmail its deletes become slots that no longer count
        as the message's headers (a later ``h`` of that name fills them; a later ``m`` skips them)."""
        if self.kind == POSTFIX:
            return
        for entry in self.entries:
            if entry.value is None and entry.user:
                entry.user = False

    def delivered(self) -> list[tuple[str, str]]:
        """What the MTA would write out: every entry with a value, its own Received: included."""
        return [(entry.name, entry.value) for entry in self.entries if entry.value is not None]

    def index_of(self, entry: Entry) -> int:
        for position, candidate in enumerate(self.entries):
            if candidate is entry:
                return position
        raise ValueError(entry)


def header_edits(original: list[tuple[Entry, str, str | None, bool]], final: Headers) -> list[Reply]:
    """The edits that turn the MTA's list ``original`` (a :meth:`Headers.snapshot`) into ``final`` there
    (M-EOM-3 as revised by D-16): changes first, then deletes (last first), then the new headers in
    order, each placed right after its predecessor. The MTA's list is simulated along the way, so every
    index is the one that MTA resolves to the intended entry.
    """
    appended = _appended_edits(original, final)
    if appended is not None:
        return appended
    return _diff_edits(original, final)


def _appended_edits(original: list[tuple[Entry, str, str | None, bool]], final: Headers) -> list[Reply] | None:
    """The edits when children only added headers after the MTA's list (the common case: a tag header), in one
    pass and without simulating the list: the same edits :func:`_diff_edits` finds then. None: anything else."""
    entries = final.entries
    count = len(original)
    if len(entries) < count:
        return None
    for (entry, name, value, user), now in zip(original, entries[:count], strict=True):
        if now is not entry or entry.value != value or entry.name != name or entry.user != user:
            return None
    # ``h`` lands at the end in Postfix; in Sendmail only when no entry of that name (header or slot) is there
    names = None if final.kind == POSTFIX else {entry.folded for entry in entries[:count]}
    edits: list[Reply] = []
    length = count
    for entry in entries[count:]:
        if entry.value is None:
            continue
        lowered = entry.folded
        if names is None or lowered not in names:
            edits.append(AddHeader(entry.name, entry.value))
        else:
            edits.append(InsertHeader(max(length - 1, 0), entry.name, entry.value))
        if names is not None:
            names.add(lowered)
        length += 1
    return edits


def _diff_edits(original: list[tuple[Entry, str, str | None, bool]], final: Headers) -> list[Reply]:
    """:func:`header_edits` for any change: the MTA's list simulated edit by edit."""
    kind = final.kind or SENDMAIL
    mta = Headers(kind=None)
    mta.kind = kind
    twin: dict[int, Entry] = {}
    for entry, name, value, user in original:
        copy = Entry(name, value, user, entry.trace, entry.folded)
        mta.entries.append(copy)
        twin[id(entry)] = copy
    edits: list[Reply] = []
    present = {id(entry) for entry in final.entries if entry.value is not None}
    # 1. headers of the message whose value (or, in Postfix, spelling) changed
    for entry, name, value, user in original:
        if user and value is not None and id(entry) in present and (entry.name, entry.value) != (name, value):
            number = _number(mta, twin[id(entry)])
            edits.append(ChangeHeader(number, entry.name, entry.value))
            mta.change(entry.name, number, entry.value)
    # 2. headers of the message that are gone (Postfix: removed; Sendmail: an empty slot), last first
    for entry, _name, value, user in reversed(original):
        if user and value is not None and id(entry) not in present:
            copy = twin[id(entry)]
            number = _number(mta, copy)
            edits.append(ChangeHeader(number, copy.name, ""))
            mta.change(copy.name, number, "")
    # 3. Sendmail default slots a child filled: ``h`` fills the same slot there
    for entry, _name, value, user in original:
        if not user and not entry.trace and value is None and entry.value is not None:
            edits.append(AddHeader(entry.name, entry.value))
            mta.add(entry.name, entry.value)
    # 4. new headers, in order, each right after the entry before it
    previous: Entry | None = None
    for entry in final.entries:
        copy = twin.get(id(entry))
        if copy is None and entry.value is not None:
            copy = twin[id(entry)] = Entry(entry.name, entry.value)
            after = -1 if previous is None else mta.index_of(previous)
            if _add_lands_at(mta, entry.name) == after + 1:
                edits.append(AddHeader(entry.name, entry.value))  # ``h`` needs no index: less to get wrong
            else:
                edits.append(InsertHeader(after + 1 if kind == POSTFIX else max(after, 0), entry.name, entry.value))
            mta.entries.insert(after + 1, copy)
        if copy is not None:
            previous = copy
    return edits


def _add_lands_at(mta: Headers, name: str) -> int | None:
    """Where ``h name`` inserts in ``mta`` (None: it fills a Sendmail slot instead)."""
    if mta.kind == POSTFIX:
        return len(mta.entries)
    lowered = name.lower()
    same = [position for position, entry in enumerate(mta.entries) if entry.folded == lowered]
    if any(not mta.entries[position].user and not mta.entries[position].trace for position in same):
        return None
    return same[0] if same else len(mta.entries)


def _number(mta: Headers, entry: Entry) -> int:
    """The ``m`` index that reaches ``entry`` in ``mta``."""
    lowered = entry.folded
    number = 0
    for candidate in mta.entries:
        if candidate.folded != lowered:
            continue
        if (candidate.visible if mta.kind == POSTFIX else candidate.user):
            number += 1
        if candidate is entry:
            return number
    raise ValueError(entry)
