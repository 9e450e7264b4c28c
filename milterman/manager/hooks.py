"""``[hooks]``: the site's Python functions the manager calls (the original's Ruby hooks).

* ``started``: once in each serving process (each worker, or the master with
  ``n_workers = 0``) when it starts serving a configuration — after its gevent hub
  exists, before the first session; again in that process after a reload there.
* ``maintained``: at each maintenance run (every ``manager.maintenance_interval``
  milter sessions, M-MNT-1, D-12).

Each function gets one argument, a :class:`HookContext`: the event name, the whole
configuration, its ``[database]`` settings (which the manager itself never reads: they
are there for hooks, as in the original), the logger, the process id and the number of
milter sessions this process has served. The return value is ignored. An exception is
logged with its traceback; the process goes on serving.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from ..config.entry_points import resolve
from ..log import Logger


@dataclass(frozen=True)
class HookContext:
    """What a hook function is called with."""

    event: str           # "started" or "maintained"
    configuration: object
    database: object     # the [database] settings (type, name, host, port, path, user, password, extra_options)
    logger: Logger
    pid: int
    sessions: int        # milter sessions served by this process so far


class Hooks:
    """The functions of ``[hooks]``, imported once per serving process."""

    def __init__(self, configuration, logger: Logger) -> None:
        self.configuration = configuration
        self.logger = logger
        hooks = configuration.hooks
        self.functions: dict[str, list[tuple[str, Callable]]] = {
            "started": [(name, resolve(name)) for name in hooks.started],
            "maintained": [(name, resolve(name)) for name in hooks.maintained],
        }

    def run(self, event: str, sessions: int = 0) -> None:
        """Call every function of ``event``; a failure is logged with its traceback and does not spread."""
        functions = self.functions[event]
        if not functions:
            return
        context = HookContext(event, self.configuration, self.configuration.database, self.logger, os.getpid(),
                              sessions)
        for name, function in functions:
            try:
                function(context)
            except Exception:
                self.logger.error(f"[manager][hook][error] hooks.{event} {name}: "
                                  f"{traceback.format_exc().rstrip()}")
