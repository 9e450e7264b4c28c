"""What a served program plugs into the server: configuration loading and a connection handler.

The master calls :meth:`Application.load` at start and on SIGHUP (standard
library only, so it may run in the master); the serving process calls
:meth:`Application.make_handler` after gevent has started there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..spec import ConnectionSpec

Handler = Callable[[object, object], None]


class ConfigurationError(Exception):
    """A configuration that cannot be used; the message names the file and the key (``FILE: KEY: …``)."""


@dataclass
class ServerConfig:
    """How the server runs, whichever application it serves (D-5, D-6, M-ACC-1, M-FD-1, M-MNT-1).

    No defaults here: every value comes from the one settings table (``config.schema.SERVER_SETTINGS``:
    names, kinds, defaults, options), through the files or the command line of each program.
    """

    spec: ConnectionSpec
    n_workers: int
    unix_socket_mode: int
    unix_socket_group: str | None
    #: unlink a stale unix socket before binding / our socket at exit (manager.remove_unix_socket_on_*)
    remove_unix_socket_on_create: bool
    remove_unix_socket_on_close: bool
    user: str | None
    group: str | None
    daemon: bool
    pid_file: str | None
    graceful_timeout: float
    max_connections: int
    max_file_descriptors: int
    #: a worker whose heartbeat is older than this is killed and replaced
    worker_timeout: float
    event_loop_backend: str
    #: maintenance (gc and the memory line) every this many sessions; 0: never (D-12)
    maintenance_interval: int
    report_memory_statistics: bool
    #: seconds accepting pauses when out of descriptors (M-ACC-2)
    suspend_time_on_unacceptable: float
    process_name: str = "milterman"


class Application:
    """Base class of served programs (milter-test-client now, milter-manager next)."""

    name = "milterman"

    def load(self) -> tuple[object, ServerConfig]:
        """Load and validate the configuration; raise :class:`ConfigurationError` naming file and key."""
        raise ConfigurationError(f"{type(self).__name__} does not define load()")

    def name_check(self, configuration: object) -> Callable[[], None] | None:
        """What validating ``configuration`` needs from the name service (host names of its connection
        specs), as a function raising :class:`ConfigurationError` that names the value and where it is
        set; None when nothing needs looking up. It may block (bounded): the master calls it at start,
        and on a reload off its signal loop."""
        return None

    def prepare(self, configuration: object, config: ServerConfig) -> None:
        """In the master, after binding and before privileges are dropped (once, at start)."""

    def reloaded(self, configuration: object) -> None:
        """In the master, once a reloaded configuration is valid: apply what the master itself uses (the
        log settings); raise :class:`ConfigurationError` to refuse the configuration."""

    def controller_settings(self, configuration: object
                            ) -> tuple[ConnectionSpec, int, str | None, bool, bool] | None:
        """(spec, unix socket mode, unix socket group, remove a stale socket on create, remove it on close)
        of the controller socket, or None: off (D-7)."""
        return None

    def render_configuration(self, configuration: object) -> str:
        """The effective configuration as text, for the controller's get-configuration."""
        return ""

    def statistics(self) -> dict:
        """Counters of this serving process (sessions, per child …) for the controller's status."""
        return {}

    def summarize(self, published: list[dict]) -> dict:
        """Top-level entries of the controller's status drawn from every serving process's counters."""
        return {}

    def make_handler(self, configuration: object) -> Handler:
        """In the serving process: the function that serves one accepted connection."""
        raise ConfigurationError(f"{type(self).__name__} does not define make_handler()")
