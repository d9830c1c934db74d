"""The suites ``bench/all.py`` runs: how each is called per mode, and how its JSON report becomes
table rows (figure, ours, the baseline measured in the same run, ratio, target, pass).

Targets are the ones each suite's section of ``docs/benchmarks.md`` states; a row without a target
is shown for context (its result is "—").
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Row:
    """One figure of the combined table. ``ratio`` is ours / baseline; ``passed`` is None without a target."""

    figure: str
    ours: float | None
    baseline: float | None = None
    baseline_name: str = ""
    target: str = "—"
    passed: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.baseline:
            return None
        return self.ours / self.baseline

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": None if self.ratio is None else round(self.ratio, 4)}


@dataclass
class Suite:
    """A benchmark script: its arguments per mode and its time limit per mode (seconds)."""

    script: str
    baseline: str
    sizes: dict[str, list[str]]
    limits: dict[str, float]

    def args(self, mode: str, options: argparse.Namespace) -> list[str]:
        return list(self.sizes[mode])

    def timeout(self, mode: str, options: argparse.Namespace) -> float:
        return self.limits[mode]


@dataclass
class SoakSuite(Suite):
    """The soak's duration is its size; ``--soak-seconds`` overrides it (and its time limit follows)."""

    seconds: dict[str, float] | None = None

    def duration(self, mode: str, options: argparse.Namespace) -> float:
        chosen = getattr(options, "soak_seconds", None)
        return chosen if chosen is not None else (self.seconds or {})[mode]

    def args(self, mode: str, options: argparse.Namespace) -> list[str]:
        return [*self.sizes[mode], "--seconds", f"{self.duration(mode, options):g}"]

    def timeout(self, mode: str, options: argparse.Namespace) -> float:
        # The run, the settling of fds and tasks (up to 30 s), two daemon starts and stops.
        return self.duration(mode, options) * 1.5 + self.limits[mode]


def kernel_rows(report: dict[str, Any]) -> list[Row]:
    """``bench/run.py``: its own table (ours vs the bare app); rows in parentheses are not targets."""
    rows = []
    for row in report["table"]:
        rows.append(Row(row["figure"], row["ours"], row["bare"], "bare Quart app", row["target"],
                        bool(row["pass"]) if row["is_target"] else None))
    return rows


def provider_rows(report: dict[str, Any]) -> list[Row]:
    results = report["results"]
    official = results["openai (official client)"]["median_tokens_per_s"]
    rows = []
    for name, figures in results.items():
        if name == "openai (official client)":
            continue
        target = name == "librefang OpenAIDriver"
        ratio = figures["median_tokens_per_s"] / official if official else 0
        rows.append(Row(f"{name}, tokens/s", figures["median_tokens_per_s"], official, "openai client",
                        "≥ 1.0x" if target else "—", ratio >= 1.0 if target else None))
    return rows


def agent_rows(report: dict[str, Any]) -> list[Row]:
    count = report.get("registered", report["agents"])
    health = report["health_baseline"]
    rows = []
    for key, label, target in (("list_first_page", "GET /api/agents first page", True),
                               ("list_filtered", "GET /api/agents?q=…&status=", True),
                               ("list_page_500", "GET /api/agents?limit=500", False)):
        figure = report[key]
        rows.append(Row(f"{label} p50 ms ({count:,} agents)", figure["median_p50_ms"], health["median_p50_ms"],
                        "/api/health p50"))
        p99 = figure["median_p99_ms"]
        rows.append(Row(f"{label} p99 ms ({count:,} agents)", p99, health["median_p99_ms"], "/api/health p99",
                        "≤ 10 ms" if target else "—", p99 <= 10 if target else None))
    spawn = report["spawn"]
    rows.append(Row("spawn over HTTP, agents/s (median round)", spawn["median_agents_per_s"], target="≥ 200",
                    passed=spawn["median_agents_per_s"] >= 200))
    rows.append(Row("daemon CPU ms per spawn (best round)", spawn["best"]["daemon_cpu_ms_per_spawn"],
                    health["best"]["daemon_cpu_ms_per_request"], "CPU per /api/health"))
    rss = report["rss"]
    rows.append(Row(f"RSS MB with {count:,} agents", rss["with_agents_mb"], rss["default_only_mb"],
                    "RSS, default agent only"))
    rows.append(Row("RSS bytes per idle agent", rss["bytes_per_idle_agent"], target="≤ 10 KiB",
                    passed=rss["bytes_per_idle_agent"] <= 10 * 1024))
    return rows


def runtime_rows(report: dict[str, Any]) -> list[Row]:
    rows = []
    provider = report.get("provider_alone")
    if provider and "turn_no_tool" in report:
        turn = report["turn_no_tool"]
        overhead = turn["p50_ms"] - provider["p50_ms"]
        rows.append(Row("turn, no tool, p50 ms", turn["p50_ms"], provider["p50_ms"], "provider alone p50",
                        "overhead ≤ 5 ms", overhead <= 5))
        rows.append(Row("turn, no tool, p99 ms", turn["p99_ms"], provider["p99_ms"], "provider alone p99"))
        rows.append(Row("turn, one tool (2 LLM calls), p50 ms", report["turn_one_tool"]["p50_ms"], turn["p50_ms"],
                        "turn without tool p50"))
        rows.append(Row("daemon CPU ms per turn, no tool", turn.get("daemon_cpu_ms_per_turn")))
        long = report.get("turn_no_tool_long_session")
        if long:
            grown = 2 * (long["n"] // max(1, report.get("rounds", 1)) + 10)  # + the warm-up turns
            rows.append(Row(f"turn, no tool, one session growing to {grown} messages, p50 ms", long["p50_ms"],
                            turn["p50_ms"], "turn in a short session p50"))
            rows.append(Row("daemon CPU ms per turn, no tool, long session", long.get("daemon_cpu_ms_per_turn"),
                            turn.get("daemon_cpu_ms_per_turn"), "short session"))
    if "throughput" in report:
        tp = report["throughput"]
        sequential = 1000 / report["turn_no_tool"]["p50_ms"] if "turn_no_tool" in report else None
        rows.append(Row(f"turns/s, {tp['sessions']} concurrent sessions", tp["turns_per_s"], sequential,
                        "sequential turns/s", "≥ 200", tp["turns_per_s"] >= 200))
    if "sse_relay" in report:
        rows.append(Row("SSE relay, one stream, tokens/s", report["sse_relay"]["tokens_per_s"]))
    if "held_streams" in report:
        held = report["held_streams"]
        ok = held["completed"] == held["streams"] and held["rss_held_mb"] < 200
        rows.append(Row(f"RSS MB with {held['streams']} SSE streams open ({held['completed']} completed)",
                        held["rss_held_mb"], held["rss_before_mb"], "RSS before", "< 200 MB, all served", ok))
    return rows


def memory_rows(report: dict[str, Any]) -> list[Row]:
    search = {row["case"]: row for row in report["search"]}
    floor = search.get("floor FTS global (plain sqlite3, no pruning)")
    rows = [Row(f"insert items/s ({report['memories']:,} memories)", report["insert_items_per_s"],
                report["floor_insert_items_per_s"], "plain sqlite3 insert", "≥ 2,000 items/s",
                report["insert_items_per_s"] >= 2000)]
    for case, target in (("FTS global (service)", True), ("FTS per agent (service)", True),
                         ("FTS per agent (HTTP route, in-process)", False),
                         ("hybrid per agent (service)", False), ("hybrid global (service)", False)):
        if case not in search:
            continue
        row = search[case]
        base = floor if floor is not None and case.startswith("FTS") else None
        rows.append(Row(f"{case} p50 ms", row["p50_ms"], base["p50_ms"] if base else None,
                        "plain sqlite3 FTS p50" if base else "", "≤ 5 ms" if target else "—",
                        row["p50_ms"] <= 5 if target else None))
        rows.append(Row(f"{case} p99 ms", row["p99_ms"], base["p99_ms"] if base else None,
                        "plain sqlite3 FTS p99" if base else "", "≤ 20 ms" if target else "—",
                        row["p99_ms"] <= 20 if target else None))
    return rows


def load_rows(report: dict[str, Any]) -> list[Row]:
    base, mixed = report["baseline_health"], report["mixed"]
    rows = [Row("mixed traffic req/s", mixed["rps"], base["rps"], "/api/health req/s"),
            Row("mixed traffic p50 ms", mixed["p50_ms"], base["p50_ms"], "/api/health p50"),
            Row("mixed traffic p99 ms", mixed["p99_ms"], base["p99_ms"], "/api/health p99")]
    if "message" in mixed["kinds"]:
        rows.append(Row("message (fake provider) p50 ms", mixed["kinds"]["message"]["p50_ms"], base["p50_ms"],
                        "/api/health p50"))
    errors = base["errors"] + mixed["errors"]
    rows.append(Row("errors (5xx, failures; 429s excepted)", errors, target="0", passed=errors == 0))
    return rows


def soak_rows(report: dict[str, Any]) -> list[Row]:
    from soak import FD_SLACK, TASK_SLACK  # bench/soak.py's own slack, so both judge alike

    growth = report["rss_growth_pct"]
    fds_ok = report["fds_idle_after"] <= report["fds_idle_before"] + FD_SLACK
    tasks_ok = report["tasks_idle_after"] <= report["tasks_idle_before"] + TASK_SLACK
    failures = len(report["failures"])
    return [
        Row(f"RSS MB at the end ({report['seconds']:g} s)", report["rss_mb_end"], report["rss_mb_after_warmup"],
            "RSS after warm-up", "growth < 10%", growth < 10),
        Row("open fds when idle again", report["fds_idle_after"], report["fds_idle_before"], "idle after warm-up",
            f"≤ baseline + {FD_SLACK}", fds_ok),
        Row("asyncio tasks when idle again", report["tasks_idle_after"], report["tasks_idle_before"],
            "idle after warm-up", f"≤ baseline + {TASK_SLACK}", tasks_ok),
        Row(f"failed operations (of {report['operations_total']:,})", failures, target="0", passed=failures == 0),
    ]


SUITES: dict[str, Suite] = {
    "kernel": Suite("run.py", "a bare Quart-on-Hypercorn app",
                    {"smoke": ["--quick", "--no-compile", "--loadgen", "python"], "quick": ["--quick"], "full": []},
                    {"smoke": 120, "quick": 600, "full": 1800}),
    "providers": Suite("bench_providers.py", "the official openai client on the same stream",
                       {"smoke": ["--tokens", "300", "--runs", "1"], "quick": ["--tokens", "5000", "--runs", "3"],
                        "full": []},
                       {"smoke": 60, "quick": 300, "full": 900}),
    "agents": Suite("bench_agents.py", "/api/health on the same daemon; a daemon with the default agent only",
                    {"smoke": ["--agents", "40", "--spawns", "10", "--requests", "30", "--repeat", "1"],
                     "quick": ["--agents", "2000", "--spawns", "500", "--requests", "300", "--repeat", "1"],
                     "full": []},
                    {"smoke": 120, "quick": 600, "full": 2400}),
    "runtime": Suite("bench_runtime.py", "the fake provider answering alone; the sequential turn",
                     {"smoke": ["--quick", "--only", "latency", "--turns", "10"], "quick": ["--quick"], "full": []},
                     {"smoke": 120, "quick": 600, "full": 1800}),
    "memory": Suite("bench_memory.py", "plain sqlite3 on the same file",
                    {"smoke": ["--memories", "1000", "--agents", "5", "--queries", "50"],
                     "quick": ["--memories", "20000", "--queries", "500"], "full": []},
                    {"smoke": 120, "quick": 600, "full": 1800}),
    "load": Suite("load.py", "the /api/health phase on the same daemon",
                  {"smoke": ["--workers", "2", "--requests", "10"], "quick": ["--workers", "8", "--requests", "50"],
                   "full": []},
                  {"smoke": 120, "quick": 600, "full": 1200}),
    "soak": SoakSuite("soak.py", "the daemon's own state right after warm-up", {"smoke": [], "quick": [], "full": []},
                      {"smoke": 90, "quick": 120, "full": 180}, seconds={"smoke": 6, "quick": 30, "full": 600}),
}
ROWS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "kernel": kernel_rows, "providers": provider_rows, "agents": agent_rows, "runtime": runtime_rows,
    "memory": memory_rows, "load": load_rows, "soak": soak_rows,
}


def rows_for(name: str, report: dict[str, Any]) -> list[Row]:
    """The table rows of suite ``name`` from its JSON report; a report missing a figure yields a row
    saying so instead of failing the whole table."""
    try:
        return ROWS[name](report)
    except (KeyError, TypeError, ZeroDivisionError) as exc:
        return [Row(f"report unreadable ({type(exc).__name__}: {str(exc)[:80]})", None, target="readable",
                    passed=False)]
