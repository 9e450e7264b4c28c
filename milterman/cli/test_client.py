"""milter-test-client: a milter that prints what it receives (manual: doc/milter-test-client.1.md)."""

from __future__ import annotations

import sys

from .. import __version__
from ..config.cli import options_help
from ..config.schema import SERVER_SETTINGS
from ..log import logger
from ..server.app import Application
from .common import UsageError, fail, parse_arguments, served_config

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

        import gc

        client = TestClient(settings)
        # Everything loaded so far lives as long as the process: out of the collector's full passes,
        # which otherwise walk it again and again while sessions allocate.
        gc.freeze()

        def handle(sock, address) -> "bool | MilterSession":
            return MilterSession(sock, client.handler_factory, packet_buffer_size=settings.packet_buffer_size).start()

        return handle


def run(arguments: dict, argv: list[str] | None = None) -> int:
    from ..server.master import run_application
    from ..tools.test_client import ClientSettings

    server_config, values = served_config(arguments, argv, SETTINGS, process_name="milter-test-client",
                                          report_memory=arguments["--report-memory-profile"])
    settings = ClientSettings(
        report_request=not arguments["--no-report-request"],
        report_memory_profile=arguments["--report-memory-profile"],
        max_pending_finished_sessions=values["manager.max_pending_finished_sessions"],
        packet_buffer_size=values["manager.packet_buffer_size"],
    )
    return run_application(TestClientApplication(server_config, settings), on_detached=logger.detached)

if __name__ == "__main__":
    sys.exit(main())
