"""milter-test-client: a milter that prints what it receives (manual: doc/milter-test-client.1.md).

Usage:
  milter-test-client [options]
  milter-test-client (-h | --help)
  milter-test-client --version

Options:
  -s SPEC, --connection-spec=SPEC   Listen on SPEC: unix:PATH, inet:PORT[@HOST], inet6:PORT[@HOST]
                                    [default: $MILTER_DEFAULT_CONNECTION_SPEC or inet:10025@[127.0.0.1]]
  --no-report-request               Print nothing per command (for benchmarks).
  --report-memory-profile           Log RSS and VMS of the process after each session (psutil);
                                    more detail with MILTER_MEMORY_PROFILE=yes.
  --log-level=LEVEL                 Log levels, e.g. all, default, error|warning, +info.
  --log-path=PATH                   Append the log to PATH ("-": standard output).
  -v, --verbose                     Log everything (same as --log-level=all).
  -q, --quiet                       Log nothing.
  --syslog                          Also log to syslog.
  --syslog-facility=FACILITY        Syslog facility [default: mail].
  --daemon                          Run as a daemon.
  --no-daemon                       Cancel --daemon.
  -u USER, --user=USER              Run as USER (name or id; needs root).
  --user-id=UID                     Run as user id UID.
  --user-name=NAME                  Run as user NAME.
  -g GROUP, --group=GROUP           Run as GROUP (name or id; needs root).
  --group-id=GID                    Run as group id GID.
  --group-name=NAME                 Run as group NAME.
  --unix-socket-group=GROUP         Group of the unix socket.
  --socket-group-name=GROUP         Deprecated alias of --unix-socket-group.
  --unix-socket-mode=MODE           Mode of the unix socket, octal [default: 0660].
  --n-workers=N                     Worker processes, 0-1000; 0 serves in the master process [default: 0].
  --event-loop-backend=BACKEND      gevent loop: libev or libuv [default: libev].
  --packet-buffer-size=SIZE         Flush reply packets once SIZE bytes are queued; 0 = one write per
                                    command [default: 0].
  --pid-file=FILE                   Write the (master) process id to FILE; removed at exit.
  --max-pending-finished-sessions=N Log the finished-sessions line every N+1 sessions [default: 0].
  --max-connections=N               Sessions per process before accepting pauses; 0 = unlimited [default: 0].
  --max-file-descriptors=N          Set RLIMIT_NOFILE to N at start; 0 = system default [default: 0].
  --graceful-timeout=SEC            SIGTERM: how long sessions may take to finish [default: 30].
  --worker-timeout=SEC              Replace a worker silent for SEC seconds [default: 60].
  --maintenance-interval=N          Garbage collection (and the memory line) every N sessions;
                                    0 = never [default: 10].
  -h, --help                        Show this help.
  --version                         Print the version.

Signals: SIGTERM lets sessions finish, then exits; SIGINT/SIGQUIT stop at once; SIGHUP restarts the
workers; SIGUSR1 reopens the log file; SIGTTIN/SIGTTOU add/remove a worker.

Exit status: 0 after a shutdown signal (with --daemon: 0 once listening); 1 when an option is wrong
or the server cannot start (bad spec, port in use, no permission, unknown user or group,
unwritable pid file), with a message naming the value.
"""

from __future__ import annotations

import os
import sys

from .. import __version__
from ..log import logger
from ..server.app import Application
from .common import UsageError, configure_logging, fail, integer, number, parse_arguments

DEFAULT_SPEC = "inet:10025@[127.0.0.1]"


def main(argv: list[str] | None = None) -> int:
    """Entry point of milter-test-client."""
    arguments = parse_arguments(__doc__, argv, f"milter-test-client {__version__}")
    try:
        return run(arguments)
    except UsageError as error:
        fail(str(error))


class TestClientApplication(Application):
    """milter-test-client as a served application: its configuration is its command line."""

    name = "milter-test-client"

    def __init__(self, server_config, client_settings) -> None:
        self.server_config = server_config
        self.client_settings = client_settings

    def load(self):
        """Nothing to reload from disk: SIGHUP restarts the workers with the same settings."""
        return self.client_settings, self.server_config

    def make_handler(self, settings):
        from ..net import MilterSession
        from ..tools.test_client import TestClient

        client = TestClient(settings)

        def handle(sock, address) -> bool:
            return MilterSession(sock, client.handler_factory, packet_buffer_size=settings.packet_buffer_size).run()

        return handle


def _user_option(arguments: dict, kind: str) -> str | None:
    """--user / --user-id / --user-name (and the group trio): the last one given wins."""
    values = [arguments[f"--{kind}"], arguments[f"--{kind}-id"], arguments[f"--{kind}-name"]]
    given = [value for value in values if value is not None]
    if arguments[f"--{kind}-id"] is not None and not arguments[f"--{kind}-id"].isdigit():
        raise UsageError(f"--{kind}-id: invalid {'UID' if kind == 'user' else 'GID'}: <{arguments[f'--{kind}-id']}>")
    return given[-1] if given else None


def run(arguments: dict) -> int:
    from ..net import SpecError, parse_spec
    from ..server.app import ServerConfig
    from ..server.master import run_application
    from ..server.worker import BackendError, check_event_loop
    from ..tools.test_client import ClientSettings

    spec_text = arguments["--connection-spec"]
    if spec_text.startswith("$MILTER_DEFAULT_CONNECTION_SPEC"):
        spec_text = os.environ.get("MILTER_DEFAULT_CONNECTION_SPEC") or DEFAULT_SPEC
    try:
        spec = parse_spec(spec_text)
    except SpecError as error:
        raise UsageError(f"--connection-spec: {error}") from None
    configure_logging(arguments)
    try:
        check_event_loop(arguments["--event-loop-backend"])
    except BackendError as error:
        raise UsageError(f"--event-loop-backend: {error}") from None
    try:
        mode = int(arguments["--unix-socket-mode"], 8)
    except ValueError:
        raise UsageError(f"--unix-socket-mode: invalid mode: <{arguments['--unix-socket-mode']}>") from None
    group = arguments["--unix-socket-group"] or arguments["--socket-group-name"]
    if arguments["--socket-group-name"]:
        logger.warning("[client][option][deprecated] --socket-group-name: use --unix-socket-group")
    settings = ClientSettings(
        report_request=not arguments["--no-report-request"],
        report_memory_profile=arguments["--report-memory-profile"],
        max_pending_finished_sessions=integer("--max-pending-finished-sessions",
                                              arguments["--max-pending-finished-sessions"], minimum=0),
        packet_buffer_size=integer("--packet-buffer-size", arguments["--packet-buffer-size"], minimum=0),
    )
    daemon = bool(arguments["--daemon"]) and not arguments["--no-daemon"]
    server_config = ServerConfig(
        spec=spec,
        n_workers=integer("--n-workers", arguments["--n-workers"], minimum=0, maximum=1000),
        unix_socket_mode=mode, unix_socket_group=group,
        user=_user_option(arguments, "user"), group=_user_option(arguments, "group"),
        daemon=daemon, pid_file=arguments["--pid-file"],
        graceful_timeout=number("--graceful-timeout", arguments["--graceful-timeout"], 30.0),
        max_connections=integer("--max-connections", arguments["--max-connections"], minimum=0),
        max_file_descriptors=integer("--max-file-descriptors", arguments["--max-file-descriptors"], minimum=0),
        worker_timeout=number("--worker-timeout", arguments["--worker-timeout"], 60.0),
        event_loop_backend=arguments["--event-loop-backend"],
        maintenance_interval=integer("--maintenance-interval", arguments["--maintenance-interval"], minimum=0),
        report_memory_statistics=settings.report_memory_profile,
        process_name="milter-test-client",
    )

    return run_application(TestClientApplication(server_config, settings), on_detached=logger.detached)


if __name__ == "__main__":
    sys.exit(main())
