#!/usr/bin/python3
"""Interop test milter built on Debian's python3-milter (libmilter).

Usage: /usr/bin/python3 pymilter_header_reject.py SPEC
SPEC is libmilter syntax: inet:PORT@127.0.0.1 or unix:/path.

* RCPT whose address contains "reject" -> 550 5.7.1 Recipient rejected by pymilter
* end of message -> adds header "X-Pymilter: checked"
* every other callback -> continue (no step or reply is negotiated away;
  the only action requested is ADDHDRS)

Prints "ready" on stdout once the socket is listening.  Exits 0 on
SIGTERM/SIGINT (libmilter's signal thread stops smfi_main).
PYMILTER_LOG=path appends one line per callback.
"""
import os
import sys

import Milter
import milter

LOG = os.environ.get("PYMILTER_LOG")


def log(*words):
    if LOG:
        with open(LOG, "a") as f:
            f.write(" ".join(str(w) for w in words) + "\n")


class HeaderReject(Milter.Base):
    def negotiate(self, opts):
        # Base.negotiate echoes every offered action; ask for ADDHDRS only.
        result = super().negotiate(opts)
        opts[0] = self._actions = opts[0] & Milter.ADDHDRS
        log("negotiate", *(hex(o) for o in opts))
        return result

    def connect(self, hostname, family, hostaddr):
        log("connect", hostname, hostaddr)
        return Milter.CONTINUE

    def hello(self, name):
        log("helo", name)
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *params):
        log("envfrom", mailfrom, *params)
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        log("envrcpt", to, *params)
        if "reject" in to.lower():
            self.setreply("550", "5.7.1", "Recipient rejected by pymilter")
            return Milter.REJECT
        return Milter.CONTINUE

    def data(self):
        log("data")
        return Milter.CONTINUE

    def unknown(self, cmd):
        log("unknown", cmd)
        return Milter.CONTINUE

    def header(self, name, value):
        log("header", name, value)
        return Milter.CONTINUE

    def eoh(self):
        log("eoh")
        return Milter.CONTINUE

    def body(self, chunk):
        log("body", len(chunk))
        return Milter.CONTINUE

    def eom(self):
        log("eom")
        self.addheader("X-Pymilter", "checked")
        return Milter.CONTINUE

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
    # Milter.runmilter() calls milter.opensocket() right before milter.main();
    # wrap it so "ready" is printed once the socket really listens.
    opensocket = milter.opensocket

    def opensocket_then_ready(rmsock):
        result = opensocket(rmsock)
        print("ready", flush=True)
        return result

    milter.opensocket = opensocket_then_ready
    Milter.factory = HeaderReject
    milter.set_flags(Milter.ADDHDRS)
    Milter.runmilter("pymilter_header_reject", sys.argv[1], timeout=60)
    log("exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
