"""Embeddings endpoints of the fake LLM provider server (deterministic vectors, three wire formats).

- OpenAI-compatible ``POST /v1/embeddings`` (``input``: a string or a list; optional ``dimensions``)
- Ollama ``POST /api/embed`` (``input``: a string or a list)
- Gemini ``POST /v1beta/models/{model}:batchEmbedContents`` and ``:embedContent``

A vector is a bag of hashed words: each lower-cased word adds ±1 to one of ``DIMENSIONS`` buckets,
then the vector is L2-normalised. Texts sharing words are close (cosine), texts sharing none are
nearly orthogonal, and the same text always gets the same vector, so tests can predict rankings.
A queued script with ``only="embeddings"`` and a ``fault`` makes the next embeddings call fail.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

DIMENSIONS = 64
MAX_DIMENSIONS = 4096
GEMINI_EMBED = re.compile(r"^/(v1|v1beta|v1alpha)/models/(?P<model>[^:]+):(?P<method>batchEmbedContents|embedContent)$")
WORD = re.compile(r"\w+")


def route(path: str) -> str | None:
    """The wire format of an embeddings path (``openai``, ``ollama``, ``gemini``), or None."""
    if path.endswith("/embeddings"):
        return "openai"
    if path == "/api/embed":
        return "ollama"
    if GEMINI_EMBED.match(path):
        return "gemini"
    return None


def vector(text: str, dimensions: int = DIMENSIONS) -> list[float]:
    """The deterministic embedding of ``text``."""
    values = [0.0] * dimensions
    for word in WORD.findall(text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        bucket = int.from_bytes(digest[:4], "big") % dimensions
        values[bucket] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in values))
    if norm == 0:
        values[0], norm = 1.0, 1.0
    return [v / norm for v in values]


def _texts(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return value
    return None


def answer(fmt: str, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
    """(status, JSON body) of an embeddings request."""
    model = str(payload.get("model") or "fake-embedding")
    if fmt == "gemini":
        match = GEMINI_EMBED.match(path)
        assert match is not None
        requests = payload.get("requests") if match["method"] == "batchEmbedContents" else [payload]
        texts = []
        for request in requests or []:
            parts = (request.get("content") or {}).get("parts") or [] if isinstance(request, dict) else []
            texts.append(" ".join(p.get("text", "") for p in parts if isinstance(p, dict)))
        if not texts:
            return 400, {"error": {"code": 400, "message": "no content", "status": "INVALID_ARGUMENT"}}
        if match["method"] == "embedContent":
            return 200, {"embedding": {"values": vector(texts[0])}}
        return 200, {"embeddings": [{"values": vector(t)} for t in texts]}
    texts = _texts(payload.get("input"))
    if not texts:
        message = "input must be a string or a list of strings"
        return 400, ({"error": message} if fmt == "ollama" else
                     {"error": {"message": message, "type": "invalid_request_error"}})
    dimensions = payload.get("dimensions") or DIMENSIONS
    if not isinstance(dimensions, int) or not 0 < dimensions <= MAX_DIMENSIONS:
        return 400, {"error": {"message": "bad dimensions", "type": "invalid_request_error"}}
    if fmt == "ollama":
        return 200, {"model": model, "embeddings": [vector(t, dimensions) for t in texts]}
    return 200, {"object": "list", "model": model,
                 "data": [{"object": "embedding", "index": i, "embedding": vector(t, dimensions)}
                          for i, t in enumerate(texts)],
                 "usage": {"prompt_tokens": sum(len(t.split()) for t in texts),
                           "total_tokens": sum(len(t.split()) for t in texts)}}
