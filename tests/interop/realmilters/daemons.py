"""Debian 12's milters (and the daemons they use), configured offline in a directory and run in
the foreground by the real-milter interop suite.

Every daemon is a :class:`Daemon`: an argv started in a new session (so its workers can be
signalled as one group), output to ``NAME.log`` in the directory, readiness waited for by looking
at the kernel's socket table or for the unix socket file (never by connecting: a probe would be a
milter session), stopped with SIGTERM to its group (SIGKILL after a bound).  Programs that look
names up run through :meth:`sandbox.Sandbox.command` so they use the sandbox's DNS server.

Keys: :class:`Keys` makes every key the suite needs (opendkim-genkey for RSA, dknewkey for
ed25519) and the DNS TXT records for them.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from postfix_harness import _listening, free_port
from sandbox import CLIENT_ADDRESS, Sandbox, kill_group

#: myhostname of the Postfix instances and the authserv-id every milter writes.
AUTHSERV_ID = "mta.milterman.test"
#: The marker the private ClamAV signature finds (in a message body).
VIRUS_MARKER = "MILTERMAN-TEST-VIRUS-MARKER-3b9e1c"
VIRUS_NAME = "Milterman.Test.Marker"

#: name -> (program, Debian package); every one must exist under CI=true.
PROGRAMS = {
    "pyspf-milter": ("/usr/bin/pyspf-milter", "pyspf-milter"),
    "opendkim": ("/usr/sbin/opendkim", "opendkim"),
    "opendkim-genkey": ("/usr/sbin/opendkim-genkey", "opendkim-tools"),
    "opendmarc": ("/usr/sbin/opendmarc", "opendmarc"),
    "spamass-milter": ("/usr/sbin/spamass-milter", "spamass-milter"),
    "spamd": ("/usr/sbin/spamd", "spamd"),
    "clamav-milter": ("/usr/sbin/clamav-milter", "clamav-milter"),
    "clamd": ("/usr/sbin/clamd", "clamav-daemon"),
    "rspamd": ("/usr/bin/rspamd", "rspamd"),
    "mimedefang": ("/usr/bin/mimedefang", "mimedefang"),
    "mimedefang-multiplexor": ("/usr/bin/mimedefang-multiplexor", "mimedefang"),
    "dkimpy-milter": ("/usr/bin/dkimpy-milter", "dkimpy-milter"),
    "dknewkey": ("/usr/bin/dknewkey", "python3-dkim"),
    "dkimverify": ("/usr/bin/dkimverify", "python3-dkim"),
    "dkimsign": ("/usr/bin/dkimsign", "python3-dkim"),
}


def missing_programs() -> list[str]:
    """``program (package)`` for each program of :data:`PROGRAMS` that is not installed."""
    return [f"{path} (Debian package {package})" for path, package in PROGRAMS.values()
            if not os.access(path, os.X_OK)]


class Daemon:
    """One foreground process; ``ready`` is a port on 127.0.0.1 or a socket path to wait for."""

    def __init__(self, name: str, directory: Path, argv: Sequence[str], ready: int | Path,
                 *, timeout: float = 60.0, after_ready: Callable[[], None] | None = None) -> None:
        self.name = name
        self.log_path = directory / f"{name}.log"
        self.argv = list(argv)
        self.ready = ready
        with open(self.log_path, "ab") as output:
            self.process = subprocess.Popen(self.argv, stdout=output, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=directory, start_new_session=True)
        try:
            self._wait(timeout)
            if after_ready:
                after_ready()
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.process.returncode}:\n{self.log()[-3000:]}")
            if isinstance(self.ready, int) and _listening("127.0.0.1", self.ready):
                return
            if isinstance(self.ready, Path) and self.ready.is_socket():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} was not ready ({self.ready}) within {timeout:g} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self) -> None:
        """Ask the daemon and its workers to stop, without waiting (:meth:`stop` waits)."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        kill_group(self.process, timeout=15)


class Milter:
    """A milter the MTAs call: its name, its socket in libmilter and Postfix syntax, its daemons."""

    def __init__(self, name: str, libmilter_spec: str, daemons: list[Daemon], cleanup: Path | None = None) -> None:
        self.name = name
        self.spec = libmilter_spec
        self.daemons = daemons
        self.cleanup = cleanup
        """A directory of this milter's outside the suite's (removed by :func:`stop_all`)."""

    @property
    def sendmail_spec(self) -> str:
        """The socket as Sendmail's ``S=`` wants it (no brackets around the address)."""
        return self.spec.replace("@[127.0.0.1]", "@127.0.0.1")

    @property
    def postfix_spec(self) -> str:
        kind, _, rest = self.spec.partition(":")
        if kind == "inet":
            port, _, host = rest.partition("@")
            return f"inet:{host.strip('[]')}:{port}"
        return f"unix:{rest}"

    def alive(self) -> bool:
        return all(daemon.alive() for daemon in self.daemons)

    def logs(self) -> str:
        return "\n".join(f"--- {d.name} ---\n{d.log()[-3000:]}" for d in self.daemons)


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def _chown(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


# -- keys -----------------------------------------------------------------------------------------


class Keys:
    """The DKIM keys of the suite and their TXT records (name -> value)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory / "keys"
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o755)
        self.records: dict[str, str] = {}
        # outbound: opendkim signs sign.test (rsa); dkimpy-milter signs sign.test (ed25519)
        self.sign_rsa = self._rsa("sign.test", "rsa")
        self.sign_ed25519 = self._ed25519("sign.test", "ed")
        # inbound: the test signs mail from good.test and dmarc domains with this key
        self.inbound_rsa = self._rsa("good.test", "in")

    def _rsa(self, domain: str, selector: str) -> Path:
        out = self.directory / f"{domain}-{selector}"
        out.mkdir(exist_ok=True)
        subprocess.run([PROGRAMS["opendkim-genkey"][0], "-b", "1024", "-d", domain, "-s", selector, "-D", str(out)],
                       check=True, capture_output=True, timeout=60)
        text = (out / f"{selector}.txt").read_text()
        text = text[: text.rfind(")")]
        self.records[f"{selector}._domainkey.{domain}"] = "".join(re.findall(r'"([^"]*)"', text))
        key = out / f"{selector}.private"
        os.chmod(out, 0o755)
        os.chmod(key, 0o644)
        return key

    def _ed25519(self, domain: str, selector: str) -> Path:
        base = f"{domain.replace('.', '_')}-{selector}"
        subprocess.run([PROGRAMS["dknewkey"][0], "--ktype", "ed25519", base], check=True,
                       capture_output=True, timeout=60, cwd=self.directory)
        record = (self.directory / f"{base}.dns").read_text().strip()
        self.records[f"{selector}._domainkey.{domain}"] = record.replace('"', "").replace(" ", "")
        key = self.directory / f"{base}.key"
        os.chmod(key, 0o644)
        return key


# -- the milters -----------------------------------------------------------------------------------


def start_pyspf(directory: Path, sandbox: Sandbox) -> Milter:
    port = free_port()
    conf = _write(directory / "pyspf-milter.conf", (
        "debugLevel = 1\nTestOnly = 1\nHELO_reject = Fail\nMail_From_reject = Fail\n"
        "PermError_reject = False\nTempError_Defer = False\n"
        "skip_addresses = 127.0.0.0/8,::1\n"
        f"Socket = inet:{port}@127.0.0.1\nPidFile = {directory}/pyspf-milter.pid\nUserID = pyspf-milter\n"
        f"Authserv_Id = {AUTHSERV_ID}\n"))
    daemon = Daemon("pyspf-milter", directory, sandbox.command([PROGRAMS["pyspf-milter"][0], str(conf)]), port)
    return Milter("pyspf-milter", f"inet:{port}@[127.0.0.1]", [daemon])


def start_opendkim(directory: Path, sandbox: Sandbox, *, mode: str, keys: Keys) -> Milter:
    """``mode`` ``v``: verifies everything; ``s``: signs sign.test mail from the test client."""
    port = free_port()
    name = "opendkim-verify" if mode == "v" else "opendkim-sign"
    internal = _write(directory / f"{name}.internal", f"127.0.0.1\n{CLIENT_ADDRESS}\n")
    lines = [f"Mode {mode}", f"Socket inet:{port}@127.0.0.1", "Syslog no", "LogWhy no", "UMask 002",
             f"AuthservID {AUTHSERV_ID}", "RequireSafeKeys no", "Canonicalization relaxed/relaxed",
             f"PidFile {directory}/{name}.pid", "UserID opendkim"]
    if mode == "s":
        lines += ["Domain sign.test", "Selector rsa", f"KeyFile {keys.sign_rsa}", f"InternalHosts {internal}",
                  "SignatureAlgorithm rsa-sha256"]
    conf = _write(directory / f"{name}.conf", "\n".join(lines) + "\n")
    daemon = Daemon(name, directory, sandbox.command([PROGRAMS["opendkim"][0], "-f", "-x", str(conf)]), port)
    return Milter(name, f"inet:{port}@[127.0.0.1]", [daemon])


def start_opendmarc(directory: Path, sandbox: Sandbox) -> Milter:
    port = free_port()
    ignore = _write(directory / "opendmarc.ignore", "192.0.2.250\n")
    conf = _write(directory / "opendmarc.conf", "\n".join([
        f"Socket inet:{port}@127.0.0.1", "Syslog false", f"AuthservID {AUTHSERV_ID}",
        f"TrustedAuthservIDs {AUTHSERV_ID}", f"IgnoreHosts {ignore}", "RejectFailures true",
        "HoldQuarantinedMessages true", "SPFSelfValidate true", "FailureReports false",
        "PublicSuffixList /usr/share/publicsuffix/public_suffix_list.dat", "UserID opendmarc",
        f"PidFile {directory}/opendmarc.pid"]) + "\n")
    daemon = Daemon("opendmarc", directory, sandbox.command([PROGRAMS["opendmarc"][0], "-f", "-c", str(conf)]), port)
    return Milter("opendmarc", f"inet:{port}@[127.0.0.1]", [daemon])


def start_spamassassin(directory: Path, sandbox: Sandbox) -> Milter:
    """spamd (local tests only: -L) and spamass-milter on a unix socket (its only kind)."""
    spamd_port = free_port()
    home = directory / "spamd-home"
    home.mkdir(exist_ok=True)
    _chown(home, "debian-spamd")
    # Debian's site configuration (the plugins its .pre files load) and one local.cf: the
    # sandbox's artefacts (a TEST-NET client address, no reverse DNS as Postfix looks none up)
    # must not make the clean mail spam
    site = directory / "spamassassin"
    site.mkdir(exist_ok=True)
    for pre in Path("/etc/spamassassin").glob("*.pre"):
        shutil.copy(pre, site / pre.name)
    # no learning either: the chain's run of a mail must not change the manager's run of it
    _write(site / "local.cf", "score RCVD_ILLEGAL_IP 0\nscore RDNS_NONE 0\nscore RDNS_DYNAMIC 0\n"
                              "use_bayes 0\nbayes_auto_learn 0\n")
    spamd = Daemon("spamd", directory, sandbox.command([
        PROGRAMS["spamd"][0], f"--listen=127.0.0.1:{spamd_port}", "--allowed-ips=127.0.0.1", "-L",
        "--nouser-config", f"--siteconfigpath={site}", "-u", "debian-spamd", "-g", "debian-spamd",
        f"--helper-home-dir={home}",
        "--max-children=2", "--min-children=1", "--syslog=stderr", f"--pidfile={directory}/spamd.pid"]),
        spamd_port, timeout=90)
    # not below /tmp: Sendmail refuses a unix milter socket below a world-writable directory
    socket_dir = Path(tempfile.mkdtemp(prefix="milterman-spamass-", dir="/run"))
    os.chmod(socket_dir, 0o755)
    path = socket_dir / "spamass.sock"
    try:
        milter = Daemon("spamass-milter", directory, sandbox.command([
            PROGRAMS["spamass-milter"][0], "-p", str(path), "-P", str(directory / "spamass-milter.pid"),
            "--", "-d", "127.0.0.1", "-p", str(spamd_port)]), path, after_ready=lambda: os.chmod(path, 0o666))
    except BaseException:
        spamd.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)
        raise
    return Milter("spamass-milter", f"unix:{path}", [spamd, milter], cleanup=socket_dir)


def start_clamav(directory: Path, sandbox: Sandbox) -> Milter:
    """clamd with one private signature (a body pattern) and clamav-milter rejecting infected mail."""
    database = directory / "clamav-db"
    database.mkdir(exist_ok=True)
    _write(database / "milterman.ndb", f"{VIRUS_NAME}:0:*:{VIRUS_MARKER.encode().hex()}\n")
    clamd_port = free_port()
    clamd_conf = _write(directory / "clamd.conf", "\n".join([
        "Foreground yes", f"TCPSocket {clamd_port}", "TCPAddr 127.0.0.1", f"DatabaseDirectory {database}",
        f"LogFile {directory}/clamd.file.log", f"TemporaryDirectory {directory}", "Bytecode no",
        "SelfCheck 0", "User root"]) + "\n")
    clamd = Daemon("clamd", directory, [PROGRAMS["clamd"][0], "-c", str(clamd_conf)], clamd_port, timeout=120)
    port = free_port()
    milter_conf = _write(directory / "clamav-milter.conf", "\n".join([
        f"MilterSocket inet:{port}@127.0.0.1", "Foreground yes", f"ClamdSocket tcp:127.0.0.1:{clamd_port}",
        "OnClean Accept", "OnInfected Reject", "RejectMsg Rejected by clamav-milter: %v", "OnFail Defer",
        "AddHeader Replace", f"LogFile {directory}/clamav-milter.file.log", "LogVerbose yes",
        f"TemporaryDirectory {directory}", "User root", "ReadTimeout 60"]) + "\n")
    milter = Daemon("clamav-milter", directory, [PROGRAMS["clamav-milter"][0], "-c", str(milter_conf)], port)
    return Milter("clamav-milter", f"inet:{port}@[127.0.0.1]", [clamd, milter])


def start_rspamd(directory: Path, sandbox: Sandbox) -> Milter:
    """rspamd 3.4's proxy worker in milter mode scanning itself (no normal worker, no Redis)."""
    port = free_port()
    local = directory / "rspamd"
    for sub in ("local.d", "override.d", "db", "run", "log"):
        (local / sub).mkdir(parents=True, exist_ok=True)
    _write(local / "override.d" / "worker-proxy.inc",
           f'bind_socket = "127.0.0.1:{port}";\nmilter = yes;\ntimeout = 60s;\n'
           'upstream "local" {\n  default = yes;\n  self_scan = yes;\n}\n'
           'count = 1;\nspam_header = "X-Spam";\nreject_message = "Spam message rejected";\n')
    # the header rspamd writes: its X-Spam-Status replaces another milter's (a delete, then an add);
    # Authentication-Results are left to the SPF/DKIM/DMARC milters (dkimpy-milter removes forged ones)
    _write(local / "local.d" / "milter_headers.conf",
           'use = ["x-spam-status"];\nskip_local = false;\nskip_authenticated = false;\n')
    for module in ("fuzzy_check", "rbl", "surbl", "asn", "emails", "phishing", "url_redirector"):
        _write(local / "local.d" / f"{module}.conf", "enabled = false;\n")
    for worker in ("worker-normal.inc", "worker-controller.inc", "worker-fuzzy.inc"):
        _write(local / "override.d" / worker, "enabled = false;\n")
    _write(local / "override.d" / "logging.inc", 'type = "console";\nlevel = "notice";\n')
    _write(local / "local.d" / "options.inc",
           'dns {\n  nameserver = ["127.0.0.1:53"];\n  timeout = 1s;\n  retransmits = 1;\n}\n'
           "local_addrs = [];\n")
    argv = [PROGRAMS["rspamd"][0], "-f", "-i", "-c", "/etc/rspamd/rspamd.conf",
            f"--var=LOCAL_CONFDIR={local}", f"--var=DBDIR={local}/db", f"--var=RUNDIR={local}/run",
            f"--var=LOGDIR={local}/log", "-p", f"{local}/run/rspamd.pid"]
    daemon = Daemon("rspamd", directory, sandbox.command(argv), port, timeout=120)
    return Milter("rspamd", f"inet:{port}@[127.0.0.1]", [daemon])


#: The MIMEDefang filter: what it does depends on the test mail's X-Milterman-Test header.
MIMEDEFANG_FILTER = r"""# milterman interop suite: a MIMEDefang filter driven by the X-Milterman-Test header
sub test_action {
    my $value = '';
    if (open(my $fh, '<', './HEADERS')) {
        while (my $line = <$fh>) {
            if ($line =~ /^X-Milterman-Test:\s*(\S+)/i) { $value = lc($1); }
        }
        close($fh);
    }
    return $value;
}

sub filter_begin {
    my ($entity) = @_;
    my $action = test_action();
    if ($action eq 'tempfail') { action_tempfail('Try again later (test filter)', '451', '4.7.1'); return; }
    if ($action eq 'discard') { action_discard(); return; }
    if ($action eq 'quarantine') { action_sm_quarantine('held by the test filter'); return; }
}

sub filter_end {
    my ($entity) = @_;
    my $action = test_action();
    return unless $action eq 'rewrite';
    append_text_boilerplate($entity, "-- \nA footer added by the test filter.\nSecond line.", 0);
    action_change_header('Subject', 'Rewritten by the test filter');
    action_add_header('X-Milterman-Filter', 'rewrote');
    action_delete_header('X-Milterman-Remove');
    change_sender('<rewritten@sign.test>');
    add_recipient('<added@recipient.test>');
    delete_recipient('<removed@recipient.test>');
}

1;
"""


def start_mimedefang(directory: Path, sandbox: Sandbox) -> Milter:
    spool = directory / "mimedefang-spool"
    spool.mkdir(exist_ok=True)
    _chown(spool, "defang")
    os.chmod(spool, 0o750)
    filter_file = _write(directory / "mimedefang-filter", MIMEDEFANG_FILTER)
    mx_socket = spool / "mimedefang-multiplexor.sock"
    multiplexor = Daemon("mimedefang-multiplexor", directory, [
        PROGRAMS["mimedefang-multiplexor"][0], "-D", "-U", "defang", "-z", str(spool), "-s", str(mx_socket),
        "-p", str(spool / "mx.pid"), "-o", str(spool / "mx.lock"), "-F", str(filter_file),
        "-m", "1", "-x", "2", "-l"], mx_socket)
    port = free_port()
    milter = Daemon("mimedefang", directory, [
        PROGRAMS["mimedefang"][0], "-D", "-U", "defang", "-z", str(spool), "-p", f"inet:{port}@127.0.0.1",
        "-m", str(mx_socket), "-P", str(spool / "md.pid"), "-o", str(spool / "md.lock")], port)
    return Milter("mimedefang", f"inet:{port}@[127.0.0.1]", [multiplexor, milter])


def start_dkimpy(directory: Path, sandbox: Sandbox, keys: Keys) -> Milter:
    port = free_port()
    conf = _write(directory / "dkimpy-milter.conf", "\n".join([
        f"Socket inet:{port}@127.0.0.1", "Syslog no", "Mode sv", "Domain sign.test",
        "SelectorEd25519 ed", f"KeyFileEd25519 {keys.sign_ed25519}", f"AuthservID {AUTHSERV_ID}",
        "UserID dkimpy-milter", f"PidFile {directory}/dkimpy-milter.pid", "UMask 002",
        "Canonicalization relaxed/relaxed"]) + "\n")
    daemon = Daemon("dkimpy-milter", directory, sandbox.command([PROGRAMS["dkimpy-milter"][0], str(conf)]), port)
    return Milter("dkimpy-milter", f"inet:{port}@[127.0.0.1]", [daemon])


def start_all(directory: Path, sandbox: Sandbox, keys: Keys) -> list[Milter]:
    """Every milter, in the order the MTAs chain them (and the manager lists them)."""
    started: list[Milter] = []
    try:
        started.append(start_pyspf(directory, sandbox))
        started.append(start_opendkim(directory, sandbox, mode="v", keys=keys))
        started.append(start_dkimpy(directory, sandbox, keys))
        started.append(start_opendmarc(directory, sandbox))
        started.append(start_spamassassin(directory, sandbox))
        started.append(start_clamav(directory, sandbox))
        started.append(start_rspamd(directory, sandbox))
        started.append(start_mimedefang(directory, sandbox))
        started.append(start_opendkim(directory, sandbox, mode="s", keys=keys))
    except BaseException:
        stop_all(started)
        raise
    return started


def stop_all(milters: list[Milter]) -> None:
    """SIGTERM to every daemon's group at once (several take seconds to leave), then wait for each."""
    daemons = [daemon for milter in reversed(milters) for daemon in reversed(milter.daemons)]
    for daemon in daemons:
        daemon.terminate()
    for daemon in daemons:
        daemon.stop()
    for milter in milters:
        if milter.cleanup:
            shutil.rmtree(milter.cleanup, ignore_errors=True)

