"""One message in the manager: headers, body buffer and the edits children make (M-MSG, M-BODY, M-EOM).

Children see the message one after another (D-3): the live child gets the MTA's
packets, later children get a replay of the *current* headers and body, so each
sees the earlier children's edits. At the end the MTA gets the difference between
the headers it sent and the final ones (M-EOM-3), not each child's requests.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

from ..protocol import AddHeader, ChangeHeader, InsertHeader, Reply

SPILL_THRESHOLD = 5 * 1024 * 1024  # M-BODY-1: 5 MiB in memory, then a temporary file


class BodyBuffer:
    """The message body: chunks in memory up to 5 MiB, then a temporary file (M-BODY-1).

    Appending keeps the MTA's chunks as they are (no copies); a child's replacement
    empties the buffer at its first ``b`` packet and appends the rest (M-BODY-3).
    """

    __slots__ = ("_chunks", "_size", "_file")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._file = None

    def __len__(self) -> int:
        return self._size

    def append(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._size += len(chunk)
        if self._file is not None:
            self._file.write(chunk)
            self._file.flush()  # a full disk shows here, where the caller can answer for it (M-BODY-1)
            return
        self._chunks.append(chunk)
        if self._size > SPILL_THRESHOLD:
            self._file = tempfile.TemporaryFile(prefix="milterman-body-")
            for piece in self._chunks:
                self._file.write(piece)
            self._file.flush()
            self._chunks = []

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def clear(self) -> None:
        self._chunks = []
        self._size = 0
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()

    def pieces(self, size: int) -> Iterator[bytes]:
        """The body in pieces of at most ``size`` bytes (replay and the final ``b`` packets, M-BODY-2)."""
        if self._file is not None:
            self._file.flush()
            self._file.seek(0)
            while True:
                piece = self._file.read(size)
                if not piece:
                    return
                yield piece
            return
        pending = b""
        for chunk in self._chunks:
            if not pending and len(chunk) == size:
                yield chunk
                continue
            pending += chunk
            while len(pending) >= size:
                yield pending[:size]
                pending = pending[size:]
        if pending:
            yield pending

    def getvalue(self) -> bytes:
        return b"".join(self.pieces(65535))

    def close(self) -> None:
        self._chunks = []
        self._size = 0
        if self._file is not None:
            self._file.close()
            self._file = None


class Headers:
    """The header list H as children edit it (M-EOM-2)."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self.items: list[tuple[str, str]] = list(items or [])

    def append(self, name: str, value: str) -> None:
        self.items.append((name, value))

    def add(self, name: str, value: str) -> None:
        """``h``: before the first header of that name (ASCII case-insensitive), else at the end."""
        lowered = name.lower()
        for position, (existing, _) in enumerate(self.items):
            if existing.lower() == lowered:
                self.items.insert(position, (name, value))
                return
        self.items.append((name, value))

    def insert(self, index: int, name: str, value: str) -> None:
        """``i``: at 0-based ``index``; past the end appends."""
        self.items.insert(min(index, len(self.items)), (name, value))

    def change(self, name: str, index: int, value: str) -> None:
        """``m``: the ``index``-th (1-based) header named exactly ``name``; empty value deletes; missing adds."""
        wanted = max(index, 1)
        seen = 0
        for position, (existing, _) in enumerate(self.items):
            if existing == name:
                seen += 1
                if seen == wanted:
                    if value:
                        self.items[position] = (existing, value)
                    else:
                        del self.items[position]
                    return
        if value:
            self.add(name, value)


def header_diff(original: list[tuple[str, str]], final: list[tuple[str, str]], *,
                insert_offset: int = 0) -> list[Reply]:
    """The edits that turn the MTA's headers into the final ones (M-EOM-3, as real MTAs apply them).

    Unchanged headers produce nothing; a header whose name is still present as an unmatched
    original becomes a change of that occurrence; originals left over are deleted, last first.
    New headers at the end of the final list go out as add-header (``h``), which every MTA
    appends; a new header between others is an insert-header at its position plus
    ``insert_offset``: Postfix counts its own Received: header in that index (P-MOD-4), so the
    leader passes 1 for Postfix. (milter manager 2.x sent ``i`` for appended headers too, which
    real Postfix puts before the last original header.)
    """
    occurrence: list[int] = []
    counts: dict[str, int] = {}
    for name, _ in original:
        counts[name] = counts.get(name, 0) + 1
        occurrence.append(counts[name])
    pending = list(range(len(original)))  # indexes into original not yet matched
    plan: list[tuple[str, int]] = []       # per final position: ("same" | "change" | "new", original index)
    # Unchanged headers are matched first, so a header added before an original of the same name
    # is an insert, not a change of that original plus a re-added copy (which needs change-header,
    # an action the MTA may not have granted, D-2)
    for header in final:
        match = next((index for index in pending if original[index] == header), None)
        if match is not None:
            pending.remove(match)
            plan.append(("same", match))
        else:
            plan.append(("new", -1))
    for position, header in enumerate(final):
        if plan[position][0] != "new":
            continue
        same_name = next((index for index in pending if original[index][0] == header[0]), None)
        if same_name is not None:
            pending.remove(same_name)
            plan[position] = ("change", same_name)
    appended_from = len(plan)
    while appended_from > 0 and plan[appended_from - 1][0] == "new":
        appended_from -= 1
    edits: list[Reply] = []
    for position, ((kind, index), (name, value)) in enumerate(zip(plan, final, strict=True)):
        if kind == "change":
            edits.append(ChangeHeader(occurrence[index], name, value))
        elif kind == "new":
            if position >= appended_from:
                edits.append(AddHeader(name, value))
            else:
                edits.append(InsertHeader(position + insert_offset, name, value))
    for index in reversed(pending):
        edits.append(ChangeHeader(occurrence[index], original[index][0], ""))
    return edits


class Message:
    """Everything the manager holds for the message in progress."""

    __slots__ = ("headers", "original_headers", "body", "end_of_header", "end_of_message_chunk",
                 "body_replaced", "change_from", "quarantine_reason")

    def __init__(self) -> None:
        self.headers = Headers()
        self.original_headers: list[tuple[str, str]] = []
        self.body = BodyBuffer()
        self.end_of_header = False
        self.end_of_message_chunk = b""
        self.body_replaced = False
        self.change_from: Reply | None = None
        self.quarantine_reason: str | None = None

    def close(self) -> None:
        self.body.close()
