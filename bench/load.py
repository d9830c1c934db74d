"""Load: bounded request loops from this process against a real daemon (its own process, every
installed plugin, providers aimed at the fake LLM server) on 127.0.0.1, at a fixed concurrency.

Two phases in the same run, same daemon, same client:
1. baseline: ``GET /api/health`` only (the cheapest authenticated-free route);
2. mixed: reads (agent list, agent detail, status, session view) and writes (agent spawn + kill,
   config set, memory KV put when the memory plugin is installed) and messages against the fake
   provider, in fixed proportions.

For each phase and each request kind: requests, throughput, p50/p99 latency and errors (every
status outside 2xx apart from deliberate 429s counts as an error; the run fails on any).

    uv run python bench/load.py                         # 8 workers x 150 mixed requests
    uv run python bench/load.py --workers 16 --requests 500 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.fakes.llm_server import FakeLLMServer  # noqa: E402
from tests.reliability.daemon import Daemon, agent_manifest  # noqa: E402

# Mixed phase: kind -> weight (out of 20 requests).
MIX = {"list": 4, "detail": 4, "status": 2, "session": 2, "message": 3, "spawn_kill": 2, "config_set": 1, "kv_put": 2}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


class Load:
    def __init__(self, daemon: Daemon, workers: int, requests: int) -> None:
        self.daemon, self.workers, self.requests = daemon, workers, requests
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.limited: dict[str, int] = defaultdict(int)
        self.kv = True

    async def timed(self, kind: str, call: Any) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = await call
        except httpx.HTTPError as exc:
            self.errors[kind].append(repr(exc)[:200])
            return None
        self.latency[kind].append(time.perf_counter() - started)
        if response.status_code == 429:
            self.limited[kind] += 1
        elif not 200 <= response.status_code < 300:
            self.errors[kind].append(f"{response.status_code} {response.text[:200]}")
        return response

    async def one(self, client: httpx.AsyncClient, kind: str, agent_id: str, n: int) -> None:
        if kind == "health":
            await self.timed(kind, client.get("/api/health"))
        elif kind == "list":
            await self.timed(kind, client.get("/api/agents", params={"limit": 20}))
        elif kind == "detail":
            await self.timed(kind, client.get(f"/api/agents/{agent_id}"))
        elif kind == "status":
            await self.timed(kind, client.get("/api/status"))
        elif kind == "session":
            await self.timed(kind, client.get(f"/api/agents/{agent_id}/session"))
        elif kind == "message":
            await self.timed(kind, client.post(f"/api/agents/{agent_id}/message", json={"message": f"load {n}"}))
        elif kind == "spawn_kill":
            created = await self.timed("spawn", client.post(
                "/api/agents", json={"manifest_toml": agent_manifest(f"load-{uuid.uuid4().hex[:12]}")}))
            if created is not None and created.status_code == 201:
                await self.timed("kill", client.delete(f"/api/agents/{created.json()['agent_id']}"))
        elif kind == "config_set":
            await self.timed(kind, client.post("/api/config/set",
                                               json={"path": "audit.retention_days", "value": 30 + n % 60}))
        elif kind == "kv_put" and self.kv:
            response = await self.timed(kind, client.put(f"/api/memory/agents/{agent_id}/kv/load{n % 10}",
                                                         json={"value": {"n": n}}))
            if response is not None and response.status_code == 404 and "no route" in response.text:
                self.kv = False  # memory plugin not installed: this kind is skipped
                self.errors[kind].clear()
                self.latency.pop(kind, None)

    async def phase(self, kinds: list[str], agent_ids: list[str]) -> float:
        """Every worker sends ``self.requests`` requests cycling through ``kinds``; returns seconds."""

        async def worker(w: int) -> None:
            async with self.daemon.async_client(timeout=60) as client:
                for i in range(self.requests):
                    await self.one(client, kinds[(i + w) % len(kinds)], agent_ids[w % len(agent_ids)], w * 100_000 + i)

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(self.workers)))
        return time.perf_counter() - started

    async def run(self) -> dict[str, Any]:
        async with self.daemon.async_client(timeout=60) as client:
            agent_ids = []
            for i in range(4):
                created = await client.post("/api/agents", json={"manifest_toml": agent_manifest(f"load-main-{i}")})
                created.raise_for_status()
                agent_ids.append(created.json()["agent_id"])
        report: dict[str, Any] = {"workers": self.workers, "requests_per_worker": self.requests}
        for name, kinds in [("baseline_health", ["health"]),
                            ("mixed", [k for k, weight in MIX.items() for _ in range(weight)])]:
            self.latency.clear()
            self.errors.clear()
            self.limited.clear()
            seconds = await self.phase(kinds, agent_ids)
            rows = {}
            for kind, values in sorted(self.latency.items()):
                rows[kind] = {"requests": len(values), "p50_ms": round(1000 * percentile(values, 50), 1),
                              "p99_ms": round(1000 * percentile(values, 99), 1),
                              "errors": len(self.errors.get(kind, [])), "rate_limited": self.limited.get(kind, 0)}
            every = [v for values in self.latency.values() for v in values]
            report[name] = {
                "seconds": round(seconds, 2), "requests": len(every), "rps": round(len(every) / seconds, 1),
                "p50_ms": round(1000 * percentile(every, 50), 1), "p99_ms": round(1000 * percentile(every, 99), 1),
                "errors": sum(len(v) for v in self.errors.values()), "kinds": rows,
                "error_samples": [e for v in self.errors.values() for e in v][:10],
            }
        return report


def run_load(home: Path, workers: int, requests: int) -> dict[str, Any]:
    fake = FakeLLMServer().start_in_thread()
    daemon = Daemon(home, fake_llm_url=fake.url)
    try:
        daemon.start()
        return asyncio.run(Load(daemon, workers, requests).run())
    finally:
        daemon.stop()
        fake.stop_thread()


def table(report: dict[str, Any]) -> str:
    base = report["baseline_health"]
    lines = [f"workers={report['workers']} requests/worker={report['requests_per_worker']}",
             "| phase / kind | requests | req/s | p50 ms | p99 ms | errors | 429 | p50 vs baseline |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in ("baseline_health", "mixed"):
        phase = report[name]
        ratio = phase["p50_ms"] / base["p50_ms"] if base["p50_ms"] else 0
        lines.append(f"| **{name}** | {phase['requests']} | {phase['rps']} | {phase['p50_ms']} | {phase['p99_ms']} | "
                     f"{phase['errors']} | | {ratio:.1f}x |")
        if name == "mixed":
            for kind, row in phase["kinds"].items():
                ratio = row["p50_ms"] / base["p50_ms"] if base["p50_ms"] else 0
                lines.append(f"| {kind} | {row['requests']} | | {row['p50_ms']} | {row['p99_ms']} | {row['errors']} | "
                             f"{row['rate_limited']} | {ratio:.1f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--requests", type=int, default=150, help="requests per worker and phase")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="librefang-load-") as tmp:
        report = run_load(Path(tmp) / "home", args.workers, args.requests)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    errors = report["baseline_health"]["errors"] + report["mixed"]["errors"]
    if errors:
        print("FAIL: errors " + json.dumps(report["mixed"]["error_samples"] + report["baseline_health"]["error_samples"]))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
