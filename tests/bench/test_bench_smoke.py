"""The benchmark harness keeps working: one quick run of ``bench/run.py`` against real processes.

It does not judge the figures (a quick run on a busy machine says little); it checks that every
figure was measured, that the daemon really ran its edge on the measured path, that the limiter
variant really went through the limiter (and the default one did not), and that no request failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_run_measures_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--loadgen", "python",
         "--json", str(out)],
        capture_output=True, text=True, timeout=90, cwd=ROOT,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Under 40 s on this project's 2-core machines; a machine already running more processes than it
    # has cores (parallel test runs of several engineers) stretches every launch, so skip the bound there.
    if os.getloadavg()[0] <= (os.cpu_count() or 1):
        assert elapsed < 40, f"the quick benchmark took {elapsed:.1f} s"
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


def test_in_process_micro_benchmark_counts_calls_and_cpu() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "asgi_micro.py"), "--requests", "50", "--repeat", "1", "--plugins", "none"],
        capture_output=True, text=True, timeout=90, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for figure in ("cpu_us_per_request", "calls_per_request"):
        for key in ("bare", "ours", "ours_limiter"):
            assert result[figure][key] > 0
    calls = result["calls_per_request"]
    # The limiter path does more than the exempt one. (The edge may cost fewer calls than the Quart
    # hook machinery it bypasses, so "ours" is not necessarily above "bare".)
    assert calls["ours"] < calls["ours_limiter"]
