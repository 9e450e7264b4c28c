"""Fixtures for the manager's scenario and rule tests (manager.md, decisions.md).

``env``
    A :class:`ManagerEnv` (``tests/support/manager_harness.py``): scripted children,
    the TOML configuration, the real ``milter-manager`` subprocess and MTA
    connections; everything is stopped at teardown and the manager must exit 0
    on SIGTERM.
``pair``
    ``env`` with two children ``c1`` and ``c2`` (manager.md §16) and the manager
    started by ``pair.start(c1={...}, c2={...}, manager={...}, n_workers=N)``;
    ``pair.c1``/``pair.c2`` are the scripted milters (set their ``script`` before
    the MTA connects).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SUPPORT = str(Path(__file__).resolve().parents[1] / "support")
if SUPPORT not in sys.path:
    sys.path.insert(0, SUPPORT)

from manager_harness import ManagerEnv  # noqa: E402


@pytest.fixture
def env(tmp_path):
    world = ManagerEnv(tmp_path)
    yield world
    problems = world.close()
    if world.manager is not None:  # shown by pytest when the test failed
        print(f"---- milter-manager output ----\n{world.manager.output}")
    assert not problems, "\n".join(problems)


class Pair:
    def __init__(self, env: ManagerEnv) -> None:
        self.env = env
        self.c1 = env.milter("c1")
        self.c2 = env.milter("c2")

    def start(self, c1: dict | None = None, c2: dict | None = None, **kwargs):
        return self.env.start([{"name": "c1", **(c1 or {})}, {"name": "c2", **(c2 or {})}], **kwargs)

    def mta(self, timeout: float = 10.0):
        return self.env.mta(timeout)


@pytest.fixture
def pair(env):
    """Two scripted children c1, c2; call ``pair.start(c1={...}, c2={...}, manager={...})``."""
    return Pair(env)
