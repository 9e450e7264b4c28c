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
    """How the server runs, whichever application it serves (D-5, D-6, M-ACC-1, M-FD-1, M-MNT-1)."""

    spec: ConnectionSpec
    n_workers: int = 0
    unix_socket_mode: int = 0o660
    unix_socket_group: str | None = None
    #: unlink a stale unix socket before binding / our socket at exit (manager.remove_unix_socket_on_*)
    remove_unix_socket_on_create: bool = True
    remove_unix_socket_on_close: bool = True
    user: str | None = None
    group: str | None = None
    daemon: bool = False
    pid_file: str | None = None
    graceful_timeout: float = 30.0
    max_connections: int = 0
    max_file_descriptors: int = 0
    #: a worker whose heartbeat is older than this is killed and replaced
    worker_timeout: float = 60.0
    event_loop_backend: str = "libev"
    #: maintenance (gc and the memory line) every this many sessions; 0: never (D-12)
    maintenance_interval: int = 10
    report_memory_statistics: bool = False
    #: seconds accepting pauses when out of descriptors (M-ACC-2)
    suspend_time_on_unacceptable: float = 1.0
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
