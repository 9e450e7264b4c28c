"""Finding, including, merging and overriding: files → one :class:`~.model.Configuration`.

C-TOML-2 finds ``milter-manager.toml``; C-TOML-3 expands includes; B6 merges the
files in order; then ``attach_to`` and ``[[restrict_accounts]]`` (M-AC-B8) append
conditions, ``[[milter_patch]]`` tables apply, ``remove_milters`` removes, names used
across files are checked, and the command-line overrides are applied last
(C-FILE-4, B6 last row). Every problem is collected and reported at once as a
:class:`~.errors.ConfigurationError` naming ``FILE: KEY`` (C-TOML-4).
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatchcase

from . import model
from .entry_points import EntryPointError, named_entry_points
from .entry_points import resolve as resolve_entry_point
from .builtins import BUILTIN_CONDITIONS, DNSBL_SERVICES, TRUST_PATTERN_FLAGS, parse_trust_domain_lines
from .errors import COMMAND_LINE, ConfigurationError, Invalid, Issues, did_you_mean, show
from .reader import ConditionEntry, Document, RestrictEntry, read_document
from .schema import MILTER, SECTION_CLASSES, SECTIONS, find_setting, section_defaults
from .values import Context, Regex, Spec, compile_regex

_SPEC = Spec()

#: C-TOML-2: the main file's name
MAIN_FILE = "milter-manager.toml"
#: C-TOML-2: environment variable naming a configuration directory
ENVIRONMENT_VARIABLE = "MILTER_MANAGER_CONFIG_DIR"
#: C-TOML-2: the build-time directory (``<sysconfdir>/milter-manager``)
DEFAULT_CONFIG_DIR = "/etc/milter-manager"


def search_path(config_dir: str | None = None, environ: Mapping[str, str] | None = None) -> list[str]:
    """C-FILE-1/C-TOML-2 directories in search order: ``--config-dir``, ``$MILTER_MANAGER_CONFIG_DIR``, sysconfdir."""
    environ = os.environ if environ is None else environ
    directories = [config_dir, environ.get(ENVIRONMENT_VARIABLE), DEFAULT_CONFIG_DIR]
    return [directory for directory in directories if directory]


def find_main_file(path_or_dir: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The main file: ``path_or_dir`` itself if it is a file, else the first ``milter-manager.toml`` on the path."""
    if path_or_dir is not None and os.path.isfile(path_or_dir):
        return os.path.abspath(path_or_dir)
    directories = search_path(os.fspath(path_or_dir) if path_or_dir is not None else None, environ)
    for directory in directories:
        candidate = os.path.join(directory, MAIN_FILE)
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise single_error(directories[0] if directories else DEFAULT_CONFIG_DIR, "",
                       f"no {MAIN_FILE} found in: {', '.join(directories)}")


def single_error(file: str, key: str, message: str) -> ConfigurationError:
    """A single-issue error (the main file cannot be found or read)."""
    issues = Issues()
    issues.add(file, key, message)
    return ConfigurationError(issues.items)


def load(path_or_dir: str | os.PathLike | None = None, *, overrides: Mapping[str, object] | None = None,
         environ: Mapping[str, str] | None = None, detected: Sequence[model.MilterSettings] = (),
         detect: Callable[[], Sequence[model.MilterSettings]] | None = None) -> model.Configuration:
    """Load the main file found by C-TOML-2, its includes, and apply ``overrides`` (``"manager.n_workers": 4``).

    Call again with the same ``overrides`` on every reload: they are re-applied after the files (C-FILE-4).
    ``detected`` milters (D-9) are the layer below the files, like the original's ``defaults/*.conf``: a
    ``[[milter]]`` of the same name changes the keys it sets, ``remove_milters`` removes them.
    ``detect`` is called for them once the files are read, only when they ask for it
    (``[package] platform = "debian"``): the files are read once either way.
    """
    path = find_main_file(path_or_dir, environ)
    loader = _Loader()
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except (OSError, UnicodeDecodeError) as error:
        raise single_error(path, "", f"cannot read: {error}") from None
    return loader.run(text, path, overrides, detected, detect)


def load_string(text: str, *, filename: str = "<string>", overrides: Mapping[str, object] | None = None,
                detected: Sequence[model.MilterSettings] = ()) -> model.Configuration:
    """Load TOML text as if it were the main file ``filename`` (tests, ``--show-config`` round trips, D-8)."""
    return _Loader().run(text, filename, overrides, detected)



#: [[milter]] keys that only mean something for a child behind a socket (refused beside ``python``, D-17)
SOCKET_ONLY_KEYS = frozenset({"command", "command_options", "user_name", "connection_timeout", "writing_timeout",
                              "retry_delay", "reuse_connection"})

class _Loader:
    def __init__(self) -> None:
        self.issues = Issues()
        self.documents: list[Document] = []
        self.loaded: dict[str, str] = {}

    def run(self, text: str, path: str, overrides: Mapping[str, object] | None,
            detected: Sequence[model.MilterSettings] = (),
            detect: Callable[[], Sequence[model.MilterSettings]] | None = None) -> model.Configuration:
        self.collect(text, path, stack=())
        if detect is not None and self.platform(overrides or {}) == "debian":
            detected = tuple(detected) + tuple(detect())
        main = self.documents[0]
        if main.parsed and main.version is None and not any(issue.key == "version" for issue in self.issues.items):
            self.issues.add(path, "version", "is required (version = 1)")
        configuration = _Merger(self.documents, self.issues, detected).build()
        configuration = apply_overrides(configuration, overrides or {}, self.issues)
        self.issues.raise_if_any()
        return configuration

    def platform(self, overrides: Mapping[str, object]) -> object:
        """``[package] platform`` as the merged files and the command line set it (B6: the last file wins)."""
        value = None
        for document in self.documents:
            value = document.sections.get("package", {}).get("platform", value)
        return overrides.get("package.platform", value)

    def collect(self, text: str, path: str, stack: tuple[str, ...]) -> None:
        """Read a file, then (C-TOML-3) its includes in order, depth first, each once."""
        real = path if path.startswith("<") else os.path.realpath(path)
        self.loaded[real] = path
        document = read_document(text, path, self.issues)
        self.documents.append(document)
        base = os.getcwd() if path.startswith("<") else os.path.dirname(os.path.abspath(path))
        for pattern, required, key in document.includes:
            for included in self.expand(pattern, required, base, path, key):
                real_included = os.path.realpath(included)
                if real_included in stack or real_included == real:
                    # a glob may match the including file itself (include = ["*.toml"]): skipped; a path: a cycle
                    if not glob.has_magic(pattern):
                        self.issues.add(path, key, f"include cycle: {show(included)} is already being read")
                    continue
                if real_included in self.loaded:
                    continue  # read once, even when two patterns name it
                try:
                    with open(included, encoding="utf-8") as stream:
                        included_text = stream.read()
                except (OSError, UnicodeDecodeError) as error:
                    self.issues.add(path, key, f"cannot read {show(included)}: {error}")
                    continue
                self.collect(included_text, included, stack + (real,))

    def expand(self, pattern: str, required: bool, base: str, path: str, key: str) -> list[str]:
        """C-TOML-3: relative to the including file; globs sorted; no match: ignored unless required."""
        full = os.path.join(base, os.path.expanduser(pattern))
        if glob.has_magic(full):
            matches = sorted(name for name in glob.glob(full) if os.path.isfile(name))
        elif os.path.isdir(full):
            self.issues.add(path, key, f"{show(pattern)} is a directory (include a glob such as \"dir/*.toml\")")
            return []
        else:
            matches = [full] if os.path.exists(full) else []
        if required and not matches:
            self.issues.add(path, key, f"{show(pattern)} matches no file ({full})")
        return matches


class _Merger:
    """B6 merging and the steps after it; ``build`` returns the configuration (issues may remain)."""

    def __init__(self, documents: list[Document], issues: Issues, detected: Sequence[model.MilterSettings] = ()):
        self.documents = documents
        self.issues = issues
        self.milters: dict[str, dict] = {}
        self.detected = tuple(detected)
        for milter in self.detected:  # D-9: the lowest layer
            values = {field.name: getattr(milter, field.name) for field in dataclasses.fields(milter)
                      if field.compare and field.name != "name"}
            failed = set()
            if values.get("connection_spec") is not None:
                try:
                    values["connection_spec"] = _SPEC.parse(values["connection_spec"], Context("/"))
                except Invalid as error:
                    self.issues.invalid(milter.source or "<detected>", f"milter {show(milter.name)}: connection_spec",
                                        error)
                    failed.add("connection_spec")
            self.milters[milter.name] = {"values": values, "file": milter.source or "<detected>", "key": "",
                                         "source": milter.source or "detected", "failed": failed}
        self.conditions: dict[str, ConditionEntry] = {}
        self.restricts: dict[str, RestrictEntry] = {}
        self.origins: dict[str, tuple[str, str]] = {}

    def build(self) -> model.Configuration:
        sections = {name: section_defaults(name) for name in SECTIONS}
        for document in self.documents:
            self.merge_sections(sections, document)
            self.merge_milters(document)
            self.merge_conditions(document)
        self.attach()
        self.patch()
        self.remove()
        milters = self.finish_milters()
        self.check_references(sections, milters)
        self.check_entry_points(sections)
        built = {name: SECTION_CLASSES[name](**values) for name, values in sections.items()}
        built["trust"] = self.read_trust_files(built["trust"])
        return model.Configuration(
            version=1, milters=tuple(milters),
            conditions=tuple(entry.definition for entry in self.conditions.values()),
            restrict_accounts=tuple(entry.restriction for entry in self.restricts.values()),
            rules=tuple(rule for document in self.documents for _key, rule in document.rules),
            remove_milters=tuple(pattern for document in self.documents for pattern, _key in document.remove_milters),
            files=tuple(document.path for document in self.documents), origins=self.origins, **built)

    def merge_sections(self, sections: dict[str, dict], document: Document) -> None:
        """B6 rows 1–2: scalars (and [manager]/[hooks] arrays) later file wins; tunable lists concatenated."""
        for section, values in document.sections.items():
            settings = {setting.name: setting for setting in SECTIONS[section]}
            for name, value in values.items():
                self.origins[f"{section}.{name}"] = (document.path, f"{section}.{name}")
                if settings[name].accumulate:
                    sections[section][name] = tuple(sections[section][name]) + tuple(value)  # type: ignore
                else:
                    sections[section][name] = value

    def merge_milters(self, document: Document) -> None:
        """B6 rows 3–4: new names appended; an existing name gets the keys present, keeps its position (C-Q-1)."""
        for entry in document.milters:
            state = self.milters.get(entry.name)
            if state is None:
                self.milters[entry.name] = {"values": dict(entry.values), "file": entry.file, "key": entry.key,
                                            "source": f"defined in {entry.file}", "failed": set(entry.failed)}
            else:
                state["values"].update(entry.values)
                state["failed"] |= entry.failed
                state["source"] += f"; changed in {entry.file}"

    def merge_conditions(self, document: Document) -> None:
        """B6 row 5: a ``[[condition]]`` with an existing name is replaced entirely (its position is kept)."""
        for entry in document.conditions:
            clash = self.restricts.get(entry.definition.name)
            if clash is not None:
                self.issues.add(entry.file, f"{entry.key}.name", f"{show(entry.definition.name)} is already the "
                                f"condition_name of {clash.file}: {clash.key}")
                continue
            self.conditions[entry.definition.name] = entry
        for entry in document.restricts:
            name = entry.restriction.condition_name
            clash = self.restricts.get(name) or self.conditions.get(name)
            if clash is not None:
                self.issues.add(entry.file, f"{entry.key}.condition_name", f"{show(name)} is already defined in "
                                f"{clash.file}: {clash.key}")
                continue
            self.restricts[name] = entry

    def matching(self, globs: tuple[str, ...]) -> list[dict]:
        return [state for name, state in self.milters.items() if any(fnmatchcase(name, pattern) for pattern in globs)]

    def attach(self) -> None:
        """B5 ``attach_to`` (condition order), then M-AC-B8 ``milters`` (file order); no duplicates."""
        pairs = [(entry.definition.name, entry.attach_to) for entry in self.conditions.values()]
        pairs += [(entry.restriction.condition_name, entry.milters) for entry in self.restricts.values()]
        for name, globs in pairs:
            for state in self.matching(globs):
                current = tuple(state["values"].get("applicable_conditions", ()))
                if name not in current:
                    state["values"]["applicable_conditions"] = current + (name,)

    def patch(self) -> None:
        """B3 ``[[milter_patch]]`` in file order: keys override; conditions set, then added, then removed."""
        for document in self.documents:
            for entry in document.patches:
                for state in self.matching(entry.names):
                    state["values"].update(entry.values)
                    conditions = list(state["values"].get("applicable_conditions", ()))
                    conditions += [name for name in entry.add if name not in conditions]
                    conditions = [name for name in conditions if name not in entry.remove]
                    state["values"]["applicable_conditions"] = tuple(conditions)
                    state["source"] += f"; patched by {entry.file}: {entry.key}"

    def remove(self) -> None:
        """B6 row 7: ``remove_milters`` from every file, names or globs, applied after everything else."""
        globs = tuple(pattern for document in self.documents for pattern, _key in document.remove_milters)
        for name in [name for name in self.milters if any(fnmatchcase(name, pattern) for pattern in globs)]:
            del self.milters[name]

    def finish_milters(self) -> list[model.MilterSettings]:
        result = []
        for name, state in self.milters.items():
            values = {setting.name: setting.default for setting in MILTER}
            values.update(state["values"], name=name)
            socket_only = sorted(SOCKET_ONLY_KEYS & set(state["values"]))
            if values["python"] is not None and values["connection_spec"] is not None:
                self.issues.add(state["file"], f"milter {show(name)}", "python and connection_spec exclude each "
                                "other: a child runs in process or behind a socket")
            elif values["python"] is not None and socket_only:  # D-17: an in-process child has no use for them
                self.issues.add(state["file"], f"milter {show(name)}", f"{', '.join(socket_only)}: only for a child "
                                "behind a socket; an in-process child (python) is not connected, written to or started")
            elif (values["enabled"] and values["connection_spec"] is None and values["python"] is None
                  and not {"connection_spec", "python"} & state["failed"]):
                self.issues.add(state["file"], f"milter {show(name)}", "connection_spec (or python) is required when "
                                "the milter is enabled")
            result.append(model.MilterSettings(**values, source=state["source"]))
        return result

    def check_entry_points(self, sections: dict[str, dict]) -> None:
        """C-TOML-1: every function named by [hooks] and python checkers imports (D-17: no inert key)."""
        for section, key, name in named_entry_points(sections):
            try:
                resolve_entry_point(name)
            except EntryPointError as error:
                setting = key.split(".", 1)[1].split("[", 1)[0]
                files = [document.path for document in self.documents
                         if setting in document.sections.get(section, {})]
                self.issues.add(files[-1] if files else COMMAND_LINE, key, str(error))

    def check_references(self, sections: dict[str, dict], milters: list[model.MilterSettings]) -> None:
        """C-TOML-4: unknown condition names, milters named by milter_status, DNSBL zones not configured."""
        conditions = set(BUILTIN_CONDITIONS) | set(self.conditions) | set(self.restricts)
        names = {milter.name for milter in milters}
        dnsbl = sections["dnsbl"]
        zones = {service.zone for service in dnsbl["services"]}
        if dnsbl["use_default_services"]:
            zones |= {service.zone for service in DNSBL_SERVICES}
        for milter in self.detected:
            for name in milter.applicable_conditions:
                if name not in conditions:
                    self.issues.add(milter.source or "<detected>", f"milter {show(milter.name)}",
                                    f"unknown condition {show(name)}{did_you_mean(name, conditions)}")
        for document in self.documents:
            for reference in document.references:
                if reference.kind == "condition" and reference.name not in conditions:
                    self.issues.add(reference.file, reference.key, f"unknown condition {show(reference.name)}"
                                    f"{did_you_mean(reference.name, conditions)}")
                elif reference.kind == "milter" and reference.name not in names:
                    self.issues.add(reference.file, reference.key, f"unknown milter {show(reference.name)}"
                                    f"{did_you_mean(reference.name, names)}")
                elif reference.kind == "zone" and reference.name not in zones:
                    self.issues.add(reference.file, reference.key, f"zone {show(reference.name)} is not a [dnsbl] "
                                    "zone")

    def read_trust_files(self, trust: model.TrustSettings) -> model.TrustSettings:
        """M-AC-B6 ``load_envelope_from_domains``: read each file at load time; problems name the file and line."""
        domains: list[str] = []
        patterns: list[Regex] = []
        for path in trust.envelope_from_domain_files:
            try:
                with open(path, encoding="utf-8") as stream:
                    text = stream.read()
            except (OSError, UnicodeDecodeError) as error:
                self.issues.add(path, "", f"cannot read (trust.envelope_from_domain_files): {error}")
                continue
            file_domains, file_patterns = parse_trust_domain_lines(text)
            domains += file_domains
            for number, pattern in file_patterns:
                try:
                    patterns.append(compile_regex(pattern, TRUST_PATTERN_FLAGS))
                except Invalid as error:
                    self.issues.add(path, f"line {number}", error.message)
        return model.TrustSettings(trust.use_default_domains, trust.envelope_from_domains,
                                   trust.envelope_from_domain_patterns, trust.envelope_from_domain_files,
                                   tuple(domains), tuple(patterns))


def apply_overrides(configuration: model.Configuration, overrides: Mapping[str, object], issues: Issues
                    ) -> model.Configuration:
    """C-FILE-4 / B6 last row: command-line values replace the files' values, checked like TOML values."""
    context = Context(os.getcwd())
    typed: Mapping[str, str] = getattr(overrides, "typed", {})
    changed: dict[str, dict[str, object]] = {}
    origins = dict(configuration.origins)
    for key, raw in overrides.items():
        where = typed.get(key, key)  # the option as the user typed it, when known
        setting = find_setting(key)
        if setting is None:
            issues.add(COMMAND_LINE, where, "unknown setting")
            continue
        try:
            value = setting.kind.parse(raw, context)
        except Invalid as error:
            issues.invalid(COMMAND_LINE, where, error)
            continue
        changed.setdefault(setting.table, {})[setting.name] = value
        origins[key] = (COMMAND_LINE, where)
    if not changed:
        return configuration
    replacements = {section: dataclasses.replace(getattr(configuration, section), **values)
                    for section, values in changed.items()}
    return dataclasses.replace(configuration, command_line=tuple(overrides), origins=origins, **replacements)
