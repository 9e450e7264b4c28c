"""Runner greenlets: the few greenlets that do the work of many sessions, one step at a time.

A session waiting for its MTA holds no greenlet (a paused greenlet keeps its C stack slice and its
own Python data stack, several KiB per held connection): it waits as a loop watcher, and when the
MTA's socket becomes readable its next step runs in a runner taken from a process-wide free list.
A runner is made only when none is idle, so their number follows the sessions *working* at once,
and idle ones beyond :data:`KEEP_IDLE` end (a burst leaves no crowd of idle runners behind).
No ``gevent.spawn`` per step: taking a runner is one switch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from gevent import get_hub, getcurrent
from greenlet import GreenletExit, greenlet

#: idle runners kept for the next steps; more end when their step is over
KEEP_IDLE = 8

_idle: list = []


def _loop(function: Callable[[object], object], argument: object) -> None:
    """A runner's life: do a step, wait in the hub on the free list for the next one."""
    hub = get_hub()
    me = getcurrent()
    while True:
        try:
            function(argument)
        except GreenletExit:
            pass  # a stop ended the step's session (it finished it on the way out)
        except BaseException:
            hub.handle_error(function, *sys.exc_info())
        function = argument = None
        if len(_idle) >= KEEP_IDLE:
            return
        _idle.append(me)
        while True:
            try:
                work = hub.switch()
            except GreenletExit:
                return  # let go of (release_idle)
            except BaseException:  # an interrupt meant for a wait that is over: nothing to interrupt here,
                continue  # and raised on, it would reach the hub (the runner's parent) and stop the loop
            if type(work) is tuple:  # anything else is a wake-up meant for a wait that is over
                function, argument = work
                break


def run(function: Callable[[object], object], argument: object) -> None:
    """Run ``function(argument)`` in an idle runner (or a new one) now; called in the hub (a loop callback):
    a runner that waits goes back to the hub, not to the greenlet that switched to it.
    """
    if _idle:
        _idle.pop().switch((function, argument))
    else:
        greenlet(_loop, get_hub()).switch(function, argument)


def release_idle() -> None:
    """End the idle runners (after a burst): made during it, they would keep its memory from being given back."""
    idle = _idle[:]
    del _idle[:]
    me = getcurrent()
    for runner in idle:
        runner.parent = me  # where it goes once over: back here, not to the hub
        runner.throw(GreenletExit)
