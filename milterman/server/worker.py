"""One serving process: a gevent accept loop that runs a milter session per connection.

The listening socket is bound beforehand with the standard library
(:func:`milterman.net.bind_listener`), so a pre-forking master can bind once and
hand the same socket to every worker; gevent is imported only here, inside the
serving process, and never monkey-patches anything.
"""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass
from collections.abc import Callable

from ..log import Logger, logger as default_logger

EVENT_LOOP_BACKENDS = {"default": "libev-cext", "libev": "libev-cext", "libuv": "libuv-cffi"}


class BackendError(ValueError):
    """An event-loop backend name we do not offer (D-15)."""


def select_event_loop(name: str) -> None:
    """Choose gevent's loop before the hub exists (D-15): ``libev`` (default) or ``libuv``."""
    if name not in EVENT_LOOP_BACKENDS:
        raise BackendError(f"unknown event loop backend: <{name}> available values: [libev|libuv]")
    import importlib

    import gevent

    implementation = EVENT_LOOP_BACKENDS[name]
    module = "gevent.libuv.loop" if implementation.startswith("libuv") else "gevent.libev.corecext"
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise BackendError(f"event loop backend <{name}> cannot be loaded: {error}") from None
    gevent.config.loop = implementation


@dataclass
class ServeSettings:
    """How a serving process treats its connections."""

    max_connections: int = 0          # 0: unlimited; otherwise accept pauses at the limit (D-6)
    graceful_timeout: float = 30.0    # SIGTERM: how long sessions may take to finish (D-5)


def serve(listener: socket.socket, handle: Callable[[object, object], None], *,
          settings: ServeSettings | None = None, logger: Logger = default_logger,
          on_ready: Callable[[], None] | None = None) -> int:
    """Serve ``listener`` until SIGTERM (graceful), SIGINT or SIGQUIT (fast); return the exit status.

    ``handle(sock, address)`` runs in its own greenlet for each accepted connection.
    """
    import gevent
    from gevent import socket as gsocket
    from gevent.pool import Pool
    from gevent.server import StreamServer

    settings = settings or ServeSettings()
    sock = gsocket.socket(listener.family, listener.type, listener.proto, fileno=os.dup(listener.fileno()))
    from gevent.event import Event

    # A pool even without a limit: stopping waits for the pool's sessions (graceful SIGTERM).
    pool = Pool(settings.max_connections if settings.max_connections > 0 else None)
    server = StreamServer(sock, handle, spawn=pool)
    stopped = Event()
    stopping: list[bool] = []

    def finish(timeout: float) -> None:
        try:
            server.stop(timeout)
        finally:
            stopped.set()

    def stop(graceful: bool) -> None:
        if stopping:
            return
        stopping.append(graceful)
        logger.message(f"[server][stop] {'graceful' if graceful else 'fast'} stop requested")
        gevent.spawn(finish, settings.graceful_timeout if graceful else 0)

    handlers = [gevent.signal_handler(signal.SIGTERM, stop, True),
                gevent.signal_handler(signal.SIGINT, stop, False),
                gevent.signal_handler(signal.SIGQUIT, stop, False)]
    try:
        server.start()
        if on_ready is not None:
            on_ready()
        stopped.wait()
    finally:
        for handler in handlers:
            handler.cancel()
        try:
            sock.close()
        except OSError:
            pass
    return 0
