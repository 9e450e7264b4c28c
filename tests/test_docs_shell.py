"""The documents' shell commands work as typed in bash and zsh (issue 8, the admin's first hour).

zsh treats an unquoted ``[...]`` as a glob and stops with "no matches found", so a spec such as
``inet:10025@[127.0.0.1]`` must be quoted wherever a command is shown: in sh/bash/console/zsh code
blocks and in inline code that starts with one of our commands, ``make`` or ``.venv/bin/``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))
from postfix_harness import require_real  # noqa: E402
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "doc").glob("*.md"))]
SHELL_BLOCK = re.compile(r"^```(sh|bash|console|shell|zsh)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
COMMAND = re.compile(r"^(sudo |\.venv/bin/|\$ )?(milter-[a-z-]+|make|python3?|postconf|apt|systemctl)(?=\s|$)")


def commands(text: str) -> list[str]:
    """The shell command lines of a Markdown text (console blocks: the ``$ `` lines only)."""
    found = []
    for match in SHELL_BLOCK.finditer(text):
        for line in match.group(2).splitlines():
            if match.group(1) == "console":
                if line.startswith("$ "):
                    found.append(line[2:])
            elif line.strip() and not line.lstrip().startswith("#"):
                found.append(line)
    outside = SHELL_BLOCK.sub("", text)
    outside = re.sub(r"^```.*?^```", "", outside, flags=re.M | re.S)  # other code blocks: not commands
    outside = re.sub(r"^## Synopsis\n.*?(?=^#)", "", outside, flags=re.M | re.S)  # [OPTIONAL] syntax, not commands
    found += [span for span in INLINE.findall(outside) if COMMAND.match(span)]
    return found


def unquoted_brackets(command: str) -> list[str]:
    """Words with a ``[`` outside quotes (a comment ends the scan)."""
    words, word, quote, bad = [], "", "", False
    for index, char in enumerate(command):
        if quote:
            if char == quote:
                quote = ""
            word += char
        elif char in "'\"":
            quote = char
            word += char
        elif char == "\\" and index + 1 < len(command):
            word += char
        elif char.isspace():
            if bad:
                words.append(word)
            word, bad = "", False
        elif char == "#" and not word:
            break
        else:
            if char == "[" and not (index and command[index - 1] == "\\"):
                bad = True
            word += char
    if bad:
        words.append(word)
    return words


def test_the_scanner_finds_what_zsh_would_glob():
    assert unquoted_brackets("milter-test-client -s inet:10025@[127.0.0.1] &") == ["inet:10025@[127.0.0.1]"]
    assert unquoted_brackets("milter-test-client -s 'inet:10025@[127.0.0.1]' &") == []
    assert unquoted_brackets('SPEC="inet:10025@[::1]" make run  # [not a word]') == []
    assert commands("```console\n$ make run\noutput [x]\n```\nThen `make run SPEC=inet:1@[::1]`.\n") == [
        "make run", "make run SPEC=inet:1@[::1]"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_no_unquoted_brackets_in_shell_commands(document):
    offenders = [(command, words) for command in commands(document.read_text(encoding="utf-8"))
                 for words in [unquoted_brackets(command)] if words]
    assert offenders == [], f"quote these words ('inet:10025@[127.0.0.1]'): {offenders}"


def zsh_globbing_errors(document: Path) -> list[str]:
    """Each simple command of the document expanded by zsh (``set -- WORDS``): what zsh refuses."""
    errors = []
    for command in commands(document.read_text(encoding="utf-8")):
        command = command.rstrip().removesuffix("&").rstrip()
        if any(token in command for token in ("$(", "`", "|", ";", "<", ">", "&")):
            continue  # not a simple command; the scan above still covers it
        if "[" not in command:
            continue  # file globs such as ./milterman_*.deb match once the file is there
        run = subprocess.run(["zsh", "-f", "-c", f"setopt nomatch\nset -- {command}"], capture_output=True,
                             text=True, timeout=10, cwd=ROOT)
        if run.returncode != 0:
            errors.append(f"{command}: {run.stderr.strip()}")
    return errors


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_zsh_accepts_the_commands_as_typed(document):
    require_real("zsh", shutil.which("zsh") is not None, "apt-get install zsh")
    assert zsh_globbing_errors(document) == []
