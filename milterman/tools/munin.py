"""Munin plugins for milter-manager: they read the metrics endpoint and print Munin's two answers.

One program, three plugins named by how it is called (the file name Munin runs):

* ``milter_manager_sessions``: sessions started and finished by status (per second), and in flight;
* ``milter_manager_children``: per child milter, its sessions and fallbacks (per second) and whether
  it is down (1: down in some worker, a critical value);
* ``milter_manager_memory``: resident memory of the master, of all workers together and of the
  largest worker.

``env.url`` in the plugin's configuration names the endpoint: ``http://127.0.0.1:PORT/metrics`` or
``unix:/PATH`` (HTTP over the unix socket of ``metrics_spec``). Arguments as Munin gives them:
``config``, ``autoconf``, or none for the values. Standard library only.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import sys
import urllib.parse
from collections.abc import Callable

PLUGINS = ("milter_manager_sessions", "milter_manager_children", "milter_manager_memory")
#: the statuses a session can end with, in a fixed order (Munin keeps one data file per field)
SESSION_STATUSES = ("pass", "accept", "reject", "temporary-failure", "discard")
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Samples = list[tuple[str, dict[str, str], float]]


class EndpointError(Exception):
    """The endpoint cannot be read."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def fetch(url: str, timeout: float = 10.0) -> str:
    """The page at ``url`` (``http://HOST:PORT/PATH`` or ``unix:/PATH``)."""
    if url.startswith("unix:"):
        connection: http.client.HTTPConnection = _UnixConnection(url[len("unix:"):], timeout)
        path = "/metrics"
    else:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise EndpointError(f"env.url must be http://HOST:PORT/metrics or unix:/PATH, not {url!r}")
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=timeout)
        path = parsed.path or "/metrics"
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as error:
        raise EndpointError(f"{url}: {error}") from None
    finally:
        connection.close()
    if response.status != 200:
        raise EndpointError(f"{url}: HTTP {response.status}: {body.strip()[:200]}")
    return body


def parse(text: str) -> Samples:
    """(name, labels, value) of each sample of Prometheus' text format."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        parsed = {key: re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), raw)
                  for key, raw in _LABEL.findall(labels or "")}
        try:
            samples.append((name, parsed, float(value)))
        except ValueError:
            continue
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(number for sample, sample_labels, number in samples
               if sample == name and all(sample_labels.get(key) == wanted for key, wanted in labels.items()))


def field_name(text: str) -> str:
    """A Munin field name: letters, digits and ``_``, not starting with a digit."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return "_" + name if not name or name[0].isdigit() else name


def _number(number: float) -> str:
    return str(int(number)) if number == int(number) else repr(number)


def _children(samples: Samples) -> list[str]:
    return sorted({labels["child"] for name, labels, _ in samples
                   if name == "milter_manager_child_fallbacks_total" and "child" in labels})


# ------------------------------------------------------------------------------ the three plugins


def sessions(samples: Samples, config: bool) -> list[str]:
    if config:
        lines = ["graph_title milter-manager sessions", "graph_category mail", "graph_args --base 1000 -l 0",
                 "graph_vlabel sessions per ${graph_period}",
                 "graph_info MTA sessions of milter-manager, over all its worker processes.",
                 "started.label started", "started.type DERIVE", "started.min 0"]
        for status in SESSION_STATUSES:
            field = field_name(f"finished_{status}")
            lines += [f"{field}.label finished: {status}", f"{field}.type DERIVE", f"{field}.min 0"]
        return lines + ["in_flight.label in flight", "in_flight.type GAUGE",
                        "in_flight.info Sessions in progress when the value was read."]
    lines = [f"started.value {_number(value(samples, 'milter_manager_sessions_started_total'))}"]
    for status in SESSION_STATUSES:
        number = value(samples, "milter_manager_sessions_finished_total", status=status)
        lines.append(f"{field_name(f'finished_{status}')}.value {_number(number)}")
    return lines + [f"in_flight.value {_number(value(samples, 'milter_manager_sessions_in_flight'))}"]


def children(samples: Samples, config: bool) -> list[str]:
    names = _children(samples)
    if config:
        lines = ["graph_title milter-manager child milters", "graph_category mail", "graph_args --base 1000 -l 0",
                 "graph_vlabel per ${graph_period} / down (1)",
                 "graph_info Each child milter: its sessions and the sessions its fallback status answered for "
                 "it; down is 1 while a worker cannot reach it."]
        for name in names:
            field = field_name(name)
            lines += [f"{field}_sessions.label {name}: sessions", f"{field}_sessions.type DERIVE",
                      f"{field}_sessions.min 0",
                      f"{field}_fallbacks.label {name}: fallbacks", f"{field}_fallbacks.type DERIVE",
                      f"{field}_fallbacks.min 0",
                      f"{field}_down.label {name}: down", f"{field}_down.type GAUGE", f"{field}_down.critical 0:0"]
        return lines
    lines = []
    for name in names:
        field = field_name(name)
        down = any(sample == "milter_manager_child_up" and labels.get("child") == name and number == 0
                   for sample, labels, number in samples)
        sessions_total = value(samples, "milter_manager_child_sessions_total", child=name)
        fallbacks = value(samples, "milter_manager_child_fallbacks_total", child=name)
        lines += [f"{field}_sessions.value {_number(sessions_total)}", f"{field}_fallbacks.value {_number(fallbacks)}",
                  f"{field}_down.value {1 if down else 0}"]
    return lines


def memory(samples: Samples, config: bool) -> list[str]:
    if config:
        return ["graph_title milter-manager memory", "graph_category mail", "graph_args --base 1024 -l 0",
                "graph_vlabel bytes", "graph_info Resident memory of milter-manager's processes.",
                "master.label master", "master.type GAUGE", "master.draw AREA",
                "workers.label all workers", "workers.type GAUGE", "workers.draw STACK",
                "largest_worker.label largest worker", "largest_worker.type GAUGE", "largest_worker.draw LINE1"]
    rss = "milter_manager_process_resident_memory_bytes"
    workers = [number for name, labels, number in samples if name == rss and labels.get("role") == "worker"]
    return [f"master.value {_number(value(samples, rss, role='master'))}",
            f"workers.value {_number(sum(workers))}", f"largest_worker.value {_number(max(workers, default=0))}"]


GRAPHS: dict[str, Callable[[Samples, bool], list[str]]] = {
    "milter_manager_sessions": sessions, "milter_manager_children": children, "milter_manager_memory": memory}


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """Run as the plugin named by ``argv[0]``; Munin's exit status conventions (0 even for autoconf's no)."""
    argv = list(sys.argv if argv is None else argv)
    environ = os.environ if environ is None else environ
    plugin = os.path.basename(argv[0])
    graph = GRAPHS.get(plugin)
    if graph is None:
        sys.stderr.write(f"{plugin}: unknown plugin; install it as one of {', '.join(PLUGINS)}\n")
        return 1
    command = argv[1] if len(argv) > 1 else "fetch"
    url = environ.get("url", "")
    if command == "autoconf":
        if not url:
            print("no (set env.url to the metrics endpoint of milter-manager)")
            return 0
        try:
            fetch(url)
        except EndpointError as error:
            print(f"no ({error})")
            return 0
        print("yes")
        return 0
    if command not in ("config", "fetch"):
        sys.stderr.write(f"{plugin}: unknown argument {command!r}: config, autoconf or none\n")
        return 1
    if not url:
        sys.stderr.write(f"{plugin}: set env.url to the metrics endpoint of milter-manager "
                         f"(http://127.0.0.1:PORT/metrics or unix:/PATH)\n")
        return 1
    samples: Samples = []
    if command == "fetch" or graph is children:  # the other graphs' fields do not depend on the values
        try:
            samples = parse(fetch(url))
        except EndpointError as error:
            sys.stderr.write(f"{plugin}: {error}\n")
            return 1
    print("\n".join(graph(samples, command == "config")))
    return 0
