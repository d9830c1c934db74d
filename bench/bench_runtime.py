"""Benchmark of the agent runtime against a real daemon process and a zero-latency fake provider.

Measures, in one run:
1. turn latency, request to last byte, sequential: ``POST /api/agents/{id}/message`` with no tool
   call and with one tool call (``system_time``), p50/p99, next to the fake provider answering the
   same streamed call directly (the part of a turn that is not the daemon's);
2. turns/s with ``--sessions`` concurrent sessions (default 32, one agent each);
3. SSE relay throughput: one ``/message/stream`` of ``--tokens`` text deltas, tokens/s at the client;
4. ``--streams`` concurrent SSE streams held open (default 500, one pinned session each): the
   daemon's RSS while all are open, against its RSS before.

The daemon runs as ``python -m librefang start --foreground`` with the providers, agents and runtime
plugins on a fresh temporary home; the fake provider (``tests/fakes/llm_server.py``) runs as its own
process. Run: ``uv run python bench/bench_runtime.py`` (``--quick`` for a short look).
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
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-bench-0123456789abcdef"
MANIFEST = 'name = "{name}"\n[model]\nprovider = "openai"\nmodel = "fake-model"\nsystem_prompt = "Be brief."\n'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (all threads)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer within 60 s")


class Processes:
    """The fake provider and the daemon, each its own process."""

    def __init__(self, home: Path, keepalive: float, plugins: str = "providers,agents,runtime") -> None:
        self.fake_port, self.port = free_port(), free_port()
        self.fake_url = f"http://127.0.0.1:{self.fake_port}"
        self.url = f"http://127.0.0.1:{self.port}"
        (home / "config.toml").write_text(
            "[agents]\nspawn_default_agent = false\n"
            f'[providers]\nprovider_urls = {{ openai = "{self.fake_url}/v1" }}\n'
            "max_connections = 2000\n"  # 500 concurrent streams need 500 provider connections
            "[compaction]\nthreshold_messages = 0\n"
            f"[runtime]\nsse_keepalive_secs = {keepalive}\n"
        )
        env = dict(os.environ, LIBREFANG_HOME=str(home), LIBREFANG_VAULT_KEY="00" * 32, OPENAI_API_KEY=KEY,
                   LIBREFANG_LOAD_PLUGINS=plugins)
        env.pop("LIBREFANG_API_KEY", None)
        if plugins == "all":  # every installed plugin (memory recall, budget, taint, approvals... run per turn)
            env.pop("LIBREFANG_LOAD_PLUGINS")
        self.log = open(home / "bench.log", "ab")  # noqa: SIM115 - closed in stop()
        self.fake = subprocess.Popen([sys.executable, "-m", "tests.fakes.llm_server", "--port", str(self.fake_port)],
                                     cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(self.fake_url + "/v1/models", self.fake, "fake provider")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "librefang", "start", "--foreground", "--home", str(home), "--host", "127.0.0.1",
             "--port", str(self.port)], env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        wait_http(self.url + "/api/health", self.daemon, "daemon")

    def stop(self) -> None:
        for proc in (self.daemon, self.fake):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.log.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_ms": round(percentile(values, 0.5) * 1000, 3),
            "p99_ms": round(percentile(values, 0.99) * 1000, 3), "mean_ms": round(statistics.fmean(values) * 1000, 3),
            "samples": values}


def pooled(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of the rounds of a phase: percentiles over every sample, CPU per call over all."""
    out = summary([t for part in parts for t in part["samples"]])
    for key in ("daemon_cpu_ms_per_turn", "daemon_cpu_ms_per_request"):
        if key in parts[0]:
            out[key] = round(statistics.fmean(part[key] for part in parts), 3)
    out["rounds_p50_ms"] = [part["p50_ms"] for part in parts]
    return out


async def spawn(http: httpx.AsyncClient, name: str) -> str:
    response = await http.post("/api/agents", json={"manifest_toml": MANIFEST.format(name=name)})
    response.raise_for_status()
    return response.json()["agent_id"]


async def script(fake: httpx.AsyncClient, *scripts: dict[str, Any]) -> None:
    (await fake.post("/_fake/scripts", json=list(scripts))).raise_for_status()


class Client:
    """A cheap keep-alive JSON client for the latency and throughput phases (aiohttp: the load generator
    shares the machine with the daemon, and httpx costs the client about 2 ms of CPU per request)."""

    def __init__(self, base: str, connections: int) -> None:
        import aiohttp  # the providers plugin's dependency: installed with the workspace

        self.base = base
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections), timeout=aiohttp.ClientTimeout(total=120),
            cookie_jar=aiohttp.DummyCookieJar())

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """Status and whole body (read to the last byte) of one request."""
        async with self.session.request(method, self.base + path, json=body) as response:
            return response.status, await response.read()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()


async def spawn_with(client: Client, name: str) -> str:
    status, body = await client.call("POST", "/api/agents", {"manifest_toml": MANIFEST.format(name=name)})
    assert status in (200, 201), body
    return json.loads(body)["agent_id"]


async def turn_latency(procs: Processes, turns: int, with_tool: bool, session_turns: int = 0,
                       label: str = "") -> dict[str, float]:
    """Sequential turns of one agent. ``session_turns`` > 0: a new session every that many turns, so the
    history the model is sent stays as short as with the default compaction (30 messages) and the
    provider parses a request of the size the provider-alone baseline sends; 0: one session for all."""
    async with Client(procs.url, 4) as http, Client(procs.fake_url, 2) as fake:
        agent = await spawn_with(http, f"latency-{'tool' if with_tool else 'text'}{label}")
        times = []
        cpu_start = 0.0
        session = str(uuid.uuid4())
        for i in range(turns + 10):
            if session_turns and i % session_turns == 0:
                session = str(uuid.uuid4())
            if i == 10:
                cpu_start = cpu_seconds(procs.daemon.pid)
            if with_tool:
                status, _ = await fake.call("POST", "/_fake/scripts", [
                    {"tool_calls": [{"name": "system_time", "arguments": {}, "id": f"t{i}"}]}, {"text": "It is now."}])
                assert status == 200
            started = time.perf_counter()
            status, body = await http.call("POST", f"/api/agents/{agent}/message",
                                           {"message": f"hello {i}", "session_id": session})
            elapsed = time.perf_counter() - started
            assert status == 200, body
            if i >= 10:  # the first turns warm caches and connections
                times.append(elapsed)
        cpu = cpu_seconds(procs.daemon.pid) - cpu_start
        return {**summary(times), "daemon_cpu_ms_per_turn": round(cpu / turns * 1000, 3)}


async def bare_request(procs: Processes, calls: int) -> dict[str, float]:
    """``GET /api/health`` on the same daemon and connection setup: the floor of any request (edge,
    Quart, Hypercorn), to read the turn figures against when the machine is loaded."""
    async with Client(procs.url, 4) as http:
        times = []
        cpu_start = 0.0
        for i in range(calls + 10):
            if i == 10:
                cpu_start = cpu_seconds(procs.daemon.pid)
            started = time.perf_counter()
            status, body = await http.call("GET", "/api/health")
            elapsed = time.perf_counter() - started
            assert status == 200, body
            if i >= 10:
                times.append(elapsed)
        cpu = cpu_seconds(procs.daemon.pid) - cpu_start
        return {**summary(times), "daemon_cpu_ms_per_request": round(cpu / calls * 1000, 3)}


async def provider_alone(procs: Processes, calls: int) -> dict[str, float]:
    """The fake provider answering one streamed chat completion directly (what a turn cannot avoid),
    read to the last byte by the same client as the turns."""
    body = {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    async with Client(procs.fake_url, 2) as fake:
        times = []
        for i in range(calls + 10):
            started = time.perf_counter()
            status, _ = await fake.call("POST", "/v1/chat/completions", body)
            assert status == 200
            if i >= 10:
                times.append(time.perf_counter() - started)
        return summary(times)


async def throughput(procs: Processes, sessions: int, turns_each: int) -> dict[str, float]:
    async with Client(procs.url, sessions + 4) as http:
        agents = [await spawn_with(http, f"tp-{i}") for i in range(sessions)]

        async def worker(agent: str) -> int:
            done = 0
            for i in range(turns_each):
                status, _ = await http.call("POST", f"/api/agents/{agent}/message", {"message": f"turn {i}"})
                done += status == 200
            return done

        started = time.perf_counter()
        cpu_start = cpu_seconds(procs.daemon.pid)
        done = sum(await asyncio.gather(*(worker(a) for a in agents)))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(procs.daemon.pid) - cpu_start
        return {"sessions": sessions, "turns": done, "seconds": round(elapsed, 3), "turns_per_s": round(done / elapsed, 1),
                "daemon_cpu_ms_per_turn": round(cpu / max(done, 1) * 1000, 3),
                "turns_per_daemon_cpu_second": round(done / cpu, 1) if cpu else None}


async def sse_relay(procs: Processes, tokens: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=procs.url, timeout=300) as http, \
            httpx.AsyncClient(base_url=procs.fake_url, timeout=60) as fake:
        agent = await spawn(http, "relay")
        await script(fake, {"text": "abcd" * tokens, "chunk_size": 4})
        chunks = 0
        started = first = time.perf_counter()
        async with http.stream("POST", f"/api/agents/{agent}/message/stream", json={"message": "go"}) as response:
            async for line in response.aiter_lines():
                if line.startswith("event: chunk"):
                    if chunks == 0:
                        first = time.perf_counter()
                    chunks += 1
        elapsed = time.perf_counter() - first
        return {"tokens": chunks, "seconds": round(elapsed, 3), "tokens_per_s": round(chunks / elapsed, 1),
                "first_token_ms": round((first - started) * 1000, 3)}


async def held_streams(procs: Processes, streams: int, hold: float) -> dict[str, float]:
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=streams + 10)
    async with httpx.AsyncClient(base_url=procs.url, timeout=300, limits=limits) as http, \
            httpx.AsyncClient(base_url=procs.fake_url, timeout=60) as fake:
        agent = await spawn(http, "held")
        await asyncio.sleep(1)
        before = rss_mb(procs.daemon.pid)
        # Each reply: 10 deltas spread over ``hold`` seconds, so every stream stays open meanwhile.
        await script(fake, *[{"text": "x" * 40, "chunk_size": 4, "delay": hold / 10} for _ in range(streams)])
        opened = asyncio.Event()
        started = 0
        errors: dict[str, int] = {}

        async def one() -> int:
            nonlocal started
            chunks = 0
            body = {"message": "hold", "session_id": str(uuid.uuid4())}
            async with http.stream("POST", f"/api/agents/{agent}/message/stream", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {\"error\""):
                        errors[line[6:][:200]] = errors.get(line[6:][:200], 0) + 1
                    if line.startswith("event: chunk"):
                        if chunks == 0:
                            started += 1
                            if started == streams:
                                opened.set()
                        chunks += 1
            return chunks

        tasks = [asyncio.ensure_future(one()) for _ in range(streams)]
        try:
            await asyncio.wait_for(opened.wait(), timeout=max(60.0, hold * 4))
            peak = rss_mb(procs.daemon.pid)
            all_open = True
        except TimeoutError:
            peak, all_open = rss_mb(procs.daemon.pid), False
        results = await asyncio.gather(*tasks, return_exceptions=True)
        complete = sum(1 for r in results if r == 10)
        failures: dict[str, int] = {}
        for r in results:
            if isinstance(r, BaseException):
                failures[type(r).__name__] = failures.get(type(r).__name__, 0) + 1
            elif r != 10:
                failures[f"{r} chunks"] = failures.get(f"{r} chunks", 0) + 1
        return {"failures": failures, "errors": errors, "streams": streams, "all_open_at_once": all_open, "streamed_first_token": started,
                "completed": complete, "rss_before_mb": round(before, 1), "rss_held_mb": round(peak, 1)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="lf-bench-runtime-"))
    procs = Processes(home, keepalive=15, plugins=args.plugins)
    try:
        report: dict[str, Any] = {"plugins": args.plugins, "idle_rss_mb": round(rss_mb(procs.daemon.pid), 1),
                                  "rounds": args.rounds}
        parts = set(args.only.split(",")) if args.only else {"latency", "throughput", "sse", "streams"}
        spy = None
        if args.profile:  # collapsed stacks of the daemon (all threads) while the measurements run
            spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(procs.daemon.pid),  # noqa: ASYNC220
                                    "--rate", "250", "--format", "raw", "--gil", "-o", str(args.profile)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.sleep(1)
        if "latency" in parts:
            # Rounds: every phase runs a share of its calls in each round, so the baseline and the turns
            # are measured in alternation, under the same (shared, noisy) machine conditions.
            per = max(1, args.turns // args.rounds)
            rounds: dict[str, list[dict[str, Any]]] = {}
            for r in range(args.rounds):
                phases = {
                    "provider_alone": provider_alone(procs, per),
                    "bare_request": bare_request(procs, per),
                    "turn_no_tool": turn_latency(procs, per, False, args.session_turns, f"-{r}"),
                    "turn_one_tool": turn_latency(procs, per, True, args.session_turns, f"-{r}"),
                    # The same turns in ONE session whose history grows to 2 x turns messages (compaction
                    # off): what an unbounded history adds (a longer prompt to build, send and parse).
                    "turn_no_tool_long_session": turn_latency(procs, per, False, 0, f"-long-{r}"),
                }
                for name, phase in phases.items():
                    rounds.setdefault(name, []).append(await phase)
            for name, parts_of in rounds.items():
                report[name] = pooled(parts_of)
        if "throughput" in parts:
            report["throughput"] = await throughput(procs, args.sessions, args.turns_each)
        if "sse" in parts:
            report["sse_relay"] = await sse_relay(procs, args.tokens)
        if "streams" in parts:
            report["held_streams"] = await held_streams(procs, args.streams, args.hold)
        if "latency" in parts:
            floor = report["bare_request"]["daemon_cpu_ms_per_request"] or 1e-9
            report["turn_cpu_in_bare_requests"] = {
                "no_tool": round(report["turn_no_tool"]["daemon_cpu_ms_per_turn"] / floor, 1),
                "one_tool": round(report["turn_one_tool"]["daemon_cpu_ms_per_turn"] / floor, 1)}
        report["load_average"] = os.getloadavg()
        for value in report.values():
            if isinstance(value, dict):
                value.pop("samples", None)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        return report
    finally:
        procs.stop()
        shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=300, help="sequential turns per latency measurement")
    parser.add_argument("--rounds", type=int, default=3, help="latency phases: alternate baseline and turns in N rounds")
    parser.add_argument("--session-turns", type=int, default=10,
                        help="latency phases: a new session every N turns (0: one session for all turns)")
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--turns-each", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--hold", type=float, default=10.0, help="seconds each held stream lasts")
    parser.add_argument("--quick", action="store_true", help="small numbers for a fast look")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--only", default="", help="comma list of latency,throughput,sse,streams")
    parser.add_argument("--plugins", default="providers,agents,runtime",
                        help="plugins the daemon loads (comma list), or 'all' for every installed one")
    parser.add_argument("--profile", type=Path, help="record the daemon with py-spy into this SVG (py-spy installed)")
    args = parser.parse_args(argv)
    if args.quick:
        args.turns, args.turns_each, args.tokens, args.streams, args.hold = 50, 5, 2000, 50, 3.0
    report = asyncio.run(main_async(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
