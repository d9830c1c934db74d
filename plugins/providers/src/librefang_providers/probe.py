"""Reachability probes of local model servers (Ollama, vLLM, LM Studio, llama.cpp, ...).

Ollama answers ``GET /api/tags``; the OpenAI-compatible servers answer ``GET {base}/models``.
Results are cached per base URL for a short time, so listing providers stays fast when a local
server is off (a refused connection returns at once; a silent host costs at most the timeout).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - imported in probe(): start-up does not need httpx
    import httpx

MAX_DISCOVERED = 200
MAX_PROBE_BYTES = 1024 * 1024
CACHE_TTL_SECS = 60.0
MAX_CACHE_ENTRIES = 256


@dataclass
class ProbeResult:
    """What one probe found."""

    url: str
    reachable: bool
    latency_ms: int
    models: list[str] = field(default_factory=list)
    error: str | None = None
    probed_at: str = ""
    checked: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reachable": self.reachable, "latency_ms": self.latency_ms, "last_tested": self.probed_at}
        if self.models:
            out["discovered_models"] = self.models
        if self.error:
            out["error_message"] = self.error
        return out


def probe_url(base_url: str, api_format: str) -> str:
    """The listing endpoint of a local server at ``base_url``."""
    base = base_url.rstrip("/")
    if api_format == "ollama":
        return base.removesuffix("/v1") + "/api/tags"
    return base + "/models"


def _model_names(body: Any) -> list[str]:
    names: list[str] = []
    if isinstance(body, dict):
        if isinstance(body.get("models"), list):  # Ollama /api/tags
            names = [m.get("name") or m.get("model") for m in body["models"] if isinstance(m, dict)]
        elif isinstance(body.get("data"), list):  # OpenAI-compatible /models
            names = [m.get("id") for m in body["data"] if isinstance(m, dict)]
    return [str(n)[:200] for n in names if n][:MAX_DISCOVERED]


async def probe(client: httpx.AsyncClient, base_url: str, api_format: str, timeout_secs: float) -> ProbeResult:
    """Probe one server now through ``client`` (a shared pool: building a client per probe costs
    more than the probe). Never raises: failures are a result with ``reachable=False``."""
    import httpx

    url = probe_url(base_url, api_format)
    started = time.perf_counter()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        async with client.stream("GET", url, timeout=httpx.Timeout(timeout_secs)) as response:
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_PROBE_BYTES:
                    break
            status = response.status_code
    except httpx.TimeoutException:
        return ProbeResult(url, False, int((time.perf_counter() - started) * 1000), error="timed out",
                           probed_at=stamp, checked=time.monotonic())
    except httpx.HTTPError as exc:
        return ProbeResult(url, False, int((time.perf_counter() - started) * 1000),
                           error=f"connection failed: {type(exc).__name__}", probed_at=stamp, checked=time.monotonic())
    latency = int((time.perf_counter() - started) * 1000)
    if status >= 400:
        return ProbeResult(url, False, latency, error=f"HTTP {status}", probed_at=stamp, checked=time.monotonic())
    try:
        import json

        models = _model_names(json.loads(body))
    except ValueError:
        models = []
    return ProbeResult(url, True, latency, models, probed_at=stamp, checked=time.monotonic())


class ProbeCache:
    """Recent probe results per probe URL (bounded); concurrent probes of one URL are merged."""

    def __init__(self, client: Callable[[], httpx.AsyncClient], ttl: float = CACHE_TTL_SECS) -> None:
        self.client = client
        self.ttl = ttl
        self._results: dict[str, ProbeResult] = {}
        self._inflight: dict[str, asyncio.Future[ProbeResult]] = {}

    def cached(self, base_url: str, api_format: str) -> ProbeResult | None:
        """The last result for this server if it is still fresh."""
        result = self._results.get(probe_url(base_url, api_format))
        if result is not None and time.monotonic() - result.checked < self.ttl:
            return result
        return None

    def store(self, result: ProbeResult) -> None:
        if len(self._results) >= MAX_CACHE_ENTRIES and result.url not in self._results:
            oldest = min(self._results.values(), key=lambda r: r.checked)
            del self._results[oldest.url]
        self._results[result.url] = result

    async def get(self, base_url: str, api_format: str, timeout_secs: float, *, fresh: bool = False) -> ProbeResult:
        """A fresh-enough result, probing when needed."""
        if not fresh:
            hit = self.cached(base_url, api_format)
            if hit is not None:
                return hit
        key = probe_url(base_url, api_format)
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ProbeResult] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await probe(self.client(), base_url, api_format, timeout_secs)
            self.store(result)
            future.set_result(result)
            return result
        except asyncio.CancelledError:
            future.cancel()
            raise
        finally:
            self._inflight.pop(key, None)
