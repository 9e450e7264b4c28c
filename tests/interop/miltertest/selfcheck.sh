#!/bin/bash
# Self-check of the interop helpers against each other (no milterman needed):
#   bench/cmilter                      <- miltertest -s session.lua
#   milters/pymilter_header_reject.py  <- miltertest -s header_reject.lua
#                                         + raw-wire check of the 550 reply text
#                                         + miltertest -s session.lua
# Each milter runs on a free 127.0.0.1 port and on a unix socket in a temp
# dir, and must exit 0 on SIGTERM.  Exit status: 0 = all passed, 1 = failure.
# Needs: miltertest, python3-milter, libmilter-dev, gcc, make (Debian).
set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
PY=/usr/bin/python3          # python3-milter is installed for Debian's python
tmp=$(mktemp -d /tmp/milterman-selfcheck.XXXXXX)
pid=""
failures=0

cleanup() {
	if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null; fi
	rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
	"$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_listening SPEC: up to 10 s for the socket to accept connections
wait_listening() {
	"$PY" - "$1" <<'PYEOF'
import socket, sys, time
spec = sys.argv[1]
for _ in range(100):
    try:
        if spec.startswith("unix:"):
            s = socket.socket(socket.AF_UNIX)
            s.connect(spec[5:])
        else:
            port, host = spec[5:].split("@")
            s = socket.create_connection((host, int(port)), timeout=1)
        s.close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
PYEOF
}

# start NAME SPEC CMD...: start a milter in the background, wait until it listens
start() {
	local name=$1 spec=$2
	shift 2
	"$@" >"$tmp/$name.out" 2>&1 &
	pid=$!
	if ! wait_listening "$spec"; then
		echo "FAIL: $name did not listen on $spec within 10 s"
		cat "$tmp/$name.out"
		return 1
	fi
}

# stop NAME: SIGTERM, wait up to 10 s, require exit status 0
stop() {
	local name=$1 i status
	kill -TERM "$pid" 2>/dev/null
	for i in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		echo "FAIL: $name still running 10 s after SIGTERM"
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
		pid=""
		return 1
	fi
	wait "$pid"
	status=$?
	pid=""
	if [ "$status" -ne 0 ]; then
		echo "FAIL: $name exited with status $status after SIGTERM"
		cat "$tmp/$name.out"
		return 1
	fi
	echo "ok: $name exited 0 on SIGTERM"
}

# run_lua LABEL SPEC SCRIPT
run_lua() {
	local label=$1 spec=$2 script=$3
	if MILTER_SPEC=$spec timeout 60 miltertest -s "$here/$script" >"$tmp/mt.out" 2>&1; then
		echo "ok: $label: miltertest -s $script ($(tail -n 1 "$tmp/mt.out"))"
	else
		echo "FAIL: $label: miltertest -s $script (exit $?)"
		sed 's/^/    /' "$tmp/mt.out"
		return 1
	fi
}

# wire_check SPEC: the RCPT reply must be SMFIR_REPLYCODE with the exact text
wire_check() {
	timeout 30 "$PY" - "$1" <<'PYEOF'
import socket, struct, sys
spec = sys.argv[1]
if spec.startswith("unix:"):
    s = socket.socket(socket.AF_UNIX)
    s.connect(spec[5:])
else:
    port, host = spec[5:].split("@")
    s = socket.create_connection((host, int(port)))
s.settimeout(10)

def send(cmd, data=b""):
    s.sendall(struct.pack(">I", len(data) + 1) + cmd + data)

def recv():
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                sys.exit("connection closed by milter")
            buf += chunk
        return buf
    size = struct.unpack(">I", exact(4))[0]
    packet = exact(size)
    return packet[:1], packet[1:]

send(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF))
cmd, data = recv()
print("    negotiate reply: %s version=%d actions=0x%x steps=0x%x" % ((cmd,) + struct.unpack(">III", data[:12])))
send(b"C", b"client.example.net\0" + b"4" + struct.pack(">H", 12345) + b"192.0.2.10\0")
send(b"H", b"client.example.net\0")
send(b"M", b"<sender@example.com>\0")
for _ in range(3):
    if recv()[0] != b"c":
        sys.exit("expected continue before RCPT")
send(b"R", b"<reject@example.org>\0")
reply = recv()
print("    RCPT <reject@example.org> reply: %r" % (reply,))
send(b"Q")
s.close()
if reply != (b"y", b"550 5.7.1 Recipient rejected by pymilter\0"):
    sys.exit("unexpected RCPT reply")
PYEOF
}

check() {
	if "$@"; then :; else failures=$((failures + 1)); fi
}

# --- bench/cmilter ----------------------------------------------------------
if ! make -s -C "$root/bench" >"$tmp/make.out" 2>&1; then
	echo "FAIL: make -C bench"
	cat "$tmp/make.out"
	exit 1
fi

port=$(free_port)
for spec in "inet:$port@127.0.0.1" "unix:$tmp/cmilter.sock"; do
	if start cmilter "$spec" "$root/bench/cmilter" -p "$spec"; then
		check run_lua "cmilter $spec" "$spec" session.lua
		check stop cmilter
	else
		failures=$((failures + 1))
	fi
done

# --- pymilter_header_reject.py ----------------------------------------------
milter="$root/tests/interop/milters/pymilter_header_reject.py"
port=$(free_port)
for spec in "inet:$port@127.0.0.1" "unix:$tmp/pymilter.sock"; do
	if start pymilter "$spec" env PYMILTER_LOG="$tmp/pymilter.log" "$PY" "$milter" "$spec"; then
		if [ "$(head -n 1 "$tmp/pymilter.out")" = ready ]; then
			echo "ok: pymilter $spec printed 'ready'"
		else
			echo "FAIL: pymilter $spec did not print 'ready' first"
			failures=$((failures + 1))
		fi
		check run_lua "pymilter $spec" "$spec" header_reject.lua
		if wire_check "$spec" >"$tmp/wire.out" 2>&1; then
			echo "ok: pymilter $spec: RCPT reply text on the wire"
			cat "$tmp/wire.out"
		else
			echo "FAIL: pymilter $spec: RCPT reply text on the wire"
			cat "$tmp/wire.out"
			failures=$((failures + 1))
		fi
		check run_lua "pymilter $spec" "$spec" session.lua
		check stop pymilter
	else
		failures=$((failures + 1))
	fi
done

if [ "$failures" -ne 0 ]; then
	echo "selfcheck: $failures failure(s)"
	if [ -f "$tmp/pymilter.log" ]; then
		echo "pymilter callback log:"
		sed 's/^/    /' "$tmp/pymilter.log"
	fi
	exit 1
fi
echo "selfcheck: all passed"
