"""milter-manager as a served application: configuration → server settings and leaders.

The master loads and validates the configuration (at start and on SIGHUP, D-5, D-8)
with the standard library only; each serving process then builds the
:class:`ManagerContext` its leaders share.
"""

from __future__ import annotations

import dataclasses
import importlib
import os

from collections.abc import Callable

from .. import config as configuration_module
from ..config import schema as configuration_schema
from ..config.errors import show
from ..config.startup import milter_origin, origin
from ..config.values import loopback_problem
from ..log import Logger
from ..log import logger as default_logger
from ..net import Timeouts
from ..net.spec import SpecError, look_up_all, resolve
from ..server.app import Application, ServerConfig
from ..server.app import ConfigurationError as ServerConfigurationError
from ..server.process import StartupError
from .child import ChildDefinition
from .status import status_named


def detected_milters(root: str = "/") -> list:
    """Milters installed and enabled from Debian's packages, as configuration entries (D-9)."""
    from .detect import detect

    defaults = {setting.name: setting.default for setting in configuration_schema.MILTER}
    milters = []
    for found in detect(root):
        command = found.command or ()
        values = dict(defaults)
        values.update(name=found.name, connection_spec=found.connection_spec, enabled=found.enabled,
                      description=found.description,
                      applicable_conditions=tuple(found.applicable_conditions),
                      command=command[0] if command else None,
                      command_options=tuple(command[1:]) if len(command) > 1 else None)
        known = {field.name for field in dataclasses.fields(configuration_module.MilterSettings)}
        values = {key: value for key, value in values.items() if key in known}
        milters.append(configuration_module.MilterSettings(**values, source=f"detected from {found.source}"))
    return milters


class ManagerApplication(Application):
    """What the server runs for milter-manager."""

    name = "milter-manager"

    def __init__(self, config_dir: str | None, overrides: dict, *, detect: bool = True,
                 logger: Logger = default_logger, detect_root: str = "/") -> None:
        self.config_dir = config_dir
        self.overrides = overrides
        self.detect = detect
        self.detect_root = detect_root
        self.logger = logger
        self.launcher_socket = None
        self.launch_client = None
        self.context = None
        #: set once the server has bound its socket and announced the children (for the stop line)
        self.started = False
        self.hooks = None
        #: a configuration already loaded for this start (the command line's), used by the first load()
        self.loaded = None
        #: this serving process's counters, kept across reloads (made in the serving process)
        self.recorder = None
        #: the metrics endpoint the master listens on (set at start; a reload cannot move it)
        self.metrics_spec: str | None = None

    def configuration(self):
        """Load and validate (raises the configuration's ConfigurationError naming FILE: KEY).

        Debian's milters are detected only where the configuration asks, with ``[package] platform =
        "debian"`` (D-9; the bundled configuration does), and never with ``--no-detect``: they are the
        layer below the files. The files are read once, detection included.
        """
        detect = (lambda: detected_milters(self.detect_root)) if self.detect else None
        return configuration_module.load(self.config_dir, overrides=self.overrides, detect=detect)

    def load(self):
        """At start and on reload: the configuration, refused when it names users or groups that do not exist.

        At start it is the one the command line has just loaded (:attr:`loaded`), not read again. Host
        names are not looked up here (:meth:`name_check`). Configuration errors reach the server as its
        own ConfigurationError.
        """
        from ..config.startup import account_issues

        configuration, self.loaded = self.loaded, None
        try:
            if configuration is None:
                configuration = self.configuration()
            issues = account_issues(configuration)
            if issues:
                raise configuration_module.ConfigurationError(issues)
        except configuration_module.ConfigurationError as error:
            raise ServerConfigurationError(str(error)) from None
        check_rule_engine()
        return configuration, server_config(configuration)

    def name_check(self, configuration) -> Callable[[], None] | None:
        """Look up the host names of the connection specs (each with its FILE: KEY), or None without any.

        The master calls it at start, and on a reload off its signal loop: a name server that is
        slow or silent delays only the reload (bounded by :data:`milterman.net.spec.LOOKUP_TIMEOUT`).
        A name that does not resolve refuses the configuration, naming the value and where it is set.
        """
        named = [entry for entry in connection_specs(configuration) if entry[2].spec.needs_lookup]
        if not named:
            return None

        def check() -> None:
            issues = []
            for (key, where, text), result in zip(named, look_up_all([text.spec for _key, _where, text in named]),
                                                       strict=True):
                if isinstance(result, SpecError):
                    issues.append(configuration_module.Issue(*where, f"invalid spec {show(text)}: {result}"))
                elif key == "controller.connection_spec":
                    problem = loopback_problem(text, result.address)
                    if problem:
                        issues.append(configuration_module.Issue(*where, problem))
            if issues:
                raise ServerConfigurationError(str(configuration_module.ConfigurationError(issues)))

        return check

    def prepare(self, configuration, config: ServerConfig) -> None:
        """Fork the launcher before privileges are dropped (M-LAU-1, D-10).

        In privilege mode (and started as root) it keeps root and starts each command as its
        ``user_name``; otherwise it drops to the manager's user at once.
        """
        for level, line in announcement(configuration):
            self.logger.log(level, f"[manager][start] {line}")
        self.started = True
        privileged = configuration.security.privilege_mode and os.geteuid() == 0
        if not privileged and not any(milter.command for milter in configuration.milters):
            return
        from .launcher import start_launcher

        self.launcher_socket = start_launcher(
            self.logger, drop_to=None if privileged else (config.user, config.group))

    def reloaded(self, configuration) -> None:
        """log.* take effect on reload too (new workers are forked with the master's logger)."""
        apply_log_settings(configuration, self.logger)
        if configuration.controller.metrics_spec != self.metrics_spec:
            self.logger.warning(f"[server][reload][warning] controller.metrics_spec changed to "
                                f"{configuration.controller.metrics_spec or 'unset'}; it takes effect after a restart")
        if configuration.manager.daemon:
            self.logger.detached("milter-manager")  # no terminal any more: the file, or else syslog

    def controller_settings(self, configuration):
        """[controller] (D-7): off unless a connection_spec is set."""
        return _controller_socket(configuration, "connection_spec")

    def render_configuration(self, configuration) -> str:
        return configuration_module.render(configuration)

    def statistics(self) -> dict:
        context = self.context
        return context.statistics() if context is not None else {}

    def maintained(self, sessions: int) -> None:
        """At each maintenance run: the ``[hooks] maintained`` functions (M-MNT-1)."""
        if self.hooks is not None:
            self.hooks.run("maintained", sessions)

    def summarize(self, published: list[dict]) -> dict:
        """``children``: each child's health over every serving process (the per-worker detail stays);
        ``totals``: the counters summed over them (and over exited workers), what the metrics show."""
        from ..server.app import add_counters
        from .health import summarize

        counters: dict = {}
        for entry in published:
            add_counters(counters, entry.get("counters", {}))
        return {"children": summarize([entry.get("child_health", {}) for entry in published]),
                "totals": {"counters": counters,
                           "sessions_processing": sum(entry.get("sessions_processing", 0) for entry in published)}}

    def metrics_settings(self, configuration):
        """``controller.metrics_spec``: off unless set; a unix socket gets the controller's mode, group and
        removal settings."""
        self.metrics_spec = configuration.controller.metrics_spec
        return _controller_socket(configuration, "metrics_spec")

    def metric_families(self, status: dict) -> list:
        from .metrics import metric_families

        return metric_families(status)

    def make_handler(self, configuration):
        import gevent

        from ..net import MilterSession
        from .hooks import Hooks
        from .launcher import LaunchClient
        from .session.leader import Leader

        if self.launcher_socket is not None and self.launch_client is None:
            self.launch_client = LaunchClient(self.launcher_socket)  # this process's own channel (M-LAU-1)
        if self.recorder is None:
            from .metrics import Recorder

            self.recorder = Recorder()
        context = build_context(configuration, self.logger, self.launch_client, self.recorder)
        if self.context is not None:
            self.context.close()  # a reload in a single process: the new context keeps its own health
        self.context = context
        gevent.get_hub()  # the hub exists before the started hooks run
        self.hooks = Hooks(configuration, self.logger)
        self.hooks.run("started", 0)
        packet_buffer_size = configuration.manager.packet_buffer_size

        def leader(session) -> Leader:  # one factory, not a closure made per session
            return Leader(session, context)

        def handle(sock, address) -> "bool | MilterSession":
            return MilterSession(sock, leader, packet_buffer_size=packet_buffer_size).start()

        return handle


def _controller_socket(configuration, key: str):
    """(spec, mode, group, remove on create, remove on close) of a socket of ``[controller]``, or None: unset."""
    controller = configuration.controller
    text = getattr(controller, key)
    if not text:
        return None
    try:
        spec = resolve(text.spec)  # checked by name_check at start
    except SpecError as error:
        raise ServerConfigurationError(f"controller.{key}: {error}") from None
    return (spec, controller.unix_socket_mode, controller.unix_socket_group,
            controller.remove_unix_socket_on_create, controller.remove_unix_socket_on_close)


def announcement(configuration) -> list[tuple[int, str]]:
    """(level, line) for the start: each child the sessions will use and where it came from, or that none will.

    With no child every session gets the manager's fallback status; saying so once here replaces
    an error per mail (issue 8).
    """
    from ..log import MESSAGE, WARNING

    lines = []
    for milter in configuration.milters:
        if not milter.enabled or not (milter.connection_spec or milter.python):
            continue
        details = "; ".join(part for part in (milter.source, "evaluation mode" if milter.evaluation_mode else "")
                            if part)
        lines.append((MESSAGE, f"child milter {show(milter.name)}: "
                               f"{milter.connection_spec or f'python {milter.python} (in process)'}"
                               + (f" ({details})" if details else "")))
    if not lines:
        lines.append((WARNING, "no child milter configured: every session gets manager.fallback_status "
                               f"({configuration.manager.fallback_status})"))
    return lines


def apply_log_settings(configuration, logger: Logger = default_logger) -> None:
    """log.* (D-11): levels, file, and syslog (facility mail) unless switched off; at start and on every
    reload. Raises ConfigurationError naming the key when the file cannot be opened."""
    from ..log import LogLevelError, parse_level

    settings = configuration.log
    level = settings.level if isinstance(settings.level, str) else "|".join(settings.level)
    try:
        parsed = parse_level(level)
    except LogLevelError as error:
        raise _log_error(configuration, "log.level", str(error)) from None
    path = settings.path if settings.path and settings.path != "-" else None
    if path != logger.path:
        try:
            logger.set_path(path)
        except OSError as error:
            raise _log_error(configuration, "log.path", str(error)) from None
    logger.set_level(parsed)
    if settings.use_syslog:
        logger.use_syslog(facility=settings.syslog_facility, ident="milter-manager")
    else:
        logger.no_syslog()


def _log_error(configuration, key: str, message: str):
    where = str(configuration.files[0]) if configuration.files else "configuration"
    return configuration_module.ConfigurationError([configuration_module.Issue(where, key, message)])


def check_rule_engine() -> None:
    """Import the condition and rule engine in the master, so a broken one stops the start (or the reload).

    Without it every condition and rule would be off and mail would pass unfiltered; the
    serving processes import the same modules.
    """
    try:
        importlib.import_module(f"{__package__}.conditions")
    except Exception as error:
        raise StartupError(f"the condition and rule engine cannot be loaded ({type(error).__name__}: {error}); "
                           f"milter-manager does not start without it: reinstall milterman") from None


def server_config(configuration) -> ServerConfig:
    """The server part of the configuration (B3 [manager], [security]), by the one server settings table."""
    def value_of(key: str) -> object:
        table, _, name = key.partition(".")
        return getattr(getattr(configuration, table), name)

    return ServerConfig(**configuration_schema.server_fields(value_of), process_name="milter-manager")


def _launch_function(launcher, milter, logger: Logger):
    """The child's command as its health keeper starts it (M-CON-1/2, M-LAU-1), or None without one."""
    if launcher is None or not milter.command:
        return None
    from .launcher import CommandLaunch, command_line

    return CommandLaunch(launcher, command_line(milter.command, milter.command_options), milter.user_name,
                         milter.name, logger)


def in_process_class(reference: str | None):
    """The Milter subclass of ``[[milter]] python`` (imported and checked by the configuration load), or None."""
    if reference is None:
        return None
    from ..milter import load

    return load(reference)


def child_definitions(configuration, conditions_per_milter: dict | None = None, launcher=None,
                      logger: Logger = default_logger, recorder=None) -> tuple[ChildDefinition, ...]:
    """Enabled milters with a connection spec, in definition order (M-SES-2, M-SES-4)."""
    definitions = []
    for milter in configuration.milters:
        if not milter.enabled or not (milter.connection_spec or milter.python):
            continue
        definitions.append(ChildDefinition(
            name=milter.name, spec=milter.connection_spec.spec if milter.connection_spec else None,
            milter_class=in_process_class(milter.python),
            fallback_status=status_named(milter.fallback_status), evaluation_mode=milter.evaluation_mode,
            timeouts=Timeouts(milter.connection_timeout, milter.writing_timeout, milter.reading_timeout,
                              milter.end_of_message_timeout),
            conditions=(conditions_per_milter or {}).get(milter.name, ()),
            retry_delay=milter.retry_delay, launch=_launch_function(launcher, milter, logger),
            reuse_connection=milter.reuse_connection,
            record=recorder.child(milter.name) if recorder is not None else None))
    return tuple(definitions)


def build_context(configuration, logger: Logger = default_logger, launcher=None, recorder=None):
    """The ManagerContext a serving process's leaders share (counting into ``recorder``, kept across reloads)."""
    from .metrics import Recorder

    from ..config.entry_points import resolve as resolve_entry_point
    from .context import ManagerContext
    from .disconnect import CONNECTION_MACROS, build_check

    from .conditions import build

    condition_evaluator, rule_evaluator, conditions_per_milter, stages_read, macros_read = build(
        configuration, logger=logger)
    manager = configuration.manager
    disconnect = build_check(manager.connection_check_interval, manager.connection_checkers,
                             status_named(manager.fallback_status_at_disconnect), resolve_entry_point)
    if disconnect is not None:  # the check reads the connect command and its macros, whatever the children skip
        stages_read = stages_read | {"C"}
        macros_read = {**macros_read, "C": tuple(dict.fromkeys((*macros_read.get("C", ()), *CONNECTION_MACROS)))}
    recorder = recorder if recorder is not None else Recorder()
    return ManagerContext(
        definitions=child_definitions(configuration, conditions_per_milter, launcher, logger, recorder),
        recorder=recorder,
        fallback_status=status_named(manager.fallback_status), chunk_size=manager.chunk_size,
        stages_read=stages_read, macros_read=macros_read, logger=logger,
        condition_evaluator=condition_evaluator, rule_evaluator=rule_evaluator,
        max_pending_finished_sessions=manager.max_pending_finished_sessions, disconnect=disconnect)


def connection_specs(configuration) -> list[tuple[str, tuple[str, str], object]]:
    """(key, (FILE, KEY), spec) of every connection spec in use: the listening socket, the controller, the
    enabled milters (messages name each where it is set)."""
    specs = []
    for key in ("manager.connection_spec", "controller.connection_spec", "controller.metrics_spec"):
        section, name = key.split(".")
        spec = getattr(getattr(configuration, section), name)
        if spec:
            specs.append((key, origin(configuration, key), spec))
    specs += [("milter.connection_spec", milter_origin(milter, "connection_spec"), milter.connection_spec)
              for milter in configuration.milters if milter.enabled and milter.connection_spec]
    return specs


def environment_config_dir() -> str | None:
    return os.environ.get(configuration_module.ENVIRONMENT_VARIABLE)
