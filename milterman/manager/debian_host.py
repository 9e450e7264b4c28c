"""Reading a Debian host for milter detection (D-9): dpkg's status, services, and the files milters read.

:class:`DebianHost` gives read-only access to a file tree (``/`` for the running
system, a fake tree in tests): whether a package is installed, whether a service is
enabled for the init system in use, a systemd unit's ``ExecStart`` with its drop-ins,
and sourced ``/etc/default`` files. The small readers below it understand the file
syntaxes the packaged milters use (sh assignments, unit files, ``KEY value`` files,
the subset of UCL that rspamd's configuration needs). Nothing here knows any one
milter; that knowledge is in :mod:`milterman.manager.detect`. Files are only read:
no process is run, nothing is resolved or connected to.
"""

from __future__ import annotations

import glob
import os
import re
import shlex


class DetectionError(ValueError):
    """A milter's socket cannot be determined; the message is the reason it is skipped."""



_ASSIGNMENT = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)")
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _expand(text: str, variables: dict[str, tuple[str, str]]) -> str:
    return _VARIABLE.sub(lambda m: variables.get(m.group(1) or m.group(2), ("", ""))[0], text)


def _shell_value(raw: str, variables: dict[str, tuple[str, str]]) -> str:
    """The value of ``NAME=raw`` as sh would assign it (quotes, ``$VAR``/``${VAR}``; no commands)."""
    out: list[str] = []
    i = 0
    while i < len(raw):
        char = raw[i]
        if char in " \t":
            break
        if char == "'":
            end = raw.find("'", i + 1)
            end = len(raw) if end < 0 else end
            out.append(raw[i + 1:end])
            i = end + 1
        elif char == '"':
            j = i + 1
            chunk: list[str] = []
            while j < len(raw) and raw[j] != '"':
                if raw[j] == "\\" and j + 1 < len(raw) and raw[j + 1] in '"\\$`':
                    j += 1
                chunk.append(raw[j])
                j += 1
            out.append(_expand("".join(chunk), variables))
            i = j + 1
        else:
            j = i
            while j < len(raw) and raw[j] not in " \t'\"":
                j += 1
            out.append(_expand(raw[i:j], variables))
            i = j
    return "".join(out)


def split_words(text: str) -> list[str]:
    """Split a command line or an ``OPTIONS`` value into words (unbalanced quotes: on blanks)."""
    try:
        return shlex.split(text, comments=False)
    except ValueError:
        return text.split()


def option_value(argv: list[tuple[str, str]], option: str) -> tuple[str, str] | None:
    """The last value of ``option`` (``-p X`` or ``-pX``) in a getopt-style argv of (word, source) pairs."""
    found = None
    for index, (word, source) in enumerate(argv):
        if word == option and index + 1 < len(argv):
            found = argv[index + 1]
        elif word.startswith(option) and len(word) > len(option) and not word.startswith("--"):
            found = (word[len(option):], source)
    return found


def first_positional(argv: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The first word of argv after the program that is not an option (dkimpy/pyspf take their config so)."""
    return argv[1] if len(argv) > 1 and not argv[1][0].startswith("-") else None


class DebianHost:
    """Read-only access to a Debian file tree under ``root``."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._status: dict[str, str] | None = None
        self.systemd = self._uses_systemd()

    def path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.path(path))

    def executable(self, path: str) -> bool:
        real = self.path(path)
        return os.path.isfile(real) and os.access(real, os.X_OK)

    def read(self, path: str) -> str:
        """The text of a file; :class:`DetectionError` naming it when it cannot be read."""
        try:
            with open(self.path(path), encoding="utf-8", errors="strict") as handle:
                return handle.read()
        except FileNotFoundError:
            raise DetectionError(f"{path} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise DetectionError(f"{path} cannot be read: {reason}") from None

    def read_optional(self, path: str) -> str | None:
        """Like :meth:`read`, but ``None`` for a file that does not exist."""
        return self.read(path) if os.path.exists(self.path(path)) else None

    def _uses_systemd(self) -> bool:
        if os.path.isdir(self.path("/run/systemd/system")):
            return True
        init = self.path("/sbin/init")
        if not os.path.lexists(init):
            return True
        return os.path.islink(init) and os.path.basename(os.readlink(init)) == "systemd"

    # dpkg

    def _dpkg_status(self) -> dict[str, str] | None:
        if self._status is None:
            try:
                text = self.read("/var/lib/dpkg/status")
            except DetectionError:
                return None
            status: dict[str, str] = {}
            for stanza in re.split(r"\n\s*\n", text):
                package = re.search(r"^Package:\s*(\S+)", stanza, re.M)
                state = re.search(r"^Status:\s*(.+)$", stanza, re.M)
                if package and state:
                    status[package.group(1)] = state.group(1).strip()
            self._status = status
        return self._status

    def installed(self, package: str) -> bool:
        """dpkg's view: the status file, or ``info/<package>.list`` when there is no status file."""
        status = self._dpkg_status()
        if status is not None:
            return status.get(package, "").split()[-1:] == ["installed"]
        return bool(glob.glob(self.path(f"/var/lib/dpkg/info/{glob.escape(package)}.list"))
                    or glob.glob(self.path(f"/var/lib/dpkg/info/{glob.escape(package)}:*.list")))

    # services

    _UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
                  "/lib/systemd/system", "/usr/lib/systemd/system")

    def unit_file(self, service: str) -> str | None:
        """The unit file systemd would load for ``service``, or None."""
        for directory in self._UNIT_DIRS:
            candidate = f"{directory}/{service}.service"
            if os.path.lexists(self.path(candidate)):
                return candidate
        return None

    def masked(self, service: str) -> bool:
        for directory in ("/etc/systemd/system", "/run/systemd/system"):
            candidate = self.path(f"{directory}/{service}.service")
            if os.path.islink(candidate) and os.readlink(candidate) == "/dev/null":
                return True
        return False

    def runs_unit(self, service: str) -> bool:
        """systemd runs a unit the package ships (otherwise the init script runs, even under systemd)."""
        unit = self.unit_file(service)
        return self.systemd and unit is not None and not self.masked(service)

    def service_enabled(self, service: str) -> bool:
        if self.masked(service):
            return False
        if self.runs_unit(service):
            wants = glob.glob(self.path(f"/etc/systemd/system/*.wants/{glob.escape(service)}.service"))
            return bool(wants)
        return bool(glob.glob(self.path(f"/etc/rc[2345].d/S[0-9][0-9]{glob.escape(service)}")))

    def exec_start(self, service: str) -> list[tuple[str, str]]:
        """The ``ExecStart`` argv of ``service`` with its drop-ins applied; each word paired with its file."""
        unit = self.unit_file(service)
        if unit is None:
            raise DetectionError(f"no systemd unit {service}.service")
        drop_ins: dict[str, str] = {}
        for directory in reversed(self._UNIT_DIRS):  # later directories in _UNIT_DIRS lose to earlier ones
            for found in glob.glob(self.path(f"{directory}/{glob.escape(service)}.service.d/*.conf")):
                drop_ins[os.path.basename(found)] = f"{directory}/{service}.service.d/{os.path.basename(found)}"
        exec_start: tuple[str, str] | None = None
        environment: dict[str, tuple[str, str]] = {}
        for path in [unit] + [drop_ins[name] for name in sorted(drop_ins)]:
            for key, value in unit_settings(self.read(path)):
                if key == "ExecStart":
                    exec_start = (value, path) if value else None
                elif key == "Environment":
                    for word in split_words(value):
                        name, _, assigned = word.partition("=")
                        environment[name] = (assigned, path)
                elif key == "EnvironmentFile" and value:
                    optional = value.startswith("-")
                    env_path = value.lstrip("-")
                    if optional and not os.path.exists(self.path(env_path)):
                        continue
                    environment.update(shell_assignments(self.read(env_path), environment, env_path)[0])
        if exec_start is None:
            raise DetectionError(f"{unit} has no ExecStart")
        command, path = exec_start
        command = command.lstrip("-@:+!")
        words = [_VARIABLE.sub(lambda m: environment.get(m.group(1) or m.group(2), ("", ""))[0], word)
                 for word in split_words(command)]
        return [(word, path) for word in words]

    def command(self, service: str) -> tuple[str, ...] | None:
        """How the manager starts the service (A2: ``systemctl start NAME`` or the init script)."""
        if self.systemd:
            return ("systemctl", "start", service)
        if self.exists(f"/etc/init.d/{service}"):
            return (f"/etc/init.d/{service}", "start")
        return None

    def shell_file(self, path: str, variables: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
        """``variables`` after sourcing ``path`` (a missing file changes nothing); values are (text, file)."""
        text = self.read_optional(path)
        if text is None:
            return dict(variables)
        return shell_assignments(text, variables, path)[0]


def shell_assignments(text: str, variables: dict[str, tuple[str, str]],
                       source: str) -> tuple[dict[str, tuple[str, str]], set[str]]:
    """Apply the plain ``NAME=value`` lines of a sourced sh file (other lines are ignored)."""
    result = dict(variables)
    assigned: set[str] = set()
    lines = text.replace("\\\n", "").splitlines()
    for line in lines:
        if line.lstrip().startswith("#"):
            continue
        match = _ASSIGNMENT.fullmatch(line.rstrip())
        if match:
            result[match.group(1)] = (_shell_value(match.group(2), result), source)
            assigned.add(match.group(1))
    return result, assigned


def unit_settings(text: str) -> list[tuple[str, str]]:
    """``(key, value)`` of a unit file's ``[Service]`` section, continuation lines joined."""
    settings: list[tuple[str, str]] = []
    section = ""
    logical = re.sub(r"\\\n", " ", text)
    for line in logical.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
            continue
        key, equals, value = line.partition("=")
        if equals and section == "[Service]":
            settings.append((key.strip(), value.strip()))
    return settings


def keyword_setting(text: str, key: str, *, separator: str | None = None, quoted: bool = False) -> str | None:
    """The last ``KEY value`` (or ``KEY = value`` with ``separator="="``) of a line-oriented config file.

    ``#`` starts a comment anywhere on a line (opendkim.conf(5), dkimpy, spf-engine and
    clamav all read it so). ``quoted``: the value is the first double-quoted string
    (greylist.conf: ``socket "PATH" [MODE]``).
    """
    found = None
    for line in text.splitlines():
        if quoted:
            match = re.match(rf'\s*{re.escape(key)}\s+"([^"]*)"', line)
            if match:
                found = match.group(1)
            continue
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if separator:
            parts = [part.strip() for part in line.split(separator)]
            if len(parts) == 2 and parts[0] == key:
                found = parts[1]
        else:
            words = line.split(None, 1)
            if words[0] == key and len(words) == 2:
                found = words[1].strip()
    return found


_UCL_TOKEN = re.compile(r"""
    (?P<skip>\s+|\#[^\n]*|//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<heredoc><<(?P<tag>[A-Z]+)\n.*?\n(?P=tag)(?=\s|$))
  | (?P<macro>\.[A-Za-z_]+(?:\s*\([^)]*\))?)
  | (?P<punct>[{}\[\];,=])
  | (?P<word>[^\s{}\[\];,="'\#]+)
""", re.S | re.X)


def ucl_parse(text: str, path: str) -> list:
    """A small subset of UCL (rspamd's syntax): a list of ``(key, name, value, params)``.

    ``value`` is a string, a list of strings (``[…]`` or a repeated key is not merged
    here) or, for ``key ["name"] { … }``, the list of entries inside. ``.include(p=v)
    "PATH"`` becomes key ``.include`` with the path as value and the parameters in
    ``params``. Anything else raises :class:`DetectionError` naming the file.
    """
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _UCL_TOKEN.match(text, position)
        if match is None:
            raise DetectionError(f"{path}: cannot parse near {text[position:position + 20]!r}")
        position = match.end()
        kind = next(name for name in ("skip", "string", "heredoc", "macro", "punct", "word") if match.group(name))
        if kind != "skip":
            value = match.group()
            if kind == "string":
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            elif kind == "heredoc":
                kind, value = "string", value[value.index("\n") + 1:value.rindex("\n")]
            tokens.append((kind, value))

    def parse_object(index: int, closing: str | None) -> tuple[list, int]:
        items: list = []
        while index < len(tokens):
            kind, value = tokens[index]
            if kind == "punct" and value == closing:
                return items, index + 1
            if kind == "punct" and value in ";,":
                index += 1
                continue
            if kind == "macro":
                name, _, raw = value.partition("(")
                params = dict(part.strip().partition("=")[::2] for part in re.split(r"[;,]", raw.rstrip(")"))
                              if part.strip())
                if index + 1 >= len(tokens) or tokens[index + 1][0] not in ("string", "word"):
                    raise DetectionError(f"{path}: {name.strip()} without an argument")
                items.append((name.strip(), None, tokens[index + 1][1], params))
                index += 2
                continue
            if kind not in ("string", "word"):
                raise DetectionError(f"{path}: unexpected {value!r}")
            key = value.rstrip(":")
            index += 1
            name = None
            if index < len(tokens) and tokens[index][0] == "string" and index + 1 < len(tokens) \
                    and tokens[index + 1] == ("punct", "{"):
                name = tokens[index][1]
                index += 1
            if index < len(tokens) and tokens[index] == ("punct", "="):
                index += 1
            if index >= len(tokens):
                raise DetectionError(f"{path}: {key} has no value")
            kind, value = tokens[index]
            if (kind, value) == ("punct", "{"):
                body, index = parse_object(index + 1, "}")
                items.append((key, name, body, {}))
            elif (kind, value) == ("punct", "["):
                values: list[str] = []
                index += 1
                while index < len(tokens) and tokens[index] != ("punct", "]"):
                    if tokens[index][0] in ("string", "word"):
                        values.append(tokens[index][1])
                    index += 1
                items.append((key, name, values, {}))
                index += 1
            elif kind in ("string", "word"):
                items.append((key, name, value, {}))
                index += 1
            else:
                raise DetectionError(f"{path}: {key} has no value")
        if closing is not None:
            raise DetectionError(f"{path}: missing {closing!r}")
        return items, index

    return parse_object(0, None)[0]
