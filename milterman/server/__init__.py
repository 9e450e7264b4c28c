"""Serving milter sockets: one process now; the pre-forking master builds on :mod:`.worker`."""
