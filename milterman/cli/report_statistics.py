"""milter-report-statistics: memory, CPU and descriptors of milter processes (doc/milter-report-statistics.1.md).

Usage:
  milter-report-statistics [--filter=REGEXP]... [--pid=PID]... [--pid-directory=DIR] [--interval=SECONDS]
                           [--count=N] [TARGET...]
  milter-report-statistics (-h | --help)
  milter-report-statistics --version

Options:
  --filter=REGEXP      Only command lines matching REGEXP (case-insensitive; several must all match).
  --pid=PID            Report exactly this process (repeatable); TARGETs and filters are ignored.
  --pid-directory=DIR  Also report the PIDs in every *.pid file under DIR (read once at start).
  --interval=SECONDS   Seconds between reports [default: 1].
  --count=N            Stop after N reports (default: until Ctrl-C).
  -h, --help           Show this help.
  --version            Print the version.

A process matches a TARGET when the base name of its program (argv[0], without a leading
"lt-"), the first word of its process title ("milter-manager: worker ...") or, for an
interpreter, its script's base name equals TARGET.

Exit status: 0 after Ctrl-C or --count reports; 1 without TARGET and PID, for a bad option,
or on a platform other than Linux.
"""

from __future__ import annotations

import re
import sys

from .. import __version__
from .common import UsageError, fail, integer, number, parse_arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(__doc__, argv, f"milter-report-statistics {__version__}")
    if not sys.platform.startswith("linux"):
        fail(f"unsupported platform: {sys.platform}")
    from ..tools.report_statistics import Reporter, Selection, compile_filters, pids_from_directory

    try:
        pids = [integer("--pid", value, minimum=1) for value in arguments["--pid"]]
        interval = number("--interval", arguments["--interval"], 1.0)
        count = integer("--count", arguments["--count"], minimum=1) if arguments["--count"] else None
        filters = compile_filters(arguments["--filter"])
    except UsageError as error:
        fail(str(error))
    except re.error as error:
        fail(f"--filter: invalid regular expression: {error}")
    if arguments["--pid-directory"]:
        pids += pids_from_directory(arguments["--pid-directory"])
    if not arguments["TARGET"] and not pids:
        fail(__doc__.split("\n\n")[1].strip())  # RS-5: usage on stdout, exit 1
    reporter = Reporter(Selection(tuple(arguments["TARGET"]), filters, tuple(pids)))
    try:
        reporter.run(interval, count)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
