"""Embeddings from a provider's API, through the same registry (keys, base URLs, retries) as chat.

Wire formats: OpenAI-compatible ``POST {base_url}/embeddings`` (OpenAI, and every compatible server:
vLLM, LM Studio, groq, ...), Ollama ``POST /api/embed`` and Gemini
``POST /models/{model}:batchEmbedContents``. A third-party driver offers embeddings by implementing
``async def embed(texts, model) -> list[list[float]]``. Anthropic has no embeddings API.
"""

from __future__ import annotations

import math
import time
from typing import Any

from librefang_providers.errors import BadResponse, LLMError, UnknownProvider
from librefang_providers.registry import LLMRegistry
from librefang_providers.types import CompletionRequest, Target

MAX_INPUTS_PER_CALL = 96  # below every provider's batch limit (OpenAI 2048, Gemini 100)
MAX_INPUTS = 10_000
MAX_INPUT_CHARS = 32_000
MAX_DIMENSIONS = 8192


async def embed(registry: LLMRegistry, texts: list[str], *, provider: str, model: str,
                base_url: str | None = None, api_key_env: str | None = None, dimensions: int | None = None,
                time_budget: float | None = None) -> list[list[float]]:
    """One vector per text, in order, from ``provider``'s embeddings API (model ``model``).

    Transient failures are retried like chat calls; the result is checked (one finite vector per
    text, all of one size). Raises the typed :mod:`librefang_providers.errors` errors, and
    :class:`UnknownProvider` for a provider without an embeddings API. ``time_budget`` (seconds) bounds
    each call; ``dimensions`` asks OpenAI's
    newer models for shorter vectors."""
    if len(texts) > MAX_INPUTS:
        raise ValueError(f"at most {MAX_INPUTS} texts per call")
    if not texts:
        return []
    texts = [t[:MAX_INPUT_CHARS] for t in texts]
    driver = registry.driver(provider, base_url=base_url, api_key_env=api_key_env)
    request = CompletionRequest(model=model, messages=[], timeout=time_budget)
    target = Target(provider, model, base_url, api_key_env)
    deadline = time.monotonic() + time_budget if time_budget else None
    vectors: list[list[float]] = []
    for start in range(0, len(texts), MAX_INPUTS_PER_CALL):
        chunk = texts[start:start + MAX_INPUTS_PER_CALL]

        async def call(chunk: list[str] = chunk) -> list[list[float]]:
            return await _call(driver, chunk, request, dimensions)

        vectors += await registry._retrying(call, target, deadline)  # same retry rules as chat calls
    return _checked(vectors, len(texts), provider, model)


async def _call(driver: Any, texts: list[str], request: CompletionRequest, dimensions: int | None) -> Any:
    # The driver exists, so its module is loaded; these imports cost nothing more (none at start-up).
    from librefang_providers.drivers.gemini import GeminiDriver
    from librefang_providers.drivers.ollama import OllamaDriver
    from librefang_providers.drivers.openai import OpenAIDriver

    model = request.model
    if isinstance(driver, OllamaDriver):
        url = driver.base_url.removesuffix("/v1") + "/api/embed"
        data = await driver.post_json(url, {"model": model, "input": texts}, _json_headers(driver), request)
        return data.get("embeddings") if isinstance(data, dict) else None
    if isinstance(driver, OpenAIDriver):
        body: dict[str, Any] = {"model": model, "input": texts, "encoding_format": "float"}
        if dimensions:
            body["dimensions"] = dimensions
        data = await driver.post_json(driver.base_url + "/embeddings", body, driver.headers(), request)
        rows = data.get("data") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            return None
        ordered = sorted((r for r in rows if isinstance(r, dict)), key=lambda r: r.get("index", 0))
        return [r.get("embedding") for r in ordered]
    if isinstance(driver, GeminiDriver):
        name = model if model.startswith("models/") else f"models/{model}"
        body = {"requests": [{"model": name, "content": {"parts": [{"text": t}]}} for t in texts]}
        data = await driver.post_json(f"{driver.base_url}/{name}:batchEmbedContents", body, driver.headers(), request)
        rows = data.get("embeddings") if isinstance(data, dict) else None
        return [r.get("values") if isinstance(r, dict) else None for r in rows] if isinstance(rows, list) else None
    method = getattr(driver, "embed", None)
    if method is None:
        name = getattr(driver, "provider", "")
        raise UnknownProvider(f"provider {name!r} has no embeddings API", provider=name, model=model)
    try:
        return await method(texts, model)
    except LLMError:
        raise
    except Exception as exc:  # a third-party driver: keep the error typed
        raise BadResponse(f"embeddings failed: {type(exc).__name__}", provider=getattr(driver, "provider", ""),
                          model=model) from None


def _json_headers(driver: Any) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": "application/json"}
    if driver.config.api_key:
        headers["authorization"] = f"Bearer {driver.config.api_key}"
    headers.update(driver.config.headers)
    return headers


def _checked(vectors: Any, count: int, provider: str, model: str) -> list[list[float]]:
    def bad(why: str) -> BadResponse:
        return BadResponse(f"embeddings response {why}", provider=provider, model=model)

    if not isinstance(vectors, list) or len(vectors) != count:
        raise bad(f"does not hold {count} vectors")
    size = None
    out: list[list[float]] = []
    for vector in vectors:
        if not isinstance(vector, list) or not vector or len(vector) > MAX_DIMENSIONS:
            raise bad("holds a vector that is not a list of numbers")
        if size is None:
            size = len(vector)
        elif len(vector) != size:
            raise bad("mixes vector sizes")
        try:
            values = [float(v) for v in vector]
        except (TypeError, ValueError):
            raise bad("holds a value that is not a number") from None
        if not all(math.isfinite(v) for v in values):
            raise bad("holds a value that is not finite")
        out.append(values)
    return out
