"""milter-manager-convert-config: a milter manager 2.x Ruby configuration as milterman TOML.

The files are read, never run: :mod:`.convert_config_ruby` parses them and this module
walks the statements, following ``load``, ``load_if_exist`` and ``load_default`` to the
files they name (relative to the configuration directory) and nothing else. Every item
of the original's configuration API with a TOML key is converted into it; everything
else is a :class:`~.convert_config_values.Problem` (``FILE:LINE: cannot convert: what;
what to do instead``), written as a comment where it would have gone.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config.builtins import BUILTIN_CONDITIONS
from ..config.errors import Invalid
from ..config.schema import MILTER, Setting, find_setting
from ..config.values import Context, Octal
from .convert_config_conditions import STOPPERS, class_name, skeleton, stopper_rules
from .convert_config_ruby import Assign, Block, Call, Literal, Modifier, Name, Node, Unsupported, parse
from .convert_config_values import Document, NotConvertible, Problem, RubyRegex, Table, ruby_bool, value_of

#: the files of the original's ``applicable-conditions`` directory that define built-in conditions
BUILTIN_CONDITION_FILES = {"s25r.conf", "remote-network.conf", "authentication.conf", "sendmail-compatible.conf",
                           "stress.conf", "trust.conf", "restrict-accounts.conf", "dnsbl.conf"}
#: the Python module the untranslatable conditions are pointed at (--python-skeleton writes it)
SKELETON_MODULE = "milter_manager_conditions"
_SECTIONS = ("security", "log", "manager", "controller", "package", "database")
_MILTER_FIELDS = {setting.name: setting for setting in MILTER if setting.name != "name"}
_STATUS_KEYS = {"fallback_status", "fallback_status_at_disconnect"}
_HOOK_INSTEAD = {
    "maintained": "write a Python function and list it in [hooks] maintained = [\"module:function\"]",
    "event_loop_created": "write a Python function and list it in [hooks] started = [\"module:function\"]",
    "define_connection_checker": "write a Python function and list it in [manager] connection_checkers = "
                                 "[\"python:module:function\"]",
}


@dataclass
class Conversion:
    """The result: the TOML text, what was not converted, and the skeleton module (or None)."""

    toml: str
    problems: list[Problem]
    skeleton: str | None
    files: list[str] = field(default_factory=list)


class Converter:
    """Walks the statements of the configuration files and fills a :class:`Document`."""

    def __init__(self, config_dir: str, main_file: str, skeleton_wanted: bool) -> None:
        self.config_dir = config_dir
        self.document = Document(main_file)
        self.skeleton_wanted = skeleton_wanted
        self.files: list[str] = []
        self.stack: list[str] = []
        self.file = main_file
        self.platform: str | None = None
        self.detection = False
        self.python_classes: list[tuple[str, str, list[tuple[str, list[str]]]]] = []
        self.lines: dict[str, list[str]] = {}

    # ------------------------------------------------------------------------------------------ reporting

    def problem(self, line: int, what: str, instead: str, where: list[str] | None = None) -> None:
        problem = Problem(self.file, line, what, instead)
        self.document.problems.append(problem)
        (self.document.notes if where is None else where).append(str(problem))

    def note(self, line: int, text: str, where: list[str] | None = None) -> None:
        (self.document.notes if where is None else where).append(f"{self.file}:{line}: {text}")

    # ------------------------------------------------------------------------------------------ files

    def run(self, path: str) -> None:
        self.read_file(path, 0)

    def read_file(self, path: str, line: int) -> None:
        real = os.path.realpath(path)
        if real in self.stack:
            self.problem(line, f"a load of {path} inside itself", "remove the recursive load")
            return
        with open(path, encoding="utf-8", errors="replace") as stream:
            text = stream.read()
        self.files.append(path)
        self.lines[path] = text.splitlines()
        previous = self.file
        self.stack.append(real)
        self.file = path
        try:
            variables: dict[str, object] = {}  # locals of the file bound to literals (`spec = "inet:…"`)
            for statement in parse(text):
                self.statement(statement, variables)
        finally:
            self.file = previous
            self.stack.pop()

    def resolve(self, pattern: str) -> list[str] | None:
        """C-FILE-2: a directory → its regular files; a glob → its matches; a file; None: nothing there."""
        path = pattern if os.path.isabs(pattern) else os.path.join(self.config_dir, pattern)
        if os.path.isdir(path):
            return sorted(os.path.join(path, name) for name in os.listdir(path)
                          if os.path.isfile(os.path.join(path, name))) or None
        if glob.has_magic(path):
            return sorted(item for item in glob.glob(path) if os.path.isfile(item)) or None
        return [path] if os.path.isfile(path) else None

    def load(self, node: Call, required: bool) -> None:
        if len(node.args) != 1:
            raise NotConvertible(f"`{node.name}` with {len(node.args)} arguments")
        pattern = value_of(node.args[0])
        if not isinstance(pattern, str):
            raise NotConvertible(f"`{node.name}` of a non-string", "name the file")
        paths = self.resolve(pattern)
        if paths is None:
            if required:
                self.problem(node.line, f"load({pattern!r}) names no file", "remove it or create the file")
            return
        for path in paths:
            if os.path.basename(os.path.dirname(path)) == "applicable-conditions" \
                    and os.path.basename(path) in BUILTIN_CONDITION_FILES:
                continue  # the built-in conditions are always defined (B4)
            self.read_file(path, node.line)

    def load_default(self, node: Node) -> None:
        platform = self.platform
        if platform is None or platform == "debian":
            self.detection = True
            self.document.set("package", "platform", "debian")
            self.document.set("security", "privilege_mode", True)
            if platform is None:
                self.note(node.line, "load_default: the Debian package's defaults are assumed (package.platform "
                          "= \"debian\": the milters installed from Debian's packages are detected)",
                          self.document.section_notes.setdefault("package", []))
            return
        self.problem(node.line, f"load_default for the platform {platform!r}",
                     "milterman detects only Debian's milters: define the milters it found as [[milter]] tables",
                     self.document.section_notes.setdefault("package", []))

    # ------------------------------------------------------------------------------------------ statements

    def statement(self, node: Node, variables: dict[str, object]) -> None:
        try:
            self.dispatch(node, variables)
        except NotConvertible as error:
            self.problem(node.line, error.what, error.instead, self.where_for(node))

    def where_for(self, node: Node) -> list[str] | None:
        target = node.target if isinstance(node, Assign) else node
        if isinstance(target, Call) and isinstance(target.receiver, Name) and target.receiver.name in (
                _SECTIONS + ("s25r", "remote_network", "stress", "trust", "dnsbl")):
            section = target.receiver.name
            return self.document.section_notes.setdefault(section, [])
        return None

    def dispatch(self, node: Node, variables: dict[str, object]) -> None:
        if isinstance(node, Unsupported):
            raise NotConvertible(node.what, "rewrite it with the keys of the TOML configuration (or in Python)")
        if isinstance(node, Modifier):
            condition = node.condition
            if isinstance(condition, Literal) and condition.kind in ("bool", "nil"):
                if bool(condition.value) == (node.keyword == "if"):
                    self.dispatch(node.statement, variables)
                return
            raise NotConvertible(f"a statement under `{node.keyword}` with a condition computed at run time",
                                 "decide once and write the statement or leave it out")
        if isinstance(node, Assign):
            self.assign(node, variables)
            return
        if isinstance(node, Name) and node.kind == "ident":
            node = Call(node.line, None, node.name)
        if not isinstance(node, Call):
            raise NotConvertible("an expression with no effect on the configuration", "leave it out")
        self.call(node, variables)

    def assign(self, node: Assign, variables: dict[str, object]) -> None:
        target = node.target
        if isinstance(target, Name) and target.kind == "ident" and node.operator == "=":
            variables[target.name] = value_of(node.value, variables)  # a local such as `spec = "inet:…"`
            return
        if not (isinstance(target, Call) and isinstance(target.receiver, Name) and node.operator == "="):
            raise NotConvertible("an assignment this converter does not know")
        owner = target.receiver.name
        if owner in _SECTIONS:
            self.section_item(owner, target.name, value_of(node.value, variables), node)
        elif owner == "s25r" and target.name == "check_only_ipv4":
            self.typed("s25r", "check_only_ipv4", ruby_bool(value_of(node.value, variables)), node.line)
        elif owner == "stress" and target.name == "threshold_n_connections":
            value = value_of(node.value, variables)
            self.typed("stress", "threshold_n_connections", -1 if value is None else value, node.line)
        elif owner == "dnsbl" and target.name in ("name_server", "name_servers"):
            value = value_of(node.value, variables)
            self.document.unset("dnsbl", "name_servers")
            if value:
                self.typed("dnsbl", "name_servers", value if isinstance(value, list) else [value], node.line)
        else:
            raise NotConvertible(f"the item `{owner}.{target.name}`", "see the configuration guide for its key")

    def section_item(self, section: str, name: str, value: object, node: Assign) -> None:
        if section == "package" and name == "platform":
            self.platform = value if isinstance(value, str) else None
            return
        if section == "package" and name == "options":
            if value is not None and find_setting("package.options") is None:
                raise NotConvertible("package.options", "milterman's detection reads no options: leave it out")
            if value is not None:
                self.typed("package", "options", value, node.line)
            return
        if section == "manager" and name == "event_loop_backend":
            if value == "glib":
                raise NotConvertible('manager.event_loop_backend = "glib"', "leave it out: gevent's default loop "
                                     "is used")
        if section == "manager" and name in ("maintenance_interval", "connection_check_interval") and value is None:
            value = 0
        if section == "manager" and name == "chunk_size":
            value = 65535 if value is None or (isinstance(value, int) and value > 65535) else value
        if name in _STATUS_KEYS and isinstance(value, str):
            value = value.lower().replace("_", "-")
        if name.endswith("unix_socket_mode") and isinstance(value, str):
            try:
                value = int(value, 8)
            except ValueError:
                raise NotConvertible(f"{section}.{name} = {value!r}", "write an octal mode such as 0o660") from None
        if value is None:
            self.document.unset(section, name)
            return
        if isinstance(value, str) and find_setting(f"{section}.{name}") is not None \
                and type(find_setting(f"{section}.{name}").kind).__name__ == "Boolean":  # type: ignore[union-attr]
            value = ruby_bool(value)
        self.typed(section, name, value, node.line)

    def typed(self, section: str, name: str, value: object, line: int) -> None:
        """Set a section key after checking the value as the loader will (so the output loads)."""
        setting = find_setting(f"{section}.{name}")
        if setting is None:
            raise NotConvertible(f"{section}.{name}", "milterman has no such setting: leave it out")
        self.check(setting, value, f"{section}.{name}")
        if type(setting.kind).__name__ == "Mode":
            value = Octal(value)  # type: ignore[arg-type]
        self.document.set(section, name, value)

    def check(self, setting: Setting, value: object, label: str) -> None:
        try:
            from .convert_config_values import toml_value

            setting.kind.parse(toml_value(value), Context(self.config_dir))
        except Invalid as error:
            refused = type(setting.kind).__name__ == "Refused"  # a key milterman keeps only to explain its refusal
            raise NotConvertible(f"{label} = {value!r} ({error.message})",
                                 "leave it out" if refused else "use a value milterman accepts") from None

    def finish(self) -> None:
        """A milter without a connection spec is skipped by the original at every session: disable it here."""
        if self.detection and self.document.get("manager", "connection_spec") is None:
            self.document.section_notes.setdefault("manager", []).append(
                "milter manager 2.x's Debian package listened on unix:/run/milter-manager/milter-manager.sock; "
                "set connection_spec to keep Postfix's milter address")
        for name, table in self.document.milters.items():
            if "connection_spec" not in table.values and table.values.get("enabled", True) and not self.detection:
                self.file = table.origin[0] or self.file
                self.problem(table.origin[1], f"the milter {name!r} has no connection_spec (the original skips it "
                             "at every session)", "give it one; it is converted as enabled = false", table.notes)
                table.values["enabled"] = False

    # ------------------------------------------------------------------------------------------ calls

    def call(self, node: Call, variables: dict[str, object]) -> None:
        receiver = node.receiver.name if isinstance(node.receiver, Name) else None
        if node.receiver is None:
            handler = self.TOP_LEVEL.get(node.name)
            if handler is None:
                raise NotConvertible(f"the method `{node.name}` (it is reported, not run)",
                                     "rewrite what it does by hand, or in Python")
            handler(self, node, variables)
            return
        if receiver is not None and (receiver, node.name) in self.METHODS:
            if node.block is not None and node.name not in ("each",):
                raise NotConvertible(f"`{receiver}.{node.name}` with a block",
                                     "write the test as a [[condition]] rule or in Python")
            self.METHODS[(receiver, node.name)](self, node, variables)
            return
        if receiver in ("manager", "database") and node.name in _HOOK_INSTEAD:
            raise NotConvertible(f"manager.{node.name} with Ruby code", _HOOK_INSTEAD[node.name])
        if receiver == "database" and node.name in ("setup", "load_models"):
            raise NotConvertible(f"database.{node.name}", "the Ruby models are not used: open the database from "
                                 "your Python hooks or conditions with the [database] settings")
        label = f"{receiver}.{node.name}" if receiver else f"the call `{node.name}`"
        raise NotConvertible(f"{label} (it is reported, not run)", "rewrite what it does by hand, or in Python")

    def _define_milter(self, node: Call, variables: dict[str, object]) -> None:
        name = self._one_string(node, variables)
        known = name in self.document.milters
        table = self.document.milters.setdefault(name, Table({"name": name}, origin=(self.file, node.line)))
        if known:
            # C-Q-1: the original starts a redefinition afresh except for a few fields
            for key in ("fallback_status", "evaluation_mode"):
                if table.values.pop(key, None) is not None:
                    self.note(node.line, f"the redefinition resets {key} (as the original does)", table.notes)
        if node.block is not None:
            self.milter_block(node.block, table.values, table.notes, variables)

    def milter_block(self, block: Block, values: dict[str, object], notes: list[str],
                     variables: dict[str, object]) -> None:
        own = block.params[0] if block.params else None
        for statement in block.body:
            try:
                self.milter_statement(statement, own, values, variables)
            except NotConvertible as error:
                self.problem(statement.line, error.what, error.instead, notes)

    def milter_statement(self, node: Node, own: str | None, values: dict[str, object],
                         variables: dict[str, object]) -> None:
        if isinstance(node, Unsupported):
            raise NotConvertible(node.what, "set the milter's keys with constant values")
        if isinstance(node, Assign) and isinstance(node.target, Call) and isinstance(node.target.receiver, Name) \
                and node.target.receiver.name == own and node.operator == "=":
            key = node.target.name
            value = value_of(node.value, variables)
            if key == "name":
                raise NotConvertible("milter.name = …", "the name is set by define_milter")
            setting = _MILTER_FIELDS.get(key)
            if setting is None:
                raise NotConvertible(f"the milter item `{key}`", "milterman has no such milter key")
            if key in ("enabled", "evaluation_mode"):
                value = ruby_bool(value)
            if key == "fallback_status" and isinstance(value, str):
                value = value.lower().replace("_", "-")
            if key.endswith("_timeout") and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if key == "applicable_conditions":
                value = [str(item) for item in (value or [])]
                value = self.known_conditions(value, node.line)
            if value is None:
                values.pop(key, None)
                return
            self.check(setting, value, f"milter.{key}")
            values[key] = value
            return
        if isinstance(node, Call) and isinstance(node.receiver, Name) and node.receiver.name == own \
                and node.name == "add_applicable_condition" and len(node.args) == 1:
            name = value_of(node.args[0], variables)
            conditions = values.setdefault("applicable_conditions", [])
            if isinstance(name, str) and self.known_conditions([name], node.line) and name not in conditions:
                conditions.append(name)  # type: ignore[union-attr]
            return
        raise NotConvertible("a statement in define_milter other than `milter.KEY = value`",
                             "set the milter's keys with constant values")

    def known_conditions(self, names: list[str], line: int) -> list[str]:
        result = []
        for name in names:
            if name in BUILTIN_CONDITIONS or name in self.document.conditions or any(
                    table.values.get("condition_name") == name for table in self.document.restrictions):
                result.append(name)
            else:
                self.problem(line, f"the applicable condition {name!r}, defined nowhere in the files read",
                             "define it as a [[condition]] or remove it from the list")
        return result

    def _remove_milter(self, node: Call, variables: dict[str, object]) -> None:
        name = self._one_string(node, variables)
        if name == "*":
            self.document.milters.clear()
            if self.detection:
                self.document.remove_milters.append("*")
            return
        if self.document.milters.pop(name, None) is None or self.detection:
            if name not in self.document.remove_milters:
                self.document.remove_milters.append(name)

    def _each_milter(self, node: Call, variables: dict[str, object]) -> None:
        block = node.block
        if block is None or len(block.params) != 1 or node.args:
            raise NotConvertible("defined_milters without a `do |name| … end` block")
        var = block.params[0]
        for statement in block.body:
            if isinstance(statement, Call) and statement.name in ("define_milter", "remove_milter") \
                    and statement.receiver is None and len(statement.args) == 1 \
                    and isinstance(statement.args[0], Name) and statement.args[0].name == var:
                if statement.name == "remove_milter":
                    self._remove_milter(Call(statement.line, None, "remove_milter",
                                             [Literal(statement.line, "str", "*")]), variables)
                    continue
                if self.detection:
                    patch = Table({"names": ["*"]})
                    values: dict[str, object] = {}
                    if statement.block is not None:
                        self.milter_block(statement.block, values, patch.notes, variables)
                    for key in ("fallback_status", "evaluation_mode"):
                        values.setdefault(key, _MILTER_FIELDS[key].default)  # C-Q-1 for every milter
                    patch.values.update(values)
                    self.document.patches.append(patch)
                    continue
                for name in list(self.document.milters):
                    inner = dict(variables)
                    inner[var] = name
                    self.statement(statement, inner)
                continue
            self.problem(statement.line, "a statement in defined_milters.each other than define_milter(name) or "
                         "remove_milter(name)", "use a [[milter_patch]] with names = [...]")

    def _define_condition(self, node: Call, variables: dict[str, object]) -> None:
        name = self._one_string(node, variables)
        if name in BUILTIN_CONDITIONS:
            self.note(node.line, f"the condition {name!r} is built in; its definition is not converted")
            return
        table = Table({"name": name})
        self.document.conditions[name] = table
        block = node.block
        if block is None:
            return
        own = block.params[0] if block.params else None
        rules: list[dict[str, object]] = []
        methods: list[tuple[str, list[str]]] = []
        failed: list[tuple[int, str]] = []
        for statement in block.body:
            if isinstance(statement, Assign) and isinstance(statement.target, Call) \
                    and statement.target.name == "description":
                try:
                    table.values["description"] = str(value_of(statement.value, variables))
                except NotConvertible as error:
                    failed.append((statement.line, error.what))
                continue
            if isinstance(statement, Call) and isinstance(statement.receiver, Name) \
                    and statement.receiver.name == own and statement.name in STOPPERS \
                    and statement.block is not None:
                stage, method, _ = STOPPERS[statement.name]
                stopper = statement.block
                source = self.lines.get(self.file, [])[stopper.line - 1:stopper.end_line]
                methods.append((method, source))
                try:
                    rules.extend(stopper_rules(stopper, stage))
                except NotConvertible as error:
                    failed.append((statement.line, f"the {stage} stopper ({error.what})"))
                continue
            failed.append((statement.line, "a statement in define_applicable_condition other than description "
                                           "or define_*_stopper"))
        if not failed:
            table.rules = rules
            return
        python = f"{SKELETON_MODULE}:{class_name(name)}"
        for line, what in failed:
            self.problem(line, f"{what} of the condition {name!r}",
                         f"write it in Python: [[condition]] python = \"{python}\""
                         + (" (the skeleton is written)" if self.skeleton_wanted else
                            " (--python-skeleton DIR writes a skeleton)"), table.notes)
        self.python_classes.append((class_name(name), name, methods))
        if self.skeleton_wanted:
            table.values["python"] = python
        else:
            table.notes.append(f'python = "{python}"  # after writing it; --python-skeleton DIR writes a skeleton')

    def _restrict_accounts(self, node: Call, variables: dict[str, object]) -> None:
        if node.block is not None:
            raise NotConvertible("restrict_accounts_by_list with a block", "list the accounts")
        table = Table()
        accounts, patterns = [], []
        for argument in node.args:
            value = value_of(argument, variables)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, RubyRegex):
                    patterns.append(item)
                elif isinstance(item, str):
                    accounts.append(item)
                else:
                    raise NotConvertible(f"the account {item!r}", "list strings or regexes")
        options = {key: value_of(item, variables) for key, item in node.kwargs}
        for key in options:
            if key not in ("condition_name", "milters"):
                raise NotConvertible(f"restrict_accounts_by_list option {key}:", "leave it out")
        if options.get("condition_name"):
            table.values["condition_name"] = str(options["condition_name"])
        table.values["accounts"] = accounts
        if patterns:
            table.values["account_patterns"] = patterns
        milters = options.get("milters")
        if milters is None and not self.detection:
            milters = list(self.document.milters)  # the original attaches it to the milters defined so far
        if milters is not None:
            table.values["milters"] = [str(item) for item in (milters if isinstance(milters, list) else [milters])]
        self.document.restrictions.append(table)

    def _one_string(self, node: Call, variables: dict[str, object]) -> str:
        if len(node.args) != 1:
            raise NotConvertible(f"`{node.name}` with {len(node.args)} arguments")
        value = value_of(node.args[0], variables)
        if not isinstance(value, str):
            raise NotConvertible(f"`{node.name}` with a name that is not a string")
        return value

    # ------------------------------------------------------------------------------------------ tunables

    def _s25r_list(self, node: Call, variables: dict[str, object]) -> None:
        kind = "whitelist" if node.name == "add_whitelist" else "blacklist"
        if node.block is not None or not node.args:
            raise NotConvertible(f"s25r.{node.name} with a block", "write a [[condition]] rule before S25R")
        for argument in node.args:
            value = value_of(argument, variables)
            if isinstance(value, RubyRegex):
                self.document.append("s25r", kind, [value])
            elif isinstance(value, str):
                self.document.append("s25r", f"{kind}_hosts", [value])
            else:
                raise NotConvertible(f"s25r.{node.name}({value!r})", "give a regex or a host name")

    def _network(self, node: Call, variables: dict[str, object]) -> None:
        key = "local_addresses" if node.name == "add_local_address" else "remote_addresses"
        values = [str(value_of(argument, variables)) for argument in node.args]
        setting = find_setting(f"remote_network.{key}")
        self.check(setting, values, f"remote_network.{key}")  # type: ignore[arg-type]
        self.document.append("remote_network", key, values)

    def _trust_domain(self, node: Call, variables: dict[str, object]) -> None:
        for argument in node.args:
            value = value_of(argument, variables)
            if isinstance(value, RubyRegex):
                self.document.append("trust", "envelope_from_domain_patterns", [value])
            elif isinstance(value, str):
                self.document.append("trust", "envelope_from_domains", [value.lower()])
            else:
                raise NotConvertible(f"trust.add_envelope_from_domain({value!r})", "give a domain or a regex")
        if node.block is not None or not node.args:
            raise NotConvertible("trust.add_envelope_from_domain with a block", "list the domains")

    def _trust_clear(self, node: Call, variables: dict[str, object]) -> None:
        self.document.set("trust", "use_default_domains", False)
        for key in ("envelope_from_domains", "envelope_from_domain_patterns", "envelope_from_domain_files"):
            self.document.unset("trust", key)

    def _trust_file(self, node: Call, variables: dict[str, object]) -> None:
        path = self._one_string(node, variables)
        self.document.append("trust", "envelope_from_domain_files", [os.path.join(self.config_dir, path)])

    def _dnsbl_service(self, node: Call, variables: dict[str, object]) -> None:
        values = [value_of(argument, variables) for argument in node.args]
        if not 1 <= len(values) <= 2:
            raise NotConvertible("dnsbl.add_service with these arguments", "give a zone and an expected address")
        service: dict[str, object] = {"zone": str(values[0])}
        if len(values) == 2 and values[1] is not None:
            service["expect"] = str(values[1])
        self.check(find_setting("dnsbl.services"), [service], "dnsbl.services")  # type: ignore[arg-type]
        self.document.append("dnsbl", "services", [service])

    def _netstat(self, node: Call, variables: dict[str, object]) -> None:
        interval = value_of(node.args[0], variables) if node.args else 5
        self.typed("manager", "connection_check_interval", interval, node.line)
        checkers = list(self.document.get("manager", "connection_checkers", []))  # type: ignore[call-overload]
        if "netstat" not in checkers:
            checkers.append("netstat")
        self.typed("manager", "connection_checkers", checkers, node.line)

    def _memory(self, node: Call, variables: dict[str, object]) -> None:
        self.typed("manager", "report_memory_statistics", True, node.line)

    def _load(self, node: Call, variables: dict[str, object]) -> None:
        self.load(node, required=True)

    def _load_if_exist(self, node: Call, variables: dict[str, object]) -> None:
        self.load(node, required=False)

    def _load_default(self, node: Call, variables: dict[str, object]) -> None:
        self.load_default(node)

    TOP_LEVEL: dict[str, Callable] = {
        "load": _load, "load_if_exist": _load_if_exist, "load_default": _load_default,
        "define_milter": _define_milter, "remove_milter": _remove_milter,
        "define_applicable_condition": _define_condition, "restrict_accounts_by_list": _restrict_accounts,
    }
    METHODS: dict[tuple[str, str], Callable] = {
        ("defined_milters", "each"): _each_milter,
        ("s25r", "add_whitelist"): _s25r_list, ("s25r", "add_blacklist"): _s25r_list,
        ("remote_network", "add_local_address"): _network, ("remote_network", "add_remote_address"): _network,
        ("trust", "add_envelope_from_domain"): _trust_domain, ("trust", "clear"): _trust_clear,
        ("trust", "load_envelope_from_domains"): _trust_file, ("dnsbl", "add_service"): _dnsbl_service,
        ("manager", "use_netstat_connection_checker"): _netstat, ("manager", "report_memory_statistics"): _memory,
    }


def convert(path: str, *, skeleton_wanted: bool = False) -> Conversion:
    """Convert a configuration directory (its ``milter-manager.conf``) or one file."""
    if os.path.isdir(path):
        config_dir, main_file = path, os.path.join(path, "milter-manager.conf")
    else:
        config_dir, main_file = os.path.dirname(os.path.abspath(path)), path
    converter = Converter(config_dir, main_file, skeleton_wanted)
    converter.run(main_file)
    converter.finish()
    text = None
    if converter.python_classes:
        text = skeleton(SKELETON_MODULE, converter.python_classes)
    return Conversion(converter.document.render(), converter.document.problems, text, converter.files)
