"""The protocol core is sans-I/O and imports only the standard library (design: layers; issue 11).

Every import in ``milterman/protocol/`` — at module level or inside a function — is either a
standard-library module or a sibling in the package (one leading dot, never ``..``).
"""

from __future__ import annotations

import ast
import pathlib
import sys

import milterman

PROTOCOL = pathlib.Path(milterman.__file__).parent / "protocol"


def foreign_imports(path: pathlib.Path) -> list[str]:
    """Imports of ``path`` that are neither standard library nor a sibling protocol module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:
                continue
            if node.level > 1:
                found.append(f"{path.name}:{node.lineno}: {'.' * node.level}{node.module or ''}")
                continue
            names = [node.module or ""]
        else:
            continue
        found.extend(f"{path.name}:{node.lineno}: {name}" for name in names
                     if name.split(".")[0] not in sys.stdlib_module_names)
    return found


def test_protocol_imports_only_the_standard_library():
    files = sorted(PROTOCOL.glob("*.py"))
    assert len(files) >= 10
    assert [problem for path in files for problem in foreign_imports(path)] == []


def test_the_check_sees_a_foreign_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import struct\nfrom . import codec\nfrom ..net import sockets\n\ndef f():\n    import gevent\n")
    assert foreign_imports(sample) == ["sample.py:3: ..net", "sample.py:6: gevent"]
