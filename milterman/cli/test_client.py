"""milter-test-client: a milter that prints what it receives (manual: doc/milter-test-client.1.md)."""

from __future__ import annotations

import os
import sys

from .. import __version__
from ..config import ConfigurationError
from ..config.cli import options_help, settings_from_options
from ..config.schema import SERVER_SETTINGS, find_setting, server_fields
from ..log import logger
from ..server.app import Application
from ..spec import DEFAULT_SPEC
from .common import UsageError, configure_logging, fail, parse_arguments

#: the settings milter-test-client takes from its options: the server's, from the one table milter-manager uses
SETTINGS = tuple(key for key in SERVER_SETTINGS.values() if key != "manager.connection_spec") + (
    "manager.packet_buffer_size", "manager.max_pending_finished_sessions")
#: the log options (applied by configure_logging) and -s (looked up at start, SH-SPEC-1) are listed too
LISTED = ("manager.connection_spec", "log.level", "log.path", "log.use_syslog", "log.syslog_facility") + SETTINGS

USAGE = f"""milter-test-client: a milter that prints what it receives.

Usage:
  milter-test-client [options]
  milter-test-client (-h | --help)
  milter-test-client --version

Options:
{options_help(32, keys=LISTED, name_keys=False)}
  --no-report-request               Print nothing per command (for benchmarks).
  --report-memory-profile           Log RSS and VMS of the process after each session (psutil);
                                    more detail with MILTER_MEMORY_PROFILE=yes.
  -h, --help                        Show this help.
  --version                         Print the version.

Without -s the spec is $MILTER_DEFAULT_CONNECTION_SPEC when set.

Signals: SIGTERM lets sessions finish, then exits; SIGINT/SIGQUIT stop at once; SIGHUP restarts the
workers; SIGUSR1 reopens the log file; SIGTTIN/SIGTTOU add/remove a worker.

Exit status: 0 after a shutdown signal (with --daemon: 0 once listening); 1 when an option is wrong
or the server cannot start (bad spec, port in use, no permission, unknown user or group,
unwritable pid file), with a message naming the value.
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point of milter-test-client."""
    arguments = parse_arguments(USAGE, argv, f"milter-test-client {__version__}")
    try:
        return run(arguments, argv)
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


def run(arguments: dict, argv: list[str] | None = None) -> int:
    from ..net import SpecError, parse_spec
    from ..server.app import ServerConfig
    from ..server.master import run_application
    from ..tools.test_client import ClientSettings

    spec_text = arguments["--connection-spec"] or os.environ.get("MILTER_DEFAULT_CONNECTION_SPEC") or DEFAULT_SPEC
    try:
        spec = parse_spec(spec_text)
    except SpecError as error:
        raise UsageError(f"--connection-spec: {error}") from None
    try:
        values = settings_from_options(arguments, sys.argv[1:] if argv is None else argv, SETTINGS)
    except ConfigurationError as error:
        raise UsageError("\n".join(f"{issue.key}: {issue.message}" for issue in error.issues)) from None
    configure_logging(arguments)
    if arguments["--socket-group-name"]:
        logger.warning("[client][option][deprecated] --socket-group-name: use --unix-socket-group")
    settings = ClientSettings(
        report_request=not arguments["--no-report-request"],
        report_memory_profile=arguments["--report-memory-profile"],
        max_pending_finished_sessions=values["manager.max_pending_finished_sessions"],
        packet_buffer_size=values["manager.packet_buffer_size"],
    )
    fields = server_fields(lambda key: values[key] if key in values else find_setting(key).default)
    fields.update(spec=spec, report_memory_statistics=settings.report_memory_profile)
    server_config = ServerConfig(**fields, process_name="milter-test-client")
    return run_application(TestClientApplication(server_config, settings), on_detached=logger.detached)


if __name__ == "__main__":
    sys.exit(main())
