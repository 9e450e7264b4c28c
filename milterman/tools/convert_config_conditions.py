"""``define_applicable_condition`` blocks: simple stoppers as ``[[condition.rule]]``, others as Python.

A stopper whose body is one expression built from regex matches (``=~``, ``===``,
``match?``), string equality, ``context.authenticated?``, ``context.postfix?``,
``context[macro]``, ``context.children[name].reject?``, ``address.local?``,
``true``/``false``, ``!``, ``and``/``or`` becomes rules of B5 with ``action = "stop"``.
Anything else makes the whole condition a Python condition (``python = "module:Class"``)
whose skeleton, with the Ruby body as comments, :func:`skeleton` writes.
"""

from __future__ import annotations

import re

from ..protocol.stages import STAGES
from .convert_config_ruby import Block, Call, Literal, Name, Node, Operation, Unsupported
from .convert_config_values import NotConvertible, RubyRegex, python_regex

#: per stage letter, the Ruby stopper block's parameters after the context (no stopper for unknown)
_STOPPER_PARAMETERS = {"C": ("host", "address"), "H": ("fqdn",), "M": ("from",), "R": ("recipient",), "T": (),
                       "L": ("name", "value"), "N": (), "B": ("chunk",), "E": ()}
#: Ruby stopper method → (TOML stage, Python method name, Ruby block parameters after the context)
STOPPERS = {f"define_{stage.handler}_stopper": (stage.name, stage.handler, _STOPPER_PARAMETERS[stage.letter])
            for stage in STAGES if stage.letter in _STOPPER_PARAMETERS}
#: per stage, the B5.1 predicate a regex on the n-th parameter after the context becomes
_REGEX_PREDICATE = {
    "connect": ("client_host", None), "helo": ("helo",), "envelope-from": ("envelope_from",),
    "envelope-recipient": ("envelope_recipient",), "header": ("header.name", "header.value"), "body": ("body",),
}
_BOOLEAN_PREDICATES = {"authenticated", "client_local"}
_STATUS_METHODS = {"reject?": "reject", "accept?": "accept", "temporary_failure?": "temporary-failure",
                   "discard?": "discard", "quitted?": "quitted"}

Match = dict[str, object]


def _parameter(node: Node, params: list[str]) -> int | None:
    """Which block parameter (0 = context) a node is."""
    if isinstance(node, Name) and node.kind == "ident" and node.name in params:
        return params.index(node.name)
    return None


def _regex_match(stage: str, position: int, pattern: str) -> Match:
    names = _REGEX_PREDICATE.get(stage, ())
    if position < 1 or position > len(names) or names[position - 1] is None:
        raise NotConvertible("a regex test of a parameter without a predicate")
    name = names[position - 1]
    if name.startswith("header."):
        return {"header": {name[7:]: pattern}}
    return {name: [pattern]}


def _regex_of(node: Node) -> str | None:
    if isinstance(node, Literal) and node.kind == "regex" and not node.interpolated:
        return RubyRegex(str(node.value), node.flags).python()
    return None


def _string_of(node: Node) -> str | None:
    if isinstance(node, Literal) and node.kind in ("str", "sym") and not node.interpolated:
        return str(node.value)
    return None


def _negate(match: Match) -> Match:
    if len(match) != 1:
        raise NotConvertible("a negated test of several facts")
    (key, value), = match.items()
    if key in _BOOLEAN_PREDICATES:
        return {key: not value}
    if key.startswith("not_"):
        return {key[4:]: value}
    return {f"not_{key}": value}


def _and(left: list[Match], right: list[Match]) -> list[Match]:
    result = []
    for one in left:
        for other in right:
            if set(one) & set(other):
                raise NotConvertible("a test of the same fact twice")
            result.append({**one, **other})
    if len(result) > 8:
        raise NotConvertible("a test with too many alternatives")
    return result


def translate(node: Node, stage: str, params: list[str]) -> list[Match] | bool:
    """A stopper body expression → alternatives (each a ``match``, any one stops), or a constant."""
    if isinstance(node, Literal) and node.kind in ("bool", "nil"):
        return bool(node.value)
    if isinstance(node, Operation):
        if node.operator == "!":
            inner = translate(node.operands[0], stage, params)
            if isinstance(inner, bool):
                return not inner
            if len(inner) != 1:
                raise NotConvertible("a negated `or`")
            return [_negate(inner[0])]
        if node.operator in ("and", "&&", "or", "||"):
            left = translate(node.operands[0], stage, params)
            right = translate(node.operands[1], stage, params)
            if node.operator in ("or", "||"):
                if left is True or right is True:
                    return True
                return (right if left is False else left if right is False else left + right)  # type: ignore
            if left is False or right is False:
                return False
            if left is True:
                return right
            if right is True:
                return left
            return _and(left, right)
        if node.operator in ("=~", "===", "!~"):
            first, second = node.operands
            regex, other = (_regex_of(first), second) if _regex_of(first) is not None else (_regex_of(second), first)
            position = _parameter(other, params)
            if regex is None or position is None:
                raise NotConvertible("a match of something other than a regex and a stopper parameter")
            match = _regex_match(stage, position, regex)
            return [_negate(match) if node.operator == "!~" else match]
        if node.operator in ("==", "!="):
            first, second = node.operands
            text, other = (_string_of(first), second) if _string_of(first) is not None else (_string_of(second), first)
            if text is None:
                raise NotConvertible("a comparison with something other than a string")
            match = _equality(other, text, stage, params)
            return [_negate(match) if node.operator == "!=" else match]
    if isinstance(node, Call):
        return [_call_match(node, stage, params)]
    if isinstance(node, Unsupported):
        raise NotConvertible(node.what)
    raise NotConvertible("a stopper body this converter cannot read as a test")


def _equality(node: Node, text: str, stage: str, params: list[str]) -> Match:
    position = _parameter(node, params)
    if position is not None:
        if stage == "connect" and position == 1:
            return {"client_host_exact": [text]}
        return _regex_match(stage, position, r"\A" + re.escape(text) + r"\Z")
    macro = _macro_name(node, params)
    if macro is not None:
        return {"macro": {macro: r"\A" + re.escape(text) + r"\Z"}}
    raise NotConvertible("a comparison of something other than a stopper parameter or a macro")


def _macro_name(node: Node, params: list[str]) -> str | None:
    if isinstance(node, Call) and node.name == "[]" and node.receiver is not None \
            and _parameter(node.receiver, params) == 0 and len(node.args) == 1:
        return _string_of(node.args[0])
    return None


def _call_match(node: Call, stage: str, params: list[str]) -> Match:
    receiver = node.receiver
    if receiver is not None and _parameter(receiver, params) == 0 and not node.args:
        if node.name == "authenticated?":
            return {"authenticated": True}
        if node.name == "postfix?":
            return {"mta": "postfix"}
    if node.name in ("match?", "match", "=~") and len(node.args) == 1 and receiver is not None:
        regex, other = (_regex_of(receiver), node.args[0])
        if regex is None:
            regex, other = _regex_of(node.args[0]), receiver
        position = _parameter(other, params)
        if regex is not None and position is not None:
            return _regex_match(stage, position, regex)
    if node.name == "local?" and receiver is not None and stage == "connect" and _parameter(receiver, params) == 2:
        return {"client_local": True}
    if node.name in _STATUS_METHODS and isinstance(receiver, Call) and receiver.name == "[]" \
            and len(receiver.args) == 1 and isinstance(receiver.receiver, Call) \
            and receiver.receiver.name == "children" and receiver.receiver.receiver is not None \
            and _parameter(receiver.receiver.receiver, params) == 0:
        child = _string_of(receiver.args[0])
        if child is not None:
            return {"milter_status": {child: [_STATUS_METHODS[node.name]]}}
    macro = _macro_name(node, params)
    if macro is not None:
        return {"macro": {macro: True}}
    raise NotConvertible(f"the call `{node.name}`")


def stopper_rules(block: Block, stage: str) -> list[dict[str, object]]:
    """The ``[[condition.rule]]`` tables of one stopper block, or :class:`NotConvertible`."""
    if len(block.body) != 1:
        raise NotConvertible("a stopper with several statements")
    result = translate(block.body[0], stage, block.params)
    if result is False:
        return []
    if result is True:
        return [{"stage": stage, "action": "stop"}]
    return [{"stage": stage, "match": match, "action": "stop"} for match in result]


def class_name(condition: str) -> str:
    """A Python class name for a condition name (``"Internal senders"`` → ``InternalSenders``)."""
    words = re.findall(r"[A-Za-z0-9]+", condition)
    name = "".join(word[:1].upper() + word[1:] for word in words) or "Condition"
    return name if not name[0].isdigit() else f"Condition{name}"


_PREAMBLE = '''"""Applicable conditions converted from a milter manager 2.x configuration.

Each class is named by a [[condition]] table (python = "{module}:CLASS"). A method
per stage (connect, helo, envelope_from, envelope_recipient, data, header,
end_of_header, body, end_of_message) receives the session's facts and returns True
to stop the child for this session or transaction. ``facts`` has: client_address,
client_name, client_family, helo, envelope_from, envelope_recipient (the current
RCPT), recipients, macros, authenticated, mta ("postfix", "sendmail" or "other"),
shelf (the transaction's dict, shared by the stages), header ((name, value) at the
header stage) and body (the chunk, bytes, at the body stage).

Until you write them, the methods return False: the child is not stopped.
"""
'''


def skeleton(module: str, classes: list[tuple[str, str, list[tuple[str, list[str]]]]]) -> str:
    """A Python module: per condition ``(class, condition name, [(method, ruby lines)])``."""
    lines = [_PREAMBLE.format(module=module)]
    for name, condition, methods in classes:
        lines += ["", f"class {name}:", f'    """Converted from the Ruby condition {condition!r}."""', ""]
        if not methods:
            lines += ["    pass", ""]
        for method, ruby in methods:
            lines.append(f"    def {method}(self, facts) -> bool:")
            lines += [f"        # Ruby: {text}" if text.strip() else "        #" for text in ruby]
            lines += ["        return False", ""]
    return "\n".join(lines).rstrip() + "\n"


__all__ = ["STOPPERS", "class_name", "python_regex", "skeleton", "stopper_rules", "translate"]
