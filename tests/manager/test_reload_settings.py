"""What a reload (SIGHUP) applies (D-5, D-17): the log settings and ``n_workers``.

``log.level``, ``log.path`` and ``log.use_syslog`` take effect at the reload. ``n_workers``
changes between N > 0 values; a change between 0 (serving in the master) and N > 0 is
refused with a warning naming the key, the rest of the configuration is applied.
"""

from __future__ import annotations

import signal

import psutil
import pytest

from manager_harness import configuration_text, one_session, wait_until
from milterman.config import load_string
from milterman.log import Logger, parse_level
from milterman.manager.app import apply_log_settings


def rewrite(env, manager: dict, log: dict) -> None:
    table = {"connection_spec": f"unix:{env.socket_path}", "graceful_timeout": 5.0, **manager}
    text = configuration_text(table, [{"name": "c1", "connection_spec": env.milters["c1"].spec}], log)
    (env.dir / "milter-manager.toml").write_text(text)


def workers(manager) -> set[int]:
    try:
        return {child.pid for child in psutil.Process(manager.proc.pid).children()
                if child.status() != psutil.STATUS_ZOMBIE and "worker" in " ".join(child.cmdline())}
    except psutil.Error:
        return set()


@pytest.mark.parametrize("n_workers", [0, 2])
def test_reload_applies_log_level_and_path(env, tmp_path, n_workers):
    env.milter("c1")
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    manager = env.start([{"name": "c1"}], log={"path": str(first), "level": "error"}, n_workers=n_workers)
    one_session(env)
    old = workers(manager)
    rewrite(env, {"n_workers": n_workers}, {"path": str(second), "level": "all"})
    manager.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: second.exists() and "[server][reload] configuration reloaded" in second.read_text(), 10,
               "the reload logged in the new file")
    if n_workers:  # only the new generation serves: the old workers have finished
        wait_until(lambda: len(workers(manager)) == n_workers and not workers(manager) & old, 15, "the new workers")
    one_session(env)
    wait_until(lambda: "[session][end]" in second.read_text(), 10, "the statistics line in the new log file")
    assert "[session][end]" not in first.read_text()  # level error before the reload: no statistics


def test_reload_changes_the_number_of_workers(env):
    env.milter("c1")
    manager = env.start([{"name": "c1"}], n_workers=2)
    wait_until(lambda: len(workers(manager)) == 2, 15, "two workers")
    rewrite(env, {"n_workers": 3}, {})
    manager.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(workers(manager)) == 3, 15, f"three workers: {manager.output}")
    one_session(env)


@pytest.mark.parametrize("before, after", [(2, 0), (0, 2)])
def test_reload_between_master_and_workers_is_refused_with_the_key(env, before, after):
    env.milter("c1")
    manager = env.start([{"name": "c1"}], n_workers=before, log={"level": "all"})
    if before:
        wait_until(lambda: len(workers(manager)) == before, 15, "the workers")
    rewrite(env, {"n_workers": after}, {"level": "all"})
    manager.proc.send_signal(signal.SIGHUP)
    manager.wait_output(f"manager.n_workers: from {before} to {after} is refused: switching between serving in "
                        f"the master (0) and worker processes takes a restart; {before} stays in effect")
    manager.wait_output("[server][reload] configuration reloaded")
    if before:
        wait_until(lambda: len(workers(manager)) == before, 15, "the workers of the new generation")
    else:
        assert workers(manager) == set()
    one_session(env)


def test_log_settings_switch_syslog_on_and_off(monkeypatch):
    import syslog

    opened = []
    monkeypatch.setattr(syslog, "openlog", lambda ident, option, facility: opened.append((ident, facility)))
    logger = Logger()
    apply_log_settings(load_string('version = 1\n[log]\nuse_syslog = true\nlevel = "error"\n'
                                   'syslog_facility = "local3"\n'), logger)
    assert opened == [("milter-manager", syslog.LOG_LOCAL3)]
    assert logger.syslog_level and logger.enabled(logger.syslog_level)
    apply_log_settings(load_string('version = 1\n[log]\nuse_syslog = false\nlevel = "all"\n'), logger)
    assert logger.syslog_level == 0
    assert logger.level == parse_level("all")
