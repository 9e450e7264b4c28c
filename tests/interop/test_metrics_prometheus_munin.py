"""The metrics endpoint read by the real programs: Debian's Prometheus server and Munin's munin-run.

* Prometheus (package prometheus), started here on loopback with a scrape interval of 1 s and
  its own storage directory, scrapes a milter-manager with 2 workers and 3 child milters
  (milter-test-client processes) while milter-test-server sends a known number of sessions.
  Its HTTP API must return that count, the histograms' counts must equal it, and a child taken
  down must show as down (``milter_manager_child_up == 0``) within the child's back-off time
  (``retry_delay``).
* munin-run (package munin-node) runs each of the three plugins (made from the Debian package's
  plugin template) with ``config`` and without argument against a running manager, as Munin's
  default user nobody; the values must be the endpoint's.

Skipped without the programs, failed under CI=true (``require_real``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from manager_processes import ManagerProcess
from milter_processes import RUN_DIR, TestClientProcess, free_port, stop
from postfix_harness import require_real

from milterman.tools.munin import EndpointError, fetch, parse, value

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parents[2]
PLUGIN_TEMPLATE = REPO / "debian" / "munin-plugin.in"
PLUGINS = ("milter_manager_sessions", "milter_manager_children", "milter_manager_memory")
PROMETHEUS = "/usr/bin/prometheus"
MUNIN_RUN = "/usr/sbin/munin-run"
RETRY_DELAY = 6.0


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def drive(manager: ManagerProcess, sessions: int) -> None:
    """milter-test-server: ``sessions`` sessions, 2 at a time; every one must pass."""
    run = subprocess.run([sys.executable, "-m", "milterman.cli.test_server", "-s",
                          f"inet:{manager.port}@[127.0.0.1]", "--n-sessions", str(sessions), "--concurrency", "2"],
                         capture_output=True, text=True, timeout=120, cwd=RUN_DIR)
    assert f"sessions: {sessions} (pass: {sessions})" in run.stdout, run.stdout + run.stderr


@pytest.fixture
def workdir(reachable_dir: Path) -> Path:
    """A directory everyone may read (Munin runs plugins as nobody; pytest's tmp_path is root's alone)."""
    return reachable_dir


@pytest.fixture
def children(workdir: Path) -> Iterator[list[TestClientProcess]]:
    started = [TestClientProcess(workdir, "--no-report-request", "-q") for _ in range(3)]
    try:
        yield started
    finally:
        for child in started:
            child.stop()


def start_manager(workdir: Path, children: list[TestClientProcess], metrics_port: int) -> ManagerProcess:
    milters = [{"name": f"c{index}", "connection_spec": f"inet:{child.port}@[127.0.0.1]",
                "retry_delay": RETRY_DELAY} for index, child in enumerate(children, 1)]
    return ManagerProcess(workdir, milters, n_workers=2, log_level="info",
                          extra_toml=f'[controller]\nmetrics_spec = "inet:{metrics_port}@[127.0.0.1]"\n')


class Prometheus:
    """Debian's prometheus on 127.0.0.1:<free port>, scraping one target every second."""

    def __init__(self, directory: Path, target: str) -> None:
        self.port = free_port()
        (directory / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: milter-manager\n    static_configs:\n"
            f"      - targets: ['{target}']\n")
        self.log_path = directory / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(directory))
        wait_for(self.ready, 60, f"prometheus to be ready: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.process.returncode}: {self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def query(self, expression: str) -> float | None:
        """The instant value of a PromQL expression (one series), None when it has no result."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(url, timeout=10) as answer:
            data = json.load(answer)
        assert data["status"] == "success", data
        result = data["data"]["result"]
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def stop(self) -> None:
        stop(self.process)
        self._log.close()


def test_prometheus_scrapes_sessions_histograms_and_a_child_going_down(workdir, children):
    require_real("prometheus (Debian package prometheus)", os.access(PROMETHEUS, os.X_OK))
    metrics_port = free_port()
    manager = start_manager(workdir, children, metrics_port)
    prometheus = None
    try:
        prometheus = Prometheus(workdir, f"127.0.0.1:{metrics_port}")
        wait_for(lambda: prometheus.query('up{job="milter-manager"}') == 1, 30,
                 f"a successful scrape: {prometheus.log()}")
        sent = 40
        drive(manager, sent)
        wait_for(lambda: prometheus.query("sum(milter_manager_sessions_finished_total)") == sent, 20,
                 "the sessions in Prometheus")
        assert prometheus.query("milter_manager_sessions_started_total") == sent
        assert prometheus.query('milter_manager_sessions_finished_total{status="pass"}') == sent
        assert prometheus.query("milter_manager_session_duration_seconds_count") == sent
        assert prometheus.query('milter_manager_session_duration_seconds_bucket{le="+Inf"}') == sent
        for child in ("c1", "c2", "c3"):
            assert prometheus.query(f'milter_manager_child_stage_duration_seconds_count'
                                    f'{{child="{child}",stage="connect"}}') == sent
            assert prometheus.query(f'milter_manager_child_up{{child="{child}"}}') == 1
        assert prometheus.query("milter_manager_workers") == 2
        assert prometheus.query('count(milter_manager_process_open_fds{role="worker"})') == 2
        assert prometheus.query("sum(milter_manager_child_fallbacks_total)") == 0

        children[2].stop()  # c3 is taken down
        down_at = time.monotonic()
        drive(manager, 4)
        wait_for(lambda: prometheus.query('milter_manager_child_up{child="c3"}') == 0, RETRY_DELAY,
                 "c3 down in Prometheus within its retry_delay")
        shown_after = time.monotonic() - down_at
        assert shown_after < RETRY_DELAY
        # the guide's alert expression finds it
        url = f"http://127.0.0.1:{prometheus.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": guide_alert_expression("MilterManagerChildDown")})
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert [series["metric"]["child"] for series in json.load(answer)["data"]["result"]] == ["c3"]
        wait_for(lambda: prometheus.query("sum(milter_manager_sessions_finished_total)") == sent + 4, 10,
                 "the later sessions")
        assert prometheus.query('milter_manager_child_fallbacks_total{child="c3"}') >= 1
        assert prometheus.query("milter_manager_session_duration_seconds_count") == sent + 4
        assert prometheus.query('milter_manager_child_up{child="c1"}') == 1
        print(f"c3 shown down by Prometheus {shown_after:.2f} s after it was stopped (retry_delay {RETRY_DELAY} s)")
    finally:
        if prometheus is not None:
            prometheus.stop()
        manager.stop()


def install_plugins(directory: Path) -> tuple[Path, Path]:
    """The three plugins from the Debian package's template, run by Debian's python3 with a copy of
    the installed package that nobody may read; and their configuration directory."""
    import milterman

    library = directory / "lib"
    shutil.copytree(Path(milterman.__file__).parent, library / "milterman",
                    ignore=shutil.ignore_patterns("__pycache__"))
    plugins = directory / "plugins"
    plugins.mkdir()
    template = PLUGIN_TEMPLATE.read_text()
    for name in PLUGINS:
        path = plugins / name
        path.write_text(template.replace("@PYTHON@", "/usr/bin/python3").replace("@PLUGIN@", name)
                        .replace("@APP_DIR@", str(library)))
        path.chmod(0o755)
    for root, dirs, files in os.walk(directory):
        for entry in dirs + files:
            os.chmod(os.path.join(root, entry), 0o755 if entry in dirs or entry in PLUGINS else 0o644)
    return plugins, directory / "plugin-conf.d"


def munin_run(plugins: Path, conf: Path, plugin: str, *args: str) -> str:
    run = subprocess.run([MUNIN_RUN, "--servicedir", str(plugins), "--sconfdir", str(conf), plugin, *args],
                         capture_output=True, text=True, timeout=60, cwd=RUN_DIR)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def munin_values(output: str) -> dict[str, float]:
    values = {}
    for line in output.splitlines():
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\.value (\S+)", line.strip())
        assert match, line
        values[match.group(1)] = float(match.group(2))
    return values


def started(url: str) -> float | None:
    try:
        return value(parse(fetch(url)), "milter_manager_sessions_started_total")
    except EndpointError:  # not listening yet
        return None


def test_munin_run_config_and_fetch_match_the_endpoint(workdir, children):
    require_real("munin-run (Debian package munin-node)", os.access(MUNIN_RUN, os.X_OK))
    plugins, conf = install_plugins(workdir)
    conf.mkdir()
    metrics_port = free_port()
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    (conf / "milterman").write_text(f"[milter_manager_*]\nenv.url {url}\n")
    os.chmod(conf / "milterman", 0o644)
    assert munin_run(plugins, conf, "milter_manager_sessions", "autoconf").startswith("no (")
    manager = start_manager(workdir, children, metrics_port)
    try:
        children[1].stop()  # c2 is down: its fallbacks and state show
        drive(manager, 12)
        wait_for(lambda: started(url) == 12, 10, "the sessions published")
        assert munin_run(plugins, conf, "milter_manager_memory", "autoconf").strip() == "yes"

        config = munin_run(plugins, conf, "milter_manager_sessions", "config")
        assert "graph_title milter-manager sessions" in config and "finished_pass.type DERIVE" in config
        samples = parse(fetch(url))
        got = munin_values(munin_run(plugins, conf, "milter_manager_sessions"))
        assert got["started"] == value(samples, "milter_manager_sessions_started_total") == 12
        assert got["finished_pass"] == value(samples, "milter_manager_sessions_finished_total", status="pass") == 12
        assert got["in_flight"] == value(samples, "milter_manager_sessions_in_flight") == 0

        config = munin_run(plugins, conf, "milter_manager_children", "config")
        for name in ("c1", "c2", "c3"):
            assert f"{name}_sessions.label {name}: sessions" in config
            assert f"{name}_down.critical 0:0" in config
        got = munin_values(munin_run(plugins, conf, "milter_manager_children"))
        for name in ("c1", "c2", "c3"):
            assert got[f"{name}_sessions"] == value(samples, "milter_manager_child_sessions_total", child=name) == 12
            assert got[f"{name}_fallbacks"] == value(samples, "milter_manager_child_fallbacks_total", child=name)
            assert got[f"{name}_down"] == (1 - value(samples, "milter_manager_child_up", child=name))
        assert got["c2_down"] == 1 and got["c2_fallbacks"] == 12 and got["c1_down"] == 0

        config = munin_run(plugins, conf, "milter_manager_memory", "config")
        assert "graph_args --base 1024 -l 0" in config
        got = munin_values(munin_run(plugins, conf, "milter_manager_memory"))
        after = parse(fetch(url))
        rss = "milter_manager_process_resident_memory_bytes"
        workers = [number for name, labels, number in after if name == rss and labels["role"] == "worker"]
        assert len(workers) == 2
        # resident memory moves a little between two reads: the plugin's value lies within 5 % of the endpoint's
        for field, expected in (("master", value(after, rss, role="master")), ("workers", sum(workers)),
                                ("largest_worker", max(workers))):
            assert abs(got[field] - expected) <= 0.05 * expected, (field, got[field], expected)
    finally:
        manager.stop()


def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S)


def test_the_monitoring_guide_scrape_job_and_alerts_pass_promtool(workdir):
    """doc/monitoring.md's Prometheus configuration and its three alerts, checked by promtool."""
    require_real("promtool (Debian package prometheus)", shutil.which("promtool") is not None)
    config, rules = yaml_blocks(REPO / "doc" / "monitoring.md")
    assert [line.split(":", 1)[1].strip() for line in rules.splitlines() if "- alert:" in line] == [
        "MilterManagerChildDown", "MilterManagerFallbacksRising", "MilterManagerWorkersRestarting"]
    (workdir / "milter-manager.rules.yml").write_text(rules)
    (workdir / "prometheus.yml").write_text(
        config.replace("/etc/prometheus/milter-manager.rules.yml", str(workdir / "milter-manager.rules.yml")))
    for argv in (["promtool", "check", "rules", str(workdir / "milter-manager.rules.yml")],
                 ["promtool", "check", "config", str(workdir / "prometheus.yml")]):
        run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "SUCCESS" in run.stdout + run.stderr


def guide_alert_expression(name: str) -> str:
    rules = yaml_blocks(REPO / "doc" / "monitoring.md")[1]
    return re.search(rf"- alert: {name}\n\s+expr: (.*)\n", rules).group(1)
