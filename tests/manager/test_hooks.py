"""``[hooks]`` and ``[database]`` (D-17): site functions named ``module:function``.

``started`` runs once in each serving process after its gevent hub exists, ``maintained`` at
each maintenance run (every ``maintenance_interval`` milter sessions); both get a context
with the configuration's ``[database]`` settings. A hook that raises is logged with its
traceback and the process keeps serving; a hook that does not import refuses the start.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from manager_harness import RUN_DIR, clean_env, one_session, wait_until

HOOKS = textwrap.dedent('''
    import json
    import os

    import gevent

    RECORD = os.environ["HOOK_RECORD"]


    def _write(context, **extra):
        database = context.database
        entry = {"event": context.event, "pid": context.pid, "sessions": context.sessions,
                 "database": [database.type, database.name, database.host, database.port, database.user,
                              database.password, database.extra_options],
                 "hub": gevent.get_hub().loop is not None, **extra}
        with open(RECORD, "a") as stream:
            stream.write(json.dumps(entry) + "\\n")


    def started(context):
        _write(context)


    def maintained(context):
        _write(context)


    def broken(context):
        raise RuntimeError("the site hook failed")
''')

DATABASE = ('\n[database]\ntype = "sqlite3"\nname = "/var/lib/milter/greylist.db"\nhost = "db.example"\nport = 5432\n'
            'user = "milter"\npassword = "secret"\nextra_options = { timeout = 5 }\n')


@pytest.fixture
def site(tmp_path):
    code = tmp_path / "site-code"
    code.mkdir()
    (code / "sitehooks.py").write_text(HOOKS)
    record = tmp_path / "hooks.jsonl"
    return code, record


def records(record: Path) -> list[dict]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


@pytest.mark.parametrize("n_workers", [0, 2])
def test_hooks_started_per_process_and_maintained_every_interval_get_database(env, site, n_workers):
    code, record = site
    env.milter("c1")
    extra = ('\n[hooks]\nstarted = ["sitehooks:started", "sitehooks:broken"]\n'
             'maintained = ["sitehooks:maintained", "sitehooks:broken"]\n' + DATABASE)
    manager = env.start([{"name": "c1"}], manager={"maintenance_interval": 2, "report_memory_statistics": True},
                        log={"level": "all"}, extra=extra, n_workers=n_workers,
                        env=clean_env(PYTHONPATH=str(code), HOOK_RECORD=str(record)))
    processes = max(1, n_workers)
    wait_until(lambda: len([entry for entry in records(record) if entry["event"] == "started"]) >= processes, 10,
               "the started hooks")
    started = [entry for entry in records(record) if entry["event"] == "started"]
    assert len(started) == processes and len({entry["pid"] for entry in started}) == processes
    assert all(entry["hub"] and entry["sessions"] == 0 for entry in started)
    if n_workers:
        assert manager.proc.pid not in {entry["pid"] for entry in started}  # workers only, not the master
    assert started[0]["database"] == ["sqlite3", "/var/lib/milter/greylist.db", "db.example", 5432, "milter",
                                      "secret", {"timeout": 5}]
    # the broken hook is logged with its traceback; the process serves on
    manager.wait_output("RuntimeError: the site hook failed", count=processes)
    assert "Traceback (most recent call last)" in manager.output
    for _ in range(4 if not n_workers else 8):
        one_session(env)
    if not n_workers:
        wait_until(lambda: [entry["sessions"] for entry in records(record) if entry["event"] == "maintained"]
                   == [2, 4], 10, "maintained after sessions 2 and 4")
    else:
        def per_worker() -> bool:
            maintained = [entry for entry in records(record) if entry["event"] == "maintained"]
            return sum(1 for entry in maintained) >= 1 and all(entry["sessions"] % 2 == 0 for entry in maintained)
        wait_until(per_worker, 10, "maintained in the workers")
    assert all(entry["database"][0] == "sqlite3" for entry in records(record))
    # a maintained hook that raises is logged too, and the process still serves
    manager.wait_output("hooks.maintained sitehooks:broken")
    one_session(env)
    # report_memory_statistics: the memory line at each maintenance run (M-MNT-1)
    manager.wait_output("[maintain][memory]")


def test_hook_that_does_not_import_refuses_the_start_with_file_and_key(env, tmp_path):
    path = env.dir / "milter-manager.toml"
    path.write_text('version = 1\n[log]\nuse_syslog = false\n[hooks]\nmaintained = ["sitehooks_absent:run"]\n')
    run = subprocess.run([sys.executable, "-m", "milterman.cli.manager", "-c", str(env.dir), "--no-detect",
                          "--check-config"], capture_output=True, text=True, timeout=60, cwd=RUN_DIR, env=clean_env())
    assert run.returncode == 1
    assert (f"{path}: hooks.maintained[0]: cannot import module <sitehooks_absent>: ModuleNotFoundError"
            in run.stdout + run.stderr)
