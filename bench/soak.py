"""Soak: a real daemon (every installed plugin, fake LLM provider) under a steady mix of messages,
agent spawns and kills, SSE streams (message stream, log stream) and WebSocket chats that connect
and disconnect, for a fixed time. RSS, open file descriptors and threads are sampled from /proc
every second; asyncio tasks from ``librefang_asyncio_tasks`` on ``GET /api/metrics``.

Pass criteria (also asserted by tests/reliability/test_soak.py on the CI variant):
- RSS after warm-up (the first quarter of the run) grows less than 10% by the end;
- once the load stops, open fds and asyncio tasks return to their post-warm-up baseline (+ a small
  slack for the keep-alive connection of the sampler itself);
- no request fails apart from deliberate 429s.

    uv run python bench/soak.py                  # 60 s (the CI variant)
    uv run python bench/soak.py --seconds 3600   # release variant: one hour
    uv run python bench/soak.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import websockets  # noqa: E402

from tests.fakes.llm_server import FakeLLMServer  # noqa: E402
from tests.reliability.daemon import API_KEY, Daemon, agent_manifest  # noqa: E402

# Hypercorn keeps a keep-alive connection whose client has gone for up to keep_alive_timeout
# (75 s; measured: 3 tasks and 1 socket each, reaped after it), so the last connection of each
# worker may still be there when the idle count is taken. Anything beyond that is a leak.
FD_SLACK = 4 + 2 * 4
TASK_SLACK = 4 + 3 * 4


async def asyncio_tasks(client: httpx.AsyncClient) -> int:
    text = (await client.get("/api/metrics")).text
    for line in text.splitlines():
        if line.startswith("librefang_asyncio_tasks "):
            return int(float(line.split()[1]))
    raise RuntimeError("librefang_asyncio_tasks missing from /api/metrics")


class Soak:
    """One soak run against ``daemon``."""

    def __init__(self, daemon: Daemon, seconds: float, concurrency: int = 4) -> None:
        self.daemon, self.seconds, self.concurrency = daemon, seconds, concurrency
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []
        self.samples: list[dict[str, float]] = []
        self.stop = asyncio.Event()
        self.fd_kinds: list[dict[str, int]] = []

    def fail(self, what: str) -> None:
        if len(self.failures) < 50:
            self.failures.append(what)

    def expect(self, what: str, response: httpx.Response, ok: tuple[int, ...] = (200,)) -> bool:
        if response.status_code in ok:
            self.outcomes[what] += 1
            return True
        if response.status_code == 429:
            self.outcomes["429"] += 1
            return False
        self.fail(f"{what}: {response.status_code} {response.text[:200]}")
        return False

    async def message(self, client: httpx.AsyncClient, agent_id: str) -> None:
        response = await client.post(f"/api/agents/{agent_id}/message", json={"message": f"soak {uuid.uuid4().hex}"})
        self.expect("message", response)

    async def spawn_and_kill(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/api/agents", json={"manifest_toml": agent_manifest(f"soak-{uuid.uuid4().hex[:12]}")})
        if self.expect("spawn", response, (201,)):
            killed = await client.delete(f"/api/agents/{response.json()['agent_id']}")
            self.expect("kill", killed)

    async def message_stream(self, client: httpx.AsyncClient, agent_id: str) -> None:
        async with client.stream("POST", f"/api/agents/{agent_id}/message/stream",
                                 json={"message": "stream please"}) as response:
            if response.status_code != 200:
                self.fail(f"message/stream: {response.status_code}")
                return
            async for _ in response.aiter_bytes():
                pass
        self.outcomes["sse_message"] += 1

    async def log_stream(self, client: httpx.AsyncClient) -> None:
        # Connect, read the first bytes, then hang up mid-stream (the daemon must clean up).
        async with client.stream("GET", "/api/logs/stream") as response:
            if response.status_code != 200:
                self.fail(f"logs/stream: {response.status_code}")
                return
            async for _ in response.aiter_bytes():
                break
        self.outcomes["sse_logs_disconnect"] += 1

    async def websocket(self, agent_id: str, finish: bool) -> None:
        url = self.daemon.url.replace("http://", "ws://") + f"/api/agents/{agent_id}/ws"
        async with websockets.connect(url, subprotocols=[f"bearer.{API_KEY}"], open_timeout=20) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 20))["type"] == "connected"
            await ws.send(json.dumps({"type": "message", "content": "ws soak", "message_id": "s"}))
            if finish:
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if frame["type"] in ("response", "error", "silent_complete"):
                        if frame["type"] == "error":
                            self.fail(f"ws error frame {frame}")
                        break
        # finish=False: the socket closes while the turn runs (the turn must be cancelled, not leaked)
        self.outcomes["ws_complete" if finish else "ws_disconnect_mid_turn"] += 1

    async def worker(self, n: int, agent_id: str) -> None:
        async with self.daemon.async_client(timeout=60) as client:
            step = n
            while not self.stop.is_set():
                kind = step % 6
                step += 1
                try:
                    if kind == 0:
                        await self.message(client, agent_id)
                    elif kind == 1:
                        await self.spawn_and_kill(client)
                    elif kind == 2:
                        await self.message_stream(client, agent_id)
                    elif kind == 3:
                        await self.log_stream(client)
                    else:
                        await self.websocket(agent_id, finish=kind == 4)
                except Exception as exc:  # every failure is reported, none stops the soak
                    self.fail(f"kind {kind}: {exc!r}")

    async def sampler(self, client: httpx.AsyncClient, started: float) -> None:
        while not self.stop.is_set():
            self.samples.append({"t": round(time.monotonic() - started, 1), "rss": self.daemon.rss_bytes(),
                                 "fds": self.daemon.open_fds(), "threads": self.daemon.threads(),
                                 "tasks": await asyncio_tasks(client)})
            try:
                await asyncio.wait_for(self.stop.wait(), 1.0)
            except TimeoutError:
                pass

    async def idle_baseline(self, client: httpx.AsyncClient) -> tuple[int, int]:
        await asyncio.sleep(1.0)
        self.fd_kinds.append(self.daemon.fd_kinds())
        return self.daemon.open_fds(), await asyncio_tasks(client)

    async def load(self, seconds: float, started: float, client: httpx.AsyncClient, agents: list[str]) -> None:
        self.stop = asyncio.Event()
        sampler = asyncio.create_task(self.sampler(client, started))
        workers = [asyncio.create_task(self.worker(n, agents[n % 2])) for n in range(self.concurrency)]
        await asyncio.sleep(seconds)
        self.stop.set()
        await asyncio.gather(*workers)
        await sampler

    async def settle(self, client: httpx.AsyncClient, target: tuple[int, int] | None, wait: float) -> tuple[int, int]:
        """Idle fds and tasks once the load stopped; with a ``target``, wait up to ``wait`` seconds for
        them to come back to it (streams notice a gone client at their next keep-alive write)."""
        deadline = time.monotonic() + wait
        idle = await self.idle_baseline(client)
        while target is not None and time.monotonic() < deadline and (
                idle[0] > target[0] + FD_SLACK or idle[1] > target[1] + TASK_SLACK):
            idle = await self.idle_baseline(client)
        return idle

    async def run(self) -> dict[str, Any]:
        async with self.daemon.async_client(timeout=30) as client:
            agents = []
            for i in range(2):
                created = await client.post("/api/agents", json={"manifest_toml": agent_manifest(f"soak-main-{i}")})
                created.raise_for_status()
                agents.append(created.json()["agent_id"])
            started = time.monotonic()
            # Warm-up (a quarter of the run): pools, caches and lazy imports reach their working size.
            await self.load(self.seconds / 4, started, client, agents)
            idle_before = await self.settle(client, None, 0)
            await self.load(self.seconds * 3 / 4, started, client, agents)
            idle_after = await self.settle(client, idle_before, 30)
        return self.report(idle_before, idle_after)

    def report(self, idle_before: tuple[int, int], idle_after: tuple[int, int]) -> dict[str, Any]:
        warm = [s for s in self.samples if s["t"] >= self.seconds / 4]
        head, tail = warm[: max(3, len(warm) // 10)], warm[-max(3, len(warm) // 10):]
        rss_start = statistics.median(s["rss"] for s in head)
        rss_end = statistics.median(s["rss"] for s in tail)
        return {
            "seconds": self.seconds,
            "concurrency": self.concurrency,
            "operations": dict(self.outcomes),
            "operations_total": sum(v for k, v in self.outcomes.items() if k != "429"),
            "failures": self.failures,
            "rss_mb_after_warmup": round(rss_start / 1_048_576, 1),
            "rss_mb_end": round(rss_end / 1_048_576, 1),
            "rss_mb_peak": round(max(s["rss"] for s in self.samples) / 1_048_576, 1),
            "rss_growth_pct": round(100 * (rss_end - rss_start) / rss_start, 2),
            "fds_idle_before": idle_before[0], "fds_idle_after": idle_after[0],
            "fds_peak": max(s["fds"] for s in self.samples),
            "fd_kinds_idle_before": self.fd_kinds[0], "fd_kinds_idle_after": self.fd_kinds[-1],
            "tasks_idle_before": idle_before[1], "tasks_idle_after": idle_after[1],
            "tasks_peak": max(s["tasks"] for s in self.samples),
            "threads_peak": max(s["threads"] for s in self.samples),
            "samples": len(self.samples),
        }


def verdict(report: dict[str, Any]) -> list[str]:
    """The pass criteria that ``report`` breaks (empty: pass)."""
    broken = []
    if report["failures"]:
        broken.append(f"{len(report['failures'])} failed operations: {report['failures'][:5]}")
    if report["rss_growth_pct"] >= 10:
        broken.append(f"RSS grew {report['rss_growth_pct']}% after warm-up")
    if report["fds_idle_after"] > report["fds_idle_before"] + FD_SLACK:
        broken.append(f"open fds {report['fds_idle_before']} -> {report['fds_idle_after']}")
    if report["tasks_idle_after"] > report["tasks_idle_before"] + TASK_SLACK:
        broken.append(f"asyncio tasks {report['tasks_idle_before']} -> {report['tasks_idle_after']}")
    return broken


def run_soak(seconds: float, home: Path, concurrency: int = 4) -> dict[str, Any]:
    """Start a fake provider and a daemon under ``home``, soak for ``seconds``, stop both."""
    fake = FakeLLMServer().start_in_thread()
    daemon = Daemon(home, fake_llm_url=fake.url)
    try:
        daemon.start()
        return asyncio.run(Soak(daemon, seconds, concurrency).run())
    finally:
        daemon.stop()
        fake.stop_thread()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="librefang-soak-") as tmp:
        report = run_soak(args.seconds, Path(tmp) / "home", args.concurrency)
    broken = verdict(report)
    print(json.dumps(report, indent=2))
    print("PASS" if not broken else "FAIL: " + "; ".join(broken))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if not broken else 1


if __name__ == "__main__":
    sys.exit(main())
