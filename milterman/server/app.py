"""What a served program plugs into the server: configuration loading and a connection handler.

The master calls :meth:`Application.load` at start and on SIGHUP (standard
library only, so it may run in the master); the serving process calls
:meth:`Application.make_handler` after gevent has started there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..spec import ConnectionSpec

Handler = Callable[[object, object], None]


@dataclass
class MetricFamily:
    """One metric of the metrics endpoint: Prometheus ``kind`` (counter, gauge, histogram) and its samples.

    A sample is ``(labels, value)``; a histogram's value is ``{"buckets": [count per bucket, not
    cumulative, the last one above every bound], "sum": total}`` with the upper ``bounds`` here.
    """

    name: str
    kind: str
    help: str
    samples: list = field(default_factory=list)
    bounds: tuple = ()


def add_counters(total: dict, counters: dict) -> dict:
    """Add ``counters`` into ``total`` (numbers added, dicts merged key by key, lists element by element).

    What serving processes publish under ``counters`` only grows; the master sums it over its workers
    and keeps the sum of those that exited (the metrics endpoint's counters never go down).
    """
    for key, value in counters.items():
        present = total.get(key)
        if isinstance(value, dict):
            total[key] = add_counters(present if isinstance(present, dict) else {}, value)
        elif isinstance(value, list):
            if isinstance(present, list) and len(present) == len(value):
                total[key] = [a + b for a, b in zip(present, value, strict=True)]
            else:
                total[key] = list(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            total[key] = (present if isinstance(present, (int, float)) else 0) + value
    return total


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

    def metrics_settings(self, configuration: object
                         ) -> tuple[ConnectionSpec, int, str | None, bool, bool] | None:
        """Like :meth:`controller_settings`, for the metrics endpoint; None: off."""
        return None

    def metric_families(self, status: dict) -> list[MetricFamily]:
        """The application's metrics, drawn from the ``status`` answer (one source for both)."""
        return []

    def make_handler(self, configuration: object) -> Handler:
        """In the serving process: the function that serves one accepted connection."""
        raise ConfigurationError(f"{type(self).__name__} does not define make_handler()")
