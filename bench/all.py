"""Run the whole benchmark set and print one table: every figure beside the baseline it is compared
with in the same run, the ratio, the target and whether it is met.

Each suite runs as its own subprocess with ``--json`` (its measurement method is its own; this file
only runs them and reads their reports):

| suite | script | baseline measured in the same run |
| --- | --- | --- |
| kernel | ``bench/run.py`` | a bare Quart-on-Hypercorn app |
| providers | ``bench/bench_providers.py`` | the official ``openai`` client on the same stream |
| agents | ``bench/bench_agents.py`` | ``GET /api/health`` on the same daemon; a daemon with no agents |
| runtime | ``bench/bench_runtime.py`` | the fake provider answering alone; the sequential turn |
| memory | ``bench/bench_memory.py`` | plain ``sqlite3`` on the same file (floor) |
| load | ``bench/load.py`` | the ``GET /api/health`` phase on the same daemon |
| soak | ``bench/soak.py`` | the daemon's own state right after warm-up |

    uv run python bench/all.py --quick              # every suite with small sizes (a few minutes)
    uv run python bench/all.py                      # full sizes (the published figures; about 30 minutes)
    uv run python bench/all.py --only kernel,load   # a subset
    uv run python bench/all.py --quick --write-docs # also rewrite the summary block of docs/benchmarks.md
    uv run python bench/all.py --soak-seconds 3600  # release variant of the soak

Every process a suite starts (daemons, fake providers) inherits a marker in its environment; when a
suite runs past its time limit, or this script is interrupted, every process carrying the marker is
killed, so no daemon is left behind. Exit status: 0 when every suite ran and every target was met,
1 otherwise (``--no-fail`` reports without failing).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from harness import machine_facts  # noqa: E402 - bench/ is not a package
from suites import SUITES, Row, rows_for  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:all:begin -->", "<!-- bench:all:end -->"
MARKER = "BENCH_ALL_RUN_ID"  # environment variable every process of a run inherits (not LIBREFANG_*: harnesses strip those)
MODES = ("smoke", "quick", "full")


@dataclass
class SuiteRun:
    """The outcome of one suite's subprocess."""

    name: str
    argv: list[str]
    status: str  # ok | check_failed (its own pass check failed; rows say which) | failed | timeout
    returncode: int | None
    seconds: float
    report: dict[str, Any] | None
    stderr_tail: str
    rows: list[Row]


def git_state() -> dict[str, Any] | None:
    """The commit measured, and whether the working tree had changes on top of it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def marked_processes(marker: str) -> list[int]:
    """Pids of the processes whose environment carries ``MARKER=marker`` (this process excluded)."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or another user's
            continue
    return found


def reap(marker: str, grace: float = 3.0) -> list[int]:
    """SIGTERM, then SIGKILL after ``grace`` seconds, every process carrying ``marker``; their pids.
    Daemons started in sessions of their own are found too: the marker is in their environment."""
    pids = marked_processes(marker)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and marked_processes(marker):
        time.sleep(0.1)
    for pid in marked_processes(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def run_suite(name: str, mode: str, out_dir: Path, marker: str, timeout: float, options: argparse.Namespace) -> SuiteRun:
    """Run one suite as a subprocess (its own process group), read its JSON report, make its rows."""
    suite = SUITES[name]
    report_path = out_dir / f"{name}.json"
    argv = [sys.executable, str(BENCH / suite.script), *suite.args(mode, options), "--json", str(report_path)]
    env = dict(os.environ, **{MARKER: marker})
    started = time.monotonic()
    log(f"[{name}] {shlex.join(argv[1:])}")
    with open(out_dir / f"{name}.stderr", "w+b") as stderr:  # a file: a chatty suite never blocks on a pipe
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            returncode: int | None = proc.wait(timeout)
            status = "ok" if returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            returncode, status = None, "timeout"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            # Daemons a suite started in sessions of their own, left behind by a timeout or a crash.
            leftovers = [pid for pid in reap(marker) if pid != proc.pid]
            if leftovers:
                log(f"[{name}] killed {len(leftovers)} leftover process(es): {leftovers}")
        stderr.seek(0)
        tail = stderr.read()[-4000:].decode("utf-8", errors="replace")
    seconds = time.monotonic() - started
    report = None
    if report_path.exists():
        try:
            report = json.loads(report_path.read_text())
        except ValueError:
            report = None
    if report is None and status != "timeout":
        status = "failed"  # no readable report: nothing to show
    elif report is not None and status == "failed":
        status = "check_failed"  # it measured, and its own pass check said no
    rows = rows_for(name, report) if report is not None else []
    log(f"[{name}] {status} in {seconds:.1f} s, {len(rows)} figures")
    return SuiteRun(name, argv[1:], status, returncode, round(seconds, 1), report, tail, rows)


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if float(value).is_integer() and abs(value) >= 10:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if value else "0"


def result_word(row: Row) -> str:
    return "—" if row.passed is None else "pass" if row.passed else "FAIL"


def ratio_text(row: Row) -> str:
    return "—" if row.ratio is None else f"{row.ratio:.2f}x"


def render_text(runs: list[SuiteRun]) -> str:
    head = f"{'suite':<9} {'figure':<50} {'ours':>10} {'baseline':>10} {'ratio':>8} {'target':>22}  result"
    lines = [head, "-" * len(head)]
    for run in runs:
        if run.status != "ok":
            lines.append(f"{run.name:<9} suite {run.status.upper()} after {run.seconds} s "
                         f"(exit {run.returncode}); see its stderr in the JSON output")
        for row in run.rows:
            lines.append(f"{run.name:<9} {row.figure[:50]:<50} {fmt(row.ours):>10} {fmt(row.baseline):>10} "
                         f"{ratio_text(row):>8} {row.target[:22]:>22}  {result_word(row)}")
    lines.append("")
    lines.append("baselines: " + "; ".join(f"{run.name}: {SUITES[run.name].baseline}" for run in runs))
    return "\n".join(lines)


def render_markdown(results: dict[str, Any], runs: list[SuiteRun]) -> str:
    m = results["machine"]
    lines = [
        BEGIN,
        f"Measured {results['date']} with `{results['command']}` ({results['mode']} sizes, "
        f"{results['seconds']:.0f} s in all).",
        "",
        f"- Machine: {m['nproc']} CPU ({m['cpu']}), {m['os']}, {m['implementation']} {m['python']}; load average "
        f"{', '.join(map(str, m['loadavg_at_start']))} at the start and "
        f"{', '.join(map(str, results['loadavg_at_end']))} at the end (shared machine: compare ratios).",
        "- Suites: " + "; ".join(f"`{r.name}` {r.status} ({r.seconds:.0f} s)" for r in runs) + ".",
    ]
    git = results.get("git")
    if git:
        lines.append(f"- Code: commit `{git['commit'][:12]}`" + (" with uncommitted changes in the working tree "
                                                                 "(other work in progress)" if git["dirty"] else "") + ".")
    if results["mode"] != "full":
        lines.append(f"- {results['mode'].capitalize()} sizes: indicative figures only (the kernel suite's `--quick` "
                     "makes one launch per side, and that launch's cold start includes the first start's "
                     "migrations); published figures come from a full run (`bench/all.py` without `--quick`).")
    lines += [
        "",
        "| suite | figure | ours | baseline (same run) | ratio | target | result |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for run in runs:
        if run.status != "ok":
            lines.append(f"| {run.name} | *suite {run.status}* (exit {run.returncode}) | | | | | **fail** |")
        for row in run.rows:
            base = f"{fmt(row.baseline)} ({row.baseline_name})" if row.baseline is not None else "—"
            word = result_word(row)
            lines.append(f"| {run.name} | {row.figure} | {fmt(row.ours)} | {base} | {ratio_text(row)} | "
                         f"{row.target} | {'**fail**' if word == 'FAIL' else word} |")
    lines.append(END)
    return "\n".join(lines)


def write_docs(block: str, path: Path = DOCS) -> None:
    """Replace the block between the markers (added at the end when missing); the rest is untouched."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        start, end = text.index(BEGIN), text.index(END) + len(END)
        text = text[:start] + block + text[end:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_const", const="quick", dest="mode",
                       help="small sizes: every suite in a few minutes (figures indicative only)")
    sizes.add_argument("--smoke", action="store_const", const="smoke", dest="mode",
                       help="tiny sizes: checks the plumbing (used by tests/bench/test_bench_all.py)")
    parser.set_defaults(mode="full")
    parser.add_argument("--only", default="", help=f"comma list of suites ({', '.join(SUITES)}); default all")
    parser.add_argument("--skip", default="", help="comma list of suites to leave out")
    parser.add_argument("--soak-seconds", type=float, help="soak duration (default: smoke 6, quick 30, full 600)")
    parser.add_argument("--timeout", type=float, help="seconds one suite may run (default by mode and suite)")
    parser.add_argument("--json", type=Path, help="also write every report and the table here")
    parser.add_argument("--write-docs", action="store_true", help=f"rewrite the summary block of {DOCS.name}")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even when a suite fails or a target is missed")
    args = parser.parse_args(argv)
    for option in ("only", "skip"):
        unknown = [n for n in getattr(args, option).split(",") if n and n not in SUITES]
        if unknown:
            parser.error(f"unknown suite(s) in --{option}: {', '.join(unknown)}; known: {', '.join(SUITES)}")
    if args.soak_seconds is not None and not 2 <= args.soak_seconds <= 86_400:
        parser.error("--soak-seconds must be between 2 and 86400")
    if args.timeout is not None and not 1 <= args.timeout <= 86_400:
        parser.error("--timeout must be between 1 and 86400")
    return args


def main(argv: list[str] | None = None, on_suite: Callable[[SuiteRun], None] | None = None) -> int:
    args = parse_args(argv)
    chosen = [n for n in SUITES if (not args.only or n in args.only.split(",")) and n not in args.skip.split(",")]
    command = "uv run python bench/all.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    # Nested under a caller that already marks its processes (a test), keep its marker.
    marker = os.environ.get(MARKER) or uuid.uuid4().hex
    started = time.monotonic()
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "command": command.strip(), "mode": args.mode, "machine": machine_facts(),
                               "git": git_state()}
    runs: list[SuiteRun] = []

    def interrupted(signum: int, _frame: Any) -> None:
        reap(marker)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        with tempfile.TemporaryDirectory(prefix="librefang-bench-all-") as tmp:
            for name in chosen:
                timeout = args.timeout or SUITES[name].timeout(args.mode, args)
                run = run_suite(name, args.mode, Path(tmp), marker, timeout, args)
                runs.append(run)
                if on_suite is not None:
                    on_suite(run)
    finally:
        reap(marker)
        signal.signal(signal.SIGTERM, previous)
    results["seconds"] = time.monotonic() - started
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(render_text(runs))
    results["suites"] = {r.name: {"argv": r.argv, "status": r.status, "returncode": r.returncode,
                                  "seconds": r.seconds, "report": r.report, "stderr_tail": r.stderr_tail}
                         for r in runs}
    results["table"] = [{"suite": r.name, **row.as_dict()} for r in runs for row in r.rows]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.write_docs:
        write_docs(render_markdown(results, runs))
        log(f"wrote the summary block of {DOCS}")
    ok = all(r.status == "ok" for r in runs) and all(row.passed is not False for r in runs for row in r.rows)
    log("all targets met" if ok else "some suite failed or some target was missed")
    return 0 if ok or args.no_fail else 1


if __name__ == "__main__":
    sys.exit(main())
