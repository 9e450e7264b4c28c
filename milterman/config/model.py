"""The typed, frozen result of loading: what the manager and the server read.

Field names are the TOML key names; the defaults, ranges and help texts are not
repeated here, they live in :mod:`.schema` (one declaration per setting; a test
checks that these fields and the schema agree). Load-time directives (``include``,
``[[milter_patch]]``, ``attach_to``, the ``milters`` of ``[[restrict_accounts]]``)
are consumed by loading and do not appear here, so that ``render`` →
``load_string`` gives an equal :class:`Configuration` (D-8). ``remove_milters`` is
kept: it matches none of the remaining milters, and written back it removes the
same detected milters again (D-9).
``source`` fields say where something came from; they are shown as comments by
``render`` and do not take part in equality. Connection specs are
:class:`~milterman.spec.SpecText`: the text as written, parsed (``.spec``), not looked up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..spec import SpecText
from .predicates import Match
from .values import DnsblService, Network, Regex


@dataclass(frozen=True)
class PackageSettings:
    """A2 ``[package]``: ``platform = "debian"`` asks for the detection of Debian's milters (D-9); ``options``
    is refused (D-17)."""

    platform: str | None
    options: str | None


@dataclass(frozen=True)
class SecuritySettings:
    """A3 ``[security]``."""

    privilege_mode: bool
    effective_user: str | None
    effective_group: str | None


@dataclass(frozen=True)
class LogSettings:
    """A4 ``[log]``; ``level`` is a level expression, ``path`` None or ``"-"`` = stdout."""

    level: str
    path: str | None
    use_syslog: bool
    syslog_facility: str


@dataclass(frozen=True)
class ManagerSettings:
    """A5/B3 ``[manager]``."""

    connection_spec: SpecText
    unix_socket_mode: int
    unix_socket_group: str | None
    remove_unix_socket_on_create: bool
    remove_unix_socket_on_close: bool
    daemon: bool
    pid_file: str | None
    maintenance_interval: int
    suspend_time_on_unacceptable: int
    max_connections: int
    max_file_descriptors: int
    custom_configuration_directory: str | None
    fallback_status: str
    fallback_status_at_disconnect: str
    event_loop_backend: str
    n_workers: int
    packet_buffer_size: int
    chunk_size: int
    max_pending_finished_sessions: int
    connection_check_interval: int
    connection_checkers: tuple[str, ...]
    report_memory_statistics: bool
    graceful_timeout: float
    worker_timeout: float


@dataclass(frozen=True)
class ControllerSettings:
    """A6 ``[controller]``; ``connection_spec`` None = no controller (D-7)."""

    connection_spec: SpecText | None
    unix_socket_mode: int
    unix_socket_group: str | None
    remove_unix_socket_on_create: bool
    remove_unix_socket_on_close: bool
    #: the metrics endpoint (Prometheus text format over HTTP); None = off
    metrics_spec: SpecText | None = None


@dataclass(frozen=True)
class HooksSettings:
    """B3 ``[hooks]``: ``"module:function"`` entry points (C-TOML-1)."""

    maintained: tuple[str, ...]
    started: tuple[str, ...]


@dataclass(frozen=True)
class DatabaseSettings:
    """A10 ``[database]``: handed to hooks only; the core never reads it."""

    type: str | None
    name: str | None
    host: str | None
    port: int | None
    path: str | None
    user: str | None
    password: str | None
    extra_options: dict | None


@dataclass(frozen=True)
class S25rSettings:
    """B4 ``[s25r]`` (M-AC-B1); the default lists are in :mod:`.builtins`."""

    check_only_ipv4: bool
    use_default_lists: bool
    whitelist: tuple[Regex, ...]
    whitelist_hosts: tuple[str, ...]
    blacklist: tuple[Regex, ...]
    blacklist_hosts: tuple[str, ...]


@dataclass(frozen=True)
class RemoteNetworkSettings:
    """B4 ``[remote_network]`` (M-AC-B2)."""

    local_addresses: tuple[Network, ...]
    remote_addresses: tuple[Network, ...]


@dataclass(frozen=True)
class StressSettings:
    """B4 ``[stress]`` (M-AC-B5): -1 auto-detect, 0 never stressed."""

    threshold_n_connections: int


@dataclass(frozen=True)
class TrustSettings:
    """B4 ``[trust]`` (M-AC-B6); domains are lower-cased, patterns case-insensitive.

    ``file_domains``/``file_patterns`` hold what the ``envelope_from_domain_files``
    contained when loaded (so the manager does no file I/O for it); they are
    derived from the file names and are left out of equality.
    """

    use_default_domains: bool
    envelope_from_domains: tuple[str, ...]
    envelope_from_domain_patterns: tuple[Regex, ...]
    envelope_from_domain_files: tuple[str, ...]
    file_domains: tuple[str, ...] = field(default=(), compare=False)
    file_patterns: tuple[Regex, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class DnsblSettings:
    """B4 ``[dnsbl]`` (M-AC-B7)."""

    use_default_services: bool
    services: tuple[DnsblService, ...]
    name_servers: tuple[str, ...]
    timeout: float


@dataclass(frozen=True)
class MilterSettings:
    """A7/B3 one ``[[milter]]`` after merging and patches (C-Q-1 fixed: every key is merged)."""

    name: str
    connection_spec: SpecText | None
    description: str | None
    enabled: bool
    fallback_status: str
    evaluation_mode: bool
    applicable_conditions: tuple[str, ...]
    command: str | None
    command_options: str | tuple[str, ...] | None
    user_name: str | None
    connection_timeout: float
    writing_timeout: float
    reading_timeout: float
    end_of_message_timeout: float
    retry_delay: float
    #: ``"module:Class"`` of an in-process child (instead of connection_spec)
    python: str | None = None
    #: keep the connection across SMTP sessions with ``K`` (manager/pool.py)
    reuse_connection: bool = False
    #: where it came from ("defined in FILE", "detected from /etc/opendkim.conf", D-9); a comment in render
    source: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ConditionRule:
    """B5 one ``[[condition.rule]]``: ``action`` is ``stop`` or ``apply`` (C-COND-1)."""

    stage: str
    match: Match
    action: str
    set_macros: tuple[tuple[str, str], ...] = ()
    set_flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConditionDefinition:
    """B5 a user-defined applicable condition; rules are tried in order per stage (C-COND-1)."""

    name: str
    description: str | None
    rules: tuple[ConditionRule, ...]
    source: str | None = field(default=None, compare=False)
    #: a Python class ``"module:Class"`` with per-stage methods, instead of rules
    python: str | None = None

    def rules_for(self, stage: str) -> tuple[ConditionRule, ...]:
        """The rules of one stage, in file order."""
        return tuple(rule for rule in self.rules if rule.stage == stage)

    @property
    def stages(self) -> frozenset[str]:
        """Stages this condition reads (D-2: the manager must not ask the MTA to skip them)."""
        return frozenset(rule.stage for rule in self.rules)


@dataclass(frozen=True)
class RestrictAccounts:
    """B4/M-AC-B8 a generated condition: the milter only sees messages whose recipients all match.

    Accounts are compared exactly, patterns with ``re.search``, both after one pair
    of angle brackets is stripped from the RCPT argument.
    """

    condition_name: str
    accounts: tuple[str, ...]
    account_patterns: tuple[Regex, ...]
    source: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Reply:
    """B7 ``reply``: ``y CODE XCODE text`` sent for a terminal reject / temporary-failure rule (C-RULE-3)."""

    code: int
    xcode: str | None = None
    text: str | None = None


#: C-RULE-3: actions that answer the MTA themselves and end the chain
TERMINAL_ACTIONS = ("accept", "reject", "temporary-failure", "discard")
RULE_ACTIONS = ("skip", "only") + TERMINAL_ACTIONS + ("set-macro",)


@dataclass(frozen=True)
class RuleSettings:
    """B7 one ``[[rule]]`` of the manager-level chain (C-RULE-1…6)."""

    name: str | None
    stage: str
    match: Match
    action: str
    milters: tuple[str, ...] = ()
    reply: Reply | None = None
    set_macros: tuple[tuple[str, str], ...] = ()
    final: bool = False

    @property
    def terminal(self) -> bool:
        """C-RULE-3: a terminal rule ends evaluation as if ``final = true``."""
        return self.action in TERMINAL_ACTIONS

    @property
    def ends_chain(self) -> bool:
        """C-RULE-1/3: later rules are not evaluated after this one matched."""
        return self.final or self.terminal


@dataclass(frozen=True)
class Configuration:
    """The effective configuration: built-in defaults < files (B6) < command line (C-FILE-4)."""

    version: int
    package: PackageSettings
    security: SecuritySettings
    log: LogSettings
    manager: ManagerSettings
    controller: ControllerSettings
    hooks: HooksSettings
    database: DatabaseSettings
    s25r: S25rSettings
    remote_network: RemoteNetworkSettings
    stress: StressSettings
    trust: TrustSettings
    dnsbl: DnsblSettings
    milters: tuple[MilterSettings, ...] = ()
    conditions: tuple[ConditionDefinition, ...] = ()
    restrict_accounts: tuple[RestrictAccounts, ...] = ()
    rules: tuple[RuleSettings, ...] = ()
    #: B6: the ``remove_milters`` globs of every file (already applied)
    remove_milters: tuple[str, ...] = ()
    #: files read, in merge order
    files: tuple[str, ...] = field(default=(), compare=False)
    #: dotted keys set from the command line (B6 last row)
    command_line: tuple[str, ...] = field(default=(), compare=False)
    #: where each section key set by a file or an option came from, as messages name it (FILE, KEY):
    #: ``(FILE, "security.effective_user")`` or ``("command line", "-u")`` (absent: the built-in default)
    origins: Mapping[str, tuple[str, str]] = field(default_factory=dict, compare=False)

    def milter(self, name: str) -> MilterSettings | None:
        """The child milter of that name, or None."""
        return next((milter for milter in self.milters if milter.name == name), None)

    def condition(self, name: str) -> ConditionDefinition | RestrictAccounts | None:
        """A user or generated condition by name (built-in names give None: they have no definition)."""
        for condition in self.conditions:
            if condition.name == name:
                return condition
        for restriction in self.restrict_accounts:
            if restriction.condition_name == name:
                return restriction
        return None

    def rules_for(self, stage: str) -> tuple[RuleSettings, ...]:
        """C-RULE-1: the manager rules of one stage, in file order."""
        return tuple(rule for rule in self.rules if rule.stage == stage)
