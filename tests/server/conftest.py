"""Fixtures for the acceptance tests of the pre-forking server (D-5, D-6, D-12, manager.md §14).

``start_client(*args, n_workers=…)``
    milter-test-client (which runs through the Master) on a unix socket in a short
    temporary directory, logging to a file there; waits (bounded) until it listens
    and, with workers, until every worker has reached its serving loop.
``start_app(milter=…, server=…)``
    ``tests/server/config_app.py`` with a TOML configuration file, for reloads.
Every process started here (masters, workers, daemons found through their pid
file) is SIGKILLed at teardown, also when the test failed.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from server_support import CONFIG_APP, PYTHON, ServerProcess, clean_env, short_dir


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(value)


def toml_text(sections: dict[str, dict]) -> str:
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in table.items())
        lines.append("")
    return "\n".join(lines)


class Servers:
    """Starts servers under test and remembers them for teardown."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.started: list[ServerProcess] = []

    def _next(self, stem: str) -> tuple[Path, Path]:
        index = len(self.started)
        return self.dir / f"{stem}{index}.sock", self.dir / f"{stem}{index}.log"

    def client(self, *args: str, n_workers: int = 0, env: dict[str, str] | None = None, ready: bool = True,
               serving: bool = True, spec: str | None = None, log_path: Path | None = None,
               python: str = PYTHON) -> ServerProcess:
        socket_path, default_log = self._next("client")
        log_path = log_path or default_log
        arguments = ["--n-workers", str(n_workers), "--no-report-request", "--log-path", str(log_path), *args]
        address = None
        if spec is None:
            spec = f"unix:{socket_path}"
        elif spec.startswith("unix:"):
            socket_path = Path(spec[len("unix:"):])
        else:  # inet:PORT@[127.0.0.1]
            socket_path = None
            address = ("127.0.0.1", int(spec.split(":")[1].split("@")[0]))
        server = ServerProcess([python, "-m", "milterman.cli.test_client", "-s", spec, *arguments],
                               log_path=log_path, socket_path=socket_path, address=address, env=env)
        server.spec = spec
        self.started.append(server)
        if ready:
            server.wait_listening()
            if n_workers:
                server.wait_workers(n_workers, serving=serving)
        return server

    def write_config(self, path: Path, server: dict, milter: dict) -> None:
        """Write the file atomically (a reload never sees half a file)."""
        temporary = path.with_suffix(".tmp")
        temporary.write_text(toml_text({"server": server, "milter": milter}))
        os.replace(temporary, path)

    def app(self, *, n_workers: int = 2, milter: dict | None = None, server: dict | None = None,
            extra_args: tuple[str, ...] = (), ready: bool = True) -> ServerProcess:
        socket_path, log_path = self._next("app")
        config_path = log_path.with_suffix(".toml")
        server_table = {"spec": f"unix:{socket_path}", "n_workers": n_workers, **(server or {})}
        self.write_config(config_path, server_table, milter if milter is not None else {"header_value": "v1"})
        process = ServerProcess([PYTHON, str(CONFIG_APP), str(config_path), "--log-path", str(log_path),
                                 *extra_args], log_path=log_path, socket_path=socket_path)
        process.spec = f"unix:{socket_path}"
        process.config_path = config_path
        process.server_table = server_table
        self.started.append(process)
        if ready:
            process.wait_listening()
            if n_workers:
                process.wait_workers(n_workers)
        return process

    def adopt(self, process: ServerProcess) -> ServerProcess:
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for server in self.started:
            server.kill_all()


@pytest.fixture
def workdir(tmp_path) -> Path:
    return short_dir(tmp_path)


@pytest.fixture
def servers(workdir):
    started = Servers(workdir)
    yield started
    started.stop_all()


@pytest.fixture
def start_client(servers):
    return servers.client


@pytest.fixture
def start_app(servers):
    return servers.app


@pytest.fixture
def public_dir():
    """A directory outside pytest's 0700 tree (mkdtemp, chmod 0755), removed at teardown."""
    path = Path(tempfile.mkdtemp(prefix="msd-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def unprivileged_python() -> tuple[str, dict[str, str]]:
    """An interpreter (and environment) that still works after the server drops to ``nobody``.

    Workers import gevent after the privilege drop, so the interpreter's standard
    library must be readable by ``nobody``. The virtualenv's interpreter may live in a
    directory only root can read (here: ``/root/.pyenv``, mode 0700); then a system
    interpreter of the same version runs the same code with the virtualenv's packages.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root: the server must start as root to drop privileges")
    for name, getter in (("nobody", pwd.getpwnam), ("nogroup", grp.getgrnam)):
        try:
            getter(name)
        except KeyError:
            pytest.skip(f"no {name} on this system")
    probe = "import heapq, gevent, psutil, setproctitle, docopt, milterman.cli.test_client"
    site_packages = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
    candidates = [(PYTHON, clean_env())]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for system in (f"/usr/bin/{version}", "/usr/bin/python3"):
        if os.path.exists(system):
            candidates.append((system, clean_env(PYTHONPATH=str(site_packages))))
    reasons = []
    for python, env in candidates:
        try:
            result = subprocess.run([python, "-c", probe + "; import sys; print(sys.version_info[:2])"],
                                    user="nobody", group="nogroup", extra_groups=[], env=env, cwd="/",
                                    capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as error:
            reasons.append(f"{python}: {error}")
            continue
        expected = str(tuple(sys.version_info[:2]))
        if result.returncode == 0 and result.stdout.strip() == expected:
            return python, env
        reasons.append(f"{python}: {(result.stderr or result.stdout).strip().splitlines()[-1:]}")
    pytest.skip(f"no interpreter usable as nobody: {reasons}")
