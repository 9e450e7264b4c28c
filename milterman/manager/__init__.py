"""milter-manager: the proxy between one MTA connection and many child milters (D-1…D-14)."""
