"""milter-manager: one milter socket for the MTA, many child milters behind it (manual: doc/milter-manager.8.md)."""

from __future__ import annotations

import os
import sys

from .. import __version__
from ..config import options_help
from ..log import logger
from .common import fail, parse_arguments

USAGE = f"""milter-manager: a milter that manages many milters.

Usage:
  milter-manager [options]
  milter-manager (-h | --help)
  milter-manager --version

Options:
  -c DIR, --config-dir=DIR          Directory of milter-manager.toml (default: $MILTER_MANAGER_CONFIG_DIR,
                                    then /etc/milter-manager).
  --show-config                     Print the effective configuration as TOML (with where each milter came
                                    from) and exit.
  --check-config                    Check the configuration and what start-up needs (users, groups, socket,
                                    pid-file and log directories); exit 0, or 1 with every error.
  --no-detect                       Do not register the milters installed from Debian's packages (D-9).
{options_help(32)}
  -h, --help                        Show this help.
  --version                         Print the version.

Signals: SIGTERM lets sessions finish, then exits; SIGINT/SIGQUIT stop at once; SIGHUP reloads
the configuration (a broken one is refused and the old one keeps serving); SIGUSR1 reopens the
log file; SIGTTIN/SIGTTOU add/remove a worker (doc/server.md).

Exit status: 0 once listening (with --daemon: once detached), or after --show-config or a good
--check-config; 1 with a message naming the bad value (file and key, or option) otherwise.
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point of milter-manager."""
    argv = sys.argv[1:] if argv is None else argv
    arguments = parse_arguments(USAGE, argv, f"milter-manager {__version__}")
    from ..config import ConfigurationError, overrides_from_options, render
    from ..manager.app import ManagerApplication, apply_log_settings
    from ..server.master import run_application

    try:
        overrides = overrides_from_options(arguments, argv)
    except ConfigurationError as error:
        fail(str(error))
    config_dir = arguments["--config-dir"] or os.environ.get("MILTER_MANAGER_CONFIG_DIR")
    app = ManagerApplication(config_dir, overrides, detect=not arguments["--no-detect"])
    if arguments["--show-config"] or arguments["--check-config"]:
        try:
            configuration = app.configuration()
            from ..manager.app import server_config

            server_config(configuration)
        except ConfigurationError as error:
            fail(str(error))
        if arguments["--show-config"]:
            sys.stdout.write(render(configuration))
            return 0
        from ..config.startup import account_issues, directory_problems

        errors, warnings = directory_problems(configuration)
        errors = [str(issue) for issue in account_issues(configuration)] + errors
        errors += names_problems(app, configuration)
        if errors:
            fail("\n".join(errors + warnings))
        files = ", ".join(str(path) for path in configuration.files)
        sys.stdout.write("".join(f"{warning}\n" for warning in warnings) + f"configuration OK: {files}\n")
        return 0
    try:
        configuration = app.configuration()
    except ConfigurationError as error:
        fail(str(error))
    try:
        apply_log_settings(configuration, logger)
    except ConfigurationError as error:
        fail(str(error))
    app.loaded = configuration  # the start uses it: the files are read once

    status = run_application(app, on_detached=lambda: logger.detached("milter-manager"))
    if app.started:
        logger.message("[manager][stop] milter-manager stopped")
    return status


def names_problems(app, configuration) -> list[str]:
    """--check-config: the host names of the connection specs that do not resolve (start-up would refuse them)."""
    from ..server.app import ConfigurationError as ServerConfigurationError

    check = app.name_check(configuration)
    try:
        if check is not None:
            check()
    except ServerConfigurationError as error:
        return str(error).splitlines()
    return []


if __name__ == "__main__":
    sys.exit(main())
