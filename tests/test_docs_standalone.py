"""doc/ and every --help text stand alone (issue 8, documents that stand alone).

No reference to files outside the repository (the specification's manager.md, tools.md,
logging.md, decisions.md, design.md, protocol.md, or its section signs), and every rule id a
reader meets in doc/ or in --help is explained in doc/rules.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"manager\.md|tools\.md|logging\.md|decisions\.md|design\.md|protocol\.md")
RULE_ID = re.compile(r"\b(?:[A-Z]{1,3}(?:-[A-Z0-9]+)*-[A-Z]?\d+[a-z]?|[AB]\d+(?:\.\d+)*)\b")
NOT_RULES = {"GPL-3", "LGPL-3", "GFDL-1"}  # license names
COMMANDS = ["manager", "test_server", "test_client", "performance_check", "log_analyzer", "report_statistics",
            "convert_config", "milter_run"]


def text_files(*roots: str) -> list[Path]:
    files = []
    for root in roots:
        path = ROOT / root
        for candidate in ([path] if path.is_file() else sorted(path.rglob("*"))):
            if candidate.is_file() and "__pycache__" not in candidate.parts:
                files.append(candidate)
    return files


def test_no_reference_to_files_outside_the_repository():
    """The acceptance check of issue 8 (``grep -rn 'manager\\.md\\|tools\\.md\\|…' doc milterman README.md``)."""
    hits = []
    for path in text_files("doc", "milterman", "README.md"):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        hits += [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                 for number, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert hits == []


@pytest.fixture(scope="module")
def help_texts() -> dict[str, str]:
    texts = {}
    for module in COMMANDS:
        run = subprocess.run([sys.executable, "-m", f"milterman.cli.{module}", "--help"], capture_output=True,
                             text=True, timeout=60, cwd="/")
        assert run.returncode == 0, run
        texts[module] = run.stdout
    return texts


def documents() -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8") for path in sorted((ROOT / "doc").glob("*.md"))}


def test_no_section_signs_or_stale_text(help_texts):
    for name, text in {**documents(), **help_texts}.items():
        assert "§" not in text, name
        assert "once it lands" not in text, name


def explained_ids() -> set[str]:
    """The ids doc/rules.md lists: the first cell of its table rows."""
    rows = re.findall(r"^\| ([A-Z][A-Za-z0-9.-]*) \|", (ROOT / "doc" / "rules.md").read_text(encoding="utf-8"), re.M)
    return {row for row in rows if RULE_ID.fullmatch(row)}


def used_ids(text: str) -> set[str]:
    return {found for found in RULE_ID.findall(text) if found not in NOT_RULES}


def test_every_rule_id_in_doc_and_help_is_explained_in_rules_md(help_texts):
    explained = explained_ids()
    assert {"M-ERR-7", "D-9", "B5.1", "P-BAD-21"} <= explained  # the extraction itself works
    missing = {name: sorted(used_ids(text) - explained)
               for name, text in {**documents(), **help_texts}.items() if used_ids(text) - explained}
    assert missing == {}


def test_rules_md_lists_no_id_twice():
    rows = re.findall(r"^\| ([A-Z][A-Za-z0-9.-]*) \|", (ROOT / "doc" / "rules.md").read_text(encoding="utf-8"), re.M)
    ids = [row for row in rows if RULE_ID.fullmatch(row)]
    assert len(ids) == len(set(ids))
