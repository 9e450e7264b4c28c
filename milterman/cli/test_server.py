"""milter-test-server: play an MTA against a milter and print the verdict (manual: doc/milter-test-server.1.md).

Usage:
  milter-test-server [options] [--connect-macro=NAME:VALUE]... [--helo-macro=NAME:VALUE]...
                     [--envelope-from-macro=NAME:VALUE]... [--envelope-recipient-macro=NAME:VALUE]...
                     [--data-macro=NAME:VALUE]... [--end-of-header-macro=NAME:VALUE]...
                     [--end-of-message-macro=NAME:VALUE]... [--header=NAME:VALUE]... [--body=CHUNK]...
                     [--envelope-recipient=RCPT]... [--recipient=RCPT]...
  milter-test-server (-? | --help)
  milter-test-server --version

Options:
  -s SPEC, --connection-spec=SPEC       The milter: unix:PATH (or /PATH), inet:PORT@HOST, inet6:PORT@HOST.
  --name=NAME                           Server name, also {daemon_name} [default: milter-test-server].
  --negotiate-version=N                 Protocol version offered [default: 6].
  --connect-host=HOST                   Host name in the connect command [default: mx.example.net].
  --connect-address=SPEC                Client address in the connect command
                                        [default: inet:50443@[192.168.123.123]].
  --connect-macro=NAME:VALUE            Add or override a connect macro (repeatable).
  --helo-fqdn=FQDN                      HELO argument [default: delian].
  --helo-macro=NAME:VALUE               Add or override a helo macro (repeatable).
  -f FROM, --envelope-from=FROM         Envelope sender (default: sender@example.com).
  --from=FROM                           Deprecated alias of --envelope-from.
  --envelope-from-macro=NAME:VALUE      Add or override an envelope-from macro (repeatable).
  -r RCPT, --envelope-recipient=RCPT    Envelope recipient, one per option (default: receiver@example.org).
  --recipient=RCPT                      Deprecated alias of --envelope-recipient.
  --envelope-recipient-macro=NAME:VALUE Add or override an envelope-recipient macro (repeatable).
  --data-macro=NAME:VALUE               Add or override a data macro (repeatable).
  -h NAME:VALUE, --header=NAME:VALUE    A header, in order (repeatable); From and To are added if absent.
  --end-of-header-macro=NAME:VALUE      Add or override an end-of-header macro (repeatable).
  -b CHUNK, --body=CHUNK                One body chunk per option (repeatable).
  --end-of-message-macro=NAME:VALUE     Add or override an end-of-message macro (repeatable).
  --unknown=COMMAND                     Send COMMAND as an unknown SMTP command (protocol version >= 3).
  --authenticated-name=NAME             Add {auth_authen}=NAME to the envelope-from macros.
  --authenticated-type=TYPE             Add {auth_type}=TYPE to the envelope-from macros.
  --authenticated-author=AUTHOR         Add {auth_author}=AUTHOR to the envelope-from macros.
  -m PATH, --mail-file=PATH             Read the message from PATH ("-": standard input).
  --output-message                      Print the message as the milter left it.
  --color=WHEN                          Color the message diff: yes, true, no, false, auto [default: no].
  --connection-timeout=SEC              Connect timeout [default: 300].
  --reading-timeout=SEC                 Timeout for each reply [default: 10].
  --writing-timeout=SEC                 Timeout for each command [default: 10].
  --end-of-message-timeout=SEC          Timeout for the end-of-message reply [default: 300].
  --all-timeouts=SEC                    Set all four timeouts.
  -t N, --threads=N                     Run N identical sessions at once, each printing its result [default: 0].
  --n-sessions=N                        Run N sessions in all (load mode) [default: 1].
  --concurrency=C                       At most C sessions at a time in load mode [default: 1].
  --report=FORMAT                       Load-mode report: json (per-session status and elapsed time,
                                        totals with sessions/s and p50/p90/p99 latency).
  -v, --verbose                         Log everything.
  -?, --help                            Show this help.
  --version                             Print the version.

Exit status: 0 when the milter was reached (whatever its verdict); 1 for a bad option or when
the milter could not be connected to.
"""

from __future__ import annotations

import os
import sys

from .. import __version__
from ..log import logger, parse_level
from .common import UsageError, fail, integer, number, parse_arguments

STAGE_OPTIONS = {"--connect-macro": "C", "--helo-macro": "H", "--envelope-from-macro": "M",
                 "--envelope-recipient-macro": "R", "--data-macro": "T", "--end-of-header-macro": "N",
                 "--end-of-message-macro": "E"}
COLOR_VALUES = {"yes": True, "true": True, "no": False, "false": False}


def _prepare_argv(argv: list[str]) -> list[str]:
    """GLib-style spellings docopt lacks: ``-?`` for help, ``--color`` without a value."""
    prepared = []
    for argument in argv:
        if argument == "-?":
            argument = "--help"
        elif argument == "--color":
            argument = "--color=yes"
        prepared.append(argument)
    return prepared


def _color(value: str) -> bool:
    if value == "auto":
        term = os.environ.get("TERM", "")
        return sys.stdout.isatty() and (term.endswith(("term", "term-color", "term-256color"))
                                        or term in ("screen", "linux"))
    if value not in COLOR_VALUES:
        raise UsageError(f"Invalid color value: {value}")
    return COLOR_VALUES[value]


def _split(option: str, value: str, message: str) -> tuple[str, str]:
    name, colon, rest = value.partition(":")
    if not colon:
        raise UsageError(message.format(value=value))
    return name, rest


def build_settings(arguments: dict):
    """Options → :class:`ServerSettings`."""
    from ..net import SpecError, Timeouts, parse_spec
    from ..tools.test_server import MailFileError, ServerSettings, parse_mail

    spec_text = arguments["--connection-spec"]
    if spec_text and spec_text.startswith("/"):
        spec_text = "unix:" + spec_text
    try:
        spec = parse_spec(spec_text)
    except SpecError as error:
        raise UsageError(str(error)) from None
    try:
        address = parse_spec(arguments["--connect-address"])
    except SpecError as error:
        raise UsageError(str(error)) from None
    macros: dict[str, list[tuple[str, str]]] = {}
    for option, stage in STAGE_OPTIONS.items():
        for value in arguments[option]:
            macros.setdefault(stage, []).append(
                _split(option, value, "macro name and value delimiter ':' doesn't exist: <{value}>"))
    headers = [_split("--header", value, "headers option should be 'NAME:VALUE'") for value in arguments["--header"]]
    explicit_recipients = arguments["--envelope-recipient"] + arguments["--recipient"]
    # No docopt defaults for -f/-r: a value present here was given, in any spelling (-fADDR, prefixes),
    # and explicit values win over --mail-file (settled).
    explicit_from = arguments["--from"] or arguments["--envelope-from"]
    mail = None
    if arguments["--mail-file"]:
        path = arguments["--mail-file"]
        try:
            data = sys.stdin.buffer.read() if path == "-" else open(path, "rb").read()
        except FileNotFoundError:
            raise UsageError(f"{path} does not exist.") from None
        except OSError as error:
            raise UsageError(f"Loading from {path} failed.: {error.strerror}") from None
        try:
            mail = parse_mail(data)
        except MailFileError as error:
            raise UsageError(str(error)) from None
    timeouts = Timeouts(connection=number("--connection-timeout", arguments["--connection-timeout"], 300),
                        reading=number("--reading-timeout", arguments["--reading-timeout"], 10),
                        writing=number("--writing-timeout", arguments["--writing-timeout"], 10),
                        end_of_message=number("--end-of-message-timeout", arguments["--end-of-message-timeout"],
                                              300))
    if arguments["--all-timeouts"] is not None:
        every = number("--all-timeouts", arguments["--all-timeouts"], 0)
        timeouts = Timeouts(every, every, every, every)
    version = integer("--negotiate-version", arguments["--negotiate-version"], minimum=2, maximum=6)
    return ServerSettings(
        spec=spec, name=arguments["--name"], negotiate_version=version, connect_host=arguments["--connect-host"],
        connect_address=address, helo_fqdn=arguments["--helo-fqdn"],
        envelope_from=explicit_from or "sender@example.com",
        recipients=explicit_recipients or ["receiver@example.org"], headers=headers,
        body=[chunk.encode("utf-8", "surrogateescape") for chunk in arguments["--body"]] or None,
        unknown=arguments["--unknown"], authenticated_name=arguments["--authenticated-name"],
        authenticated_type=arguments["--authenticated-type"],
        authenticated_author=arguments["--authenticated-author"], user_macros=macros, mail=mail,
        explicit_from=bool(explicit_from), explicit_recipients=bool(explicit_recipients),
        output_message=arguments["--output-message"], color=_color(arguments["--color"]), timeouts=timeouts)


def main(argv: list[str] | None = None) -> int:
    """Entry point of milter-test-server."""
    argv = _prepare_argv(sys.argv[1:] if argv is None else argv)
    arguments = parse_arguments(__doc__, argv, f"milter-test-server {__version__}")
    if arguments["--verbose"]:
        logger.set_level(parse_level("all"))
    if arguments["--connection-spec"] is None:
        fail("spec should not be NULL")
    try:
        settings = build_settings(arguments)
        threads = integer("--threads", arguments["--threads"], minimum=0)
        n_sessions = integer("--n-sessions", arguments["--n-sessions"], minimum=1)
        concurrency = integer("--concurrency", arguments["--concurrency"], minimum=1)
        report = arguments["--report"]
        if report not in (None, "json"):
            raise UsageError(f"--report: unknown format: <{report}> (available: json)")
    except UsageError as error:
        fail(str(error))
    from ..tools.test_server import ConnectFailure, render_result, run_load, run_session

    if threads > 0 or n_sessions > 1 or report:
        count = threads if threads > 0 else n_sessions
        at_once = threads if threads > 0 else concurrency
        return run_load(settings, count, at_once, out=sys.stdout, report=report,
                        print_blocks=report is None and (threads > 0 or n_sessions == 1))
    try:
        from ..tools.test_server import build_transaction

        transaction = build_transaction(settings)
        result = run_session(settings, transaction)
    except ConnectFailure as error:
        fail(str(error))
    sys.stdout.write(render_result(settings, transaction, result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
