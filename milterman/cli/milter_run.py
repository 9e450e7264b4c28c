"""milter-run: serve a milter written in Python with milterman's pre-forking server (manual: doc/milter-run.1.md)."""

from __future__ import annotations

import os
import sys

from .. import __version__
from ..config.cli import options_help
from ..config.schema import SERVER_SETTINGS
from ..log import logger
from ..server.app import Application, ConfigurationError
from .common import UsageError, fail, parse_arguments, served_config

#: the settings milter-run takes from its options: the server's, from the one table milter-manager uses
SETTINGS = tuple(key for key in SERVER_SETTINGS.values() if key != "manager.connection_spec") + (
    "manager.packet_buffer_size",)
#: the log options (applied by configure_logging) and -s are listed too
LISTED = ("manager.connection_spec", "log.level", "log.path", "log.use_syslog", "log.syslog_facility") + SETTINGS

USAGE = f"""milter-run: serve a milter written in Python.

Usage:
  milter-run MODULE:CLASS [options]
  milter-run (-h | --help)
  milter-run --version

MODULE:CLASS names a subclass of milterman.milter.Milter, e.g. tag:Tag for the class Tag
in tag.py; the module is looked up in the current directory first, then on PYTHONPATH.

Options:
{options_help(32, keys=LISTED, name_keys=False)}
  --report-memory-profile           Log the memory line (RSS, VMS) at each maintenance.
  -h, --help                        Show this help.
  --version                         Print the version.

Without -s the spec is $MILTER_DEFAULT_CONNECTION_SPEC when set.

Signals: SIGTERM lets sessions finish, then exits; SIGINT/SIGQUIT stop at once; SIGHUP imports the
module again and restarts the workers with it (a module that no longer works is refused and the
running one stays); SIGUSR1 reopens the log file; SIGTTIN/SIGTTOU add/remove a worker.

Exit status: 0 after a shutdown signal (with --daemon: 0 once listening); 1 when an option is wrong,
the class cannot be used (it does not import, is no Milter subclass, or a stage method is hidden
by an attribute), or the server cannot start, with a message naming the value.
"""


class MilterRunApplication(Application):
    """One Milter subclass served: its "configuration" is the class, imported again on SIGHUP."""

    name = "milter-run"

    def __init__(self, reference: str, server, packet_buffer_size: int) -> None:
        self.reference = reference
        self.server = server
        self.packet_buffer_size = packet_buffer_size
        self.loaded = False

    def load(self):
        """Import (again, on reload) and check the class, in the master: a broken one is refused here."""
        from ..milter import MilterDefinitionError, load

        try:
            cls = load(self.reference, fresh=self.loaded)
        except MilterDefinitionError as error:
            raise ConfigurationError(f"{self.reference}: {error}") from None
        self.loaded = True
        return cls, self.server

    def make_handler(self, cls):
        from ..milter.runner import handler_factory
        from ..net import MilterSession

        factory = handler_factory(cls)
        packet_buffer_size = self.packet_buffer_size

        def handle(sock, address) -> "bool | MilterSession":
            return MilterSession(sock, factory, packet_buffer_size=packet_buffer_size).start()

        return handle


def main(argv: list[str] | None = None) -> int:
    """Entry point of milter-run."""
    arguments = parse_arguments(USAGE, argv, f"milter-run {__version__}")
    try:
        return run(arguments, argv)
    except UsageError as error:
        fail(str(error))


def run(arguments: dict, argv: list[str] | None = None) -> int:
    from ..server.master import run_application

    reference = arguments["MODULE:CLASS"]
    if ":" not in reference:
        raise UsageError(f"MODULE:CLASS: no colon in <{reference}> (e.g. tag:Tag)")
    config, values = served_config(arguments, argv, SETTINGS, process_name="milter-run",
                                   report_memory=arguments["--report-memory-profile"])
    # as `python -m` does: a module beside the user is found (absolute: a daemon changes directory)
    sys.path.insert(0, os.getcwd())
    return run_application(MilterRunApplication(reference, config, values["manager.packet_buffer_size"]),
                           on_detached=logger.detached)

if __name__ == "__main__":
    sys.exit(main())
