"""Benchmark of the agent registry against a real daemon process over HTTP.

Measures, in one run:
1. spawn throughput: ``POST /api/agents`` (a small TOML manifest each), ``--concurrency`` clients,
   with the daemon's CPU per spawn next to its CPU per ``GET /api/health`` sent the same way right
   after (the ratio is what to compare across runs on a shared machine);
2. ``GET /api/agents`` latency with ``--agents`` registered (default 10,000): the first page
   (default page size) and a filtered query (``q`` + ``status``), p50/p99 over sequential requests,
   next to ``GET /api/health`` measured the same way as a baseline of the HTTP stack;
3. RSS per idle agent: the daemon restarted on the home holding all the agents versus restarted on
   a home holding only the default agent, both after the same warm-up requests.

The daemon runs as ``python -m librefang start --foreground`` with only the agents plugin
(``LIBREFANG_LOAD_PLUGINS=agents``), on a fresh temporary home.

Run: ``uv run python bench/bench_agents.py`` (``--agents 2000 --spawns 500`` for a quick look).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

MANIFEST = 'name = "{name}"\ndescription = "benchmark agent {i}"\nprofile = "minimal"\n[model]\nmax_tokens = 1024\n'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Daemon:
    """One ``librefang start --foreground`` process on a home."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        env = dict(os.environ, LIBREFANG_HOME=str(home), LIBREFANG_LOAD_PLUGINS="agents",
                   LIBREFANG_VAULT_KEY="00" * 32)
        env.pop("LIBREFANG_API_KEY", None)
        self.log = open(home / "bench-daemon.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "librefang", "start", "--foreground", "--home", str(home),
             "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}; see {home / 'bench-daemon.log'}")
            try:
                if httpx.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("daemon did not answer within 60 s")

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class RawClient:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams: far cheaper per request than an
    HTTP library, so the load generator takes little CPU from the daemon on a small machine."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode("latin-1") + b"\r\n" + body)
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {n.strip().lower(): v.strip() for n, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "0"))
        payload = await self.reader.readexactly(length) if length else b""
        if headers.get("connection", "").lower() == "close":  # Hypercorn ends a connection after N requests
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def spawn_many(port: int, names: list[str], concurrency: int) -> tuple[float, int]:
    """Spawn one agent per name over ``concurrency`` keep-alive connections; (seconds, failures)."""
    bodies = [json.dumps({"manifest_toml": MANIFEST.format(name=n, i=i)}).encode() for i, n in enumerate(names)]
    pending = iter(bodies)
    failures = 0

    async def worker() -> None:
        nonlocal failures
        client = RawClient(port)
        try:
            for body in pending:
                status, _ = await client.request("POST", "/api/agents", body)
                failures += status != 201
        finally:
            client.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, failures


async def get_many(port: int, path: str, count: int, concurrency: int) -> float:
    """``count`` GETs over ``concurrency`` keep-alive connections (the spawn's load shape); seconds."""
    pending = iter(range(count))

    async def worker() -> None:
        client = RawClient(port)
        try:
            for _ in pending:
                status, _ = await client.request("GET", path)
                if status != 200:
                    raise RuntimeError(f"GET {path} answered {status}")
        finally:
            client.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def bulk_fill(url: str, prefix: str, count: int) -> None:
    """Register ``count`` agents quickly through ``POST /api/agents/bulk`` (50 per call)."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        sem = asyncio.Semaphore(4)

        async def batch(start: int) -> None:
            agents = [{"manifest_toml": MANIFEST.format(name=f"{prefix}-{i:05d}", i=i)}
                      for i in range(start, min(start + 50, count))]
            async with sem:
                body = (await client.post("/api/agents/bulk", json={"agents": agents})).json()
            if body["failed"]:
                raise RuntimeError(f"bulk spawn failed: {body['results'][0]}")

        await asyncio.gather(*(batch(s) for s in range(0, count, 50)))


def latencies(port: int, path: str, requests: int) -> dict[str, float]:
    """Sequential GETs on one keep-alive connection: p50/p99/mean in ms."""

    async def run() -> list[float]:
        client = RawClient(port)
        times = []
        try:
            for _ in range(min(50, requests)):  # warm-up
                await client.request("GET", path)
            for _ in range(requests):
                started = time.perf_counter()
                status, _ = await client.request("GET", path)
                times.append((time.perf_counter() - started) * 1000)
                if status != 200:
                    raise RuntimeError(f"GET {path} answered {status}")
        finally:
            client.close()
        return times

    times = sorted(asyncio.run(run()))
    return {
        "p50_ms": round(statistics.median(times), 3),
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
        "mean_ms": round(statistics.fmean(times), 3),
        "requests": requests,
    }


def warm(port: int) -> None:
    for path in ("/api/agents", "/api/agents?q=bench&status=running", "/api/agents?limit=500", "/api/health"):
        latencies(port, path, 100)


def cpu_ms(daemon: Daemon, fn: Any) -> tuple[Any, float]:
    """Run ``fn()`` and return its result and the daemon's CPU time meanwhile (ms)."""
    proc = psutil.Process(daemon.proc.pid)
    before = sum(proc.cpu_times()[:2])
    result = fn()
    return result, (sum(proc.cpu_times()[:2]) - before) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=10_000, help="agents registered for the list benchmark")
    parser.add_argument("--spawns", type=int, default=2_000, help="agents spawned for the throughput figure")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2_000, help="GETs per latency figure")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of each measurement; the best and the median round are reported "
                             "(a shared machine's neighbours make single rounds noisy)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-agents-"))
    results: dict[str, Any] = {"agents": args.agents, "spawns": args.spawns, "concurrency": args.concurrency,
                               "cpus": os.cpu_count(), "loadavg_start": round(os.getloadavg()[0], 2)}
    filtered = "/api/agents?q=bench-00042&status=running"
    try:
        home = root / "home"
        home.mkdir()
        daemon = Daemon(home)
        try:
            rounds = []
            for r in range(args.repeat):
                names = [f"spawn-{r}-{i:05d}" for i in range(args.spawns)]
                (seconds, failures), cpu = cpu_ms(
                    daemon, lambda n=names: asyncio.run(spawn_many(daemon.port, n, args.concurrency)))
                # Baseline of the same round: /api/health with the same connections (HTTP stack + edge).
                health_s, health_cpu = cpu_ms(daemon, lambda: asyncio.run(
                    get_many(daemon.port, "/api/health", args.spawns, args.concurrency)))
                rounds.append({"agents": args.spawns, "seconds": round(seconds, 2),
                               "agents_per_s": round(args.spawns / seconds, 1), "failures": failures,
                               "daemon_cpu_ms_per_spawn": round(cpu / args.spawns, 2),
                               "health_per_s": round(args.spawns / health_s, 1),
                               "health_daemon_cpu_ms": round(health_cpu / args.spawns, 2),
                               "cpu_ratio_to_health": round(cpu / max(health_cpu, 1e-9), 2)})
                print(f"spawn round {r}: {rounds[-1]}", flush=True)
            rates = sorted(r["agents_per_s"] for r in rounds)
            results["spawn"] = {"best": max(rounds, key=lambda r: r["agents_per_s"]),
                                "median_agents_per_s": statistics.median(rates), "rounds": rounds}
            remaining = args.agents - args.spawns * args.repeat - 1  # minus the default agent
            if remaining > 0:
                asyncio.run(bulk_fill(daemon.url, "bench", remaining))
            results["registered"] = httpx.get(daemon.url + "/api/agents?limit=0").json()["total"]
        finally:
            daemon.stop()
        empty = root / "empty"
        empty.mkdir()
        Daemon(empty).stop()  # first start migrates and seeds; measure a restart, like the full home
        # Latency and memory of freshly restarted daemons: all the agents vs the default agent only.
        for key, folder in (("with_agents", home), ("default_only", empty)):
            daemon = Daemon(folder)
            try:
                warm(daemon.port)
                figures: dict[str, Any] = {}
                for label, path, count in (("list_first_page", "/api/agents", args.requests),
                                           ("list_filtered", filtered, args.requests),
                                           ("list_page_500", "/api/agents?limit=500", max(200, args.requests // 10)),
                                           ("health_baseline", "/api/health", args.requests)):
                    rounds = []
                    for _ in range(args.repeat if key == "with_agents" else 1):
                        figure, cpu = cpu_ms(daemon, lambda p=path, c=count, port=daemon.port: latencies(port, p, c))
                        figure["daemon_cpu_ms_per_request"] = round(cpu / (count + min(50, count)), 3)
                        rounds.append(figure)
                    figures[label] = {"best": min(rounds, key=lambda f: f["p99_ms"]),
                                      "median_p50_ms": statistics.median(f["p50_ms"] for f in rounds),
                                      "median_p99_ms": statistics.median(f["p99_ms"] for f in rounds),
                                      "rounds": rounds}
                results.setdefault("rss_bytes", {})[key] = daemon.rss()
                if key == "with_agents":
                    results.update(figures)
                    for label, figure in figures.items():
                        print(f"{label}: best {figure['best']} median p50 {figure['median_p50_ms']} "
                              f"p99 {figure['median_p99_ms']}", flush=True)
            finally:
                daemon.stop()
        rss = results.pop("rss_bytes")
        per_agent = (rss["with_agents"] - rss["default_only"]) / max(1, results["registered"] - 1)
        results["rss"] = {"with_agents_mb": round(rss["with_agents"] / 2**20, 1),
                          "default_only_mb": round(rss["default_only"] / 2**20, 1),
                          "bytes_per_idle_agent": round(per_agent)}
        print(f"rss: {results['rss']}", flush=True)
        results["loadavg_end"] = round(os.getloadavg()[0], 2)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
