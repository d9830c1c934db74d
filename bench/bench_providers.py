"""Stream-parsing throughput of the LLM drivers, side by side with the official ``openai`` client.

The fake provider server (``tests/fakes/llm_server.py``) runs in its own process and streams the same
scripted reply (``--tokens`` text deltas) to every client; it writes the body in 16 KiB blocks so the
client's parsing, not the server, is what is measured. Each client streams the reply ``--runs``
times (clients interleaved, so drift hits all alike); the median tokens/s is reported.

    uv run python bench/bench_providers.py                 # full run (about a minute)
    uv run python bench/bench_providers.py --tokens 2000 --runs 3 --json out.json

A token here is one text delta (one SSE event / NDJSON line of 4 characters), which is how a
provider streams a token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
MODEL = "bench-model"
API_KEY = "sk-bench-not-a-real-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_fake_server() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.llm_server", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the fake provider server did not start")


class Bench:
    def __init__(self, url: str, tokens: int) -> None:
        self.url = url
        self.tokens = tokens
        self.control = httpx.AsyncClient(base_url=url, timeout=30)
        self.text = "abcd" * tokens  # chunk_size 4: one delta per 4 characters

    async def script(self) -> None:
        reply = {"text": self.text, "chunk_size": 4, "byte_chunk": 16384,
                 "usage": {"input": 10, "output": self.tokens}}
        (await self.control.post("/_fake/scripts", json=reply)).raise_for_status()

    async def timed(self, consume: Callable[[], Awaitable[int]]) -> float:
        await self.script()
        started = time.perf_counter()
        count = await consume()
        elapsed = time.perf_counter() - started
        if count != self.tokens:
            raise RuntimeError(f"expected {self.tokens} deltas, got {count}")
        return count / elapsed


def request() -> Any:
    from librefang_providers.api import CompletionRequest, Message

    return CompletionRequest(model=MODEL, messages=[Message("user", "Count to a big number.")], max_tokens=100_000)


def driver_consumer(driver: Any) -> Callable[[], Awaitable[int]]:
    from librefang_providers.api import TextDelta

    async def consume() -> int:
        count = 0
        async for event in driver.stream(request()):
            if type(event) is TextDelta:
                count += 1
        return count

    return consume


def registry_consumer(registry: Any) -> Callable[[], Awaitable[int]]:
    from librefang_providers.api import TextDelta

    async def consume() -> int:
        count = 0
        async for event in registry.stream(request(), provider="openai", fallback_models=[]):
            if type(event) is TextDelta:
                count += 1
        return count

    return consume


def openai_consumer(client: Any) -> Callable[[], Awaitable[int]]:
    async def consume() -> int:
        count = 0
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Count to a big number."}], stream=True,
            max_tokens=100_000,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                count += 1
        return count

    return consume


async def run(url: str, tokens: int, runs: int) -> dict[str, Any]:
    import openai
    from librefang_providers.api import LLMRegistry, ProvidersConfig
    from librefang_providers.drivers import BUILTIN_FORMATS
    from librefang_providers.types import DriverConfig

    bases = {"openai": url + "/v1", "anthropic": url, "gemini": url + "/v1beta", "ollama": url}
    drivers = {fmt: cls(DriverConfig(provider=fmt, base_url=bases[fmt], api_key=API_KEY))
               for fmt, cls in BUILTIN_FORMATS.items()}
    os.environ["OPENAI_API_KEY"] = API_KEY
    registry = LLMRegistry(ProvidersConfig(provider_urls={"openai": bases["openai"]}))
    registry.register("openai", BUILTIN_FORMATS["openai"])
    client = openai.AsyncOpenAI(base_url=bases["openai"], api_key=API_KEY, max_retries=0)
    consumers: dict[str, Callable[[], Awaitable[int]]] = {
        "openai (official client)": openai_consumer(client),
        "librefang OpenAIDriver": driver_consumer(drivers["openai"]),
        "librefang registry.stream (openai)": registry_consumer(registry),
        "librefang AnthropicDriver": driver_consumer(drivers["anthropic"]),
        "librefang GeminiDriver": driver_consumer(drivers["gemini"]),
        "librefang OllamaDriver": driver_consumer(drivers["ollama"]),
    }
    bench = Bench(url, tokens)
    samples: dict[str, list[float]] = {name: [] for name in consumers}
    try:
        for consume in consumers.values():  # warm-up: connections, imports, caches
            await bench.timed(consume)
        for _ in range(runs):
            for name, consume in consumers.items():
                samples[name].append(await bench.timed(consume))
    finally:
        await client.close()
        await registry.aclose()
        for driver in drivers.values():
            await driver.aclose()
        await bench.control.aclose()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    baseline = medians["openai (official client)"]
    return {
        "tokens_per_stream": tokens,
        "runs": runs,
        "python": platform.python_version(),
        "openai_client_version": openai.__version__,
        "httpx_version": httpx.__version__,
        "cpus": os.cpu_count(),
        "results": {name: {"median_tokens_per_s": round(medians[name]),
                           "min": round(min(samples[name])), "max": round(max(samples[name])),
                           "ratio_vs_openai_client": round(medians[name] / baseline, 2)}
                    for name in consumers},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=20_000, help="text deltas per streamed reply")
    parser.add_argument("--runs", type=int, default=7, help="measured streams per client")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    proc, url = start_fake_server()
    try:
        report = asyncio.run(run(url, args.tokens, args.runs))
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"{args.tokens} deltas per stream, median of {args.runs} runs, fake server in its own process")
    print(f"{'client':<38} {'tokens/s':>10} {'min':>10} {'max':>10} {'vs openai':>10}")
    for name, row in report["results"].items():
        print(f"{name:<38} {row['median_tokens_per_s']:>10,} {row['min']:>10,} {row['max']:>10,} "
              f"{row['ratio_vs_openai_client']:>9.2f}x")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    ratio = report["results"]["librefang OpenAIDriver"]["ratio_vs_openai_client"]
    print(f"target: OpenAIDriver / official client >= 1.0 -> {ratio:.2f} ({'met' if ratio >= 1.0 else 'NOT met'})")
    return 0 if ratio >= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
