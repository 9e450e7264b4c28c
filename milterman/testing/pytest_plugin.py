"""The ``milter_tester`` pytest fixture: ``pytest_plugins = ["milterman.testing.pytest_plugin"]`` in conftest.py.

``milter_tester.run(target, **mail)`` is :func:`milterman.testing.run_milter`;
``milter_tester.serve(cls)`` serves the class on a unix socket until the test ends and
returns its spec, so the same assertions can be made over a real socket.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from . import Outcome, run_milter, serve_milter


class MilterTester:
    """What the fixture gives a test; everything it served is stopped at teardown."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack

    def run(self, target, **mail) -> Outcome:
        """One transaction against a Milter subclass (in process) or a connection spec."""
        return run_milter(target, **mail)

    def serve(self, cls: type, spec: str | None = None) -> str:
        """Serve ``cls`` (default: on a unix socket in a temporary directory) for the rest of the test."""
        return self._stack.enter_context(serve_milter(cls, spec))


@pytest.fixture
def milter_tester() -> Iterator[MilterTester]:
    with contextlib.ExitStack() as stack:
        yield MilterTester(stack)
