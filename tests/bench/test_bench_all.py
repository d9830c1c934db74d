"""``bench/all.py``: the one entry point of the benchmark set keeps working.

Runs the plumbing with tiny sizes on two real suites (a fake provider in its own process; a daemon
under load), checks the combined table and JSON, then checks that a suite running past its time
limit is stopped with every process it started (daemons included, though they run in sessions of
their own). Every process the test starts carries a marker in its environment and is killed in a
``finally``, whatever happens. Does not judge the figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import all as bench_all  # noqa: E402 - bench/ is not a package

TIME_LIMIT = 75  # seconds per run of all.py in this test; a stuck run is killed, never left behind


def run_all(args: list[str], marker: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **{bench_all.MARKER: marker})
    proc = subprocess.Popen([sys.executable, str(BENCH / "all.py"), *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIME_LIMIT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(10)
        bench_all.reap(marker)  # daemons started in sessions of their own
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_smoke_run_prints_one_table_with_baselines_and_writes_json(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    out = tmp_path / "all.json"
    try:
        result = run_all(["--smoke", "--only", "providers,load", "--json", str(out), "--no-fail"], marker)
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(out.read_text())
        assert report["mode"] == "smoke" and report["command"].startswith("uv run python bench/all.py --smoke")
        assert report["machine"]["nproc"] >= 1 and report["machine"]["python"]
        assert {name: s["status"] for name, s in report["suites"].items()} == {"providers": "ok", "load": "ok"}
        rows = {(r["suite"], r["figure"]): r for r in report["table"]}
        driver = rows[("providers", "librefang OpenAIDriver, tokens/s")]
        assert driver["ours"] > 0 and driver["baseline"] > 0 and driver["baseline_name"] == "openai client"
        assert abs(driver["ratio"] - driver["ours"] / driver["baseline"]) < 1e-3 and driver["target"] == "≥ 1.0x"
        mixed = rows[("load", "mixed traffic p50 ms")]
        assert mixed["baseline_name"] == "/api/health p50" and mixed["baseline"] > 0
        assert rows[("load", "errors (5xx, failures; 429s excepted)")]["passed"] is True
        # The printed table has every figure, beside its baseline and ratio.
        assert "baseline" in result.stdout.splitlines()[0] and "ratio" in result.stdout.splitlines()[0]
        assert "librefang OpenAIDriver, tokens/s" in result.stdout and "mixed traffic req/s" in result.stdout
        assert bench_all.marked_processes(marker) == []
    finally:
        bench_all.reap(marker)


def test_a_suite_past_its_time_limit_is_killed_with_its_daemon() -> None:
    marker = uuid.uuid4().hex
    started = time.monotonic()
    try:
        result = run_all(["--smoke", "--only", "soak", "--soak-seconds", "300", "--timeout", "10"], marker)
        assert time.monotonic() - started < TIME_LIMIT
        assert result.returncode == 1  # a suite that timed out fails the run
        assert "soak      suite TIMEOUT" in result.stdout, result.stdout
        assert "leftover process" in result.stderr  # the daemon, in a session of its own, was found and killed
        assert bench_all.marked_processes(marker) == []
    finally:
        bench_all.reap(marker)


def test_write_docs_replaces_only_the_summary_block(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n\n" + bench_all.BEGIN + "\nold\n" + bench_all.END + "\n\n## Other section\n")
    bench_all.write_docs(bench_all.BEGIN + "\nnew\n" + bench_all.END, doc)
    assert doc.read_text() == ("# Benchmarks\n\nintro\n\n" + bench_all.BEGIN + "\nnew\n" + bench_all.END
                               + "\n\n## Other section\n")
    bare = tmp_path / "empty.md"
    bare.write_text("# Benchmarks\n")
    bench_all.write_docs(bench_all.BEGIN + "\nfirst\n" + bench_all.END, bare)
    assert bare.read_text().endswith(bench_all.END + "\n") and "first" in bare.read_text()


def test_bad_arguments_are_refused() -> None:
    for argv in (["--only", "kernel,nonsense"], ["--soak-seconds", "0.5"], ["--quick", "--smoke"]):
        proc = subprocess.run([sys.executable, str(BENCH / "all.py"), *argv], cwd=ROOT, capture_output=True,
                              text=True, timeout=30)
        assert proc.returncode == 2, (argv, proc.stderr)
