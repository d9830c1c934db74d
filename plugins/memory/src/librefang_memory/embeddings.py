"""Embedders for semantic search, and the in-process ranking used when no vector index is open.

- ``local`` (the offline default, the ``embeddings`` extra): ``wordllama``, which ships its weights in
  its wheel and runs without torch or network (loaded from its package folder, downloads disabled).
- ``provider``: the configured provider's embeddings API (``librefang_providers.api.embed``).

Vectors are L2-normalised float32 BLOBs in ``memory_vectors``; they are searched through the
``sqlite-vec`` index (:mod:`librefang_memory.vecindex`) when it is open, otherwise ranked here by
cosine similarity with numpy (brute force over one agent's cached vectors, or over all of them).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

log = logging.getLogger("librefang.memory.embeddings")

MODEL_NAME = "wordllama-l2-256"


def available() -> bool:
    """True when the ``wordllama`` package is installed."""
    return importlib.util.find_spec("wordllama") is not None


class Embedder:
    """Lazily loaded wordllama model (thread-safe load; encoding runs off the event loop)."""

    name = MODEL_NAME

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                import wordllama
                from wordllama import WordLlama

                folder = Path(wordllama.__file__).parent
                self._model = WordLlama.load(cache_dir=folder, disable_download=True)
        return self._model

    def encode_sync(self, texts: list[str]) -> Any:
        """float32 matrix (len(texts) × dim), rows L2-normalised."""
        import numpy as np

        model = self._load()
        vectors = np.asarray(model.embed(texts, norm=True), dtype=np.float32)
        return vectors.reshape(len(texts), -1)

    async def encode(self, texts: list[str]) -> Any:
        """:meth:`encode_sync` in a worker thread."""
        return await asyncio.to_thread(self.encode_sync, texts)


class ProviderEmbedder:
    """Vectors from a provider's embeddings API (``[memory] embeddings = "provider"``)."""

    def __init__(self, kernel: Any, provider: str, model: str, dimensions: int | None = None,
                 timeout: float = 30.0) -> None:
        self.kernel = kernel
        self.provider = provider
        self.model = model
        self.dimensions = dimensions
        self.timeout = timeout
        self.name = f"{provider}:{model}"[:64]

    async def encode(self, texts: list[str]) -> Any:
        """float32 matrix (len(texts) × dim), rows L2-normalised (typed provider errors on failure)."""
        import numpy as np
        from librefang_providers.api import embed, get_registry

        rows = await embed(get_registry(self.kernel), texts, provider=self.provider, model=self.model,
                           dimensions=self.dimensions, time_budget=self.timeout)
        matrix = np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return matrix / np.where(norms == 0, 1.0, norms)


class VectorCache:
    """One agent's stored vectors as a ready matrix, for the agents searched most recently (LRU,
    at most ``max_items`` vectors in all). Writes of an agent's vectors drop its entry."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._agents: OrderedDict[str, list[tuple[int, bytes]]] = OrderedDict()
        self._size = 0

    def get(self, agent_id: str) -> list[tuple[int, bytes]] | None:
        found = self._agents.get(agent_id)
        if found is not None:
            self._agents.move_to_end(agent_id)
        return found

    def put(self, agent_id: str, blobs: list[tuple[int, bytes]]) -> None:
        if len(blobs) > self.max_items:
            return
        self.drop(agent_id)
        self._agents[agent_id] = blobs
        self._size += len(blobs)
        while self._size > self.max_items:
            _, evicted = self._agents.popitem(last=False)
            self._size -= len(evicted)

    def drop(self, agent_id: str) -> None:
        evicted = self._agents.pop(agent_id, None)
        if evicted is not None:
            self._size -= len(evicted)


def to_blob(vector: Any) -> bytes:
    """The stored bytes of one vector."""
    import numpy as np

    return np.asarray(vector, dtype=np.float32).tobytes()


def rank(query: Any, blobs: list[tuple[int, bytes]], limit: int) -> list[tuple[int, float]]:
    """(seq, cosine) of the ``limit`` stored vectors closest to ``query`` (best first)."""
    import numpy as np

    if not blobs:
        return []
    matrix = np.frombuffer(b"".join(b for _, b in blobs), dtype=np.float32).reshape(len(blobs), -1)
    scores = matrix @ np.asarray(query, dtype=np.float32)
    order = np.argsort(-scores)[:limit]
    return [(blobs[i][0], float(scores[i])) for i in order]


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = 60) -> list[tuple[int, float]]:
    """Fuse several best-first lists of ids: score = Σ 1 / (k + rank). Best first."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for position, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + position)
    return sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))
