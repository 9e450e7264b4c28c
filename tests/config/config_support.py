"""Shared helpers of the configuration tests: the issues of a failing load."""

from __future__ import annotations

import textwrap

import pytest

from milterman.config import ConfigurationError, load_string


def issues_of(text: str, filename: str = "main.toml") -> list[str]:
    """The lines of the ConfigurationError raised by loading ``text`` (fails if it loads)."""
    with pytest.raises(ConfigurationError) as raised:
        load_string(textwrap.dedent(text), filename=filename)
    lines = str(raised.value).splitlines()
    assert lines == [str(issue) for issue in raised.value.issues]
    return lines


def one_issue(text: str, filename: str = "main.toml") -> str:
    """The single issue of a failing load."""
    lines = issues_of(text, filename)
    assert len(lines) == 1, lines
    return lines[0]
