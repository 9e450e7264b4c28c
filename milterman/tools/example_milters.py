"""Two small example milters shipped for `make demo` and for trying milter-manager.

* ``header``: adds ``X-Milterman-Example: checked by NAME`` at end of message;
* ``reject``: refuses recipients whose local part is ``spam`` with
  ``550 5.7.1 No spam here``.

Usage: ``python -m milterman.tools.example_milters (header|reject) SPEC [NAME]``.
They run on milterman's own milter-side runner, in one process each.
"""

from __future__ import annotations

import sys

from ..net import MilterHandler, MilterSession, Wanted, bind_listener, parse_spec
from ..protocol import Action, ReplyCode, format_reply_text


class HeaderMilter(MilterHandler):
    """Adds one header at end of message."""

    name = "example-header"

    def negotiate(self, offer):
        return Wanted(actions=Action.ADD_HEADERS & offer.actions)

    def end_of_message(self, command):
        self.session.add_header("X-Milterman-Example", f"checked by {self.name}")


class RejectMilter(MilterHandler):
    """Refuses recipients named spam@…."""

    def negotiate(self, offer):
        return Wanted(actions=0)

    def envelope_recipient(self, command):
        local = command.address.strip("<>").partition("@")[0]
        if local.lower() == "spam":
            return ReplyCode(format_reply_text(550, "5.7.1", "No spam here"))
        return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] not in ("header", "reject"):
        sys.stdout.write("usage: python -m milterman.tools.example_milters (header|reject) SPEC [NAME]\n")
        return 1
    kind, spec = argv[0], parse_spec(argv[1])
    handler_class = HeaderMilter if kind == "header" else RejectMilter
    if len(argv) > 2:
        handler_class = type(handler_class.__name__, (handler_class,), {"name": argv[2]})
    from ..server.worker import serve

    listener = bind_listener(spec)

    def handle(sock, address) -> None:
        MilterSession(sock, handler_class).run()

    try:
        return serve(listener, handle)
    finally:
        listener.close()
        from ..net import remove_unix_socket

        remove_unix_socket(spec)


if __name__ == "__main__":
    sys.exit(main())
