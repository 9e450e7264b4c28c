"""Interop test milter on milterman's own milter side: 451 for recipients named greylist@….

Usage: python milterman_greylist.py SPEC   (a Python with milterman installed; SPEC in milterman's syntax:
       inet:PORT@[127.0.0.1])

The milter-performance-check interop tests use it as a child of milter-manager that answers a
temporary failure, so a 4xx the SMTP client sees comes from a child's answer.
"""

from __future__ import annotations

import sys

from milterman.net import MilterHandler, MilterSession, Wanted, bind_listener, parse_spec
from milterman.protocol import ReplyCode, format_reply_text
from milterman.server.worker import serve

GREYLIST_REPLY = format_reply_text(451, "4.7.1", "Greylisting in action, please come back later")


class GreylistMilter(MilterHandler):
    """Tempfails greylist@… recipients; continues everything else."""

    def negotiate(self, offer):
        return Wanted(actions=0)

    def envelope_recipient(self, command):
        if command.address.strip("<>").partition("@")[0].lower() == "greylist":
            return ReplyCode(GREYLIST_REPLY)
        return None


def main() -> int:
    listener = bind_listener(parse_spec(sys.argv[1]))

    def handle(sock, address) -> None:
        MilterSession(sock, GreylistMilter).run()

    try:
        return serve(listener, handle)
    finally:
        listener.close()


if __name__ == "__main__":
    sys.exit(main())
