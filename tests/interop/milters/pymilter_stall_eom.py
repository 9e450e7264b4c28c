#!/usr/bin/python3
"""Interop test milter (Debian's python3-milter) that never answers the end of message.

Usage: /usr/bin/python3 pymilter_stall_eom.py SPEC
SPEC is libmilter syntax: inet:PORT@127.0.0.1 or unix:/path.

Every callback but the end of message answers "continue" (no action is requested).  At the end
of message it writes "eom" to PYMILTER_LOG and then sleeps for good: the test either SIGKILLs the
process while the MTA side waits (a child killed during end-of-message) or lets the manager's
``end_of_message_timeout`` expire (a child that never answers).

Prints "ready" on stdout once the socket is listening.  PYMILTER_LOG=path appends one line per
callback (flushed at once, so a test can wait for "eom").
"""
import os
import sys
import time

import Milter
import milter

LOG = os.environ.get("PYMILTER_LOG")


def log(*words):
    if LOG:
        with open(LOG, "a") as f:
            f.write(" ".join(str(w) for w in words) + "\n")


class StallAtEndOfMessage(Milter.Base):
    def negotiate(self, opts):
        result = super().negotiate(opts)
        opts[0] = self._actions = 0  # no modification actions
        log("negotiate", *(hex(o) for o in opts))
        return result

    def connect(self, hostname, family, hostaddr):
        log("connect", hostname)
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *params):
        log("envfrom", mailfrom)
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        log("envrcpt", to)
        return Milter.CONTINUE

    def header(self, name, value):
        return Milter.CONTINUE

    def eoh(self):
        log("eoh")
        return Milter.CONTINUE

    def body(self, chunk):
        return Milter.CONTINUE

    def eom(self):
        log("eom", os.getpid())
        while True:  # never answer
            time.sleep(3600)

    def abort(self):
        log("abort")
        return Milter.CONTINUE

    def close(self):
        log("close")
        return Milter.CONTINUE


def main():
    if len(sys.argv) != 2:
        sys.stderr.write(f"usage: {sys.argv[0]} inet:PORT@127.0.0.1|unix:/path\n")
        return 2
    opensocket = milter.opensocket

    def opensocket_then_ready(rmsock):
        result = opensocket(rmsock)
        print("ready", flush=True)
        return result

    milter.opensocket = opensocket_then_ready
    Milter.factory = StallAtEndOfMessage
    milter.set_flags(0)
    Milter.runmilter("pymilter_stall_eom", sys.argv[1], timeout=600)
    log("exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
