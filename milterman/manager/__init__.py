"""milter-manager: the proxy between one MTA connection and many child milters (manager.md, D-1…D-14)."""
