"""One serving process: a gevent accept loop that runs a milter session per connection.

The listening socket is bound beforehand with the standard library, so the
pre-fork master binds once and every worker accepts on the same socket. gevent
is imported only here, inside the serving process (a worker after fork, or the
single process with ``n_workers = 0``), and never monkey-patches anything.

Signals (D-5): SIGTERM stops accepting and lets sessions finish within the
graceful timeout; SIGINT and SIGQUIT stop at once; SIGUSR1 reopens the log;
SIGHUP calls ``on_hangup`` (the single-process reload). A worker also stops
gracefully when the master dies (its pipe reads EOF), and shows it is alive by
touching its heartbeat file.
"""

from __future__ import annotations

import errno
from array import array
import gc
import importlib.util
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..log import STATISTICS, Logger
from ..log import logger as default_logger
from . import memory
from .giveback import AGAIN, GiveBack
from .metrics import process_facts

EVENT_LOOP_BACKENDS = {"default": "libev-cext", "libev": "libev-cext", "libuv": "libuv-cffi"}
#: the signals serve() handles; a new worker starts with them blocked until serve() has its handlers (Master._spawn)
SERVE_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGHUP)


class BackendError(ValueError):
    """An event-loop backend name we do not offer, or one that cannot load here (D-15)."""


def check_event_loop(name: str) -> str:
    """Validate a backend name without importing gevent (the master may call this); return gevent's name."""
    if name not in EVENT_LOOP_BACKENDS:
        raise BackendError(f"unknown event loop backend: <{name}> available values: [libev|libuv]")
    implementation = EVENT_LOOP_BACKENDS[name]
    if implementation.startswith("libuv") and importlib.util.find_spec("_cffi_backend") is None:
        raise BackendError(f"event loop backend <{name}> cannot be loaded: cffi is not installed")
    return implementation


def select_event_loop(name: str) -> None:
    """Choose gevent's loop before this process's hub exists (D-15)."""
    implementation = check_event_loop(name)
    import gevent

    gevent.config.loop = implementation
    # No spawn tree: it keeps the spawner and up to 10 frame records per greenlet, for debugging
    # tools we do not use, at a cost in memory per session and CPU per spawn.
    gevent.config.track_greenlet_tree = False


@dataclass
class ServeSettings:
    """How a serving process treats its connections."""

    max_connections: int = 0          # 0: unlimited; otherwise accepting pauses at the limit (D-6, M-ACC-1)
    graceful_timeout: float = 30.0    # SIGTERM: how long sessions may take to finish (D-5)
    heartbeat_interval: float = 1.0
    maintenance_interval: int = 0     # sessions between maintenance runs; 0: none (D-12)
    report_memory_statistics: bool = False
    #: seconds accepting pauses when the process is out of descriptors (M-ACC-2)
    suspend_time_on_unacceptable: float = 1.0
    #: called with the session count at each maintenance run (the application's hooks, M-MNT-1)
    maintained: Callable[[int], None] | None = None
    #: the application's counters, written into the heartbeat file for the controller's status (D-7)
    statistics: Callable[[], dict] | None = None


def publish(fd: int, statistics: dict) -> None:
    """Write the counters where the master reads them (the worker's heartbeat file)."""
    data = json.dumps(statistics, sort_keys=True).encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


def read_published(fd: int) -> dict:
    """The counters a worker last published (empty when none yet).

    A read that meets the worker writing sees a torn text: it is read again (a few times), so the
    sums the metrics show do not drop for one scrape.
    """
    for _attempt in range(5):
        try:
            data = os.pread(fd, 1 << 20, 0)
            return json.loads(data) if data else {}
        except ValueError:
            time.sleep(0.001)
        except OSError:
            return {}
    return {}


_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _server_class():
    """gevent's StreamServer, except that running out of descriptors pauses accepting quietly (M-ACC-2).

    The sessions in progress go on; accepting resumes after ``suspend_time`` seconds
    (``manager.suspend_time_on_unacceptable``; 0: at the next turn of the loop, 10 ms). One warning
    per episode (until an accept succeeds) instead of gevent's traceback per attempt.
    """
    import gevent
    from gevent.server import StreamServer

    from ..net import runners

    class Server(StreamServer):
        logger: Logger = default_logger
        suspend_time = 1.0
        _in_episode = False
        #: the sessions in progress (see serve) and the most at once (0: no limit, D-6, M-ACC-1)
        live: set = set()
        limit = 0
        #: accepting paused because the limit was reached (resumed when a session ends)
        paused_full = False

        def full(self) -> bool:
            if self.limit and len(self.live) >= self.limit:
                self.paused_full = True
                return True
            return False

        def do_handle(self, *args) -> None:
            """The accepted connection's first step runs in a runner greenlet, not a greenlet spawned for it."""
            runners.run(self._handle_args, args)

        def _handle_args(self, args) -> None:
            self._handle(*args)

        def do_read(self):
            try:
                accepted = super().do_read()
            except OSError as error:
                if error.errno not in _RESOURCE_ERRORS:
                    raise
                delay = max(0.01, float(self.suspend_time))
                if not self._in_episode:
                    self._in_episode = True
                    self.logger.warning(f"[server][accept][backoff] {error.strerror}: accepting pauses for "
                                        f"{delay:g} s at a time while sessions finish (M-ACC-2)")
                self.stop_accepting()
                gevent.spawn_later(delay, self._resume)
                return None
            self._in_episode = False
            return accepted

        def _resume(self) -> None:
            if self.started:
                self.start_accepting()

    return Server


def serve(listener: socket.socket, handle: Callable[[object, object], None], *,
          settings: ServeSettings | None = None, logger: Logger = default_logger,
          on_ready: Callable[[], None] | None = None, on_hangup: Callable[[], None] | None = None,
          on_stop: Callable[[], None] | None = None,
          heartbeat_fd: int | None = None, master_fd: int | None = None) -> int:
    """Serve ``listener`` until told to stop; return the exit status (0).

    ``handle(sock, address)`` runs in a runner greenlet for each accepted connection; it returns whether
    the MTA sent a command, or a session that goes on without a greenlet (``MilterSession.start``).
    """
    import gevent
    from gevent import socket as gsocket
    from gevent.event import Event
    from greenlet import GreenletExit, greenlet
    settings = settings or ServeSettings()
    _Server = _server_class()
    sock = gsocket.socket(listener.family, listener.type, listener.proto, fileno=os.dup(listener.fileno()))
    # The sessions in progress: the greenlet running ``handle`` while it runs, then, when ``handle``
    # hands back a session waiting for its MTA without a greenlet, that session until it ends. Stopping
    # waits for them (graceful SIGTERM); at max_connections the server stops accepting until one ends
    # (D-6, M-ACC-1).
    live: set = set()
    drained = Event()
    sessions = array("q", (0,))  # a machine number: the count made by the last session of a burst keeps no arena
    # freed memory goes back to the system when a burst of sessions is over (not per session, D-12)
    from ..net import runners

    # the idle runner greenlets made during the burst go first: their stacks are part of what is given back
    give_back = GiveBack(gevent.spawn_later, logger=logger, again=AGAIN, before=runners.release_idle)

    def counted(client, address) -> None:
        """Maintenance counts milter sessions: ``handle`` returns false for a connection that never
        sent a command (a readiness probe), which is not counted (M-MNT-1). A session ``handle``
        returns (it waits for its MTA) is counted when it ends."""
        me = gevent.getcurrent()
        live.add(me)
        give_back.started()
        result = False
        try:
            result = handle(client, address)
        finally:
            live.discard(me)
            if result is None or type(result) is bool:
                client.close()
                ended(None, result is not False)
            else:
                live.add(result)
                result.on_end = ended

    def ended(session, counts: bool) -> None:
        """A session is over (``session``: one that waited without a greenlet)."""
        if session is not None:
            live.discard(session)
        give_back.ended()
        if counts:
            sessions[0] += 1
            interval = settings.maintenance_interval
            if interval and sessions[0] % interval == 0:
                maintain()
        if server.paused_full and len(live) < server.limit:
            server.paused_full = False
            server._start_accepting_if_started()
        if stopping and not live:
            drained.set()

    def maintain() -> None:
        """Maintenance on a session count, never merely because the process went idle (D-12, M-MNT-1).

        A full collection costs milliseconds in a process that holds gevent, so it runs only when
        it is wanted: with the memory report on, where it makes the reported size meaningful.
        The application's hooks run every time.
        """
        if settings.report_memory_statistics:
            gc.collect()
            if logger.enabled(STATISTICS):
                logger.statistics(memory.maintenance_line(sessions[0]))
        if settings.maintained is not None:
            settings.maintained(sessions[0])

    server = _Server(sock, counted, spawn=None)
    server.logger = logger
    server.suspend_time = settings.suspend_time_on_unacceptable
    server.live = live
    server.limit = max(settings.max_connections, 0)
    stopped = Event()
    stopping: list[bool] = []

    def interrupt(runner) -> None:
        """(a loop callback) End the ``handle`` a runner still runs."""
        if runner in live:
            runner.throw(GreenletExit)

    def end_sessions() -> None:
        """Finish the sessions that wait for their MTA, interrupt those at work (children get QUIT)."""
        for entry in list(live):
            if isinstance(entry, greenlet):
                server.loop.run_callback(interrupt, entry)
            else:
                entry.stop()

    def finish(timeout: float) -> None:
        try:
            if live and timeout > 0:
                drained.wait(timeout)
            if live:
                end_sessions()
                drained.wait(1)
        finally:
            stopped.set()

    def stop(graceful: bool, reason: str) -> None:
        if stopping:
            if not graceful and stopping[0]:
                stopping[0] = False
                end_sessions()
            return
        stopping.append(graceful)
        # Accepting ends here, not when finish() runs: until then the loop may still serve the rest of this
        # turn, and a connection accepted after the last session ended (``drained`` already set) would be cut
        # at once instead of finishing (D-5: a reload cuts no session).
        server.close()
        logger.info(f"[server][stop] {'graceful' if graceful else 'fast'} stop: {reason}")
        if on_stop is not None:
            on_stop()
        gevent.spawn(finish, settings.graceful_timeout if graceful else 0)

    def report() -> None:
        """The counters and this process's facts, for the controller's status and the metrics."""
        if settings.statistics is not None:
            publish(heartbeat_fd, {"sessions": sessions[0], "process": process_facts(), **settings.statistics()})

    def heartbeat() -> None:
        """Beat for the master once per interval on one timer made once: a wait that made a new timeout each
        time would leave small objects in the arenas a burst's give-back could otherwise return."""
        parent = os.getppid()
        mode = 0
        hub = gevent.get_hub()
        tick = hub.loop.timer(settings.heartbeat_interval, settings.heartbeat_interval)
        try:
            while not stopped.is_set():
                if heartbeat_fd is not None:
                    mode ^= 1
                    try:
                        os.fchmod(heartbeat_fd, mode)
                        report()
                    except (OSError, ValueError):
                        pass
                if master_fd is not None and os.getppid() != parent:
                    stop(True, "the master process is gone")
                hub.wait(tick)
        finally:
            tick.close()

    def watch_master() -> None:
        """The master holds the other end of this pipe; EOF means it died (D-5)."""
        try:
            gsocket.wait_read(master_fd)
            os.read(master_fd, 1)
        except OSError:
            pass
        stop(True, "the master process is gone")

    def reopen_log() -> None:
        logger.reopen()

    def hangup() -> None:
        if on_hangup is not None:
            on_hangup()

    handlers = [gevent.signal_handler(signal.SIGTERM, stop, True, "SIGTERM"),
                gevent.signal_handler(signal.SIGINT, stop, False, "SIGINT"),
                gevent.signal_handler(signal.SIGQUIT, stop, False, "SIGQUIT"),
                gevent.signal_handler(signal.SIGUSR1, reopen_log),
                gevent.signal_handler(signal.SIGHUP, hangup)]
    # A stop that arrived while a new worker was starting (a reload right after another): it must not
    # start accepting, or it takes connections meant for the new generation before its handler runs.
    told_to_stop = bool(signal.sigpending() & {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
    # handlers in place: deliver what arrived while a new worker was starting (blocked since the fork)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SERVE_SIGNALS)
    # serving in the master (no heartbeat file, no master to watch): nothing to beat for
    helpers = [gevent.spawn(heartbeat)] if heartbeat_fd is not None or master_fd is not None else []
    if master_fd is not None:
        helpers.append(gevent.spawn(watch_master))
    # What exists now (modules, the configuration, gevent's hub) lives as long as the process: kept out
    # of the collector's full passes, the give-back's collection after a burst walks the sessions' objects
    # only, not the whole process (tens of milliseconds less with the loop blocked).
    gc.freeze()
    try:
        if not told_to_stop:
            server.start()
        if on_ready is not None:
            on_ready()
        stopped.wait()
    finally:
        for handler in handlers:
            handler.cancel()
        gevent.killall(helpers, block=False)
        try:
            sock.close()
        except OSError:
            pass
        if heartbeat_fd is not None:
            try:
                report()  # the last counters: the master keeps them once this worker has exited
            except (OSError, ValueError):
                pass
    return 0
