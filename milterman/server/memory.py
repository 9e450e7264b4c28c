"""Memory lines for the log: one per session when asked, and the maintenance line (M-MNT-1).

psutil reads the serving process; ``MILTER_MEMORY_PROFILE=yes`` adds USS, PSS and
swap (which cost a read of /proc/PID/smaps, so they are opt-in).
"""

from __future__ import annotations

import os

_process = None


def _me():
    global _process
    if _process is None or _process.pid != os.getpid():
        import psutil

        _process = psutil.Process()
    return _process


def detailed() -> bool:
    return os.environ.get("MILTER_MEMORY_PROFILE", "").lower() in ("yes", "true", "1")


def rss_kb() -> int:
    return _me().memory_info().rss // 1024


def session_line(session_id: int) -> str:
    """``[session][memory](ID) rss=…KB vms=…KB`` (+ ``uss pss swap`` when detailed)."""
    process = _me()
    info = process.memory_info()
    line = f"[session][memory]({session_id}) rss={info.rss // 1024}KB vms={info.vms // 1024}KB"
    if detailed():
        full = process.memory_full_info()
        line += (f" uss={full.uss // 1024}KB pss={getattr(full, 'pss', 0) // 1024}KB"
                 f" swap={getattr(full, 'swap', 0) // 1024}KB")
    return line


def maintenance_line(total_sessions: int) -> str:
    """``[maintain][memory] (<rss>KB) total:<sessions>`` after a maintenance run (M-MNT-1)."""
    return f"[maintain][memory] ({rss_kb()}KB) total:{total_sessions}"
