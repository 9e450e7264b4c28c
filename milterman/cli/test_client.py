"""milter-test-client: a milter that prints what it receives (manual: doc/milter-test-client.md).

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
  --n-workers=N                     Worker processes, 0-1000; 0 serves in one process [default: 0].
  --event-loop-backend=BACKEND      gevent loop: libev or libuv [default: libev].
  --packet-buffer-size=SIZE         Flush reply packets once SIZE bytes are queued; 0 = one write per
                                    command [default: 0].
  --pid-file=FILE                   Write the process id to FILE.
  --max-pending-finished-sessions=N Log the finished-sessions line every N+1 sessions [default: 0].
  -h, --help                        Show this help.
  --version                         Print the version.

Exit status: 0 after a shutdown signal (SIGTERM graceful, SIGINT fast); 1 when an option is
wrong or the socket cannot be listened on.
"""

from __future__ import annotations

import os
import signal
import sys

from .. import __version__
from ..log import logger
from .common import UsageError, configure_logging, fail, integer, parse_arguments

DEFAULT_SPEC = "inet:10025@[127.0.0.1]"
NOT_YET = ("--daemon", "--user", "--user-id", "--user-name", "--group", "--group-id", "--group-name")


def main(argv: list[str] | None = None) -> int:
    """Entry point of milter-test-client."""
    arguments = parse_arguments(__doc__, argv, __version__)
    try:
        return run(arguments)
    except UsageError as error:
        fail(str(error))


def run(arguments: dict) -> int:
    from ..net import ListenError, MilterSession, SpecError, bind_listener, parse_spec, remove_unix_socket
    from ..server.worker import BackendError, ServeSettings, select_event_loop, serve
    from ..tools.test_client import ClientSettings, TestClient

    spec_text = arguments["--connection-spec"]
    if spec_text.startswith("$MILTER_DEFAULT_CONNECTION_SPEC"):
        spec_text = os.environ.get("MILTER_DEFAULT_CONNECTION_SPEC") or DEFAULT_SPEC
    try:
        spec = parse_spec(spec_text)
    except SpecError as error:
        raise UsageError(f"--connection-spec: {error}") from None
    configure_logging(arguments)
    n_workers = integer("--n-workers", arguments["--n-workers"], minimum=0, maximum=1000)
    if arguments["--daemon"] and arguments["--no-daemon"]:
        arguments["--daemon"] = False
    for option in NOT_YET:
        if arguments.get(option):
            raise UsageError(f"{option}: not available yet: daemon mode and privilege dropping arrive with "
                             f"the pre-forking server")
    if n_workers:
        raise UsageError(f"--n-workers: not available yet: <{n_workers}>: worker processes arrive with the "
                         f"pre-forking server; 0 serves in this process")
    try:
        select_event_loop(arguments["--event-loop-backend"])
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
    pid_file = arguments["--pid-file"]
    # A shutdown signal that arrives once the socket listens but before serve() has installed its own
    # handlers must still end the process with status 0 (TC-SIG-1): remember it, re-send it when ready.
    early_signals: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, lambda number, frame: early_signals.append(number))
    try:
        listener = bind_listener(spec, unix_mode=mode, unix_group=group)
    except (ListenError, OSError) as error:
        fail(str(error))
    try:
        if pid_file:
            try:
                with open(pid_file, "w") as handle:
                    handle.write(f"{os.getpid()}\n")
            except OSError as error:
                fail(f"--pid-file: cannot write <{pid_file}>: {error.strerror}")
        client = TestClient(settings)

        def handle(sock, address) -> None:
            MilterSession(sock, client.handler_factory, packet_buffer_size=settings.packet_buffer_size).run()

        def ready() -> None:
            for number in early_signals:
                os.kill(os.getpid(), number)

        logger.info(f"[client][listen] {spec}")
        return serve(listener, handle, settings=ServeSettings(), on_ready=ready)
    finally:
        listener.close()
        remove_unix_socket(spec)
        if pid_file:
            try:
                os.unlink(pid_file)
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
