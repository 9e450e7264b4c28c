"""milter-manager-convert-config never runs its input and opens only the files the input names."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from convert_support import DEBIAN_MAIN, check_and_show, convert, milters, write_ruby
from tools_support import RUN_DIR, clean_env

INTEROP = str(Path(__file__).resolve().parents[1] / "interop")
if INTEROP not in sys.path:
    sys.path.append(INTEROP)
from postfix_harness import require_real  # noqa: E402  (standard library only)


def hostile(marker: Path) -> str:
    """Ruby that would create files named after ``marker`` if anything of it ran."""
    return f'''\
        system("touch {marker}-system")
        `touch {marker}-backticks`
        %x(touch {marker}-percent-x)
        eval("File.write('{marker}-eval', '')")
        require "{marker}-require"
        exec("touch {marker}-exec") if true
        define_milter("safe") do |milter|
          milter.connection_spec = "inet:10026@[127.0.0.1]"
          milter.description = `touch {marker}-in-block`
        end
        '''


def test_shell_commands_eval_and_require_are_reported_and_not_run(tmp_path):
    marker = Path("/tmp") / f"convert-config-{uuid.uuid4().hex}"
    source = write_ruby(tmp_path / "ruby", {"milter-manager.conf": hostile(marker)}, builtin_files=False)
    result = convert(source, tmp_path / "toml")
    assert result.returncode == 0
    lines = {int(problem.split(":")[1]) for problem in result.problems}
    assert lines == {1, 2, 3, 4, 5, 6, 9}, result.stderr
    assert any(":1: cannot convert: the method `system` (it is reported, not run)" in p for p in result.problems)
    assert any(":2: cannot convert: a shell command `touch" in p for p in result.problems)
    assert not list(Path("/tmp").glob(f"{marker.name}*")), "something of the input was run"
    assert [milter["name"] for milter in milters(check_and_show(result.out_dir))] == ["safe"]
    strict = convert(source, tmp_path / "strict", "--strict")
    assert strict.returncode == 1
    assert not list(Path("/tmp").glob(f"{marker.name}*"))


_OPEN = re.compile(r'^(?:\[pid\s+\d+\] |\d+\s+)?open(?:at)?\((?:AT_FDCWD|\d+), "([^"]+)", ([A-Z_|]+)')
_EXEC = re.compile(r'^(?:\[pid\s+\d+\] |\d+\s+)?execve\("([^"]+)"')


def test_only_the_files_the_input_names_are_opened_strace(tmp_path):
    """Traced with strace: every open(2) under the configuration directory is a file the input names."""
    strace = shutil.which("strace")
    require_real("strace", strace is not None, "Debian package strace, see .ci/system-packages")
    marker = Path("/tmp") / f"convert-config-{uuid.uuid4().hex}"
    files = {"milter-manager.conf": DEBIAN_MAIN + 'load_if_exist("conf.d/10-site.conf")\n',
             "milter-manager.local.conf": hostile(marker),
             "applicable-conditions/site.conf": 'define_applicable_condition("Site") { |c| c.description = "x" }\n',
             "conf.d/10-site.conf": "log.level = \"all\"\n",
             "conf.d/20-not-named.conf": "log.level = \"none\"\n",
             "secret.conf": "database.password = \"x\"\n",
             "defaults/debian.conf": "Dir.glob('/etc/*') { |f| system(f) }\n"}
    source = write_ruby(tmp_path / "ruby", files)
    trace = tmp_path / "trace.log"
    output = tmp_path / "out.toml"
    run = subprocess.run([strace, "-f", "-qq", "-e", "trace=open,openat,execve", "-o", str(trace), sys.executable,
                          "-m", "milterman.cli.convert_config", "--output", str(output), str(source)],
                         capture_output=True, text=True, timeout=120, cwd=RUN_DIR, env=clean_env())
    assert run.returncode == 0, run.stderr
    opened, executed = set(), []
    for line in trace.read_text().splitlines():
        found = _OPEN.match(line)
        if found and "O_DIRECTORY" not in found.group(2):
            path = Path(found.group(1))
            if path.is_relative_to(source):
                opened.add(str(path.relative_to(source)))
        found = _EXEC.match(line)
        if found:
            executed.append(found.group(1))
    assert opened == {"milter-manager.conf", "milter-manager.local.conf", "applicable-conditions/site.conf",
                      "conf.d/10-site.conf"}, opened
    assert executed == [sys.executable], executed  # no shell, no other program
    assert not list(Path("/tmp").glob(f"{marker.name}*"))
    assert 'level = "all"' in output.read_text()


def test_only_the_files_the_input_names_are_opened_in_process(tmp_path, monkeypatch):
    """The same check inside the process: ``open`` and ``os.open`` are watched."""
    import builtins
    import os

    from milterman.tools import convert_config

    files = {"milter-manager.conf": DEBIAN_MAIN, "milter-manager.local.conf": 'load("extra.conf")\n',
             "extra.conf": 'define_milter("x") { |m| m.connection_spec = "inet:10026@[127.0.0.1]" }\n',
             "unnamed.conf": "manager.n_workers = 3\n"}
    source = write_ruby(tmp_path / "ruby", files)
    seen: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def watched_open(file, *args, **kwargs):
        seen.append(str(file))
        return real_open(file, *args, **kwargs)

    def watched_os_open(path, *args, **kwargs):
        seen.append(str(path))
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", watched_open)
    monkeypatch.setattr(os, "open", watched_os_open)
    result = convert_config.convert(str(source))
    monkeypatch.undo()
    inside = sorted(str(Path(path).relative_to(source)) for path in seen if Path(path).is_relative_to(source))
    assert inside == ["extra.conf", "milter-manager.conf", "milter-manager.local.conf"]
    assert 'name = "x"' in result.toml and "n_workers" not in result.toml


@pytest.mark.parametrize("text", ["x = <<~EOS\n  a\nEOS\n", "def helper(x)\n  system(x)\nend\nhelper('ls')\n",
                                  "case x\nwhen 1 then system('ls')\nend\n", 'class Foo; def x; end; end\n',
                                  "BEGIN { system('ls') }\n", "-> { system('ls') }.call\n",
                                  ")\nend\n}\nlog.level = 'all'\n", "define_milter('x') do |m|\n"])
def test_ruby_outside_the_subset_is_reported_not_run(tmp_path, text):
    source = write_ruby(tmp_path / "ruby", {"milter-manager.conf": text}, builtin_files=False)
    result = convert(source, tmp_path / "toml", "--strict")
    assert result.returncode == 1 and result.problems, result.stderr
    assert all(re.match(rf"{re.escape(str(source))}/milter-manager\.conf:\d+: cannot convert: .+; .+", line)
               for line in result.problems), result.problems
    check_and_show(result.out_dir)
