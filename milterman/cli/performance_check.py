"""milter-performance-check: send mails to an MTA over SMTP and measure it (manual: doc/milter-performance-check.1.md).

Usage:
  milter-performance-check [options] [--from=FROM]... [--recipient=RCPT]... [--force-recipient=RCPT]...
                           [MAIL_FILE_OR_DIR...]
  milter-performance-check (-h | --help)
  milter-performance-check --version

Options:
  --smtp-server=SERVER             The MTA's host name or address [default: localhost].
  --smtp-port=PORT                 The MTA's SMTP port [default: 25].
  --connect-host=HOST              Send XCLIENT NAME=HOST (the MTA must allow us XCLIENT).
  --connect-address=ADDRESS        Send XCLIENT ADDR=ADDRESS.
  --helo-fqdn=FQDN                 EHLO name when the mail names none [default: localhost.localdomain].
  --starttls=HOW                   auto (when offered), always or disable [default: auto].
  --auth-user=USER                 SMTP AUTH user name.
  --auth-password=PASSWORD         SMTP AUTH password.
  --auth-mechanism=MECHANISM       auto, plain, login, cram-md5 (or cram_md5) [default: auto].
  --auth-map=FILE                  Lines "SERVER:PORT USER:PASSWORD", used without --auth-user.
  --from=FROM                      Sender of mails without From: (repeatable, used in turn)
                                   (default: from@example.com).
  --force-from=FROM                Sender of every mail, even one with From:.
  --recipient=RCPT                 Recipient of mails without To:/Cc: (repeatable, all used)
                                   (default: to@example.com).
  --force-recipient=RCPT           Recipient of every mail, even one with To:/Cc: (repeatable).
  --reading-timeout=SECONDS        Timeout of each SMTP read [default: 60].
  --n-mails=N                      Mails to send with none or one mail file [default: 100].
  --n-additional-lines=N           Extra body lines of the generated mail [default: 0].
  --n-concurrent-connections=N     SMTP sessions at once (parallel and flood modes) [default: 1].
  --n-workers=N                    Processes, each sending the whole list [default: 1].
  --period=PERIOD                  Send the list evenly spread over PERIOD.
  --interval=INTERVAL              Start one mail every INTERVAL.
  --flood=PERIOD                   Loop over the list until PERIOD has passed; "--flood" alone: until Ctrl-C.
  --shuffle                        Shuffle the mail list (--no-shuffle: do not).
  --report-failure-responses       Print the failure responses after the report
                                   (--no-report-failure-responses: do not).
  --report-periodically=INTERVAL   Print statistics every INTERVAL; "--report-periodically" alone: every second.
  --report-statistics-data=FILE    Write one CSV row per mail to FILE.
  --report=FORMAT                  Final report as json (every mail, totals, p50/p90/p99 latency).
  -h, --help                       Show this help.
  --version                        Print the version.

PERIOD and INTERVAL: NUMBER[UNIT], UNIT s, sec, second(s), m, min, minute(s), h, hour(s); seconds by default.
MAIL_FILE_OR_DIR: mail files, directories (searched recursively), "-" for one mail on standard input.

Exit status: 0 when the mails were sent, whatever the MTA answered; 1 for a bad option, or when
no mail could connect to the SMTP server (the message names host and port).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .. import __version__
from .common import UsageError, fail, integer, parse_arguments

if TYPE_CHECKING:
    from ..tools.performance_check import Settings

#: Options whose value is optional in the original (``--flood[=PERIOD]``): docopt needs ``=``.
OPTIONAL_VALUES = ("--flood", "--report-periodically")
#: ``--[no-]NAME`` switches: the last spelling given wins.
SWITCHES = ("--shuffle", "--report-failure-responses")
STARTTLS_VALUES = ("auto", "always", "disable")
MECHANISMS = ("auto", "plain", "login", "cram_md5", "cram-md5")


def prepare_argv(argv: list[str]) -> list[str]:
    """The original's spellings docopt lacks: ``--flood`` without a value, ``--no-shuffle``."""
    prepared: list[str] = []
    switches: dict[str, bool] = {}
    for index, argument in enumerate(argv):
        if argument == "--":
            prepared += argv[index:]
            break
        if argument in OPTIONAL_VALUES:
            argument += "="
        for switch in SWITCHES:
            if argument in (switch, "--no-" + switch[2:]):
                switches[switch] = argument == switch
                break
        else:
            prepared.append(argument)
    flags = [switch for switch, on in switches.items() if on]
    if "--" in prepared:
        at = prepared.index("--")
        return prepared[:at] + flags + prepared[at:]
    return prepared + flags


def duration(option: str, value: str) -> float:
    """A PERIOD/INTERVAL value in seconds; a bad one is an option error naming option and value."""
    from ..tools.performance_check import parse_duration

    try:
        return parse_duration(value)
    except ValueError as error:
        raise UsageError(f"{option}: {error}: <{value}>") from None


def _given_last(argv: list[str], options: tuple[str, ...]) -> str:
    """Which of ``options`` appears last on the command line (the one whose message names the other)."""
    last = ""
    for argument in argv:
        if argument == "--":
            break
        for option in options:
            if argument == option or argument.startswith(option + "="):
                last = option
    return last


def build_settings(arguments: dict, argv: list[str]) -> Settings:
    """Options → :class:`~milterman.tools.performance_check.Settings`."""
    from ..tools.performance_check import Settings

    starttls = arguments["--starttls"]
    if starttls not in STARTTLS_VALUES:
        raise UsageError(f"--starttls: must be one of auto, always, disable: <{starttls}>")
    mechanism = arguments["--auth-mechanism"].lower()
    if mechanism not in MECHANISMS:
        raise UsageError(f"--auth-mechanism: must be one of {', '.join(MECHANISMS)}: <{arguments['--auth-mechanism']}>")
    timeout_text = arguments["--reading-timeout"]
    try:
        reading_timeout = float(timeout_text)
    except ValueError:
        raise UsageError(f"--reading-timeout: invalid number: <{timeout_text}>") from None
    if not reading_timeout > 0:
        raise UsageError(f"--reading-timeout: must be more than 0: <{timeout_text}>")
    n_workers_text = arguments["--n-workers"]
    n_workers = integer("--n-workers", n_workers_text)
    if n_workers < 0:
        raise UsageError(f"--n-workers: must be positive number.: <{n_workers_text}>")
    settings = Settings(
        smtp_server=arguments["--smtp-server"],
        smtp_port=integer("--smtp-port", arguments["--smtp-port"], minimum=1, maximum=65535),
        connect_host=arguments["--connect-host"], connect_address=arguments["--connect-address"],
        helo_fqdn=arguments["--helo-fqdn"], starttls=starttls,
        auth_user=arguments["--auth-user"], auth_password=arguments["--auth-password"], auth_mechanism=mechanism,
        senders=arguments["--from"] or ["from@example.com"], force_from=arguments["--force-from"],
        recipients=arguments["--recipient"] or ["to@example.com"], force_recipients=arguments["--force-recipient"],
        reading_timeout=reading_timeout,
        n_mails=integer("--n-mails", arguments["--n-mails"], minimum=0),
        n_additional_lines=integer("--n-additional-lines", arguments["--n-additional-lines"], minimum=0),
        n_concurrent_connections=integer("--n-concurrent-connections", arguments["--n-concurrent-connections"],
                                         minimum=1),
        n_workers=n_workers, shuffle=arguments["--shuffle"],
        report_failure_responses=arguments["--report-failure-responses"],
        statistics_data=arguments["--report-statistics-data"], report=arguments["--report"])
    if settings.report not in (None, "json"):
        raise UsageError(f"--report: unknown format: <{settings.report}> (available: json)")
    modes = tuple(option for option in ("--period", "--interval", "--flood") if arguments[option] is not None)
    if len(modes) > 1:
        last = _given_last(argv, modes)
        other = next(option for option in modes if option != last)
        raise UsageError(f"{last}: can't use with {other}")
    if arguments["--period"] is not None:
        settings.period = duration("--period", arguments["--period"])
    if arguments["--interval"] is not None:
        settings.interval = duration("--interval", arguments["--interval"])
    if arguments["--flood"] is not None:
        settings.flood = True
        if arguments["--flood"]:
            settings.flood_period = duration("--flood", arguments["--flood"])
    if arguments["--report-periodically"] is not None:
        value = arguments["--report-periodically"]
        settings.report_periodically = duration("--report-periodically", value) if value else 1.0
        if settings.report_periodically <= 0:
            raise UsageError(f"--report-periodically: must be more than 0: <{value}>")
    if settings.auth_user is not None and settings.auth_password is None:
        raise UsageError(f"--auth-password: needed with --auth-user=<{settings.auth_user}>")
    return settings


def authentication(settings: Settings, auth_map: str | None) -> tuple[str, str] | None:
    """``--auth-user``/``--auth-password``, else the ``--auth-map`` entry of (server, port), else none."""
    from ..tools.performance_check import SourceError, parse_auth_map

    if settings.auth_user is not None:
        return settings.auth_user, settings.auth_password
    if auth_map is None:
        return None
    try:
        entries = parse_auth_map(auth_map)
    except SourceError as error:
        raise UsageError(f"--auth-map: {error}") from None
    return entries.get((settings.smtp_server, settings.smtp_port))


def main(argv: list[str] | None = None) -> int:
    """Entry point of milter-performance-check."""
    raw = sys.argv[1:] if argv is None else argv
    arguments = parse_arguments(__doc__, prepare_argv(raw), f"milter-performance-check {__version__}")
    from ..tools.performance_check import SourceError, collect_sources, run

    try:
        settings = build_settings(arguments, raw)
        auth = authentication(settings, arguments["--auth-map"])
        try:
            sources = collect_sources(arguments["MAIL_FILE_OR_DIR"], sys.stdin.buffer.read)
        except SourceError as error:
            raise UsageError(f"MAIL_FILE_OR_DIR: {error}") from None
        try:
            return run(settings, sources, auth, out=sys.stdout, err=sys.stderr)
        except OSError as error:
            if error.filename == settings.statistics_data and settings.statistics_data:
                raise UsageError(f"--report-statistics-data: {error.strerror}: <{error.filename}>") from None
            raise
    except UsageError as error:
        fail(str(error))


if __name__ == "__main__":
    sys.exit(main())
