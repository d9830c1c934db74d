"""LibreFang daemon vs a bare Quart-on-Hypercorn app: cold start, idle RSS, /api/health throughput.

One run measures both sides, alternating between them to spread machine noise evenly, each
server in its own process on a free 127.0.0.1 port, the load generator in another process:

    uv run python bench/run.py            # full run (about 2 minutes)
    uv run python bench/run.py --quick    # 1 launch, 1 round of 1 s (checks the harness works)
    uv run python bench/run.py --write-docs   # also rewrite the results block of docs/benchmarks.md

Variants of the daemon (``python -m librefang start --foreground --home <tmp> --port P``):
``ours`` loads every installed plugin with the default config; ``ours_core`` loads none
(``LIBREFANG_LOAD_PLUGINS=""``); ``ours_limiter`` is ``ours`` with ``trusted_proxies=["127.0.0.1"]``
and an ``X-Forwarded-For`` header on every request, so the GCRA limiter runs too (the default
config exempts loopback peers that send no forwarding header), with a quota high enough not to deny.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402 - bench/ is not a package
    ROOT,
    Target,
    cold_start,
    compile_bytecode,
    cpu_seconds,
    http_get,
    launch,
    machine_facts,
    pick_loadgen,
    run_load,
    stop,
    wait_ready,
)

DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:issue2:begin -->", "<!-- bench:issue2:end -->"
FORWARDED_FOR = "X-Forwarded-For: 203.0.113.7"
LIMITER_CONFIG = """\
# Benchmark variant: the loopback load generator poses as a proxy, so the GCRA limiter runs.
trusted_proxies = ["127.0.0.1"]

[rate_limit]
api_requests_per_minute = 1000000
"""
# (figure, kind, variant, lower is better, ratio, a target of the issue or only information)
ROWS = [
    ("cold start, all plugins (s)", "cold", "ours", True, 1.3, True),
    ("cold start, core only (s)", "cold", "ours_core", True, 1.3, True),
    ("idle RSS, all plugins (MiB)", "rss", "ours", True, 1.6, True),
    ("idle RSS, core only (MiB)", "rss", "ours_core", True, 1.6, True),
    ("/api/health req/s, all plugins, edge on", "rps", "ours", False, 0.8, True),
    ("/api/health req/s, + limiter (trusted proxy, XFF)", "rps", "ours_limiter", False, 0.8, True),
    ("/api/health req/s, core only, edge on", "rps", "ours_core", False, 0.8, True),
    # The same costs in CPU time of the server process: steadier than wall time on a shared machine.
    # The bare app importing the core's libraries: the part of the gap the chosen libraries impose.
    ("cold start, bare + core's libraries (floor) (s)", "cold", "floor", True, 1.3, False),
    ("idle RSS, bare + core's libraries (floor) (MiB)", "rss", "floor", True, 1.6, False),
    ("CPU to first 200, all plugins (s)", "cold_cpu", "ours", True, 1.3, False),
    ("CPU to first 200, core only (s)", "cold_cpu", "ours_core", True, 1.3, False),
    ("CPU to first 200, floor (s)", "cold_cpu", "floor", True, 1.3, False),
    ("server CPU per request, all plugins (us)", "cpu_req", "ours", True, 1.25, False),
    ("server CPU per request, + limiter (us)", "cpu_req", "ours_limiter", True, 1.25, False),
    ("server CPU per request, core only (us)", "cpu_req", "ours_core", True, 1.25, False),
]


def build_targets(workdir: Path, core_path: Path | None = None) -> dict[str, Target]:
    """The bare app and the three daemon variants, each with its own home under ``workdir``.
    ``core_path`` (a ``src`` folder holding ``librefang``) makes the daemons import that copy of
    the core instead of the installed one, to compare two versions against the same baseline."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LIBREFANG_")}
    daemon_base = dict(base)
    if core_path is not None:
        daemon_base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(core_path), base.get("PYTHONPATH", "")]))
    logs = workdir / "logs"
    py = sys.executable
    bare = [py, str(ROOT / "bench" / "bare_app.py")]
    targets = {
        "bare": Target("bare", "bare Quart+Hypercorn", bare, dict(base), logs),
        "floor": Target("floor", "bare + the core's libraries", [*bare, "--with-core-deps"], dict(base), logs),
    }
    for key, plugins, limiter in (("ours", None, False), ("ours_core", "", False), ("ours_limiter", None, True)):
        home = workdir / key
        home.mkdir(parents=True)
        if limiter:
            (home / "config.toml").write_text(LIMITER_CONFIG)
        env = dict(daemon_base, LIBREFANG_HOME=str(home))
        if plugins is not None:
            env["LIBREFANG_LOAD_PLUGINS"] = plugins
        argv = [py, "-m", "librefang", "start", "--foreground", "--home", str(home)]
        targets[key] = Target(key, key, argv, env, logs, [FORWARDED_FOR] if limiter else [])
    return targets


def alternate(items: list[str], index: int) -> list[str]:
    """Even rounds in order, odd rounds reversed: neither side always goes first."""
    return items if index % 2 == 0 else list(reversed(items))


def measure_cold(targets: dict[str, Target], launches: int, settle: float, prepare: bool) -> dict[str, Any]:
    keys = ["bare", "ours", "floor", "ours_core"]
    first: dict[str, float] = {}
    for key in ("ours", "ours_core") if prepare else ():
        # The first start of a home runs init and the migrations: reported, not in the medians.
        first[key] = cold_start(targets[key], settle=0.0)["seconds"]
        log(f"  first start of an empty home ({key}): {first[key]:.3f} s")
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in keys}
    for i in range(launches):
        for key in alternate(keys, i):
            sample = cold_start(targets[key], settle)
            samples[key].append(sample)
            log(f"  launch {i + 1}/{launches} {key:<10} first 200 after {sample['seconds']:.3f} s "
                f"({sample['cpu_s']:.2f} s CPU), RSS {sample['rss_mb']:.1f} MiB")
    return {
        "first_start_empty_home_s": first,
        "cold_s": {k: statistics.median(s["seconds"] for s in v) for k, v in samples.items()},
        "cold_cpu_s": {k: statistics.median(s["cpu_s"] for s in v) for k, v in samples.items()},
        "rss_mb": {k: statistics.median(s["rss_mb"] for s in v) for k, v in samples.items()},
        "samples": samples,
    }


def edge_check(port: int, headers: list[str]) -> dict[str, Any]:
    """Prove the edge ran on the measured path (request id + security headers)."""
    extra = dict(h.split(": ", 1) for h in headers)
    status, got, _ = http_get(port, "/api/health", extra)
    return {"status": status, "x-request-id": "x-request-id" in got,
            "security_headers": "content-security-policy" in got and "x-frame-options" in got}


def limiter_clients(port: int) -> int | None:
    """Clients the limiter tracks (from /api/security): >0 proves the limiter saw the load."""
    try:
        status, _, body = http_get(port, "/api/security")
        for system in json.loads(body).get("systems", []) if status == 200 else []:
            if system.get("name") == "rate_limiter":
                return int(system.get("config", {}).get("tracked_clients"))
    except (OSError, ValueError, TypeError):
        pass
    return None


def measure_throughput(targets: dict[str, Target], loadgen: str, rounds: int, duration: float,
                       connections: int, warmup: float) -> dict[str, Any]:
    keys = ["bare", "ours", "ours_limiter", "ours_core"]
    running = {}
    try:
        for key in keys:  # started together (their start-up is not measured here), then awaited
            running[key] = launch(targets[key])
        for key in keys:
            wait_ready(running[key])
        checks = {k: edge_check(r.port, r.target.load_headers) for k, r in running.items() if k != "bare"}
        if warmup > 0:
            for key in keys:
                run_load(loadgen, running[key].url + "/api/health", connections, warmup, running[key].target.load_headers)
        rounds_out: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
        for i in range(rounds):
            for key in alternate(keys, i):
                r = running[key]
                cpu_before = cpu_seconds(r.proc.pid)
                result = run_load(loadgen, r.url + "/api/health", connections, duration, r.target.load_headers)
                result["cpu_us_per_request"] = (cpu_seconds(r.proc.pid) - cpu_before) / max(result["requests"], 1) * 1e6
                rounds_out[key].append(result)
                log(f"  round {i + 1}/{rounds} {key:<12} {result['rps']:>8.1f} req/s, "
                    f"{result['cpu_us_per_request']:>6.0f} us CPU/request (non-2xx {result['non_2xx']}, "
                    f"errors {result['errors']})")
        for key in ("ours", "ours_limiter"):
            checks[key]["limiter_tracked_clients"] = limiter_clients(running[key].port)
        plugins = loaded_plugins(running["ours"].port)
    finally:
        for r in running.values():  # SIGTERM to all first: they shut down in parallel
            if r.proc.poll() is None:
                r.proc.terminate()
        for r in running.values():
            stop(r)
    return {
        "rps": {k: statistics.median(x["rps"] for x in v) for k, v in rounds_out.items()},
        "cpu_us_per_request": {k: statistics.median(x["cpu_us_per_request"] for x in v) for k, v in rounds_out.items()},
        "rounds": rounds_out,
        "checks": checks,
        "plugins": plugins,
    }


def loaded_plugins(port: int) -> list[str]:
    """The plugins a running daemon loaded (from /api/status)."""
    status, _, body = http_get(port, "/api/status")
    if status != 200:
        return []
    return [p["name"] for p in json.loads(body).get("plugins", []) if p.get("loaded")]


def table(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    figures = {"cold": results["cold"]["cold_s"], "rss": results["cold"]["rss_mb"], "rps": results["load"]["rps"],
               "cold_cpu": results["cold"]["cold_cpu_s"], "cpu_req": results["load"]["cpu_us_per_request"]}
    for figure, kind, key, lower_better, target, is_target in ROWS:
        ours, bare = figures[kind][key], figures[kind]["bare"]
        ratio = ours / bare if bare else float("inf")
        ok = ratio <= target if lower_better else ratio >= target
        bound = f"{'≤' if lower_better else '≥'} {target}x"
        out.append({"figure": figure, "variant": key, "kind": kind, "ours": ours, "bare": bare, "ratio": ratio,
                    "target": bound if is_target else f"({bound})", "is_target": is_target, "pass": ok})
    return out


def fmt(value: float, kind: str) -> str:
    return f"{value:.3f}" if kind.startswith("cold") else f"{value:.1f}" if kind == "rss" else f"{value:.0f}"


def verdict(row: dict[str, Any]) -> str:
    word = "pass" if row["pass"] else "fail"
    return word if row["is_target"] else f"({word})"


def render_text(rows: list[dict[str, Any]]) -> str:
    head = f"{'figure':<52} {'ours':>9} {'bare':>9} {'ratio':>7} {'target':>10}  result"
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(f"{row['figure']:<52} {fmt(row['ours'], row['kind']):>9} {fmt(row['bare'], row['kind']):>9} "
                     f"{row['ratio']:>6.2f}x {row['target']:>10}  {verdict(row).upper()}")
    return "\n".join(lines)


def render_markdown(results: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    m, p = results["machine"], results["params"]
    lines = [
        BEGIN,
        f"Measured {results['date']} with `{results['command']}`.",
        "",
        f"- Machine: {m['nproc']} CPU ({m['cpu']}), {m['os']}, {m['implementation']} {m['python']}; "
        f"load average at start {', '.join(map(str, m['loadavg_at_start']))} (shared machine).",
        f"- Packages: quart {m['packages']['quart']}, hypercorn {m['packages']['hypercorn']}, "
        f"librefang {m['packages']['librefang']}; `PYTHONDONTWRITEBYTECODE={m['PYTHONDONTWRITEBYTECODE']}`.",
        f"- Bytecode: `compileall` over {', '.join(results['compile']['workspace_sources'])} before measuring; "
        f"site-packages modules that had no .pyc and were compiled first: "
        f"{results['compile']['site_packages_missing_pyc_before']} "
        f"(left without: {results['compile'].get('site_packages_missing_pyc_after', 'n/a')}).",
        f"- Cold start and RSS: median of {p['launches']} launches per side, alternating; RSS read "
        f"{p['settle']} s after the first 200.",
        f"- Throughput: load generator `{p['loadgen']}`, {p['connections']} keep-alive connections, "
        f"{p['duration']} s per round, median of {p['rounds']} rounds, alternating; {p['warmup']} s warm-up each.",
        f"- Plugins loaded in `ours`: {', '.join(results['load']['plugins']) or '(none installed)'}.",
        "",
        "| figure | ours | bare | ratio | target | result |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        result = verdict(row) if row["pass"] or not row["is_target"] else "**fail**"
        lines.append(f"| {row['figure']} | {fmt(row['ours'], row['kind'])} | {fmt(row['bare'], row['kind'])} | "
                     f"{row['ratio']:.2f}x | {row['target']} | {result} |")
    first = results["cold"]["first_start_empty_home_s"]
    lines += [
        "",
        "First start of an empty home (runs `init` and every migration; one launch, not a target): "
        + (", ".join(f"`{k}` {v:.2f} s" for k, v in first.items()) or "not measured") + ".",
        "",
        "Edge checks on the measured daemons: " + "; ".join(
            f"`{k}`: request id {'yes' if c['x-request-id'] else 'NO'}, security headers "
            f"{'yes' if c['security_headers'] else 'NO'}"
            + (f", limiter clients tracked {c['limiter_tracked_clients']}" if "limiter_tracked_clients" in c else "")
            for k, c in results["load"]["checks"].items()
        ) + ".",
        END,
    ]
    return "\n".join(lines)


def write_docs(block: str) -> None:
    text = DOCS.read_text() if DOCS.exists() else ""
    if BEGIN in text and END in text:
        start, end = text.index(BEGIN), text.index(END) + len(END)
        text = text[:start] + block + text[end:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOCS.write_text(text)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 launch, 1 round of 1 s: checks the harness")
    parser.add_argument("--launches", type=int, help="cold-start launches per side (default 7)")
    parser.add_argument("--rounds", type=int, help="throughput rounds per side (default 3)")
    parser.add_argument("--duration", type=float, help="seconds of load per round (default 5)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--no-compile", action="store_true", help="skip compileall (not for published figures)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--write-docs", action="store_true", help=f"rewrite the results block of {DOCS.name}")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--core-path", type=Path, help="run the daemons on this copy of core/src (before/after)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.launches = args.launches or (1 if quick else 7)
    args.rounds = args.rounds or (1 if quick else 3)
    args.duration = args.duration or (1.0 if quick else 5.0)
    # --quick checks that the harness works: no uncounted first start (so its one launch pays the
    # migrations), no warm-up, a short settle. Its figures are not for publishing.
    args.warmup = 0.0 if quick else 1.0
    args.settle = 0.2 if quick else 1.0
    if not (1 <= args.launches <= 50 and 1 <= args.rounds <= 20 and 0 < args.duration <= 60):
        parser.error("launches 1-50, rounds 1-20, duration up to 60 s")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "uv run python bench/run.py " + " ".join(map(shlex.quote, argv if argv is not None else sys.argv[1:]))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": command.strip()}
    results["machine"] = machine_facts()
    loadgen = pick_loadgen(args.loadgen)
    results["core_path"] = str(args.core_path) if args.core_path else "installed"
    results["params"] = {"launches": args.launches, "rounds": args.rounds, "duration": args.duration,
                         "connections": args.connections, "loadgen": loadgen, "warmup": args.warmup,
                         "settle": args.settle}
    if args.no_compile:
        results["compile"] = {"workspace_sources": ["(skipped)"], "site_packages_missing_pyc_before": "not checked"}
    else:
        log("compiling bytecode ...")
        results["compile"] = compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="librefang-bench-") as tmp:
        targets = build_targets(Path(tmp), args.core_path.resolve() if args.core_path else None)
        log("cold start and idle RSS ...")
        results["cold"] = measure_cold(targets, args.launches, args.settle, prepare=not args.quick)
        log(f"throughput ({loadgen}) ...")
        results["load"] = measure_throughput(targets, loadgen, args.rounds, args.duration, args.connections, args.warmup)
    rows = table(results)
    results["table"] = rows
    print(render_text(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    if args.write_docs:
        write_docs(render_markdown(results, rows))
        log(f"wrote {DOCS}")
    return 1 if args.check and not all(r["pass"] for r in rows if r["is_target"]) else 0


if __name__ == "__main__":
    sys.exit(main())
