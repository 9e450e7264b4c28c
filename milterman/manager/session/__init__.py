"""One MTA session of the manager: the leader, its message pipeline, the negotiation, the facts conditions read."""
