"""``n_workers = 0``: the master serves the sessions itself, in its own process (D-5, M-WRK-1).

The start-up (binding, privileges, pid file, controller) is the :class:`~.master.Master`'s;
from there on this process becomes a serving process like a worker, with gevent
(:func:`.worker.serve`) handling SIGTERM, SIGINT, SIGQUIT, SIGUSR1 and SIGHUP. SIGHUP
reloads the configuration through the master (the same validation as with workers) and
new sessions get the new handler. SIGTTIN and SIGTTOU are ignored: there are no workers.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

from .process import set_process_title, systemd_notify

if TYPE_CHECKING:
    from .master import Master

#: signals that mean nothing without workers (dropped if they came during start-up)
NO_WORKER_SIGNALS = (signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU)


class SingleProcess:
    """The single-process regime: one event loop accepts and serves every session."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self.handler = None

    def serve(self) -> int:
        """Serve until stopped; the exit status."""
        from .worker import select_event_loop, serve

        master = self.master
        config = master.config
        set_process_title(master.title("master"))
        select_event_loop(config.event_loop_backend)
        self.handler = master.app.make_handler(master.configuration)
        for ignored in (signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(ignored, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        status = serve(master.listener, self.handle, settings=master.serve_settings(config), logger=master.logger,
                       on_ready=self.ready, on_hangup=self.hangup, on_stop=lambda: systemd_notify("STOPPING=1"))
        master.logger.message("[server][stop] stopped")  # as with workers: the stop is seen in the log
        return status

    def handle(self, sock, address) -> bool | None:
        """One accepted connection, served by the handler of the configuration in effect."""
        return self.handler(sock, address)

    def ready(self) -> None:
        """Serving: tell systemd, then deliver the signals that came during start-up to serve()'s handlers."""
        master = self.master
        master.logger.message(f"[server][listen] {master.config.spec}")
        systemd_notify(f"READY=1\nMAINPID={os.getpid()}")
        for number in master.signals.drain():
            if number not in NO_WORKER_SIGNALS:
                os.kill(os.getpid(), number)

    def hangup(self) -> None:
        """SIGHUP: new sessions use the reloaded configuration; sessions in progress keep theirs."""
        master = self.master
        systemd_notify("RELOADING=1")  # as with workers: RELOADING=1, then READY=1 either way
        loaded = master._reload_configuration()
        if loaded is not None:
            self.handler = master.app.make_handler(loaded[0])
            master.configuration, master.config = loaded
        systemd_notify("READY=1")
