"""``librefang start --foreground`` runs its start-up with the cyclic GC off, then freezes what
start-up made and switches the GC back on (cli._run_foreground); a failed start switches it back on too."""

from __future__ import annotations

import fcntl
import gc
import json
import os
import subprocess
import sys

from click.testing import CliRunner
from librefang.cli import main
from librefang.testing import free_port

# The daemon runs for real in this interpreter; a thread waits for its first 200, reads the GC state
# the process serves with, and asks it to shut down.
SCRIPT = r"""
import gc, json, sys, threading, time, urllib.request
from librefang.cli import main

port, out = sys.argv[1], sys.argv[2]
states = {"at_import": gc.isenabled()}

def watch():
    url = f"http://127.0.0.1:{port}/api/health"
    for _ in range(3000):
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.02)
    states.update(serving=gc.isenabled(), frozen=gc.get_freeze_count())
    with open(out, "w") as handle:
        json.dump(states, handle)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/shutdown", method="POST", data=b"")
    urllib.request.urlopen(request, timeout=10).read()

threading.Thread(target=watch, daemon=True).start()
main(["start", "--foreground", "--port", port], standalone_mode=True)
"""


def test_the_daemon_serves_with_gc_on_and_start_up_objects_frozen(librefang_home, tmp_path) -> None:
    out = tmp_path / "gc.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBREFANG_")}
    env.update(LIBREFANG_HOME=str(librefang_home), LIBREFANG_LOAD_PLUGINS="", LIBREFANG_VAULT_KEY="00" * 32)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(free_port()), str(out)], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    states = json.loads(out.read_text())
    assert states["at_import"] is True
    assert states["serving"] is True
    assert states["frozen"] > 10_000  # modules, classes and models of the start-up


def test_a_failed_start_switches_the_gc_back_on(librefang_home, monkeypatch) -> None:
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "")
    assert CliRunner().invoke(main, ["init"]).exit_code == 0
    # The lock is held (flock locks belong to an open file: a second open conflicts even in this
    # process): the start fails inside the GC-off section.
    with open(librefang_home / "daemon.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert gc.isenabled()
        result = CliRunner().invoke(main, ["start", "--foreground", "--port", str(free_port())])
    assert result.exit_code != 0
    assert "another daemon holds" in result.output
    assert gc.isenabled()
