"""milter-manager-log-analyzer: graphs of milter-manager's statistics from its logs
(manual: doc/milter-manager-log-analyzer.1.md).

Usage:
  milter-manager-log-analyzer [options] [LOG_FILE...]
  milter-manager-log-analyzer (-h | --help)
  milter-manager-log-analyzer --version

Options:
  --log=LOG_FILE            Read LOG_FILE (plain or gzip) before the LOG_FILE arguments; without
                            any, standard input is read.
  --output-directory=DIR    Database, PNG graphs and index.html go to DIR (created if missing)
                            [default: .].
  --update-db               Count the logs' new minutes into the database (the default).
  --no-update-db            Do not read any log; only draw the graphs and index.html again.
  -h, --help                Show this help.
  --version                 Print the version.

Inputs are syslog mail logs and milter-manager's own log files (log.path); only
milter-manager's [statistics] lines count. Meant for cron every 5 minutes over the current log:
each run adds only the minutes not in the database yet (never the current minute).

Graphs need matplotlib (pip install 'milterman[graphs]'; Debian: python3-matplotlib). Without
it the logs are still counted into the database and one line on standard error says what to
install.

Exit status: 0 on success; 1 for a bad option, a log file that cannot be opened, or an output
directory or database that cannot be used; 2 when matplotlib is missing (the database was
updated, no graph drawn).
"""

from __future__ import annotations

import sys

from .. import __version__
from .common import fail, parse_arguments


def _update_db(argv: list[str]) -> bool:
    """``--[no-]update-db``: the last one given wins, as with the original's option parser."""
    choice = True
    for argument in argv:
        if argument == "--":
            break
        if argument == "--update-db":
            choice = True
        elif argument == "--no-update-db":
            choice = False
    return choice


def main(argv: list[str] | None = None, *, now: float | None = None) -> int:
    """Entry point of milter-manager-log-analyzer (``now`` is for tests: the run's clock)."""
    argv = sys.argv[1:] if argv is None else argv
    arguments = parse_arguments(__doc__, argv, f"milter-manager-log-analyzer {__version__}")
    from ..tools.log_analyzer import AnalyzerError, analyze

    paths = ([arguments["--log"]] if arguments["--log"] else []) + list(arguments["LOG_FILE"])

    def warn(message: str) -> None:
        sys.stderr.write(f"milter-manager-log-analyzer: warning: {message}\n")

    update_db = _update_db(argv)
    try:
        result = analyze(paths, arguments["--output-directory"], update_db=update_db, now=now, warn=warn)
    except AnalyzerError as error:
        fail(f"milter-manager-log-analyzer: {error}")
    if result.graphs_missing is not None:
        done = "counted the logs, but drew no graphs" if update_db else "drew no graphs"
        sys.stderr.write(f"milter-manager-log-analyzer: {done}: {result.graphs_missing}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
