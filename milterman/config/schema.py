"""Every setting, declared once: name, kind (type and range), default, command-line options, help text.

The TOML validation (:mod:`.reader`), ``--help`` (:func:`.cli.options_help`),
``--show-config`` (:mod:`.render`) and the configuration guide (:mod:`.guide`) are
all made from these tables. Section tables (B3/B4) map onto the
dataclasses of :mod:`.model`; array-of-table keys (``[[milter]]``, ``[[rule]]``…)
are declared here too, with the predicates of B5.1 in :mod:`.predicates`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..spec import DEFAULT_SPEC, SpecText
from . import model
from .builtins import TRUST_PATTERN_FLAGS
from .predicates import CONDITION_STAGES, STAGES
from .values import (AddressKind, AnyTable, Boolean, Checker, Choice, ClassReference, CommandOptions, Context,
                     DnsblServiceKind,
                     Domain, EntryPoint, Facility, Integer, Kind, ListOf, LogLevel, Mode, NetworkKind, Number,
                     NumericId, Path,
                     RegexKind, Refused, Spec, Status, Text)


@dataclass(frozen=True)
class Option:
    """A command-line option of a setting (A11); ``constant`` is the value of a flag without argument."""

    names: tuple[str, ...]
    metavar: str | None = None
    constant: object = None
    help: str = ""
    deprecated: bool = False
    #: a stricter check of this spelling's value (``--user-id`` takes digits only), same for every command
    check: Kind | None = None


@dataclass(frozen=True)
class Setting:
    """One key: ``table`` is the TOML table ("" for top-level keys), ``accumulate``: B6 list concatenation."""

    table: str
    name: str
    kind: Kind
    default: object = None
    help: str = ""
    options: tuple[Option, ...] = ()
    required: bool = False
    accumulate: bool = False

    @property
    def key(self) -> str:
        return f"{self.table}.{self.name}" if self.table else self.name


def _settings(table: str, *rows: tuple) -> tuple[Setting, ...]:
    """Rows of ``(name, kind, default, help[, options][, extra keyword arguments])``."""
    result = []
    for row in rows:
        name, kind, default, help_text, *rest = row
        options = rest[0] if rest and isinstance(rest[0], tuple) else ()
        extra = rest[-1] if rest and isinstance(rest[-1], dict) else {}
        result.append(Setting(table, name, kind, default, help_text, options, **extra))
    return tuple(result)


_STR = Text()
_BOOL = Boolean()
_COUNT = Integer(0)
_STATUS = Status()
_GLOBS = ListOf(Text())
_CONDITION_NAMES = ListOf(Text(), unique=True)
_ACCUMULATE = {"accumulate": True}

#: D-15: accepted event loop backends; "glib" gets its own refusal message
EVENT_LOOP_BACKENDS = Choice(("default", "libev", "libuv"),
                             refused={"glib": "is not available (the GLib loop of the original is not offered, D-15)"})

#: A2/D-9: the platforms whose milters are detected; the original's others get a message
PLATFORMS = Choice(("debian",), refused={
    name: "has no milter detection here: only Debian's milters are detected; leave [package] platform unset and "
          "list the milters as [[milter]] tables" for name in ("redhat", "freebsd", "pkgsrc", "unknown")})

#: B2 top-level keys (tables and arrays of tables are listed in TABLES / ARRAYS)
TOP_LEVEL = _settings(
    "",
    ("version", Integer(1, 1), None, "Schema version; required in the main file, must be 1.", {"required": True}),
    ("include", ListOf(Text()), (), "Files or globs merged after this file, sorted; missing ones are ignored "
     "(C-TOML-3)."),
    ("include_required", ListOf(Text()), (), "As `include`, but a pattern that matches nothing is an error."),
    ("remove_milters", _GLOBS, (), "Milter names or globs removed after all merging (B6)."),
)

SECTIONS: dict[str, tuple[Setting, ...]] = {
    "package": _settings(
        "package",
        ("platform", PLATFORMS, None, "`\"debian\"`: register the milters installed and enabled from Debian's "
         "packages (D-9; `--no-detect` turns it off); unset: exactly the `[[milter]]` tables."),
        ("options", Refused("is not used: it was extra input of milter manager 2.x's detectors (an rc.d prefix on "
                            "pkgsrc); Debian's milters are found from their own files; remove the key"), None,
         "Refused: an input of milter manager 2.x's detectors; not used here (D-17)."),
    ),
    "security": _settings(
        "security",
        ("privilege_mode", _BOOL, False, "Keep a root launcher for child milter commands (M-LAU-1, D-10)."),
        ("effective_user", _STR, None, "User to switch to after listening (D-5).",
         (Option(("-u", "--user"), "USER"), Option(("--user-name",), "NAME"),
          Option(("--user-id",), "UID", check=NumericId("UID")))),
        ("effective_group", _STR, None, "Group to switch to after listening (D-5).",
         (Option(("-g", "--group"), "GROUP"), Option(("--group-name",), "NAME"),
          Option(("--group-id",), "GID", check=NumericId("GID")))),
    ),
    "log": _settings(
        "log",
        ("level", LogLevel(), "default", "Log levels, e.g. `\"default|info\"` or `[\"error\", \"statistics\"]`.",
         (Option(("--log-level",), "LEVEL"), Option(("-v", "--verbose"), constant="all", help="Log everything."),
          Option(("-q", "--quiet"), constant="none", help="Log nothing."))),
        ("path", Path(dash_means_stdout=True), None, "Log file, reopened on SIGUSR1; unset or `\"-\"`: standard "
         "output.", (Option(("--log-path",), "PATH"),)),
        ("use_syslog", _BOOL, True, "Also log to syslog.",
         (Option(("--syslog",), constant=True, help="Also log to syslog."),)),
        ("syslog_facility", Facility(), "mail", "Syslog facility.", (Option(("--syslog-facility",), "FACILITY"),)),
    ),
    "manager": _settings(
        "manager",
        ("connection_spec", Spec(), SpecText(DEFAULT_SPEC), "MTA-facing listen socket (packagers override the "
         "default).", (Option(("-s", "--connection-spec"), "SPEC"),)),
        ("unix_socket_mode", Mode(), 0o660, "Mode of the unix socket, set before privileges are dropped (D-5).",
         (Option(("--unix-socket-mode",), "MODE"),)),
        ("unix_socket_group", _STR, None, "Group of the unix socket.",
         (Option(("--unix-socket-group",), "GROUP"), Option(("--socket-group-name",), "GROUP", deprecated=True))),
        ("remove_unix_socket_on_create", _BOOL, True, "Remove a stale unix socket before binding; false: a socket "
         "file left behind makes the start fail."),
        ("remove_unix_socket_on_close", _BOOL, True, "Remove the unix socket at shutdown; false: leave it."),
        ("daemon", _BOOL, False, "Run in the background.",
         (Option(("--daemon",), constant=True, help="Run in the background."),
          Option(("--no-daemon",), constant=False, help="Stay in the foreground."))),
        ("pid_file", Path(), None, "File the process id is written to.", (Option(("--pid-file",), "FILE"),)),
        ("maintenance_interval", _COUNT, 10, "Run maintenance (hooks, memory line) every this many milter "
         "sessions; a connection that sends no command does not count; 0: never (M-MNT-1, D-12).",
         (Option(("--maintenance-interval",), "N"),)),
        ("suspend_time_on_unacceptable", _COUNT, 5, "Seconds accepting pauses when the process is out of "
         "descriptors; 0: 10 ms (M-ACC-2)."),
        ("max_connections", _COUNT, 0, "Sessions per worker at once; 0: unlimited (M-ACC-1, D-6).",
         (Option(("--max-connections",), "N"),)),
        ("max_file_descriptors", _COUNT, 0, "Descriptor limit to set; 0: system default (M-FD-1).",
         (Option(("--max-file-descriptors",), "N"),)),
        ("custom_configuration_directory", Refused(
            "is not used: nothing writes configuration here (set-configuration is not offered, D-7); put site "
            "settings in a file named by `include` and reload"), None,
         "Refused: milter manager 2.x's directory of configuration written by its controller (D-7, "
         "D-17)."),
        ("fallback_status", _STATUS, "accept", "Answer when the manager itself cannot go on (M-ERR-7, D-14)."),
        ("fallback_status_at_disconnect", _STATUS, "temporary-failure", "Answer for the pending command when the "
         "disconnect check finds the SMTP client gone (M-ERR-8)."),
        ("event_loop_backend", EVENT_LOOP_BACKENDS, "default", "gevent loop: default (= libev), libev or libuv "
         "(D-15).", (Option(("--event-loop-backend",), "BACKEND"),)),
        ("n_workers", Integer(0, 1000), 0, "Worker processes; 0: serve in the master process; a reload changes "
         "N > 0, not from or to 0 (M-WRK-1, D-5).",
         (Option(("--n-workers",), "N"),)),
        ("packet_buffer_size", _COUNT, 0, "Bytes of body packets to buffer before sending; 0: off (M-EOM-5).",
         (Option(("--packet-buffer-size",), "SIZE"),)),
        ("chunk_size", Integer(1, 65535), 65535, "Largest body chunk sent to a child (M-BODY-2)."),
        ("max_pending_finished_sessions", _COUNT, 0, "Finished sessions kept before cleanup; 0: only when idle "
         "(M-FIN-1).", (Option(("--max-pending-finished-sessions",), "N"),)),
        ("connection_check_interval", _COUNT, 0, "Seconds between disconnect checks while children work; 0 or no "
         "checker: off (M-ERR-8)."),
        ("connection_checkers", ListOf(Checker(), unique=True), (), "Disconnect checkers: `\"netstat\"` (reads the "
         "kernel's TCP table) or `\"python:module:function\"` (true while connected) (M-ERR-8)."),
        ("report_memory_statistics", _BOOL, False, "Add a full collection and the memory line to "
         "maintenance (M-MNT-1)."),
        ("graceful_timeout", Number(0.0, positive=True), 30.0, "Seconds old workers may finish their sessions on "
         "reload and stop (D-5).", (Option(("--graceful-timeout",), "SEC"),)),
        ("worker_timeout", Number(0.0, positive=True), 60.0, "Seconds a worker's heartbeat may stop before the "
         "master kills it and starts another (D-5).", (Option(("--worker-timeout",), "SEC"),)),
    ),
    "controller": _settings(
        "controller",
        ("connection_spec", Spec(loopback_only=True), None, "Controller socket (unix or loopback inet); unset: no "
         "controller (D-7)."),
        ("unix_socket_mode", Mode(), 0o660, "Mode of the controller's unix socket."),
        ("unix_socket_group", _STR, None, "Group of the controller's unix socket."),
        ("remove_unix_socket_on_create", _BOOL, True, "Remove a stale controller socket before binding; false: a "
         "socket file left behind makes the start fail."),
        ("remove_unix_socket_on_close", _BOOL, True, "Remove the controller socket at shutdown; false: leave it."),
        ("metrics_spec", Spec(), None, "Metrics endpoint: Prometheus' text format over HTTP at `/metrics` (unix or "
         "inet; a unix socket gets the mode, group and removal settings above); unset: none."),
    ),
    "hooks": _settings(
        "hooks",
        ("maintained", ListOf(EntryPoint()), (), "Functions `f(context)` called at each maintenance run."),
        ("started", ListOf(EntryPoint()), (), "Functions `f(context)` called once in each serving process after its "
         "gevent hub starts."),
    ),
    "database": _settings(
        "database",
        ("type", Choice(("mysql2", "sqlite3", "pg")), None, "Database kind (A10); handed to hooks as "
         "`context.database`, never read by the manager."),
        ("name", _STR, None, "Database name (SQLite: file or `:memory:`)."),
        ("host", _STR, None, "Database host."),
        ("port", Integer(1, 65535), None, "Database port."),
        ("path", _STR, None, "Database socket (SQLite: file when `name` is unset)."),
        ("user", _STR, None, "Database user."),
        ("password", _STR, None, "Database password."),
        ("extra_options", AnyTable(), None, "Further driver options."),
    ),
    "s25r": _settings(
        "s25r",
        ("check_only_ipv4", _BOOL, True, "Not applied to non-IPv4 clients (M-AC-B1 step 1)."),
        ("use_default_lists", _BOOL, True, "false: start with empty white and black lists."),
        ("whitelist", ListOf(RegexKind()), (), "Host regexes never treated as dynamic.", _ACCUMULATE),
        ("whitelist_hosts", ListOf(Text()), (), "Exact host names never treated as dynamic.", _ACCUMULATE),
        ("blacklist", ListOf(RegexKind()), (), "Host regexes treated as dynamic.", _ACCUMULATE),
        ("blacklist_hosts", ListOf(Text()), (), "Exact host names treated as dynamic.", _ACCUMULATE),
    ),
    "remote_network": _settings(
        "remote_network",
        ("local_addresses", ListOf(NetworkKind()), (), "Extra local networks (M-AC-B2).", _ACCUMULATE),
        ("remote_addresses", ListOf(NetworkKind()), (), "Networks always remote; checked first.", _ACCUMULATE),
    ),
    "stress": _settings(
        "stress",
        ("threshold_n_connections", Integer(-1), -1, "Sessions at which a process is stressed; -1: auto-detect, "
         "0: never (M-AC-B5)."),
    ),
    "trust": _settings(
        "trust",
        ("use_default_domains", _BOOL, True, "false: drop the default trusted domains (`trust.clear`)."),
        ("envelope_from_domains", ListOf(Domain()), (), "Trusted domains, exact (lower-cased) (M-AC-B6).",
         _ACCUMULATE),
        ("envelope_from_domain_patterns", ListOf(RegexKind(TRUST_PATTERN_FLAGS)), (), "Trusted domain regexes "
         "(case-insensitive).", _ACCUMULATE),
        ("envelope_from_domain_files", ListOf(Path()), (), "Files of domains and `/regex/` lines, read at load.",
         _ACCUMULATE),
    ),
    "dnsbl": _settings(
        "dnsbl",
        ("use_default_services", _BOOL, True, "false: drop the four default zones (M-AC-B7)."),
        ("services", ListOf(DnsblServiceKind()), (), "Zones: `{ zone = \"…\", expect = \"127.0.0.2\" }`.",
         _ACCUMULATE),
        ("name_servers", ListOf(AddressKind()), (), "Name servers to ask; empty: the system resolver.",
         _ACCUMULATE),
        ("timeout", Number(0.0, positive=True), 5.0, "Seconds to wait for each zone."),
    ),
}

#: section name → the model dataclass it becomes
SECTION_CLASSES: Mapping[str, type] = {
    "package": model.PackageSettings, "security": model.SecuritySettings, "log": model.LogSettings,
    "manager": model.ManagerSettings, "controller": model.ControllerSettings, "hooks": model.HooksSettings,
    "database": model.DatabaseSettings, "s25r": model.S25rSettings, "remote_network": model.RemoteNetworkSettings,
    "stress": model.StressSettings, "trust": model.TrustSettings, "dnsbl": model.DnsblSettings,
}

_TIMEOUT = Number(0.0, positive=True)

#: B3 ``[[milter]]`` keys
MILTER = _settings(
    "milter",
    ("name", Text(), None, "Unique name; a later table with the same name changes the keys it sets (B6).",
     {"required": True}),
    ("connection_spec", Spec(), None, "Where the child listens; required when enabled (unless `python`)."),
    ("description", _STR, None, "Free text."),
    ("enabled", _BOOL, True, "Disabled milters get no child (M-SES-2)."),
    ("fallback_status", _STATUS, "accept", "Status counted when this child fails (D-14, M-ERR-3)."),
    ("evaluation_mode", _BOOL, False, "Observe only: answers count as accept (M-EVAL-1)."),
    ("applicable_conditions", _CONDITION_NAMES, (), "Condition names (built-in or defined); all must let the "
     "child run."),
    ("command", _STR, None, "Program started when the child cannot be reached, never through a shell (D-10)."),
    ("command_options", CommandOptions(), None, "Arguments: a string, or an array with one word per element."),
    ("user_name", _STR, None, "User the command runs as (privilege mode)."),
    ("connection_timeout", _TIMEOUT, 297.0, "Seconds to connect (M-ERR-2)."),
    ("writing_timeout", _TIMEOUT, 7.0, "Seconds to write a packet (M-ERR-2)."),
    ("reading_timeout", _TIMEOUT, 7.0, "Seconds to wait for a reply (M-ERR-2)."),
    ("end_of_message_timeout", _TIMEOUT, 297.0, "Seconds to wait for the end-of-message reply (M-ERR-2)."),
    ("retry_delay", Number(0.0), 5.0, "Once the child is down: seconds before the first attempt to bring it "
     "back (its command is started first); each failed attempt doubles the wait, up to 60 s."),
    ("python", ClassReference(), None, "A `milterman.milter.Milter` subclass `\"module:Class\"` run inside each "
     "worker with no socket, instead of `connection_spec`."),
    ("reuse_connection", _BOOL, False, "Keep the connection to this child across SMTP sessions: it gets `K` "
     "(quit, a new connection follows) instead of `Q`, and a later session takes it instead of connecting and "
     "negotiating again; any failure of a kept connection falls back to a fresh one (P-CMD-14)."),
)

#: B3 ``[[milter_patch]]`` keys besides the ``[[milter]]`` keys (all but ``name``)
MILTER_PATCH = _settings(
    "milter_patch",
    ("names", ListOf(Text()), None, "Globs over milter names (required).", {"required": True}),
    ("add_applicable_conditions", _CONDITION_NAMES, (), "Condition names appended (no duplicates)."),
    ("remove_applicable_conditions", _CONDITION_NAMES, (), "Condition names removed."),
)


class _Placeholder(Kind):
    """Kinds of keys parsed by dedicated code (match, rule tables…); only their label is used from here."""

    def __init__(self, label: str):
        self.label = label

    def parse(self, raw: object, context: Context) -> object:  # pragma: no cover - never called
        raise NotImplementedError


_MACROS = _Placeholder("table: macro name → string")

#: B4 ``[[restrict_accounts]]`` (M-AC-B8)
RESTRICT_ACCOUNTS = _settings(
    "restrict_accounts",
    ("condition_name", Text(), None, "Name of the generated condition; default `Restrict Accounts by List: [...]`."),
    ("accounts", ListOf(Text()), (), "Addresses compared exactly (angle brackets stripped)."),
    ("account_patterns", ListOf(RegexKind()), (), "Address regexes (angle brackets stripped)."),
    ("milters", _GLOBS, ("*",), "Globs of milters the condition is appended to."),
)

#: B5 ``[[condition]]``
CONDITION = _settings(
    "condition",
    ("name", Text(), None, "Unique; may not reuse a built-in name.", {"required": True}),
    ("description", _STR, None, "Free text."),
    ("attach_to", _GLOBS, (), "Globs of milters this condition is appended to (after merging, before patches)."),
    ("python", ClassReference(), None, "A Python class `\"module:Class\"` whose stage methods (`connect`, `helo`, "
     "`envelope_from`, `envelope_recipient`, `data`, `header`, `end_of_header`, `body`, `end_of_message`) return "
     "whether to stop the child; instead of rules. Imported at start and on reload."),
    ("rule", _Placeholder("array of tables"), (), "The rules, `[[condition.rule]]`."),
)

#: B5 ``[[condition.rule]]``
CONDITION_RULE = _settings(
    "condition.rule",
    ("stage", Choice(CONDITION_STAGES), None,
     "One stage (not \"unknown\").", {"required": True}),
    ("match", _Placeholder("table of predicates (B5.1)"), None, "Predicates that must all hold; omitted: always."),
    ("action", Choice(("stop", "apply")), "stop", "`stop`: child not applied; `apply`: do not stop (C-COND-1)."),
    ("set_macros", _MACROS, {}, "Macros set on the child when the rule matches (M-MAC-4)."),
    ("set_flags", ListOf(Text(), unique=True), (), "Transaction-shelf flags set when the rule matches."),
)

#: B7 ``[[rule]]``
RULE = _settings(
    "rule",
    ("name", _STR, None, "Shown in logs."),
    ("stage", Choice(STAGES), None, "One stage (C-TOML-5).",
     {"required": True}),
    ("match", _Placeholder("table of predicates (B5.1)"), None, "Predicates that must all hold; omitted: always."),
    ("action", Choice(model.RULE_ACTIONS, aliases={"tempfail": "temporary-failure"}), None,
     "skip | only | accept | reject | temporary-failure | discard | set-macro (C-RULE-2…4).", {"required": True}),
    ("milters", ListOf(Text()), (), "Globs of milters, for `skip` and `only` (at least one there)."),
    ("reply", _Placeholder("{ code = 550, xcode = \"5.7.1\", text = \"…\" }"), None,
     "Reply for `reject` / `temporary-failure`; the code class must match (C-RULE-3)."),
    ("set_macros", _MACROS, {}, "Macros added to every child, for `set-macro` (C-RULE-4)."),
    ("final", _BOOL, False, "true: later rules are not evaluated for this command (C-RULE-1)."),
)

#: array-of-tables names (B2) → their keys
ARRAYS: Mapping[str, tuple[Setting, ...]] = {
    "milter": MILTER, "milter_patch": MILTER_PATCH, "restrict_accounts": RESTRICT_ACCOUNTS,
    "condition": CONDITION, "rule": RULE,
}

#: the server settings (D-5, D-6, M-ACC-1, M-FD-1, M-MNT-1): ServerConfig field → setting key. milter-manager
#: reads them from its files and options, milter-test-client from its options; names, kinds, defaults and
#: options are the settings' own, declared once above.
SERVER_SETTINGS: Mapping[str, str] = {
    "spec": "manager.connection_spec", "n_workers": "manager.n_workers",
    "unix_socket_mode": "manager.unix_socket_mode", "unix_socket_group": "manager.unix_socket_group",
    "remove_unix_socket_on_create": "manager.remove_unix_socket_on_create",
    "remove_unix_socket_on_close": "manager.remove_unix_socket_on_close",
    "user": "security.effective_user", "group": "security.effective_group", "daemon": "manager.daemon",
    "pid_file": "manager.pid_file", "graceful_timeout": "manager.graceful_timeout",
    "max_connections": "manager.max_connections", "max_file_descriptors": "manager.max_file_descriptors",
    "worker_timeout": "manager.worker_timeout", "event_loop_backend": "manager.event_loop_backend",
    "maintenance_interval": "manager.maintenance_interval",
    "report_memory_statistics": "manager.report_memory_statistics",
    "suspend_time_on_unacceptable": "manager.suspend_time_on_unacceptable",
}


def server_fields(value_of: Callable[[str], object]) -> dict[str, object]:
    """ServerConfig's fields from ``value_of(setting key)`` (a loaded configuration, or defaults and options)."""
    fields = {field: value_of(key) for field, key in SERVER_SETTINGS.items()}
    fields["spec"] = fields["spec"].spec  # type: ignore[attr-defined]  # parsed at load (SpecText)
    if fields["event_loop_backend"] == "default":
        fields["event_loop_backend"] = "libev"
    return fields


def section_defaults(section: str) -> dict[str, object]:
    """The built-in defaults of one section (C-FILE-4: the lowest layer)."""
    return {setting.name: setting.default for setting in SECTIONS[section]}


def all_settings() -> list[Setting]:
    """Every section setting, in declaration order (for ``--help`` and the command-line mapping)."""
    return [setting for settings in SECTIONS.values() for setting in settings]


def find_setting(key: str) -> Setting | None:
    """A section setting by dotted key (``manager.n_workers``)."""
    table, _, name = key.partition(".")
    for setting in SECTIONS.get(table, ()):
        if setting.name == name:
            return setting
    return None
