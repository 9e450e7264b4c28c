"""A reader of the Ruby subset milter manager 2.x configurations are written in, which never runs them.

The tokenizer and parser turn a ``milter-manager.conf``-style file into plain nodes:
method calls with or without parentheses (``load "x"``, ``a.b(1)``), assignments
(``a.b = value``), literals (strings with their escapes, symbols, numbers with Ruby's
octal ``0660``, arrays, hashes, ``true``/``false``/``nil``, regexes with flags), blocks
(``do |x| … end`` and ``{ |x| … }``), ``if``/``unless`` modifiers and a few operators
(``==``, ``=~``, ``!``, ``and``, ``or``…) so simple stoppers can be recognised.
Anything else (``case``, ``def``, heredocs, backticks…) becomes an :class:`Unsupported`
node holding its line: the converter reports it and nothing of it is ever evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .convert_config_lexer import _ALWAYS_OPEN, _STATEMENT_OPEN, RubySyntaxError, Token, Tokenizer

# ================================================================================================ nodes

@dataclass
class Node:
    line: int


@dataclass
class Literal(Node):
    """true, false, nil, numbers, strings (``interpolated``: had ``#{}``), symbols, regexes."""

    kind: str  # bool, nil, int, float, str, sym, regex, words
    value: object
    interpolated: bool = False
    flags: str = ""


@dataclass
class ArrayNode(Node):
    items: list[Node]


@dataclass
class HashNode(Node):
    pairs: list[tuple[Node, Node]]


@dataclass
class Name(Node):
    """A bare identifier (a local variable or a call without arguments), constant, or ivar/gvar."""

    name: str
    kind: str = "ident"


@dataclass
class Block(Node):
    params: list[str]
    body: list[Node]
    end_line: int = 0


@dataclass
class Call(Node):
    receiver: Node | None
    name: str
    args: list[Node] = field(default_factory=list)
    kwargs: list[tuple[str, Node]] = field(default_factory=list)
    block: Block | None = None
    splat: bool = False


@dataclass
class Assign(Node):
    target: Node  # Name or Call (``a.b`` / ``a[b]``)
    value: Node
    operator: str = "="


@dataclass
class Operation(Node):
    operator: str  # ==, =~, and, or, !, …
    operands: list[Node]


@dataclass
class Modifier(Node):
    """``statement if condition`` / ``unless``."""

    keyword: str
    condition: Node
    statement: Node


@dataclass
class Unsupported(Node):
    what: str
    end_line: int = 0


# =============================================================================================== parser

_BINARY = [("or", "and"), ("||",), ("&&",), ("==", "!=", "=~", "!~", "===", "<=>"), ("<", ">", "<=", ">="),
           ("..", "..."), ("|", "^", "&"), ("<<", ">>"), ("+", "-"), ("*", "/", "%"), ("**",)]
_ARG_START = {"int", "float", "str", "regex", "sym", "ident", "const", "ivar", "gvar", "label", "words", "cmd"}


class Parser:
    """Tokens → nodes; a statement outside the subset becomes :class:`Unsupported` and parsing goes on."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0

    def peek(self, offset: int = 0) -> Token:
        return self.tokens[min(self.index + offset, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        if token.kind != "eof":
            self.index += 1
        return token

    def at(self, kind: str, value: object = None) -> bool:
        token = self.peek()
        return token.kind == kind and (value is None or token.value == value)

    def expect(self, kind: str, value: object = None) -> Token:
        if not self.at(kind, value):
            token = self.peek()
            raise RubySyntaxError(f"expected {value or kind}, found {token.value!r}", token.line)
        return self.advance()

    def skip_newlines(self) -> None:
        while self.at("nl") or self.at("op", ";"):
            self.advance()

    def program(self) -> list[Node]:
        return self.statements(("eof",))

    def _closes(self, closers: tuple) -> bool:
        token = self.peek()
        return token.kind == "eof" or (token.kind == "kw" and token.value in closers) or (
            token.kind == "op" and token.value in closers)

    def statements(self, closers: tuple) -> list[Node]:
        result: list[Node] = []
        while True:
            self.skip_newlines()
            if self._closes(closers):
                return result
            start = self.index
            try:
                result.append(self.statement())
                if not (self.at("nl") or self.at("op", ";") or self._closes(closers)):
                    raise RubySyntaxError(f"unexpected {self.peek().value!r}", self.peek().line)
            except RubySyntaxError as error:
                self.index = start
                line = self.peek().line
                self.skip_statement()
                if self.index == start:  # a stray `)`, `}` or `end`: step over it
                    self.advance()
                result.append(Unsupported(line, f"Ruby this converter does not read ({error})",
                                          self.tokens[max(self.index - 1, 0)].line))

    def skip_statement(self) -> None:
        """Skip to the end of the statement, over nested ``do … end``, ``if … end``, brackets."""
        depth = 0
        statement_start = True
        while True:
            token = self.peek()
            if token.kind == "eof":
                return
            if depth == 0 and (token.kind == "nl" or token.kind == "op" and token.value == ";") \
                    and not statement_start:
                return
            if token.kind == "op" and token.value in "([{":
                depth += 1
            elif token.kind == "op" and token.value in ")]}":
                if depth == 0:
                    return
                depth -= 1
            elif token.kind == "kw" and (token.value in _ALWAYS_OPEN or
                                         token.value in _STATEMENT_OPEN and statement_start):
                depth += 1
            elif token.kind == "kw" and token.value == "end":
                if depth == 0:
                    return
                depth -= 1
            statement_start = token.kind == "nl" or token.kind == "op" and token.value in (";", "(", "=", "||=")
            self.advance()

    def statement(self) -> Node:
        token = self.peek()
        if token.kind == "kw" and token.value in (_ALWAYS_OPEN | _STATEMENT_OPEN) - {"do"}:
            start = self.index
            self.skip_statement()
            end_token = self.tokens[max(self.index - 1, start)]
            if self.at("kw", "end"):
                end_token = self.advance()
            return Unsupported(token.line, f"a `{token.value}` statement", end_token.line)
        node = self.expression_statement()
        while self.at("kw") and self.peek().value in ("if", "unless", "while", "until"):
            keyword = self.advance().value
            condition = self.expression()
            if keyword in ("while", "until"):
                return Unsupported(node.line, f"a `{keyword}` loop")
            node = Modifier(node.line, keyword, condition, node)
        return node

    def expression_statement(self) -> Node:
        return self.expression(allow_command=True)

    def expression(self, allow_command: bool = False) -> Node:
        if self.at("kw", "not"):
            line = self.advance().line
            return Operation(line, "!", [self.expression()])
        left = self.assignment(allow_command)
        while self.at("kw") and self.peek().value in ("and", "or"):
            operator = self.advance().value
            self.skip_newlines()
            right = self.assignment(allow_command)
            left = Operation(left.line, operator, [left, right])
        return left

    def assignment(self, allow_command: bool) -> Node:
        left = self.binary(1, allow_command)
        if self.at("op") and self.peek().value in ("=", "||=", "&&=", "+=", "-=", "*="):
            operator = self.advance().value
            self.skip_newlines()
            if not isinstance(left, (Name, Call)):
                raise RubySyntaxError("assignment to something that is not a name", left.line)
            value = self.assignment(allow_command)
            if self.at("op", ","):
                items = [value]
                while self.at("op", ","):
                    self.advance()
                    items.append(self.binary(1, False))
                value = ArrayNode(value.line, items)
            return Assign(left.line, left, value, operator)
        if self.at("op", "?"):
            raise RubySyntaxError("a ternary operator", self.peek().line)
        return left

    def binary(self, level: int, allow_command: bool = False) -> Node:
        if level >= len(_BINARY):
            return self.unary(allow_command)
        left = self.binary(level + 1, allow_command)
        while self.peek().kind == "op" and self.peek().value in _BINARY[level]:
            operator = self.advance().value
            self.skip_newlines()
            right = self.binary(level + 1)
            left = Operation(left.line, operator, [left, right])
        return left

    def unary(self, allow_command: bool = False) -> Node:
        token = self.peek()
        if token.kind == "op" and token.value == "!":
            self.advance()
            return Operation(token.line, "!", [self.unary()])
        if token.kind == "op" and token.value == "-" and self.peek(1).kind in ("int", "float"):
            self.advance()
            number = self.advance()
            return Literal(token.line, number.kind, -number.value)
        if token.kind == "op" and token.value in ("*", "&"):
            raise RubySyntaxError(f"a `{token.value}` argument", token.line)
        return self.postfix(self.primary(allow_command), allow_command)

    def primary(self, allow_command: bool) -> Node:
        token = self.advance()
        kind, value, line = token.kind, token.value, token.line
        if kind in ("int", "float"):
            return Literal(line, kind, value)
        if kind == "str":
            node = Literal(line, "str", value, token.interpolated)
            while self.at("str") and self.peek().space_before:  # "a" "b" concatenation
                other = self.advance()
                node = Literal(line, "str", node.value + other.value, node.interpolated or other.interpolated)
            return node
        if kind == "sym":
            return Literal(line, "sym", value, token.interpolated)
        if kind == "regex":
            return Literal(line, "regex", value, token.interpolated, token.flags)
        if kind == "words":
            return Literal(line, "words", value, token.interpolated, token.flags)
        if kind == "cmd":
            return Unsupported(line, f"a shell command `{value}`")
        if kind == "kw" and value in ("true", "false"):
            return Literal(line, "bool", value == "true")
        if kind == "kw" and value == "nil":
            return Literal(line, "nil", None)
        if kind == "kw" and value == "self":
            return Name(line, "self", "kw")
        if kind in ("ident", "const", "ivar", "gvar"):
            if kind == "ident" and self.at("op", "(") and not self.peek().space_before:
                return self.call_arguments(Call(line, None, value))
            if kind in ("ident",) and allow_command and self._command_argument_follows():
                return self.command_arguments(Call(line, None, value))
            return Name(line, value, kind)
        if kind == "op" and value == "(":
            self.skip_newlines()
            inner = self.expression(allow_command=True)
            self.skip_newlines()
            self.expect("op", ")")
            return inner
        if kind == "op" and value == "[":
            return ArrayNode(line, self.sequence("]"))
        if kind == "op" and value == "{":
            return self.hash_body(line)
        if kind == "op" and value == "->":
            raise RubySyntaxError("a lambda", line)
        raise RubySyntaxError(f"unexpected {value!r}", line)

    def _command_argument_follows(self) -> bool:
        token = self.peek()
        if not token.space_before:
            return False
        if token.kind in _ARG_START:
            return True
        if token.kind == "kw" and token.value in ("true", "false", "nil", "self"):
            return True
        if token.kind == "op" and token.value in ("[", "->") and token.space_before:
            following = self.peek(1)
            return token.value == "->" or not following.space_before
        if token.kind == "op" and token.value in ("-", "!", ":") and not self.peek(1).space_before:
            return True
        return False

    def sequence(self, closer: str) -> list[Node]:
        items: list[Node] = []
        self.skip_newlines()
        while not self.at("op", closer):
            items.append(self.expression())
            self.skip_newlines()
            if self.at("op", ","):
                self.advance()
                self.skip_newlines()
            elif not self.at("op", closer):
                raise RubySyntaxError(f"expected , or {closer}", self.peek().line)
        self.advance()
        return items

    def hash_body(self, line: int) -> HashNode:
        pairs: list[tuple[Node, Node]] = []
        self.skip_newlines()
        while not self.at("op", "}"):
            if self.at("label"):
                token = self.advance()
                key: Node = Literal(token.line, "sym", token.value)
            else:
                key = self.binary(1)
                self.expect("op", "=>")
            self.skip_newlines()
            pairs.append((key, self.expression()))
            self.skip_newlines()
            if self.at("op", ","):
                self.advance()
                self.skip_newlines()
        self.advance()
        return HashNode(line, pairs)

    def call_arguments(self, call: Call) -> Call:
        self.expect("op", "(")
        self.skip_newlines()
        while not self.at("op", ")"):
            self.argument(call)
            self.skip_newlines()
            if self.at("op", ","):
                self.advance()
                self.skip_newlines()
            elif not self.at("op", ")"):
                raise RubySyntaxError("expected , or )", self.peek().line)
        self.advance()
        return call

    def command_arguments(self, call: Call) -> Call:
        while True:
            self.argument(call)
            if not self.at("op", ","):
                return call
            self.advance()
            self.skip_newlines()

    def argument(self, call: Call) -> None:
        if self.at("label"):
            token = self.advance()
            self.skip_newlines()
            call.kwargs.append((token.value, self.expression()))
            return
        node = self.binary(1)
        if self.at("op", "=>"):
            self.advance()
            if not isinstance(node, Literal):
                raise RubySyntaxError("a hash argument with a computed key", node.line)
            call.kwargs.append((str(node.value), self.expression()))
            return
        call.args.append(node)

    def postfix(self, node: Node, allow_command: bool) -> Node:
        while True:
            token = self.peek()
            if token.kind == "op" and token.value in (".", "::"):
                self.advance()
                name_token = self.advance()
                if name_token.kind not in ("ident", "const", "kw"):
                    raise RubySyntaxError("expected a method name", name_token.line)
                call = Call(name_token.line, node, str(name_token.value))
                if self.at("op", "(") and not self.peek().space_before:
                    self.call_arguments(call)
                elif allow_command and not (self.at("op", "=") or self.at("op", "==")) \
                        and self._command_argument_follows():
                    self.command_arguments(call)
                node = call
                continue
            if token.kind == "op" and token.value == "[" and not token.space_before:
                self.advance()
                node = Call(token.line, node, "[]", self.sequence("]"))
                continue
            if (token.kind == "kw" and token.value == "do") or (token.kind == "op" and token.value == "{"):
                if not isinstance(node, (Call, Name)) or (isinstance(node, Name) and node.kind != "ident"):
                    return node
                if token.value == "do" and not allow_command:
                    return node
                if isinstance(node, Name):
                    node = Call(node.line, None, node.name)
                if node.block is not None:
                    return node
                node.block = self.block()
                continue
            return node

    def block(self) -> Block:
        opener = self.advance()
        closer = "end" if opener.value == "do" else "}"
        params: list[str] = []
        self.skip_newlines()
        if self.at("op", "|") or self.at("op", "||"):
            if self.advance().value == "|":
                while not self.at("op", "|"):
                    token = self.advance()
                    if token.kind == "ident":
                        params.append(str(token.value))
                    elif not (token.kind == "op" and token.value in (",", "(", ")", "*")):
                        raise RubySyntaxError("unusual block parameters", token.line)
                self.advance()
        body = self.statements((closer,))
        end_token = self.expect("kw" if closer == "end" else "op", closer)
        return Block(opener.line, params, body, end_token.line)


def parse(text: str) -> list[Node]:
    """Ruby source → statements; a file the tokenizer cannot read at all is one :class:`Unsupported`."""
    try:
        tokens = Tokenizer(text).tokenize()
    except RubySyntaxError as error:
        return [Unsupported(error.line, f"Ruby this converter does not read ({error})", error.line)]
    return Parser(tokens).program()
