"""The benchmark harness keeps working: one quick run of ``bench/run.py`` against real processes.

It does not judge the figures (a quick run on a busy machine says little, and neither does how long
it took); it checks that every figure was measured, that the daemon really ran its edge on the
measured path, that the limiter variant really went through the limiter (and the default one did
not), that no request failed, and that the harness left no process behind.

Every process the run starts (the daemons run in sessions of their own, so they are not in the
run's process group) carries a marker in its environment; whatever happens to the test (a failure,
a timeout, pytest-timeout), the ``finally`` SIGKILLs the process group of every process still
carrying the marker, so a failed run never leaks a daemon into the rest of the suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARKER = "LF_BENCH_SMOKE_RUN"  # not LIBREFANG_*: bench/run.py strips those from the daemons' environment
# Generous: a quick run takes ~30 s on a busy 2-core machine; these bound only a hung harness.
RUN_TIMEOUT = 240.0


def marked_pids(token: str) -> list[int]:
    """Live processes whose environment carries ``MARKER=token`` (zombies have none left)."""
    needle = f"{MARKER}={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


def kill_marked(token: str) -> list[int]:
    """SIGKILL the process group of every marked process (never the test's own group); returns the
    pids that were still alive, after waiting up to 10 s for them to disappear."""
    alive = marked_pids(token)
    for pid in alive:
        try:
            group = os.getpgid(pid)
            if group != os.getpgrp():
                os.killpg(group, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while marked_pids(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not marked_pids(token), f"processes survived SIGKILL: {marked_pids(token)}"
    return alive


def run_harness(argv: list[str]) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    """Run one harness script to completion (bounded); returns its result and the marked processes
    that were still alive after it exited (a leak when it exited on its own)."""
    token = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, MARKER: token}, start_new_session=True)
    leaked: list[int] = []
    try:
        try:
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            kill_marked(token)
            out, err = proc.communicate()
            pytest.fail(f"{argv[0]} still running after {RUN_TIMEOUT:.0f} s; stderr:\n{err[-3000:]}")
        leaked = marked_pids(token)
    finally:
        kill_marked(token)  # whatever happened above (also pytest-timeout): nothing outlives the test
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), leaked


@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_quick_benchmark_run_measures_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc, leaked = run_harness([str(ROOT / "bench" / "run.py"), "--quick", "--loadgen", "python",
                                "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not leaked, f"bench/run.py exited leaving processes {leaked} behind"
    results = json.loads(out.read_text())

    cold = results["cold"]
    for key in ("bare", "floor", "ours", "ours_core"):
        assert 0 < cold["cold_s"][key] < 60
        assert cold["rss_mb"][key] > 5
        assert cold["cold_cpu_s"][key] > 0
    load = results["load"]
    for key in ("bare", "ours", "ours_limiter", "ours_core"):
        assert load["rps"][key] > 0
        assert load["cpu_us_per_request"][key] > 0
        for round_ in load["rounds"][key]:
            assert round_["non_2xx"] == 0 and round_["errors"] == 0, (key, round_)

    checks = load["checks"]
    for key in ("ours", "ours_limiter", "ours_core"):
        assert checks[key] == checks[key] | {"status": 200, "x-request-id": True, "security_headers": True}
    # Loopback without forwarding headers is exempt; the XFF variant is charged by the limiter.
    assert checks["ours"]["limiter_tracked_clients"] == 0
    assert checks["ours_limiter"]["limiter_tracked_clients"] >= 1

    figures = {row["figure"] for row in results["table"]}
    assert any(f.startswith("cold start") for f in figures)
    assert any(f.startswith("idle RSS") for f in figures)
    assert any(f.startswith("/api/health req/s") for f in figures)
    assert all(row["ratio"] > 0 for row in results["table"])
    assert "PASS" in proc.stdout or "FAIL" in proc.stdout  # the table was printed


@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_in_process_micro_benchmark_counts_calls_and_cpu() -> None:
    proc, leaked = run_harness([str(ROOT / "bench" / "asgi_micro.py"), "--requests", "50", "--repeat", "1",
                                "--plugins", "none"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not leaked, leaked
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for figure in ("cpu_us_per_request", "calls_per_request"):
        for key in ("bare", "ours", "ours_limiter"):
            assert result[figure][key] > 0
    calls = result["calls_per_request"]
    # The limiter path does more than the exempt one. (The edge may cost fewer calls than the Quart
    # hook machinery it bypasses, so "ours" is not necessarily above "bare".)
    assert calls["ours"] < calls["ours_limiter"]
