"""The pre-forking master (D-5): bind, drop privileges, daemonize, fork workers, supervise.

Standard library only: the master never imports gevent. Signal handlers only queue the
signal (:class:`.signals.SignalQueue`, bounded: each signal waits at most once) and wake
the loop; :meth:`Master._loop` dispatches each to its ``handle_<name>`` method:

* SIGTERM (``handle_term``): workers finish their sessions (bounded by the graceful timeout), then exit 0;
* SIGINT, SIGQUIT: the same without waiting;
* SIGHUP: reload and validate the configuration; on success new workers start with it
  and the old ones finish their sessions; on failure the error is logged and the old
  configuration keeps serving;
* SIGUSR1: reopen log files here and in every worker;
* SIGTTIN / SIGTTOU: one worker more / fewer;
* SIGCHLD: a worker died; it is replaced (with a back-off when workers die at start).

Workers that cannot boot (:mod:`.supervision`: three in a row fail before serving) make
the master halt: it logs ``[server][halt]`` with the workers' error, stops the others
gracefully and exits with status 3.

With ``n_workers = 0`` the master serves in its own process (:class:`.single.SingleProcess`).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
import tempfile
import time
import traceback

from ..log import Logger
from ..log import logger as default_logger
from ..net.sockets import ListenError, bind_listener, remove_unix_socket
from .app import Application, ConfigurationError, ServerConfig
from .lookup import NameLookup
from .metrics import MetricsEndpoint, ServerRecord, metrics_text
from .process import (PidFile, StartupError, activated_sockets, close_quietly, daemonize, drop_privileges,
                      ensure_standard_fds, set_file_descriptor_limit, set_process_title, systemd_notify)
from .signals import SignalQueue, signal_name
from .single import SingleProcess
from .supervision import (BOOT_ATTEMPTS, BOOT_ERROR_STATUS, HALT_STATUS, ReportPipe, WorkerProcess, describe_status,
                          is_boot_failure)
from .worker import SERVE_SIGNALS, BackendError, check_event_loop, read_published

#: a worker that dies sooner than this after its start counts as a start failure (back-off)
QUICK_DEATH = 2.0
MAX_BACKOFF = 10.0
FAST_STOP_TIMEOUT = 2.0


class Master:
    """Runs an :class:`Application` under the process model of D-5.

    It owns the start-up (configuration, listening socket, pid file, privileges, daemon,
    controller), the reload (:meth:`_reload_configuration`), the controller's status
    (:meth:`_status`) and, with workers, the supervision: the signal queue, the workers'
    records and reports, their replacement, and the halt when they cannot boot. With
    ``n_workers = 0`` it hands the serving to :class:`.single.SingleProcess`.
    """

    def __init__(self, app: Application, *, logger: Logger = default_logger) -> None:
        self.app = app
        self.logger = logger
        self.configuration: object = None
        self.config: ServerConfig | None = None
        self.listener = None
        self.bound_by_us = False
        self.pid_file: PidFile | None = None
        self.workers: dict[int, WorkerProcess] = {}
        self.generation = 0
        self.n_workers = 0
        self.stopping: str | None = None      # "graceful" or "fast"
        self.stop_deadline = 0.0
        self.signals = SignalQueue()
        self.quick_deaths = 0
        self.next_spawn = 0.0
        #: workers in a row that could not boot, and the last one's error
        self.boot_failures = 0
        self.halted: str | None = None
        self.exit_status = 0
        self.reports: ReportPipe | None = None
        self._wake_read = -1
        self.controller = None
        self.metrics: MetricsEndpoint | None = None
        self.record = ServerRecord()  # restarts, reloads, exited workers' counters (status and metrics)
        self.started_at = time.time()
        self._master_read = self._master_write = -1
        #: a reload waiting for its host names to be looked up (off the signal loop)
        self.name_lookup: NameLookup | None = None

    # -------------------------------------------------------------------------- start-up

    def start(self, on_detached=None) -> None:
        """Everything before serving (M-DAE-1 order, D-5); raises StartupError / ConfigurationError."""
        ensure_standard_fds()
        self.configuration, self.config = self.app.load()
        check = self.app.name_check(self.configuration)
        if check is not None:
            check()  # at start the look-up may block: nothing is served yet
        config = self.config
        check_event_loop(config.event_loop_backend)
        if not 0 <= config.n_workers <= 1000:
            raise StartupError(f"--n-workers: must be 0..1000: <{config.n_workers}>")
        set_file_descriptor_limit(config.max_file_descriptors)
        activated = activated_sockets()
        if activated:
            self.listener = activated[0]
            self.logger.info(f"[server][listen] using the socket passed by systemd (fd {self.listener.fileno()})")
        else:
            try:
                self.listener = bind_listener(config.spec, unix_mode=config.unix_socket_mode,
                                              unix_group=config.unix_socket_group,
                                              remove_stale=config.remove_unix_socket_on_create,
                                              setting="manager.remove_unix_socket_on_create")
            except ListenError as error:
                raise StartupError(str(error)) from None
            self.bound_by_us = True
        self.listener.set_inheritable(True)
        self.pid_file = PidFile(config.pid_file)
        prepare = getattr(self.app, "prepare", None)
        if prepare is not None:
            prepare(self.configuration, config)  # e.g. fork a helper that keeps root (M-LAU-1)
        drop_privileges(config.user, config.group)
        if config.daemon:
            daemonize()
            if on_detached is not None:
                on_detached()
        self.pid_file.write(os.getpid())
        self.n_workers = config.n_workers
        self.started_at = time.time()
        self._start_controller()
        self.metrics = MetricsEndpoint.start_for(self.app, self.configuration,
                                                 lambda: metrics_text(self._status(), self.app), self.logger)

    def _start_controller(self) -> None:
        """The controller socket (D-7), after privileges are dropped (M-CTL-1), in a thread of the master."""
        settings = getattr(self.app, "controller_settings", lambda configuration: None)(self.configuration)
        if settings is None:
            return
        from .control import Controller

        spec, mode, group, *removal = settings
        remove_on_create, remove_on_close = removal or (True, True)
        try:
            self.controller = Controller(
                spec, status=self._status, reload=lambda: os.kill(os.getpid(), signal.SIGHUP),
                configuration=lambda: self.app.render_configuration(self.configuration),
                unix_mode=mode, unix_group=group, logger=self.logger, remove_on_create=remove_on_create,
                remove_on_close=remove_on_close)
        except (ListenError, OSError) as error:
            raise StartupError(f"controller.connection_spec: {error}") from None
        self.controller.start()

    def _status(self) -> dict:
        """The controller's ``status``: the master, each worker and its published counters."""
        now = time.monotonic()
        workers = []
        for worker in list(self.workers.values()):
            entry = {"pid": worker.pid, "generation": worker.generation, "uptime": round(now - worker.started, 3),
                     "stopping": worker.stop_sent is not None}
            entry.update(read_published(worker.heartbeat_fd))
            workers.append(entry)
        status = {"master": {"pid": os.getpid(), "spec": str(self.config.spec), "n_workers": self.n_workers,
                             "generation": self.generation, "uptime": round(time.time() - self.started_at, 3)},
                  "workers": sorted(workers, key=lambda worker: worker["pid"])}
        if self.n_workers == 0:
            status["process"] = self.app.statistics()
        self.record.decorate(status)
        status.update(self.app.summarize([status["process"]] if self.n_workers == 0
                                         else status["workers"] + [{"counters": status["retired"]}]))
        return status

    def run(self, on_detached=None) -> int:
        """Start, serve until stopped, clean up; the exit status."""
        # From the first moment, signals are only queued: one that arrives during start-up is
        # handled once serving begins, instead of killing a half-started server.
        self.signals.install()
        try:
            self.start(on_detached)
            if self.n_workers == 0:
                return SingleProcess(self).serve()
            return self._supervise()
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.controller is not None:
            self.controller.close()
            self.controller = None
        if self.listener is not None:
            try:
                self.listener.close()
            except OSError:
                pass
            if self.bound_by_us and self.config is not None and self.config.remove_unix_socket_on_close:
                problem = remove_unix_socket(self.config.spec)
                if problem:
                    self.logger.warning(f"[server][stop][warning] {problem}")
        if self.pid_file is not None:
            self.pid_file.remove()

    def title(self, role: str) -> str:
        config = self.config
        return f"{config.process_name}: {role} [{config.spec}]"

    def serve_settings(self, config: ServerConfig):
        from .worker import ServeSettings

        return ServeSettings(max_connections=config.max_connections, graceful_timeout=config.graceful_timeout,
                             heartbeat_interval=max(0.05, min(1.0, config.worker_timeout / 4)),
                             maintenance_interval=config.maintenance_interval,
                             report_memory_statistics=config.report_memory_statistics,
                             suspend_time_on_unacceptable=config.suspend_time_on_unacceptable,
                             statistics=getattr(self.app, "statistics", None),
                             maintained=getattr(self.app, "maintained", None))

    # -------------------------------------------------------------------------- supervision

    def _supervise(self) -> int:
        self.logger.with_pid = True
        set_process_title(self.title("master"))
        self._wake_read = self.signals.open_wakeup()
        self.reports = ReportPipe()
        self._master_read, self._master_write = os.pipe()
        self.logger.message(f"[server][listen] {self.config.spec} with {self.n_workers} workers")
        self._spawn_missing()
        systemd_notify(f"READY=1\nMAINPID={os.getpid()}")
        try:
            self._loop()
        finally:
            self.signals.close_wakeup()
            self.signals.restore_defaults()
            self.reports.close()
            close_quietly(self._master_read, self._master_write)
        self.logger.message("[server][stop] all workers finished")
        return self.exit_status

    def _loop(self) -> None:
        while True:
            try:
                select.select([self._wake_read, self.reports.read_fd], [], [], 0.25)
            except InterruptedError:
                pass
            self.signals.clear_wakeup()
            self._read_reports()
            self.signals.dispatch(self)
            self._log_dropped_signals()
            self._reap()
            now = time.monotonic()
            if self.stopping:
                if not self.workers:
                    return
                if now >= self.stop_deadline:
                    for pid in list(self.workers):
                        self._kill(pid, signal.SIGKILL)
                    self.stop_deadline = now + 5.0
                continue
            self._check_heartbeats(now)
            self._retire_old_generations(now)
            self._spawn_missing()

    def _log_dropped_signals(self) -> None:
        for number, count in self.signals.take_dropped().items():
            self.logger.info(f"[server][signal][dropped] {signal_name(number)} ({count} times): "
                             f"the same signal was still waiting to be handled")

    # -------------------------------------------------------------------------- one method per signal

    def handle_chld(self) -> None:
        """A worker ended: nothing here, the loop reaps on every turn."""

    def handle_term(self) -> None:
        self._begin_stop("graceful", signal.SIGTERM, self.config.graceful_timeout)

    def handle_int(self) -> None:
        self._begin_stop("fast", signal.SIGQUIT, FAST_STOP_TIMEOUT)

    handle_quit = handle_int

    def handle_hup(self) -> None:
        if self.stopping:  # new workers would only be stopped again
            self.logger.info("[server][reload] ignored: the server is stopping")
            return
        self._reload()

    def handle_usr1(self) -> None:
        self.logger.reopen()
        for pid in list(self.workers):
            self._kill(pid, signal.SIGUSR1)

    def handle_ttin(self) -> None:
        if self.n_workers < 1000:
            self.n_workers += 1
        self.logger.message(f"[server][workers] {self.n_workers} workers (SIGTTIN)")

    def handle_ttou(self) -> None:
        if self.n_workers > 1:
            self.n_workers -= 1
            # not those already stopping (a previous SIGTTOU): each signal stops one more worker
            current = [worker for worker in self.workers.values()
                       if worker.generation == self.generation and worker.stop_sent is None]
            if len(current) > self.n_workers:
                newest = max(current, key=lambda worker: worker.started)
                self._stop_worker(newest, time.monotonic())
        self.logger.message(f"[server][workers] {self.n_workers} workers (SIGTTOU)")

    # -------------------------------------------------------------------------- stopping and reloading

    def _begin_stop(self, how: str, worker_signal: int, timeout: float) -> None:
        if self.stopping == "fast" or (self.stopping == "graceful" and how == "graceful"):
            return
        self.stopping = how
        self.stop_deadline = time.monotonic() + timeout + 1.0
        self.logger.message(f"[server][stop] {how} stop of {len(self.workers)} workers")
        systemd_notify("STOPPING=1")
        for pid in list(self.workers):
            self._kill(pid, worker_signal)

    def _halt(self, error: str) -> None:
        """Workers cannot boot: say why, stop the others gracefully, exit with HALT_STATUS."""
        self.halted = error
        self.exit_status = HALT_STATUS
        self.logger.critical(f"[server][halt] workers cannot start: {error} ({self.boot_failures} failures in a row); "
                             f"stopping with exit status {HALT_STATUS}")
        self._begin_stop("graceful", signal.SIGTERM, self.config.graceful_timeout)

    def _reload_configuration(self) -> tuple[object, ServerConfig] | None:
        """Load the configuration again; ``None`` (and the error logged) when it is unusable or not ready yet.

        Host names are looked up off the signal loop (:class:`.lookup.NameLookup`): this SIGHUP starts
        the look-up and returns None; its end raises SIGHUP again, and that call takes the result.
        """
        pending = self.name_lookup
        if pending is not None and not pending.done:
            pending.again = True
            self.logger.info("[server][reload] host names are still being looked up; another reload follows")
            return None
        if pending is not None:
            self.name_lookup = None
            if pending.again:
                os.kill(os.getpid(), signal.SIGHUP)
            if pending.error is not None:
                self.logger.error(f"[server][reload][error] {pending.error}; the previous configuration stays in use")
                self.record.reloaded(False)
                return None
            configuration, config = pending.loaded
        else:
            try:
                configuration, config = self.app.load()
                check_event_loop(config.event_loop_backend)
            except (ConfigurationError, StartupError, BackendError) as error:
                self.logger.error(f"[server][reload][error] {error}; the previous configuration stays in use")
                self.record.reloaded(False)
                return None
            check = self.app.name_check(configuration)
            if check is not None:
                self.name_lookup = NameLookup((configuration, config), check,
                                              on_done=lambda: os.kill(os.getpid(), signal.SIGHUP))
                return None
        if str(config.spec) != str(self.config.spec):
            self.logger.warning(f"[server][reload][warning] the connection spec changed to {config.spec}; "
                                f"it takes effect after a restart")
            config.spec = self.config.spec
        if (config.n_workers == 0) != (self.n_workers == 0):
            self.logger.warning(f"[server][reload][warning] manager.n_workers: from {self.n_workers} to "
                                f"{config.n_workers} is refused: switching between serving in the master (0) and "
                                f"worker processes takes a restart; {self.n_workers} stays in effect")
            config.n_workers = self.n_workers
        try:
            self.app.reloaded(configuration)
        except ConfigurationError as error:
            self.logger.error(f"[server][reload][error] {error}; the previous configuration stays in use")
            self.record.reloaded(False)
            return None
        self.record.reloaded(True)
        self.logger.message("[server][reload] configuration reloaded")
        return configuration, config

    def _reload(self) -> None:
        systemd_notify("RELOADING=1")
        loaded = self._reload_configuration()
        if loaded is not None:
            self.configuration, self.config = loaded
            self.n_workers = self.config.n_workers
            self.generation += 1
            self._spawn_missing(force=True)
        systemd_notify("READY=1")

    def _retire_old_generations(self, now: float) -> None:
        """Once the new generation is up, old workers finish their sessions and go (D-5)."""
        current = sum(1 for worker in self.workers.values() if worker.generation == self.generation)
        if current < self.n_workers:
            return
        for worker in list(self.workers.values()):
            if worker.generation != self.generation and worker.stop_sent is None:
                self._stop_worker(worker, now)
        for worker in list(self.workers.values()):
            if worker.stop_sent is not None and now - worker.stop_sent > self.config.graceful_timeout + 1.0:
                self.logger.warning(f"[server][worker][kill] pid {worker.pid} did not finish within the "
                                    f"graceful timeout")
                self._kill(worker.pid, signal.SIGKILL)

    def _stop_worker(self, worker: WorkerProcess, now: float) -> None:
        worker.stop_sent = now
        self._kill(worker.pid, signal.SIGTERM)

    def _kill(self, pid: int, number: int) -> None:
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass

    def _read_reports(self) -> None:
        """What workers said: ready (the boot-failure count starts again) or why they could not boot."""
        for pid, kind, text in self.reports.read():
            worker = self.workers.get(pid)
            if worker is None:
                continue
            if kind == "ready":
                worker.ready = True
                self.boot_failures = 0
                self.logger.debug(f"[server][worker][ready] pid {pid}")
            elif kind == "boot-error":
                worker.boot_error = text

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._read_reports()  # what it wrote before it exited: ready, or why it could not boot
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            how = describe_status(status)
            lifetime = time.monotonic() - worker.started
            expected = self.stopping or worker.stop_sent is not None
            self.record.worker_exited(read_published(worker.heartbeat_fd), bool(expected))
            os.close(worker.heartbeat_fd)
            if expected:
                self.logger.info(f"[server][worker][exit] pid {pid} {how}")
                continue
            if is_boot_failure(worker, status):
                self.boot_failures += 1
                error = worker.boot_error or "no reason reported"
                if self.boot_failures >= BOOT_ATTEMPTS:
                    self._halt(error)
                    continue
                self.logger.error(f"[server][worker][boot-error] pid {pid} could not start ({self.boot_failures} of "
                                  f"{BOOT_ATTEMPTS} in a row): {error}; starting a new one")
            else:
                self.logger.error(f"[server][worker][exit] pid {pid} {how} after {lifetime:.1f} s; "
                                  f"starting a new one")
            if lifetime < QUICK_DEATH:
                self.quick_deaths += 1
                delay = min(MAX_BACKOFF, 0.1 * 2 ** self.quick_deaths)
                self.next_spawn = time.monotonic() + delay
                self.logger.warning(f"[server][worker][backoff] workers die at start; next start in {delay:.1f} s")
            else:
                self.quick_deaths = 0

    def _check_heartbeats(self, now: float) -> None:
        limit = self.config.worker_timeout
        wall = time.time()
        for worker in list(self.workers.values()):
            if now - worker.started < limit:
                continue
            try:
                last = os.fstat(worker.heartbeat_fd).st_ctime
            except OSError:
                continue
            if wall - last > limit:
                self.logger.error(f"[server][worker][timeout] pid {worker.pid} silent for {wall - last:.1f} s "
                                  f"(limit {limit:g} s); killing it")
                self._kill(worker.pid, signal.SIGKILL)

    def _spawn_missing(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next_spawn:
            return
        current = sum(1 for worker in self.workers.values() if worker.generation == self.generation)
        for _ in range(self.n_workers - current):
            self._spawn()

    def _spawn(self) -> None:
        fd, path = tempfile.mkstemp(prefix="milterman-heartbeat-")
        os.unlink(path)
        generation = self.generation
        # The worker starts with the signals serve() handles blocked, and serve() unblocks them once its
        # handlers are in place: until then a SIGUSR1 (log rotation) would kill it with the default action,
        # and a SIGTERM would be lost in the master's inherited handler.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SERVE_SIGNALS)
        pid = os.fork()
        if pid == 0:
            self._become_worker(fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.workers[pid] = WorkerProcess(pid, generation, fd, time.monotonic())
        self.logger.info(f"[server][worker][start] pid {pid} (generation {generation})")

    def _become_worker(self, heartbeat_fd: int) -> None:
        """In the child after fork: never returns. An exception before serving is a boot error (supervision)."""
        status = 1
        ready = False

        def report_ready() -> None:
            nonlocal ready
            ready = True
            self.reports.ready()

        try:
            self.signals.close_wakeup()
            self.signals.restore_defaults()
            for ignored in (signal.SIGTTIN, signal.SIGTTOU):
                signal.signal(ignored, signal.SIG_IGN)
            self.reports.in_worker()
            os.close(self._master_write)
            for worker in self.workers.values():
                os.close(worker.heartbeat_fd)
            self.workers = {}
            self.logger.after_fork()
            self.controller = None
            if self.metrics is not None:
                self.metrics.listener.close()  # the master's; never served here
            config = self.config
            set_process_title(self.title("worker"))
            from .worker import select_event_loop, serve

            select_event_loop(config.event_loop_backend)
            handle = self.app.make_handler(self.configuration)
            status = serve(self.listener, handle, settings=self.serve_settings(config), logger=self.logger,
                           heartbeat_fd=heartbeat_fd, master_fd=self._master_read, on_ready=report_ready)
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException as error:
            if not ready:
                status = BOOT_ERROR_STATUS
                self.reports.boot_error(error)
            try:
                self.logger.critical(f"[server][worker][crash] {traceback.format_exc()}")
            except BaseException:
                pass
        finally:
            try:
                sys.stdout.flush()
            except BaseException:
                pass
            os._exit(status)


def run_application(app: Application, *, logger: Logger = default_logger, on_detached=None) -> int:
    """Run ``app`` and turn start-up failures into a message on stdout and exit status 1."""
    master = Master(app, logger=logger)
    try:
        status = master.run(on_detached)
        if master.halted is not None:
            sys.stdout.write(f"workers cannot start: {master.halted}\n")
            sys.stdout.flush()
        return status
    except (StartupError, ConfigurationError, BackendError) as error:
        sys.stdout.write(f"{error}\n")
        sys.stdout.flush()
        return 1
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EPERM, errno.EADDRINUSE):
            sys.stdout.write(f"{error}\n")
            sys.stdout.flush()
            return 1
        raise
