"""The tokenizer of the Ruby subset milter manager 2.x configurations use (see :mod:`.convert_config_ruby`).

Strings keep their decoded text and only *mark* ``#{}`` interpolation; backticks and
``%x()`` become ``cmd`` tokens; nothing is ever evaluated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KEYWORDS = {"if", "unless", "while", "until", "case", "begin", "def", "class", "module", "for", "do", "end",
            "and", "or", "not", "then", "else", "elsif", "when", "true", "false", "nil", "self", "return",
            "next", "break", "yield", "rescue", "ensure", "in"}
#: keywords that open a construct closed by ``end`` wherever they appear
_ALWAYS_OPEN = {"case", "begin", "def", "class", "module", "for", "do"}
#: keywords that open one only at the start of a statement (else they are modifiers)
_STATEMENT_OPEN = {"if", "unless", "while", "until"}


@dataclass
class Token:
    kind: str  # nl, int, float, str, regex, sym, ident, const, ivar, gvar, op, kw, label, cmd, words, eof
    value: object
    line: int
    space_before: bool = False
    interpolated: bool = False
    flags: str = ""


class RubySyntaxError(Exception):
    """A construct outside the subset; ``line`` says where."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


_OPERATORS = sorted(["**", "==", "===", "!=", "=~", "!~", "<=", ">=", "<=>", "&&", "||", "<<", ">>", "::", "..",
                     "...", "||=", "&&=", "+=", "-=", "*=", "=>", "->", "+", "-", "*", "/", "%", "=", "<", ">",
                     "!", "&", "|", "^", "~", "?", ":", ",", ".", "(", ")", "[", "]", "{", "}", ";"],
                    key=len, reverse=True)
_PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "s": " ", "e": "\x1b", "a": "\a", "b": "\b", "f": "\f",
            "v": "\v"}
_VALUE_END = {"int", "float", "str", "regex", "sym", "ident", "const", "ivar", "gvar", "words"}


def _after_value(previous: Token | None) -> bool:
    if previous is None:
        return False
    if previous.kind in _VALUE_END:
        return True
    return previous.kind == "op" and previous.value in (")", "]", "}") or previous.kind == "kw" and previous.value in (
        "end", "true", "false", "nil", "self")


class Tokenizer:
    """Ruby source → tokens; never evaluates anything, ``#{}`` only marks a string as interpolated."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.tokens: list[Token] = []

    def tokenize(self) -> list[Token]:
        text = self.text
        space = False
        while self.pos < len(text):
            char = text[self.pos]
            at_line_start = self.pos == 0 or text[self.pos - 1] == "\n"
            if at_line_start and text.startswith("=begin", self.pos):
                end = text.find("\n=end", self.pos)
                end = len(text) if end < 0 else end + 5
                self.line += text.count("\n", self.pos, end)
                self.pos = end
                continue
            if at_line_start and text.startswith("__END__", self.pos):
                break
            if char in " \t\r":
                self.pos += 1
                space = True
                continue
            if char == "\\" and text.startswith("\\\n", self.pos):
                self.pos += 2
                self.line += 1
                space = True
                continue
            if char == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
                continue
            if char == "\n":
                self._add("nl", "\n", space)
                self.pos += 1
                self.line += 1
                space = False
                continue
            self._token(space)
            space = False
        self._add("eof", None, False)
        return self._join_continuations()

    def _join_continuations(self) -> list[Token]:
        """A newline before ``.method`` (a chained call on the next line) is no statement end."""
        result: list[Token] = []
        for index, token in enumerate(self.tokens):
            if token.kind == "nl":
                following = next((t for t in self.tokens[index + 1:] if t.kind != "nl"), None)
                if following is not None and following.kind == "op" and following.value in (".", "&."):
                    continue
            result.append(token)
        return result

    def _add(self, kind: str, value: object, space: bool, **extra) -> Token:
        token = Token(kind, value, self.line, space, **extra)
        self.tokens.append(token)
        return token

    def _previous(self) -> Token | None:
        return self.tokens[-1] if self.tokens else None

    def _token(self, space: bool) -> None:
        text, pos = self.text, self.pos
        char = text[pos]
        previous = self._previous()
        if char.isdigit():
            match = re.compile(r"0[xX][0-9a-fA-F_]+|0[oO]?[0-7_]+|0[bB][01_]+|\d[\d_]*(\.\d[\d_]*)?([eE][+-]?\d+)?")
            found = match.match(text, pos)
            word = found.group(0)
            self.pos = found.end()
            clean = word.replace("_", "")
            if found.group(1) or found.group(2):
                self._add("float", float(clean), space)
            elif clean[:2].lower() == "0x":
                self._add("int", int(clean, 16), space)
            elif clean[:2].lower() == "0b":
                self._add("int", int(clean[2:], 2), space)
            elif len(clean) > 1 and clean[0] == "0":
                self._add("int", int(clean.lstrip("0oO") or "0", 8), space)
            else:
                self._add("int", int(clean), space)
            return
        if char.isalpha() or char == "_":
            found = re.compile(r"[A-Za-z_]\w*").match(text, pos)
            word = found.group(0)
            end = found.end()
            if end < len(text) and text[end] in "?!" and not text.startswith("=", end + 1) \
                    and not (text[end] == "?" and end + 1 < len(text) and text[end + 1] == ":"):
                word += text[end]
                end += 1
            if end < len(text) and text[end] == ":" and not text.startswith("::", end) and word[-1] not in "?!" \
                    and (previous is None or not (previous.kind == "op" and previous.value in (".", "::"))):
                self.pos = end + 1
                self._add("label", word, space)
                return
            self.pos = end
            if word in KEYWORDS and not (previous and previous.kind == "op" and previous.value == "."):
                self._add("kw", word, space)
            elif word[0].isupper():
                self._add("const", word, space)
            else:
                self._add("ident", word, space)
            return
        if char in "@$":
            found = re.compile(r"[@$]{1,2}\w+").match(text, pos)
            if found:
                self.pos = found.end()
                self._add("ivar" if char == "@" else "gvar", found.group(0), space)
                return
        if char in "\"'":
            self.pos += 1
            value, interpolated = self._string_body(char, char if char == '"' else None, single=char == "'")
            self._add("str", value, space, interpolated=interpolated)
            return
        if char == "`":
            self.pos += 1
            value, _ = self._string_body("`", "`")
            self._add("cmd", value, space)
            return
        if char == ":" and pos + 1 < len(text) and (text[pos + 1].isalpha() or text[pos + 1] in "_\"'") \
                and not text.startswith("::", pos):
            if text[pos + 1] in "\"'":
                self.pos += 2
                value, interpolated = self._string_body(text[pos + 1], text[pos + 1], single=text[pos + 1] == "'")
                self._add("sym", value, space, interpolated=interpolated)
                return
            found = re.compile(r"\w+[?!=]?").match(text, pos + 1)
            self.pos = found.end()
            self._add("sym", found.group(0), space)
            return
        if char == "%" and pos + 2 < len(text) and not _after_value(previous):
            kind = text[pos + 1]
            opener = text[pos + 2] if kind.isalpha() else kind
            if kind in "wWiIqQrx" and not text[pos + 2].isalnum() or not kind.isalnum() and kind in "([{<|!/":
                self.pos += 3 if kind.isalpha() else 2
                closer = _PAIRS.get(opener, opener)
                value, interpolated = self._string_body(closer, None if kind in "wiq" else closer,
                                                        single=kind in "wiq", opener=opener)
                if kind in "wWiI":
                    self._add("words", value.split(), space, interpolated=interpolated, flags=kind.lower())
                elif kind == "r":
                    flags = re.compile(r"[imxoun]*").match(text, self.pos).group(0)
                    self.pos += len(flags)
                    self._add("regex", value, space, interpolated=interpolated, flags=flags)
                elif kind == "x":
                    self._add("cmd", value, space)
                else:
                    self._add("str", value, space, interpolated=interpolated)
                return
        if char == "/" and (not _after_value(previous) or (
                previous.kind == "ident" and space and pos + 1 < len(text) and text[pos + 1] not in " =")):
            self.pos += 1
            value, interpolated = self._string_body("/", "/", regex=True)
            flags = re.compile(r"[imxoun]*").match(text, self.pos).group(0)
            self.pos += len(flags)
            self._add("regex", value, space, interpolated=interpolated, flags=flags)
            return
        if text.startswith("<<", pos) and re.compile(r"<<[~-]?(['\"]?)[A-Z_]+\1").match(text, pos) \
                and not _after_value(previous):
            raise RubySyntaxError("a heredoc", self.line)
        if char == "&" and text.startswith("&.", pos):
            self.pos += 2
            self._add("op", ".", space)
            return
        for operator in _OPERATORS:
            if text.startswith(operator, pos):
                self.pos += len(operator)
                self._add("op", operator, space)
                return
        raise RubySyntaxError(f"unexpected character {char!r}", self.line)

    def _escape(self, letter: str) -> str:
        """A double-quoted string's escape after its backslash: ``\\n``, ``\\uXXXX``, ``\\u{…}``, ``\\xNN``…"""
        text = self.text
        if letter == "u":
            found = re.compile(r"\{([0-9a-fA-F ]+)\}|([0-9a-fA-F]{4})").match(text, self.pos)
            if found:
                self.pos = found.end()
                codes = (found.group(1) or found.group(2)).split()
                return "".join(chr(int(code, 16)) for code in codes)
        if letter == "x":
            found = re.compile(r"[0-9a-fA-F]{1,2}").match(text, self.pos)
            if found:
                self.pos = found.end()
                return chr(int(found.group(0), 16))
        return _ESCAPES.get(letter, letter)

    def _string_body(self, closer: str, interpolating: str | None, single: bool = False, regex: bool = False,
                     opener: str | None = None) -> tuple[str, bool]:
        """Read up to ``closer``; escapes are decoded (regexes keep theirs), ``#{`` marks interpolation."""
        text = self.text
        parts: list[str] = []
        interpolated = False
        depth = 0
        while True:
            if self.pos >= len(text):
                raise RubySyntaxError("unterminated string", self.line)
            char = text[self.pos]
            if char == "\n":
                self.line += 1
            if char == "\\" and self.pos + 1 < len(text):
                following = text[self.pos + 1]
                self.pos += 2
                if following == "\n":
                    self.line += 1
                if regex:
                    parts.append(following if following == "/" else "\\" + following)
                elif single:
                    parts.append(following if following in ("\\", closer) else "\\" + following)
                else:
                    parts.append(self._escape(following))
                continue
            if opener is not None and opener != closer and char == opener:
                depth += 1
            elif char == closer:
                if depth == 0:
                    self.pos += 1
                    return "".join(parts), interpolated
                depth -= 1
            if char == "#" and not single and text.startswith("#{", self.pos):
                interpolated = True
            parts.append(char)
            self.pos += 1
