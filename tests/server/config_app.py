"""A small served application with a configuration file, for the tests of the pre-forking server.

milter-test-client has no configuration file, so SIGHUP (reload) cannot change
anything there. This program can: it is run as a real process by the tests::

    python tests/server/config_app.py CONFIG.toml [--log-path PATH] [--log-level LEVEL]
                                                  [--record-load FILE]

``CONFIG.toml``::

    [server]
    spec = "unix:/tmp/x/app.sock"   # required
    n_workers = 2                   # and the other ServerConfig fields below
    [milter]
    header_value = "v1"             # added as "X-Config: v1" at end of message
    delay = 0.0                     # seconds slept (gevent.sleep) in end_of_message
    load_delay = 0.0                # seconds load() sleeps after reading the file (a slow reload)
    boot_plan = "FFO"               # worker boots in order: F fails (make_handler raises), O boots;
    boot_count_file = "/tmp/x/n"    #   the boots are counted in this file; past the plan every boot works

``load()`` (run by the master at start and on SIGHUP) validates every key: an
unknown key or a value of the wrong type raises ``ConfigurationError`` whose
message names the file and the key, e.g.
``/tmp/x/app.toml: milter.header_value: must be a string, got 42``.

``--record-load FILE`` appends one JSON line per ``load()`` call: the pid of the
calling process and whether gevent (or greenlet) was imported in it at that moment.
The master must never import gevent (D-5); the test compares these pids with the
master's pid.

This module imports no gevent at top level (``milterman.net`` does not either); the
handler imports it lazily, inside the serving process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib

from milterman.log import logger, parse_level
from milterman.net import MilterHandler, MilterSession, SpecError, Wanted, parse_spec
from milterman.protocol import Action
from milterman.config.schema import find_setting, server_fields
from milterman.server.app import Application, ConfigurationError, ServerConfig
from milterman.server.master import run_application

#: [server] keys → (type(s) accepted, description for the error)
SERVER_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "spec": ((str,), "a string"),
    "n_workers": ((int,), "an integer"),
    "unix_socket_mode": ((str,), "an octal string"),
    "unix_socket_group": ((str,), "a string"),
    "user": ((str,), "a string"),
    "group": ((str,), "a string"),
    "daemon": ((bool,), "a boolean"),
    "pid_file": ((str,), "a string"),
    "graceful_timeout": ((int, float), "a number"),
    "max_connections": ((int,), "an integer"),
    "max_file_descriptors": ((int,), "an integer"),
    "worker_timeout": ((int, float), "a number"),
    "event_loop_backend": ((str,), "a string"),
    "maintenance_interval": ((int,), "an integer"),
    "report_memory_statistics": ((bool,), "a boolean"),
}
MILTER_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "header_value": ((str,), "a string"),
    "delay": ((int, float), "a number"),
    "load_delay": ((int, float), "a number"),
    "boot_plan": ((str,), "a string"),
    "boot_count_file": ((str,), "a string"),
}


class MilterSettings:
    def __init__(self, header_value: str = "v1", delay: float = 0.0, load_delay: float = 0.0, boot_plan: str = "",
                 boot_count_file: str = "") -> None:
        self.header_value = header_value
        self.delay = float(delay)
        self.load_delay = float(load_delay)
        self.boot_plan = boot_plan
        self.boot_count_file = boot_count_file

    def boot(self) -> None:
        """Count this boot; raise if the plan says this one fails (the master's boot-error handling)."""
        if not self.boot_plan:
            return
        fd = os.open(self.boot_count_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"x")  # O_APPEND: the offset after this write is this boot's own number
            number = os.lseek(fd, 0, os.SEEK_CUR)
        finally:
            os.close(fd)
        if number <= len(self.boot_plan) and self.boot_plan[number - 1] == "F":
            raise ConfigurationError(f"boot plan: boot {number} fails")


def _check_section(path: str, name: str, table: object, keys: dict) -> dict:
    if not isinstance(table, dict):
        raise ConfigurationError(f"{path}: {name}: must be a table, got {table!r}")
    for key, value in table.items():
        if key not in keys:
            raise ConfigurationError(f"{path}: {name}.{key}: unknown key")
        types, description = keys[key]
        # bool is an int subclass: never accept it where a number is wanted
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ConfigurationError(f"{path}: {name}.{key}: must be {description}, got {value!r}")
    return table


def load_file(path: str) -> tuple[MilterSettings, ServerConfig]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise ConfigurationError(f"{path}: cannot read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"{path}: invalid TOML: {error}") from None
    for section in data:
        if section not in ("server", "milter"):
            raise ConfigurationError(f"{path}: {section}: unknown section")
    server = dict(_check_section(path, "server", data.get("server", {}), SERVER_KEYS))
    milter = _check_section(path, "milter", data.get("milter", {}), MILTER_KEYS)
    if "spec" not in server:
        raise ConfigurationError(f"{path}: server.spec: missing")
    try:
        server["spec"] = parse_spec(server["spec"])
    except SpecError as error:
        raise ConfigurationError(f"{path}: server.spec: {error}") from None
    if "unix_socket_mode" in server:
        try:
            server["unix_socket_mode"] = int(server["unix_socket_mode"], 8)
        except ValueError:
            raise ConfigurationError(f"{path}: server.unix_socket_mode: must be an octal string, "
                                     f"got {server['unix_socket_mode']!r}") from None
    if milter.get("delay", 0) < 0:
        raise ConfigurationError(f"{path}: milter.delay: must not be negative, got {milter['delay']!r}")
    defaults = server_fields(lambda key: find_setting(key).default)  # the one table's defaults
    return MilterSettings(**milter), ServerConfig(**{**defaults, "process_name": "config-app", **server})


class ConfigApplication(Application):
    name = "config-app"

    def __init__(self, path: str, record_path: str | None = None) -> None:
        self.path = path
        self.record_path = record_path

    def load(self):
        if self.record_path:
            entry = {"pid": os.getpid(), "gevent": "gevent" in sys.modules,
                     "greenlet": "greenlet" in sys.modules}
            with open(self.record_path, "a") as handle:
                handle.write(json.dumps(entry) + "\n")
        settings, config = load_file(self.path)
        if settings.load_delay:
            time.sleep(settings.load_delay)  # signals that come meanwhile are queued by the master
        return settings, config

    def make_handler(self, settings: MilterSettings):
        settings.boot()

        def handle(sock, address) -> None:
            MilterSession(sock, lambda session: ConfigHandler(session, settings)).run()

        return handle


class ConfigHandler(MilterHandler):
    """Asks only for add-headers; adds ``X-Config: <header_value>`` at end of message."""

    def __init__(self, session: MilterSession, settings: MilterSettings) -> None:
        super().__init__(session)
        self.settings = settings
        self.negotiated_ = False

    def negotiate(self, offer) -> Wanted:
        self.negotiated_ = True
        return Wanted(actions=Action.ADD_HEADERS)

    def end_of_message(self, command):
        logger.message(f"[{self.session.id}] [config-app][end-of-message] value=<{self.settings.header_value}> "
                       f"delay={self.settings.delay:g}")
        if self.settings.delay:
            import gevent

            gevent.sleep(self.settings.delay)
        self.session.add_header("X-Config", self.settings.header_value)
        return None

    def close(self) -> None:
        if not self.negotiated_:
            return  # a probe that only connected (readiness checks of the tests)
        logger.message(f"[{self.session.id}] [config-app][session][finished]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--log-path")
    parser.add_argument("--log-level")
    parser.add_argument("--record-load")
    arguments = parser.parse_args(argv)
    if arguments.log_level:
        logger.set_level(parse_level(arguments.log_level, logger.level))
    if arguments.log_path:
        logger.set_path(arguments.log_path)
    return run_application(ConfigApplication(os.path.abspath(arguments.config), arguments.record_load))


if __name__ == "__main__":
    sys.exit(main())
