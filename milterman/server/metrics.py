"""The metrics endpoint: Prometheus' text format over HTTP at ``/metrics``, served by the master.

Standard library only (the master never imports anything else). How the numbers get here:
every serving process writes its counters into its heartbeat file with each heartbeat (the
channel the controller's ``status`` already reads, :func:`.worker.publish`), together with its
own resident memory and descriptors (:func:`process_facts`); when a worker exits, the master
reads its file one last time and keeps its counters (:class:`ServerRecord`), so sums over the
workers never go down across restarts and reloads. A scrape asks the master for its ``status``
(the very answer of the controller's ``status`` command) and renders it: the server's own
families here, the application's from :meth:`.app.Application.metric_families`.

``prometheus_client`` is not used: its multi-process mode keeps a directory of memory-mapped
files per process beside our heartbeat channel, needs to be imported by the master (which is
standard library only), and could not make ``status`` and the metrics one source.
"""

from __future__ import annotations

import http.server
import math
import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterable

from ..log import Logger
from ..log import logger as default_logger
from ..net.sockets import ListenError
from ..net.spec import ConnectionSpec
from .app import Application, MetricFamily, add_counters
from .listening import ListeningThread
from .process import StartupError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_INF = 'le="+Inf"'


# ------------------------------------------------------------------------------ facts of a process


def process_facts() -> dict:
    """This process's resident memory, open descriptors and descriptor limit (read from /proc)."""
    facts: dict = {"pid": os.getpid()}
    try:
        with open("/proc/self/statm", "rb") as statm:
            facts["rss_bytes"] = int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        pass
    try:
        facts["open_fds"] = len(os.listdir("/proc/self/fd")) - 1  # without the descriptor listdir used
    except OSError:
        pass
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        facts["max_fds"] = soft
    return facts


# ------------------------------------------------------------------------------ the master's counters


class ServerRecord:
    """What only the master knows: worker restarts, reloads and the counters of exited workers."""

    def __init__(self) -> None:
        self.worker_restarts = 0
        self.reloads = {"success": 0, "failure": 0}
        self.last_reload: dict | None = None
        #: counters of workers that have exited, summed (``counters`` of their last publication)
        self.retired: dict = {}
        #: the supervising loop adds to ``retired`` while the controller's and the endpoint's threads read it
        self._lock = threading.Lock()

    def worker_exited(self, published: dict, expected: bool) -> None:
        """A worker was reaped; ``expected``: it was told to stop (a reload, SIGTTOU, the stop)."""
        if not expected:
            self.worker_restarts += 1
        counters = published.get("counters")
        if counters:
            with self._lock:
                add_counters(self.retired, counters)

    def reloaded(self, success: bool) -> None:
        self.reloads["success" if success else "failure"] += 1
        self.last_reload = {"time": round(time.time(), 3), "success": success}

    def decorate(self, status: dict) -> None:
        """Add the master's facts and counters to a ``status`` answer (shared by the controller and /metrics)."""
        status["master"].update(process=process_facts(), worker_restarts=self.worker_restarts,
                                reloads=dict(self.reloads), last_reload=self.last_reload)
        with self._lock:
            status["retired"] = add_counters({}, self.retired)  # a copy: the sum goes on growing


# ------------------------------------------------------------------------------ the text format


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str], extra: str = "") -> str:
    parts = [f'{name}="{_escape(str(value))}"' for name, value in labels.items()]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(families: Iterable[MetricFamily]) -> str:
    """Prometheus' text exposition format (version 0.0.4); histograms get cumulative buckets."""
    lines = []
    for family in families:
        if not family.samples and family.kind != "gauge":
            continue
        lines.append(f"# HELP {family.name} {family.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        if family.kind != "histogram":
            for labels, value in family.samples:
                lines.append(f"{family.name}{_labels(labels)} {_number(value)}")
            continue
        for labels, histogram in family.samples:
            counts = histogram["buckets"]
            running = 0
            for bound, count in zip(family.bounds, counts, strict=False):
                running += count
                le = 'le="' + _number(float(bound)) + '"'
                lines.append(f"{family.name}_bucket{_labels(labels, le)} {running}")
            running = sum(counts)
            lines.append(f"{family.name}_bucket{_labels(labels, _INF)} {running}")
            lines.append(f"{family.name}_sum{_labels(labels)} {_number(float(histogram['sum']))}")
            lines.append(f"{family.name}_count{_labels(labels)} {running}")
    return "\n".join(lines) + "\n"


def server_families(prefix: str, status: dict) -> list[MetricFamily]:
    """The families every served program has: processes, workers, restarts, reloads."""
    master = status["master"]
    processes = [("master", master.get("process") or {})]
    processes += [("worker", worker.get("process") or {}) for worker in status.get("workers", ())]

    def per_process(key: str) -> list:
        return [({"role": role, "pid": str(facts["pid"])}, facts[key]) for role, facts in processes
                if key in facts and "pid" in facts]

    last = master.get("last_reload")
    families = [
        MetricFamily(f"{prefix}_start_time_seconds", "gauge", "When the master started (Unix time).",
                     [({}, round(time.time() - master["uptime"], 3))] if "uptime" in master else []),
        MetricFamily(f"{prefix}_workers", "gauge", "Worker processes running (0: the master serves itself).",
                     [({}, len(status.get("workers", ())))]),
        MetricFamily(f"{prefix}_worker_restarts_total", "counter",
                     "Workers that died unexpectedly and were replaced.", [({}, master.get("worker_restarts", 0))]),
        MetricFamily(f"{prefix}_reloads_total", "counter", "Configuration reloads, by result.",
                     [({"result": result}, count) for result, count in sorted(master.get("reloads", {}).items())]),
        MetricFamily(f"{prefix}_last_reload_success", "gauge",
                     "Whether the last reload took the new configuration (1) or kept the old one (0).",
                     [({}, bool(last["success"]))] if last else []),
        MetricFamily(f"{prefix}_last_reload_timestamp_seconds", "gauge", "When the last reload happened (Unix time).",
                     [({}, last["time"])] if last else []),
        MetricFamily(f"{prefix}_process_resident_memory_bytes", "gauge", "Resident memory of each process.",
                     per_process("rss_bytes")),
        MetricFamily(f"{prefix}_process_open_fds", "gauge", "Open file descriptors of each process.",
                     per_process("open_fds")),
        MetricFamily(f"{prefix}_process_max_fds", "gauge", "File descriptor limit (soft) of each process.",
                     per_process("max_fds")),
    ]
    return families


def metrics_text(status: dict, app: Application) -> str:
    """The page of ``/metrics``: the server's families and the application's, from one ``status`` answer."""
    prefix = app.name.replace("-", "_")
    return render(server_families(prefix, status) + app.metric_families(status))


# ------------------------------------------------------------------------------ the HTTP endpoint


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "milterman"
    timeout = 10.0
    endpoint: MetricsEndpoint

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                data = self.endpoint.text().encode()
                code, kind = 200, CONTENT_TYPE
            except Exception as error:  # a failed scrape is a 500 with the reason, never a silent gap
                self.endpoint.logger.error(f"[metrics][error] {error!r}")
                data, code, kind = f"metrics failed: {error}\n".encode(), 500, "text/plain; charset=utf-8"
        elif path == "/":
            data, code, kind = b'<html><body><a href="/metrics">/metrics</a></body></html>\n', 200, "text/html"
        else:
            data, code, kind = b"not found: the metrics are at /metrics\n", 404, "text/plain; charset=utf-8"
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def address_string(self) -> str:
        return str(self.client_address[0]) if self.client_address else "unix"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the standard library's signature)
        pass


class MetricsEndpoint(ListeningThread):
    """A thread of the master that answers HTTP requests one at a time (a scrape takes milliseconds)."""

    name = "metrics"

    def __init__(self, spec: ConnectionSpec, text: Callable[[], str], *, unix_mode: int = 0o660,
                 unix_group: str | None = None, remove_on_create: bool = True, remove_on_close: bool = True,
                 logger: Logger = default_logger) -> None:
        super().__init__(spec, unix_mode=unix_mode, unix_group=unix_group, remove_on_create=remove_on_create,
                         remove_on_close=remove_on_close, setting="controller.remove_unix_socket_on_create",
                         logger=logger)
        self.text = text
        self.handler = type("Handler", (_Handler,), {"endpoint": self})

    @classmethod
    def start_for(cls, app: Application, configuration: object, text: Callable[[], str],
                  logger: Logger = default_logger) -> MetricsEndpoint | None:
        """The application's endpoint, listening (after privileges are dropped, as the controller); None: off."""
        settings = app.metrics_settings(configuration)
        if settings is None:
            return None
        spec, mode, group, remove_on_create, remove_on_close = settings
        try:
            endpoint = cls(spec, text, unix_mode=mode, unix_group=group, remove_on_create=remove_on_create,
                           remove_on_close=remove_on_close, logger=logger)
        except (ListenError, OSError) as error:
            raise StartupError(f"controller.metrics_spec: {error}") from None
        endpoint.start()
        return endpoint

    def serve_client(self, client: socket.socket, address: object) -> None:
        self.handler(client, address or ("unix", 0), self)
