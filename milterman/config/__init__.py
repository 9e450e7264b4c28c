"""milter-manager's TOML configuration (D-8): schema, loading, checking, rendering.

Standard library only (``tomllib``/``tomli``), plus the connection-spec grammar of
:mod:`milterman.spec`, which looks no name up: loading does no network I/O at all.

Main entry points::

    configuration = load("/etc/milter-manager", overrides=overrides_from_options(arguments))
    text = render(configuration)            # --show-config; load_string(text) == configuration
"""

from .builtins import (BUILTIN_CONDITIONS, DNSBL_SERVICES, S25R_BLACKLIST, S25R_BLACKLIST_HOSTS, S25R_WHITELIST,
                       TRUST_DOMAINS)
from .cli import options_help, overrides_from_options
from .errors import ConfigurationError, Issue
from .loader import DEFAULT_CONFIG_DIR, ENVIRONMENT_VARIABLE, MAIN_FILE, find_main_file, load, load_string, search_path
from .model import (Configuration, ConditionDefinition, ConditionRule, ControllerSettings, DatabaseSettings,
                    DnsblSettings, HooksSettings, LogSettings, ManagerSettings, MilterSettings, PackageSettings,
                    RemoteNetworkSettings, Reply, RestrictAccounts, RuleSettings, S25rSettings, SecuritySettings,
                    StressSettings, TrustSettings)
from .predicates import CONDITION_STAGES, PREDICATES, STAGES, HeaderMatch, Match, Predicate, TimeWindow
from .render import dumps, render
from .values import DnsblService, Regex

__all__ = [
    "BUILTIN_CONDITIONS", "DNSBL_SERVICES", "S25R_BLACKLIST", "S25R_BLACKLIST_HOSTS", "S25R_WHITELIST", "TRUST_DOMAINS",
    "options_help", "overrides_from_options", "ConfigurationError", "Issue",
    "DEFAULT_CONFIG_DIR", "ENVIRONMENT_VARIABLE", "MAIN_FILE", "find_main_file", "load", "load_string", "search_path",
    "Configuration", "ConditionDefinition", "ConditionRule", "ControllerSettings", "DatabaseSettings",
    "DnsblSettings", "HooksSettings", "LogSettings", "ManagerSettings", "MilterSettings", "PackageSettings",
    "RemoteNetworkSettings", "Reply", "RestrictAccounts", "RuleSettings", "S25rSettings", "SecuritySettings",
    "StressSettings", "TrustSettings", "CONDITION_STAGES", "PREDICATES", "STAGES", "HeaderMatch", "Match",
    "Predicate", "TimeWindow", "dumps", "render", "DnsblService", "Regex",
]
