"""Milter detection on Debian (D-9): which packaged milters run, and on which socket.

For each milter of :data:`MILTERS` the detector asks three questions of a file tree
(``root``, ``/`` for the running system, a fake tree in tests) and reads files only —
no process is run, nothing is resolved, nothing is connected to:

* **installed?** ``var/lib/dpkg/status`` says ``Status: … installed`` for the package
  (without a status file: ``var/lib/dpkg/info/<package>.list`` exists). Milters that
  are not installed are left out silently.
* **enabled?** The service is not masked and is enabled the way the init system in
  use sees it: a symlink ``etc/systemd/system/*.wants/<service>.service`` when systemd
  runs a unit of the package, else an ``etc/rc[2-5].d/S??<service>`` link (what
  systemd's sysv generator and sysvinit both read), and, for init scripts that have
  one, the ``/etc/default`` switch (``ENABLED=0`` of milter-greylist).
* **which socket?** What the daemon will really listen on, read from the same places
  and with the same precedence as the package: the command line of the systemd unit
  (drop-ins included) or of the init script as assembled from ``/etc/default``, then
  the milter's configuration file, then the program's own default. The result is a
  milterman connection spec; the file it came from is kept for
  ``--show-config``.

systemd is taken to be the init system when ``run/systemd/system`` exists or
``sbin/init`` is missing or points at systemd (Debian's default); a ``sbin/init``
that is something else means sysvinit, where ``/etc/default`` files are read by the
init scripts.

A milter whose configuration cannot be read or whose socket cannot be determined is
skipped with a reason (:func:`detect_with_reasons`; :func:`detect` logs the reasons as
warnings). Sockets that listen on every address are connected to on the loopback
address of their family.

The facts per milter (Debian 12 "bookworm" packages unless noted, read from the
packages' shipped files) are in the docstring of each ``_socket_*`` function; the
table :data:`MILTERS` ties them to names, services and default applicable conditions.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from milterman.log import logger

#: the conditions the original's Debian defaults give each kind of milter
NO_CONDITIONS: tuple[str, ...] = ()
GREYLIST_CONDITIONS = ("Sendmail Compatible", "Stress Notify", "Trust", "Remote Network", "S25R", "Unauthenticated")
FILTER_CONDITIONS = ("Remote Network", "Unauthenticated", "No Stress")

DEFAULT_SUFFIX = " (package default)"


class DetectionError(ValueError):
    """A milter's socket cannot be determined; the message is the reason it is skipped."""


@dataclass(frozen=True)
class DetectedMilter:
    """One installed milter, ready to become a ``[[milter]]`` (B3).

    ``source`` is the file the socket came from; when the package's own default was
    used it names where that default lives, followed by ``(package default)``.
    ``command`` starts the service (D-10: an argv, never a shell line).
    """

    name: str
    connection_spec: str
    enabled: bool
    source: str
    command: tuple[str, ...] | None
    applicable_conditions: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class SkippedMilter:
    """An installed milter that was not registered, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class _Found:
    """What a ``_socket_*`` function found: the socket as the milter writes it, and where."""

    socket: str
    source: str
    style: str = "libmilter"          # or "rspamd": which converter reads ``socket``
    enabled_flag: bool | None = None  # an /etc/default switch, when the init script has one


@dataclass(frozen=True)
class MilterKnowledge:
    """Everything the detector knows about one milter; one row of :data:`MILTERS`."""

    name: str
    package: str
    service: str
    description: str
    applicable_conditions: tuple[str, ...]
    find_socket: Callable[[_System], _Found] = field(repr=False)


# -- socket syntax conversion ---------------------------------------------------------------------------------------


def _loopback_if_wildcard(family: str, host: str) -> str:
    """A host to connect to: the loopback address instead of "every address"."""
    if host in ("", "*", "0.0.0.0", "::", "[0.0.0.0]", "[::]"):
        return "[127.0.0.1]" if family == "inet" else "[::1]"
    return host


def _bracket_literal(family: str, host: str, original: str) -> str:
    """``[ADDR]`` for an address literal (bracketed or not), the host name unchanged otherwise."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.IPv4Address(bare) if family == "inet" else ipaddress.IPv6Address(bare)
    except ValueError:
        if host.startswith("[") or ":" in bare or not re.fullmatch(r"[A-Za-z0-9.-]+", bare):
            raise DetectionError(f"invalid {family} host in socket {original!r}: {host!r}") from None
        return bare
    return f"[{address}]"


def _check_port(port: str, original: str) -> str:
    if not port.isdigit() or not port.isascii() or not 0 < int(port) < 65536:
        raise DetectionError(f"invalid port in socket {original!r}: {port!r}")
    return str(int(port))


def libmilter_socket_to_spec(text: str) -> str:
    """Convert a libmilter/Sendmail socket (``inet:PORT@HOST``, ``inet6:…``, ``local:``/``unix:PATH``, ``/PATH``).

    Hosts are kept as written (resolved later by :func:`milterman.net.spec.parse_spec`),
    address literals are bracketed, and a socket on every address (no host, ``0.0.0.0``,
    ``::``) becomes the loopback address. Raises :class:`DetectionError` for forms a
    manager cannot connect to (relative paths, ``fd:`` sockets handed over by systemd).
    """
    original = text
    text = text.strip()
    if not text:
        raise DetectionError("the socket is empty")
    if text.startswith("/"):
        return f"unix:{text}"
    protocol, colon, rest = text.partition(":")
    protocol = protocol.lower()
    if not colon:
        raise DetectionError(f"socket {original!r} is a relative path")
    if protocol in ("unix", "local"):
        if not rest.startswith("/"):
            raise DetectionError(f"socket {original!r} is not an absolute path")
        return f"unix:{rest}"
    if protocol in ("inet", "inet6"):
        port, _, host = rest.partition("@")
        port = _check_port(port, original)
        host = _loopback_if_wildcard(protocol, host.strip())
        return f"{protocol}:{port}@{_bracket_literal(protocol, host, original)}"
    if protocol == "fd":
        raise DetectionError(f"socket {original!r} is passed in by systemd socket activation; its address is unknown")
    raise DetectionError(f"socket {original!r} has an unknown protocol {protocol!r}")


def rspamd_socket_to_spec(text: str) -> str:
    """Convert an rspamd ``bind_socket`` (``HOST:PORT``, ``*:PORT``, ``[ADDR6]:PORT``, ``/PATH [mode=…]``)."""
    original = text
    words = text.split()
    if not words:
        raise DetectionError("the bind_socket is empty")
    text = words[0]  # a unix socket may be followed by mode=, owner=, group=
    if text.startswith("/"):
        return f"unix:{text}"
    if text.startswith("systemd:"):
        raise DetectionError(f"bind_socket {original!r} is passed in by systemd; its address is unknown")
    if text.startswith("["):
        address, bracket, port = text[1:].partition("]")
        if not bracket or not port.startswith(":"):
            raise DetectionError(f"bind_socket {original!r} has no port")
        host = _loopback_if_wildcard("inet6", address)
        return f"inet6:{_check_port(port[1:], original)}@{_bracket_literal('inet6', host, original)}"
    host, colon, port = text.rpartition(":")
    if not colon:
        raise DetectionError(f"bind_socket {original!r} has no port")
    port = _check_port(port, original)
    if ":" in host:  # a bare IPv6 address
        return f"inet6:{port}@{_bracket_literal('inet6', _loopback_if_wildcard('inet6', host), original)}"
    return f"inet:{port}@{_bracket_literal('inet', _loopback_if_wildcard('inet', host), original)}"


_CONVERTERS: dict[str, Callable[[str], str]] = {"libmilter": libmilter_socket_to_spec,
                                                 "rspamd": rspamd_socket_to_spec}


# -- reading the tree -----------------------------------------------------------------------------------------------

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


def _split_words(text: str) -> list[str]:
    """Split a command line or an ``OPTIONS`` value into words (unbalanced quotes: on blanks)."""
    try:
        return shlex.split(text, comments=False)
    except ValueError:
        return text.split()


def _option(argv: list[tuple[str, str]], option: str) -> tuple[str, str] | None:
    """The last value of ``option`` (``-p X`` or ``-pX``) in a getopt-style argv of (word, source) pairs."""
    found = None
    for index, (word, source) in enumerate(argv):
        if word == option and index + 1 < len(argv):
            found = argv[index + 1]
        elif word.startswith(option) and len(word) > len(option) and not word.startswith("--"):
            found = (word[len(option):], source)
    return found


def _first_positional(argv: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The first word of argv after the program that is not an option (dkimpy/pyspf take their config so)."""
    return argv[1] if len(argv) > 1 and not argv[1][0].startswith("-") else None


class _System:
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
            for key, value in _unit_settings(self.read(path)):
                if key == "ExecStart":
                    exec_start = (value, path) if value else None
                elif key == "Environment":
                    for word in _split_words(value):
                        name, _, assigned = word.partition("=")
                        environment[name] = (assigned, path)
                elif key == "EnvironmentFile" and value:
                    optional = value.startswith("-")
                    env_path = value.lstrip("-")
                    if optional and not os.path.exists(self.path(env_path)):
                        continue
                    environment.update(_shell_assignments(self.read(env_path), environment, env_path)[0])
        if exec_start is None:
            raise DetectionError(f"{unit} has no ExecStart")
        command, path = exec_start
        command = command.lstrip("-@:+!")
        words = [_VARIABLE.sub(lambda m: environment.get(m.group(1) or m.group(2), ("", ""))[0], word)
                 for word in _split_words(command)]
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
        return _shell_assignments(text, variables, path)[0]


def _shell_assignments(text: str, variables: dict[str, tuple[str, str]],
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


def _unit_settings(text: str) -> list[tuple[str, str]]:
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


def _keyword_setting(text: str, key: str, *, separator: str | None = None, quoted: bool = False) -> str | None:
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


# -- one function per milter ----------------------------------------------------------------------------------------


def _opendkim_family(system: _System, name: str, *, config_option: str,
                     init_defaults: dict[str, str]) -> _Found:
    """opendkim and opendmarc: same packaging, same rules (see :func:`_socket_opendkim`)."""
    config = f"/etc/{name}.conf"
    if system.runs_unit(name):
        argv = system.exec_start(name)
    else:
        init = f"/etc/init.d/{name}"
        variables = {"NAME": (name, init), "RUNDIR": (f"/run/{name}", init)}
        variables.update({key: (value, init + DEFAULT_SUFFIX) for key, value in init_defaults.items()})
        variables = system.shell_file(f"/etc/default/{name}", variables)
        # the init script passes -p $SOCKET only when /etc/NAME.conf has no Socket line
        config_text = system.read_optional(config)
        config_socket = _keyword_setting(config_text, "Socket") if config_text is not None else None
        argv = [(f"/usr/sbin/{name}", init)]
        socket, socket_source = variables.get("SOCKET", ("", ""))
        if socket and not config_socket:
            argv += [("-p", socket_source), (socket, socket_source)]
        options, options_source = variables.get("DAEMON_OPTS", ("", ""))
        argv += [(word, options_source) for word in _split_words(options)]
    socket_option = _option(argv, "-p")
    if socket_option:  # the command line wins over the configuration file (opendkim(8), opendmarc(8))
        return _Found(*socket_option)
    config_option_value = _option(argv, config_option)
    config = config_option_value[0] if config_option_value else config
    config_text = system.read_optional(config)
    if config_text is None:
        raise DetectionError(f"{config} does not exist and the command line has no -p (the socket is mandatory)")
    socket = _keyword_setting(config_text, "Socket")
    if not socket:
        raise DetectionError(f"{config} sets no Socket and the command line has no -p (the socket is mandatory)")
    return _Found(socket, config)


def _socket_opendkim(system: _System) -> _Found:
    """opendkim 2.11.0~beta2-8 (bookworm).

    * ``/etc/opendkim.conf`` (``-x FILE`` on the command line names another), key
      ``Socket``, "NAME  value" lines, ``#`` comments. Debian ships
      ``Socket local:/run/opendkim/opendkim.sock``. No built-in default: the socket is
      mandatory (opendkim.conf(5)).
    * ``-p SOCKET`` on the command line overrides the file (opendkim(8)).
    * systemd: ``opendkim.service`` runs ``ExecStart=/usr/sbin/opendkim`` (no options);
      ``/lib/opendkim/opendkim.service.generate`` turns ``/etc/default/opendkim`` into a
      drop-in ``/etc/systemd/system/opendkim.service.d/override.conf`` whose ExecStart has
      ``-p $SOCKET``. ``/etc/default/opendkim`` itself is "not used by the systemd service".
    * sysvinit: ``/etc/init.d/opendkim`` sources ``/etc/default/opendkim`` (Debian's:
      ``RUNDIR=/run/opendkim``, ``SOCKET=local:$RUNDIR/opendkim.sock``) and passes
      ``-p $SOCKET`` only when opendkim.conf has no ``Socket`` line; ``DAEMON_OPTS`` follows.
    """
    return _opendkim_family(system, "opendkim", config_option="-x", init_defaults={})


def _socket_opendmarc(system: _System) -> _Found:
    """opendmarc 1.4.2-2 (bookworm): packaged exactly like opendkim.

    ``/etc/opendmarc.conf`` (``-c FILE`` names another), key ``Socket``; Debian ships
    ``Socket local:/run/opendmarc/opendmarc.sock``; mandatory, no built-in default.
    ``-p`` overrides. systemd: ``ExecStart=/usr/sbin/opendmarc`` (drop-ins from
    ``/lib/opendmarc/opendmarc.service.generate``). sysvinit: ``/etc/init.d/opendmarc``
    sets ``SOCKET=local:$RUNDIR/$NAME.sock`` itself, sources ``/etc/default/opendmarc``
    and passes ``-p $SOCKET`` only when opendmarc.conf has no ``Socket`` line.
    """
    return _opendkim_family(system, "opendmarc", config_option="-c",
                            init_defaults={"SOCKET": "local:/run/opendmarc/opendmarc.sock"})


def _socket_spamass_milter(system: _System) -> _Found:
    """spamass-milter 0.4.0-2 (bookworm): an init script only (systemd runs it through its sysv generator).

    ``/etc/init.d/spamass-milter`` runs ``spamass-milter -P PIDFILE -f -p $SOCKET $OPTIONS``
    (a ``-p`` in ``OPTIONS`` comes last and wins). ``SOCKET`` defaults to
    ``/var/run/spamass/spamass.sock``; to ``/var/run/sendmail/spamass.sock`` when
    ``/etc/mail/sendmail.cf`` still uses that old socket; to
    ``/var/spool/postfix/spamass/spamass.sock`` when ``/usr/sbin/postfix`` is executable.
    Then ``/etc/default/spamass-milter`` is sourced: ``OPTIONS="-u spamass-milter -i
    127.0.0.1"``, ``SOCKET=`` commented out. The socket is a path (libmilter forms work too).
    """
    init = "/etc/init.d/spamass-milter"
    socket = "/var/run/spamass/spamass.sock"
    sendmail_cf = system.read_optional("/etc/mail/sendmail.cf") or ""
    if re.search(r"X.+S=local:/var/run/sendmail/spamass\.sock", sendmail_cf):
        socket = "/var/run/sendmail/spamass.sock"
    if system.executable("/usr/sbin/postfix"):
        socket = "/var/spool/postfix/spamass/spamass.sock"
    variables = system.shell_file("/etc/default/spamass-milter", {"SOCKET": (socket, init + DEFAULT_SUFFIX),
                                                                 "OPTIONS": ("", init)})
    socket_value, socket_source = variables["SOCKET"]
    options, options_source = variables["OPTIONS"]
    argv = [("/usr/sbin/spamass-milter", init), ("-f", init), ("-p", socket_source), (socket_value, socket_source)]
    argv += [(word, options_source) for word in _split_words(options)]
    found = _option(argv, "-p") or (socket_value, socket_source)
    return _Found(*found)


def _socket_clamav_milter(system: _System) -> _Found:
    """clamav-milter 1.4.6+dfsg-0+deb12u1 (bookworm): an init script only.

    ``/etc/clamav/clamav-milter.conf``, key ``MilterSocket`` ("Name value" lines, ``#``
    comments; ``[[unix|local]:]/path``, ``inet:port@host``, ``inet6:…``). The package does
    not ship the file: its postinst writes it from debconf, whose default is
    ``MilterSocket /var/run/clamav/clamav-milter.ctl``. No built-in default: without
    ``MilterSocket`` the init script refuses to start, and an uncommented ``Example`` line
    (as in the upstream sample) makes clamav-milter refuse its configuration.
    """
    config = "/etc/clamav/clamav-milter.conf"
    text = system.read(config)
    if re.search(r"^\s*Example\b", text, re.M):
        raise DetectionError(f"{config} still has the 'Example' line; clamav-milter refuses such a file")
    socket = _keyword_setting(text, "MilterSocket")
    if not socket:
        raise DetectionError(f"{config} sets no MilterSocket (it is mandatory)")
    return _Found(socket, config)


def _socket_amavisd_milter(system: _System) -> _Found:
    """amavisd-milter 1.7.2-1 (bookworm): an init script only.

    ``/etc/init.d/amavisd-milter`` sources ``/etc/default/amavisd-milter`` (everything
    commented out in Debian's) and adds ``-s $MILTERSOCKET`` when ``MILTERSOCKET`` is set,
    then ``$EXTRAPARAMS``. Without ``-s`` the program's built-in default is
    ``/var/lib/amavis/amavisd-milter.sock`` (``{unix|local}:PATH``, ``inet:…`` accepted).
    """
    default = "/etc/default/amavisd-milter"
    variables = system.shell_file(default, {})
    argv = [("/usr/sbin/amavisd-milter", "/etc/init.d/amavisd-milter")]
    socket, socket_source = variables.get("MILTERSOCKET", ("", ""))
    if socket:
        argv += [("-s", socket_source), (socket, socket_source)]
    extra, extra_source = variables.get("EXTRAPARAMS", ("", ""))
    argv += [(word, extra_source) for word in _split_words(extra)]
    found = _option(argv, "-s")
    if found:
        return _Found(*found)
    return _Found("/var/lib/amavis/amavisd-milter.sock", "/usr/sbin/amavisd-milter" + DEFAULT_SUFFIX)


def _socket_dkimpy_milter(system: _System) -> _Found:
    """dkimpy-milter 1.2.3-1 (bookworm).

    systemd: ``ExecStart=/usr/bin/dkimpy-milter /etc/dkimpy-milter/dkimpy-milter.conf -P
    /run/dkimpy-milter/dkimpy-milter.pid``: the first argument is the configuration file
    (without one the program reads ``/usr/local/etc/dkimpy-milter.conf``). sysvinit:
    ``/etc/init.d/dkimpy-milter`` passes ``/etc/dkimpy-milter/dkimpy-milter.conf``.
    Key ``Socket`` ("Name value", ``#`` comments); Debian's file has it commented out, so
    the built-in default applies: ``local:/var/run/dkimpy-milter/dkimpy-milter.sock``.
    """
    config = "/etc/dkimpy-milter/dkimpy-milter.conf"
    if system.runs_unit("dkimpy-milter"):
        argument = _first_positional(system.exec_start("dkimpy-milter"))
        config = argument[0] if argument else "/usr/local/etc/dkimpy-milter.conf"
    text = system.read_optional(config)
    socket = _keyword_setting(text, "Socket") if text is not None else None
    if socket:
        return _Found(socket, config)
    return _Found("local:/var/run/dkimpy-milter/dkimpy-milter.sock", "/usr/bin/dkimpy-milter" + DEFAULT_SUFFIX)


def _socket_pyspf_milter(system: _System) -> _Found:
    """pyspf-milter 3.0.4-2 (bookworm; the code is in python3-spf-engine).

    systemd: ``ExecStart=/usr/bin/pyspf-milter /etc/pyspf-milter/pyspf-milter.conf``
    (without an argument the program reads ``/etc/python-policyd-spf/policyd-spf.conf``).
    Key ``Socket`` in "Name = value" lines (``#`` comments; a line with a second ``=`` is
    ignored). Debian's file sets ``Socket = inet:8893@localhost``; the built-in default is
    ``local:/run/pyspf-milter/pyspf-milter.sock``.
    """
    config = "/etc/pyspf-milter/pyspf-milter.conf"
    if system.runs_unit("pyspf-milter"):
        argument = _first_positional(system.exec_start("pyspf-milter"))
        config = argument[0] if argument else "/etc/python-policyd-spf/policyd-spf.conf"
    text = system.read_optional(config)
    socket = _keyword_setting(text, "Socket", separator="=") if text is not None else None
    if socket:
        return _Found(socket, config)
    return _Found("local:/run/pyspf-milter/pyspf-milter.sock", "/usr/bin/pyspf-milter" + DEFAULT_SUFFIX)


def _socket_milter_greylist(system: _System) -> _Found:
    """milter-greylist 4.6.4-4 (Debian trixie; in bullseye as 4.6.2-3, not in bookworm).

    ``/etc/milter-greylist/greylist.conf`` (``-f FILE`` names another), ``socket "PATH"
    [MODE]``; Debian ships ``socket "/var/run/milter-greylist/milter-greylist.sock"``.
    ``-p SOCKET`` on the command line overrides the file.
    systemd: ``ExecStart=/usr/sbin/milter-greylist`` (no options), so the file decides.
    sysvinit: ``/etc/init.d/milter-greylist`` sets ``ENABLED=0`` and
    ``SOCKET=/var/run/milter-greylist/milter-greylist.sock``, sources
    ``/etc/default/milter-greylist`` (Debian's only has comments) and runs
    ``milter-greylist $OPTIONS -P … -u … -p $SOCKET``, so there ``SOCKET`` decides, and
    the script does nothing while ``ENABLED`` is ``0``.
    """
    init = "/etc/init.d/milter-greylist"
    enabled_flag = None
    if system.runs_unit("milter-greylist"):
        argv = system.exec_start("milter-greylist")
    else:
        variables = system.shell_file("/etc/default/milter-greylist", {
            "ENABLED": ("0", init), "OPTIONS": ("", init),
            "SOCKET": ("/var/run/milter-greylist/milter-greylist.sock", init + DEFAULT_SUFFIX)})
        enabled_flag = variables["ENABLED"][0] != "0"
        options, options_source = variables["OPTIONS"]
        socket, socket_source = variables["SOCKET"]
        argv = [("/usr/sbin/milter-greylist", init)] + [(word, options_source) for word in _split_words(options)]
        argv += [("-p", socket_source), (socket, socket_source)]
    found = _option(argv, "-p")
    if found:
        return _Found(found[0], found[1], enabled_flag=enabled_flag)
    config_option = _option(argv, "-f")
    config = config_option[0] if config_option else "/etc/milter-greylist/greylist.conf"
    socket = _keyword_setting(system.read(config), "socket", quoted=True)
    if not socket:
        raise DetectionError(f"{config} sets no socket and the command line has no -p (the socket is mandatory)")
    return _Found(socket, config, enabled_flag=enabled_flag)


def _socket_rspamd(system: _System) -> _Found:
    """rspamd 3.4-1 (bookworm): the proxy worker in milter mode.

    ``/etc/rspamd/rspamd.conf`` defines ``worker "rspamd_proxy" { bind_socket =
    "localhost:11332"; … }`` and includes, inside that block, ``$CONFDIR/worker-proxy.inc``
    (Debian's: ``milter = yes;``, no bind_socket), ``$LOCAL_CONFDIR/local.d/worker-proxy.inc``
    at priority 1 and ``$LOCAL_CONFDIR/override.d/worker-proxy.inc`` at priority 10
    (both directories are ``/etc/rspamd``). A key from a higher priority wins; within one
    priority the first ``bind_socket`` is taken (rspamd binds them all). Forms:
    ``HOST:PORT``, ``*:PORT`` (every address), ``[ADDR6]:PORT``, ``/PATH mode=…``.
    The worker is skipped when ``milter`` is not true, ``enabled = false`` or ``count``
    is negative (rspamd.conf's "Disable by default" idiom). ``rspamd.conf.local`` and
    ``rspamd.conf.override`` are not read.
    """
    config = "/etc/rspamd/rspamd.conf"
    entries = _ucl_parse(system.read(config), config)
    worker = next((value for key, name, value, _ in entries
                   if key == "worker" and name == "rspamd_proxy" and isinstance(value, list)), None)
    if worker is None:
        raise DetectionError(f'{config} has no worker "rspamd_proxy"')
    settings: dict[str, tuple[int, object, str]] = {}

    def collect(items: list, priority: int, source: str) -> None:
        for key, _name, value, params in items:
            if key == ".include":
                path = value.replace("$LOCAL_CONFDIR", "/etc/rspamd").replace("$CONFDIR", "/etc/rspamd")
                path = path.replace("${LOCAL_CONFDIR}", "/etc/rspamd").replace("${CONFDIR}", "/etc/rspamd")
                if params.get("try") == "true" and not os.path.exists(system.path(path)):
                    continue
                try:
                    include_priority = int(params.get("priority", "0"))
                except ValueError:
                    raise DetectionError(f"{source}: bad priority in .include of {path}") from None
                collect(_ucl_parse(system.read(path), path), include_priority, path)
            elif key not in settings or priority > settings[key][0]:
                settings[key] = (priority, value, source)

    collect(worker, 0, config)

    def scalar(key: str) -> str | None:
        value = settings.get(key, (0, None, ""))[1]
        if isinstance(value, list):
            value = value[0] if value and isinstance(value[0], str) else None
        return value if isinstance(value, str) else None

    if (scalar("milter") or "false").lower() not in ("yes", "true", "on", "1"):
        raise DetectionError("rspamd's proxy worker is not in milter mode (milter is not set to yes)")
    if (scalar("enabled") or "true").lower() in ("no", "false", "off", "0"):
        raise DetectionError("rspamd's proxy worker is disabled (enabled = false)")
    if re.fullmatch(r"-\d+", scalar("count") or ""):
        raise DetectionError("rspamd's proxy worker is disabled (negative count)")
    bind_socket = scalar("bind_socket")
    if not bind_socket:
        raise DetectionError("rspamd's proxy worker has no bind_socket")
    return _Found(bind_socket, settings["bind_socket"][2], style="rspamd")


_UCL_TOKEN = re.compile(r"""
    (?P<skip>\s+|\#[^\n]*|//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<heredoc><<(?P<tag>[A-Z]+)\n.*?\n(?P=tag)(?=\s|$))
  | (?P<macro>\.[A-Za-z_]+(?:\s*\([^)]*\))?)
  | (?P<punct>[{}\[\];,=])
  | (?P<word>[^\s{}\[\];,="'\#]+)
""", re.S | re.X)


def _ucl_parse(text: str, path: str) -> list:
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


# -- the table ------------------------------------------------------------------------------------------------------

#: The milters detected, in the order they are registered (which is the order they see mail).
MILTERS: tuple[MilterKnowledge, ...] = (
    MilterKnowledge("milter-greylist", "milter-greylist", "milter-greylist", "Greylisting (milter-greylist)",
                    GREYLIST_CONDITIONS, _socket_milter_greylist),
    MilterKnowledge("clamav-milter", "clamav-milter", "clamav-milter", "ClamAV virus scanning (clamav-milter)",
                    NO_CONDITIONS, _socket_clamav_milter),
    MilterKnowledge("opendkim", "opendkim", "opendkim", "DKIM signing and verification (OpenDKIM)",
                    NO_CONDITIONS, _socket_opendkim),
    MilterKnowledge("dkimpy-milter", "dkimpy-milter", "dkimpy-milter", "DKIM signing and verification (dkimpy-milter)",
                    NO_CONDITIONS, _socket_dkimpy_milter),
    MilterKnowledge("pyspf-milter", "pyspf-milter", "pyspf-milter", "SPF verification (pyspf-milter)",
                    FILTER_CONDITIONS, _socket_pyspf_milter),
    MilterKnowledge("opendmarc", "opendmarc", "opendmarc", "DMARC verification (OpenDMARC)",
                    NO_CONDITIONS, _socket_opendmarc),
    MilterKnowledge("spamass-milter", "spamass-milter", "spamass-milter", "SpamAssassin (spamass-milter)",
                    FILTER_CONDITIONS, _socket_spamass_milter),
    MilterKnowledge("rspamd", "rspamd", "rspamd", "Rspamd, milter mode of its proxy worker",
                    FILTER_CONDITIONS, _socket_rspamd),
    MilterKnowledge("amavisd-milter", "amavisd-milter", "amavisd-milter", "amavisd-new (amavisd-milter)",
                    NO_CONDITIONS, _socket_amavisd_milter),
)


def _detect_one(system: _System, milter: MilterKnowledge) -> DetectedMilter:
    found = milter.find_socket(system)
    spec = _CONVERTERS[found.style](found.socket)
    enabled = system.service_enabled(milter.service) and found.enabled_flag is not False
    return DetectedMilter(name=milter.name, connection_spec=spec, enabled=enabled, source=found.source,
                          command=system.command(milter.service),
                          applicable_conditions=milter.applicable_conditions, description=milter.description)


def detect_with_reasons(root: str = "/",
                        milters: tuple[MilterKnowledge, ...] = MILTERS
                        ) -> tuple[list[DetectedMilter], list[SkippedMilter]]:
    """Detect the installed milters under ``root``: those registered, and those skipped with a reason."""
    system = _System(root)
    detected: list[DetectedMilter] = []
    skipped: list[SkippedMilter] = []
    for milter in milters:
        if not system.installed(milter.package):
            continue
        try:
            detected.append(_detect_one(system, milter))
        except DetectionError as error:
            skipped.append(SkippedMilter(milter.name, str(error)))
    return detected, skipped


def detect(root: str = "/") -> list[DetectedMilter]:
    """The installed milters under ``root`` (enabled or not); each skipped one is logged as a warning."""
    detected, skipped = detect_with_reasons(root)
    for item in skipped:
        logger.warning(f"[detect] {item.name} not registered: {item.reason}")
    return detected
