"""milter-performance-check's reports: the periodic lines, the progress line, the CSV and the final report.

:class:`Collector` receives every finished mail (in the parent process, whether the mails
were sent there or by forked workers); :func:`render_report` and :func:`render_json` turn
the records into the manual's final report or ``--report=json``. No I/O but the streams
and the statistics file handed in.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

from .test_server import percentile

if TYPE_CHECKING:
    from .performance_check import Settings

STATUSES = ("success", "temporary-failure", "reject", "error")
PERIODIC_WIDTHS = (8, 5, 7, 6, 6, 6, 5, 5, 5)


def iso_time(timestamp: float) -> str:
    """ISO 8601, local time, microseconds and the UTC offset."""
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="microseconds")


def summarize(records: list[dict], elapsed: float) -> dict:
    """The totals of the final report, shared by the text and the JSON layout."""
    times = sorted(record["elapsed"] for record in records)
    count = len(records)
    statuses = {status: sum(1 for record in records if record["status"] == status) for status in STATUSES}
    return {
        "mails": count,
        "elapsed_time": elapsed,
        "throughput": count / elapsed if elapsed > 0 else float(count),
        "per_mail": {"max": times[-1] if times else 0.0, "min": times[0] if times else 0.0,
                     "average": sum(times) / count if count else 0.0},
        "latency": {"p50": percentile(times, 0.50), "p90": percentile(times, 0.90), "p99": percentile(times, 0.99)},
        "statuses": statuses,
        # no mails → 0.00 %, not NaN
        "percentages": {status: statuses[status] * 100.0 / count if count else 0.0 for status in STATUSES},
    }


def render_report(records: list[dict], elapsed: float, *, with_files: bool, failure_responses: bool) -> str:
    """The final report of the manual, and the failure responses after it when asked."""
    totals = summarize(records, elapsed)
    lines: list[str] = []
    if with_files:
        for record in sorted(records, key=lambda record: record["elapsed"], reverse=True)[:10]:
            lines.append(f"{record['elapsed']:#5.2f} (sec): {record['path']}")  # printf's "%#5.2f (sec): %s"
        lines.append("")
        for title, status in (("Rejected mails:", "reject"), ("Temporary failed mails:", "temporary-failure")):
            paths = [record["path"] for record in records if record["status"] == status]
            if paths:
                lines += [title, *paths, ""]
    per_mail, latency, percentages = totals["per_mail"], totals["latency"], totals["percentages"]
    lines += ["Total:",
              f"      N mails: {totals['mails']:6d}",
              f" Elapsed time: {totals['elapsed_time']:6.2f} (sec)",
              f"   Throughput: {totals['throughput']:6.2f} (mails/sec)",
              "",
              "Per mail:",
              f"          Max: {per_mail['max']:6.2f} (sec)",
              f"          Min: {per_mail['min']:6.2f} (sec)",
              f"      Average: {per_mail['average']:6.2f} (sec)",
              f"          p50: {latency['p50']:6.2f} (sec)",
              f"          p90: {latency['p90']:6.2f} (sec)",
              f"          p99: {latency['p99']:6.2f} (sec)",
              "",
              "Status:"]
    for label, status in (("Temporary failure", "temporary-failure"), ("Reject", "reject"), ("Error", "error")):
        lines.append(f" {label:>17}: {totals['statuses'][status]:3d} ({percentages[status]:6.2f}%)")
    if failure_responses:
        lines.append("")
        for title, status in (("Temporary failures:", "temporary-failure"), ("Rejects:", "reject"),
                              ("Errors:", "error")):
            messages = [record["response"] for record in records if record["status"] == status]
            if messages:
                width = len(str(len(messages)))
                lines.append(title)
                lines += [f"  {number:{width}d} {message.rstrip(chr(10))}"
                          for number, message in enumerate(messages, 1)]
    return "\n".join(lines) + "\n"


def render_json(records: list[dict], elapsed: float) -> str:
    """``--report=json``: every mail and the totals, one JSON object on one line."""
    mails = [{"path": record["path"], "status": record["status"], "elapsed": round(record["elapsed"], 6),
              "response": record["response"], "size": record["size"], "finished": iso_time(record["finished"])}
             for record in records]
    totals = summarize(records, elapsed)
    return json.dumps({"mails": mails, "totals": totals}) + "\n"


def periodic_row(*cells: str) -> str:
    """printf's ``"%8s %5s %7s %6s %6s %6s %5s %5s %5s"`` of the manual."""
    return " ".join(f"{cell:>{width}}" for cell, width in zip(cells, PERIODIC_WIDTHS, strict=True))


def periodic_line(records: list[dict], seconds: float, now: float) -> str:
    """One line of the periodic report: the mails finished in the last interval."""
    times = [record["elapsed"] for record in records]
    count = len(times)
    counts = [sum(1 for record in records if record["status"] == status) for status in STATUSES[1:]]
    return periodic_row(time.strftime("%H:%M:%S", time.localtime(now)), f"{count:5d}",
                        f"{count / seconds if seconds > 0 else 0.0:6.2f}",
                        f"{max(times) if times else 0.0:6.2f}", f"{min(times) if times else 0.0:6.2f}",
                        f"{sum(times) / count if count else 0.0:6.2f}", *(f"{n:5d}" for n in counts))


PERIODIC_HEADER = periodic_row("Time", "Sent", "mails/s", "Max(s)", "Min(s)", "Avg(s)", "4XX", "5XX", "Error")


class Collector:
    """Receives every finished mail: errors to stderr at once, the CSV row, the periodic and progress state."""

    def __init__(self, settings: Settings, out: TextIO, err: TextIO, expected: int | None) -> None:
        self.settings = settings
        self.out = out
        self.err = err
        self.records: list[dict] = []
        self.pending: list[dict] = []
        self.expected = expected
        self.progress = err.isatty()
        self.started = time.monotonic()
        self.last_tick = self.started
        self.csv = None
        if settings.statistics_data:
            self.csv = open(settings.statistics_data, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
            self.csv.write("wall clock time,response time,message size\n")

    def add(self, record: dict) -> None:
        self.records.append(record)
        self.pending.append(record)
        if record["status"] == "error":
            self.clear_progress()
            self.err.write(record["response"] + "\n")
            self.err.flush()
        if self.csv is not None:
            self.csv.write(f"{iso_time(record['finished'])},{record['elapsed']:.6f},{record['size']}\n")
            self.csv.flush()

    def periodic(self, now: float, seconds: float) -> None:
        self.last_tick = time.monotonic()
        batch, self.pending = self.pending, []
        self.clear_progress()
        self.out.write(periodic_line(batch, seconds, now) + "\n")
        self.out.flush()

    def show_progress(self) -> None:
        """The progress line of a terminal: how far, how many failed, the rate so far."""
        if not self.progress:
            return
        done = len(self.records)
        failed = {status: sum(1 for record in self.records if record["status"] == status) for status in STATUSES[1:]}
        rate = done / max(time.monotonic() - self.started, 1e-9)
        total = f"{done}/{self.expected}" if self.expected is not None else f"{done}"
        self.err.write(f"\r\x1b[K{total} mails, {failed['temporary-failure']} 4XX, {failed['reject']} 5XX, "
                       f"{failed['error']} errors, {rate:.1f} mails/s")
        self.err.flush()

    def clear_progress(self) -> None:
        if self.progress:
            self.err.write("\r\x1b[K")
            self.err.flush()

    def close(self) -> None:
        self.clear_progress()
        if self.csv is not None:
            self.csv.close()
