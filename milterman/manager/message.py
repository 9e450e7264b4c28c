"""One message in the manager: headers, body buffer and the edits children make (M-MSG, M-BODY, M-EOM).

Children see the message one after another (D-3): the live child gets the MTA's
packets, later children get a replay of the *current* headers and body, so each
sees the earlier children's edits. At the end the MTA gets the difference between
the headers it sent and the final ones (M-EOM-3), not each child's requests.

D-16: later children see, and the MTA delivers, what that MTA produces chaining the same
milters: the header list follows the MTA's own rules (:mod:`.headers`), and a body a child
replaces reaches later children with the line ends that MTA passes on (:func:`passed_on`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator

from ..protocol import (AddHeader, AddRcpt, AddRcptWithParameters, ChangeFrom, ChangeHeader, DeleteRcpt,
                        InsertHeader, Quarantine, ReplaceBody, Reply)
from .headers import POSTFIX, SENDMAIL, Entry, Headers, header_edits

__all__ = ["POSTFIX", "SENDMAIL", "BodyBuffer", "Entry", "Headers", "Message", "describe", "header_edits",
           "passed_on"]

SPILL_THRESHOLD = 5 * 1024 * 1024  # M-BODY-1: 5 MiB in memory, then a temporary file


class BodyBuffer:
    """The message body: chunks in memory up to 5 MiB, then a temporary file (M-BODY-1).

    Appending keeps the MTA's chunks as they are (no copies); a child's replacement
    empties the buffer at its first ``b`` packet and appends the rest (M-BODY-3).
    """

    __slots__ = ("_chunks", "_size", "_file", "replaced_for")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._file = None
        #: the kind of MTA whose line-end rules a child's replacement follows, None for the MTA's own body
        self.replaced_for: str | None = None

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

    def start_replacement(self, kind: str) -> None:
        """A child's first ``b`` packet: the buffer holds its bytes as sent from now on (M-BODY-3)."""
        self.clear()
        self.replaced_for = kind

    def passed_on(self, size: int) -> Iterator[bytes]:
        """The body as the MTA hands it to the next milter, in pieces of at most ``size`` (D-16)."""
        if self.replaced_for is None:
            return self.pieces(size)
        return passed_on(self.pieces(size), self.replaced_for, size)

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


def passed_on(raw: Iterable[bytes], kind: str, size: int) -> Iterator[bytes]:
    """A body a milter replaced, as ``kind`` of MTA passes it to the next milter (D-16, measured):

    * Postfix stores it as lines split at LF, one CR before the LF dropped, and sends each line with
      CRLF, a last line without LF included: CRLF and bare LF both become CRLF, other CRs stay;
    * Sendmail stores it with each CRLF turned into LF and sends every LF not after a CR as CRLF; a
      last line without LF stays without it.

    Streams: a run of CRs at the end of a piece waits for the next piece.
    """
    carry = b""
    pending = b""
    last = b""
    for piece in raw:
        if not piece:
            continue
        last = piece[-1:]
        data = carry + piece
        kept = data.rstrip(b"\r")
        carry = data[len(kept):]
        kept = kept.replace(b"\r\n", b"\n")
        if kind != POSTFIX:
            kept = kept.replace(b"\r\n", b"\n")
        pending += kept.replace(b"\n", b"\r\n")
        while len(pending) >= size:
            yield pending[:size]
            pending = pending[size:]
    pending += carry
    if kind == POSTFIX and last and last != b"\n":
        pending += b"\r\n"
    while pending:
        yield pending[:size]
        pending = pending[size:]


def describe(modification: Reply) -> str:
    """A modification for the log: kind, header name, index and value length, never a value or the body."""
    if isinstance(modification, (AddHeader, InsertHeader, ChangeHeader)):
        index = "" if isinstance(modification, AddHeader) else f" index={modification.index}"
        kind = {"h": "add-header", "i": "insert-header"}.get(modification.LETTER) or (
            "change-header" if modification.value else "delete-header")
        return f"{kind} <{modification.name}>{index} value-length={len(modification.value)}"
    if isinstance(modification, ReplaceBody):
        return f"replace-body length={len(modification.chunk)}"
    if isinstance(modification, (AddRcpt, AddRcptWithParameters)):
        return f"add-recipient length={len(modification.recipient)}"
    if isinstance(modification, DeleteRcpt):
        return f"delete-recipient length={len(modification.recipient)}"
    if isinstance(modification, ChangeFrom):
        return f"change-from length={len(modification.sender)}"
    if isinstance(modification, Quarantine):
        return f"quarantine reason-length={len(modification.reason)}"
    return type(modification).__name__


class Message:
    """Everything the manager holds for the message in progress."""

    __slots__ = ("headers", "original_headers", "body", "end_of_header", "end_of_message_chunk",
                 "body_replaced", "change_from", "quarantine_reason")

    def __init__(self) -> None:
        self.headers = Headers()
        #: H0 as :meth:`Headers.snapshot` took it when children started editing (M-MSG-3)
        self.original_headers: list[tuple[Entry, str, str | None, bool]] = []
        self.body = BodyBuffer()
        self.end_of_header = False
        self.end_of_message_chunk = b""
        self.body_replaced = False
        self.change_from: Reply | None = None
        self.quarantine_reason: str | None = None

    def close(self) -> None:
        self.body.close()
