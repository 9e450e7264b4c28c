"""SMTP reply texts carried by SMFIR_REPLYCODE (section 8, P-CODE-*).

Building (milter side) doubles ``%`` and always adds an enhanced status code;
checking (MTA side) applies Postfix's strict reading; :func:`unescape_percent`
turns the wire text into what an SMTP client would see.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import LocalProtocolError, MalformedPacket

_XCODE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z")
_CODE = re.compile(r"[45][0-9][0-9]\Z")
MAX_LINE_TEXT = 980
MAX_LINES = 32


@dataclass(frozen=True, slots=True)
class ParsedReply:
    """A checked reply text split into its parts (all lines share ``code``)."""

    code: str
    xcode: str | None
    lines: tuple[str, ...]

    @property
    def message(self) -> str:
        """The human text of every line joined by newlines (without codes)."""
        return "\n".join(self.lines)


def unescape_percent(text: str) -> str:
    """Undo ``%%`` and drop a lone ``%``, as Postfix does (P-CODE-6, P-BAD-41)."""
    if "%" not in text:
        return text
    out = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "%":
            if i + 1 < n and text[i + 1] == "%":
                out.append("%")
                i += 2
                continue
            i += 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def parse_reply_text(text: str) -> ParsedReply:
    """Check a wire reply text (P-CODE-2, P-CODE-4, P-CODE-5) and split it.

    Raises :class:`MalformedPacket` (P-BAD-40) for a code outside 4xx/5xx, an
    enhanced code whose class differs from the reply code, lines that do not
    repeat the code, or a multi-line form whose last line uses ``-``.
    """
    if "\0" in text:
        raise MalformedPacket("reply text contains a NUL byte", "P-BAD-40")
    raw_lines = text.split("\r\n")
    code = raw_lines[0][:3]
    if not _CODE.match(code):
        raise MalformedPacket(f"reply text does not start with a 4xx/5xx code: {text[:40]!r}", "P-CODE-2")
    xcode: str | None = None
    lines = []
    last = len(raw_lines) - 1
    for number, line in enumerate(raw_lines):
        if line[:3] != code:
            raise MalformedPacket(f"reply line {number + 1} does not repeat code {code}: {line[:40]!r}",
                                  "P-CODE-5")
        separator = line[3:4]
        if number < last and separator != "-":
            raise MalformedPacket(f"reply line {number + 1} of {last + 1} must continue with '-'", "P-CODE-5")
        if number == last and separator not in (" ", ""):
            raise MalformedPacket("the last reply line must use a space after the code", "P-CODE-5")
        if "\r" in line or "\n" in line:
            raise MalformedPacket("bare CR or LF inside a reply line", "P-CODE-7")
        rest = line[4:]
        if rest[:1].isdigit() and rest[0] != code[0]:
            raise MalformedPacket(f"enhanced status class {rest[0]} does not match reply code {code}",
                                  "P-CODE-2")
        first, _, after = rest.partition(" ")
        if _XCODE.match(first):
            if first[0] != code[0]:
                raise MalformedPacket(f"enhanced status code {first} does not match reply code {code}",
                                      "P-CODE-4")
            if number == 0:
                xcode = first
            rest = after
        lines.append(rest)
    return ParsedReply(code, xcode, tuple(lines))


def format_reply_text(code: int | str, xcode: str | None, text: str | list[str] | tuple[str, ...]) -> str:
    """Build a wire reply text the way our milter side must (P-CODE-3..7).

    ``text`` may hold several lines (a list, or a string with newlines). Every
    ``%`` is doubled; an enhanced code is always present (``x.0.0`` by default).
    """
    code = str(code)
    if not _CODE.match(code):
        raise LocalProtocolError(f"reply code must be 4xx or 5xx: {code!r}", "P-CODE-2")
    if xcode is None:
        xcode = f"{code[0]}.0.0"
    if not _XCODE.match(xcode) or xcode[0] != code[0]:
        raise LocalProtocolError(f"enhanced status code {xcode!r} does not fit reply code {code}", "P-CODE-4")
    if isinstance(text, str):
        lines = text.split("\n") if text else [""]
    else:
        lines = list(text) or [""]
    if len(lines) > MAX_LINES:
        raise LocalProtocolError(f"a reply has at most {MAX_LINES} lines", "P-CODE-5")
    out = []
    for number, line in enumerate(lines):
        line = line.rstrip("\r")
        if "\r" in line or "\n" in line or "\0" in line:
            raise LocalProtocolError("reply text lines may not contain CR, LF or NUL", "P-CODE-7")
        if len(line) > MAX_LINE_TEXT:
            raise LocalProtocolError(f"reply line longer than {MAX_LINE_TEXT} characters", "P-CODE-7")
        separator = "-" if number < len(lines) - 1 else " "
        body = line.replace("%", "%%")
        out.append(f"{code}{separator}{xcode} {body}" if body else f"{code}{separator}{xcode}")
    return "\r\n".join(out)
