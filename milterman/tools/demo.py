"""make demo: milter-manager with the two example milters, one mail through it, the combined result.

Everything runs on unix sockets in a temporary directory and is stopped at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time


def _wait_for_socket(path: str, process: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return
        if process.poll() is not None:
            raise SystemExit(f"demo: a process exited early ({process.args})")
        time.sleep(0.05)
    raise SystemExit(f"demo: {path} did not appear within {timeout} s")


def main() -> int:
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="milterman-demo-") as directory:
        config = os.path.join(directory, "milter-manager.toml")
        with open(config, "w") as handle:
            handle.write(f"""version = 1
[manager]
connection_spec = "unix:{directory}/manager.sock"
[log]
use_syslog = false
level = "error"

[[milter]]
name = "example-reject"
connection_spec = "unix:{directory}/reject.sock"

[[milter]]
name = "example-header"
connection_spec = "unix:{directory}/header.sock"
""")
        processes = []
        try:
            for kind in ("reject", "header"):
                process = subprocess.Popen([python, "-m", "milterman.tools.example_milters", kind,
                                            f"unix:{directory}/{kind}.sock", f"example-{kind}"])
                processes.append(process)
                _wait_for_socket(f"{directory}/{kind}.sock", process)
            manager = subprocess.Popen([python, "-m", "milterman.cli.manager", "-c", directory, "--no-detect"])
            processes.append(manager)
            _wait_for_socket(f"{directory}/manager.sock", manager)
            print("milter-manager is running with two children: example-reject (refuses spam@…) and "
                  "example-header (adds X-Milterman-Example).")
            command = [python, "-m", "milterman.cli.test_server", "-s", f"unix:{directory}/manager.sock",
                       "-r", "alice@example.org", "-r", "spam@example.org", "--output-message"]
            print("$ milter-test-server -s unix:…/manager.sock -r alice@example.org -r spam@example.org "
                  "--output-message\n")
            sys.stdout.flush()
            result = subprocess.run(command)
            return result.returncode
        finally:
            for process in reversed(processes):
                process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()


if __name__ == "__main__":
    sys.exit(main())
