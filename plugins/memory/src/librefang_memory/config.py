"""The ``[memory]`` (storage limits) and ``[proactive_memory]`` (pipeline) sections of ``config.toml``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_CATEGORIES = [
    "communication_style", "preference", "expertise", "work_style", "project_context", "personal_detail",
    "frustration",
]


class MemoryConfig(BaseModel):
    """``[memory]``: limits of the KV store and of proactive memory items, and the embedder."""

    model_config = ConfigDict(extra="forbid")

    kv_max_key_chars: int = Field(256, ge=1, le=1024, description="Longest KV key")
    kv_max_value_bytes: int = Field(64 * 1024, ge=16, le=16 * 1024 * 1024, description="Largest KV value (JSON)")
    kv_max_keys_per_agent: int = Field(10_000, ge=1, le=10_000_000, description="KV keys one agent may hold")
    max_content_chars: int = Field(4000, ge=16, le=1_000_000, description="Longest memory text")
    max_metadata_bytes: int = Field(16 * 1024, ge=2, le=1024 * 1024, description="Largest metadata (JSON)")
    max_batch_items: int = Field(1000, ge=1, le=100_000, description="Items per import / bulk request")
    embeddings: Literal["auto", "off", "local", "wordllama", "provider"] = Field(
        "auto", description="Semantic search: the local model (wordllama) when installed (auto, local), "
        "the provider's embeddings API (provider), or off")
    embedding_provider: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
        description='embeddings = "provider": which provider (default: the [default_model] provider)')
    embedding_model: str = Field("text-embedding-3-small", min_length=1, max_length=200,
                                 description='embeddings = "provider": the embedding model')
    embedding_dimensions: int | None = Field(
        None, ge=1, le=8192, description="Shorter vectors from models that offer them (OpenAI text-embedding-3-*)")
    embedding_timeout_secs: float = Field(30.0, gt=0, le=600, description="Budget of one embeddings call")
    vector_index: bool = Field(
        True, description="Search vectors through a KNN index: sqlite-vec when installed (SQLite), "
                          "pgvector when the extension can be created (PostgreSQL)")
    vector_cache_items: int = Field(
        50_000, ge=0, le=10_000_000, description="Vectors kept in memory for per-agent semantic search (~1 KiB each)")
    semantic_min_similarity: float = Field(
        0.1, ge=-1.0, le=1.0, description="Cosine below which a memory is no semantic match")


class ProactiveMemoryConfig(BaseModel):
    """``[proactive_memory]``: automatic recall before a turn and extraction after it (mem0-style).

    Per agent, the manifest's ``[proactive_memory]`` table overrides ``enabled``, ``auto_memorize``,
    ``auto_retrieve`` and ``max_retrieve``. ``PATCH /api/memory/config`` changes these values at run
    time (kept in the database, over the file's values)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = True
    auto_memorize: bool = True
    auto_retrieve: bool = True
    max_retrieve: int = Field(10, ge=0, le=100)
    extraction_threshold: float = Field(0.7, ge=0.0, le=1.0, description="Lowest confidence auto-stored")
    extraction_model: str | None = Field(
        None, min_length=1, max_length=200,
        description="A model to extract memories with (JSON answers); unset = rule-based extraction")
    extraction_provider: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
        description="The provider of extraction_model (default: the [default_model] provider)")
    extraction_timeout_secs: float = Field(30.0, gt=0, le=600, description="Budget of one extraction call")
    extract_categories: list[str] = Field(default_factory=lambda: list(DEFAULT_CATEGORIES), max_length=50)
    session_ttl_hours: int = Field(24, ge=1, le=100_000)
    duplicate_threshold: float = Field(0.85, gt=0.0, le=1.0)
    confidence_decay_rate: float = Field(0.01, ge=0.0, le=10.0, description="Per day")
    max_memories_per_agent: int = Field(1000, ge=1, le=10_000_000)
    format_context_max_chars: int = Field(8000, ge=100, le=1_000_000)
    update_threshold_same_category: float = Field(
        0.5, gt=0.0, le=1.0, description="Similarity above which a new fact updates one of the same category")
    update_threshold_cross_category: float = Field(
        0.85, gt=0.0, le=1.0, description="Similarity above which a new fact updates one of another category")
    soft_delete_retention_days: int = Field(30, ge=0, le=100_000)
    maintenance_interval_hours: float = Field(
        1.0, ge=0.0, le=8760, description="Decay and cleanup run this often in the background (0 = never)")


AGENT_OVERRIDES = ("enabled", "auto_memorize", "auto_retrieve", "max_retrieve")


def for_agent(config: ProactiveMemoryConfig, override: dict[str, Any] | None) -> ProactiveMemoryConfig:
    """The global config with an agent manifest's ``[proactive_memory]`` values applied (unknown or
    badly typed keys are ignored: the manifest was validated loosely by the agents plugin)."""
    if not override:
        return config
    values = config.model_dump()
    for key in AGENT_OVERRIDES:
        value = override.get(key)
        if key == "max_retrieve":
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100:
                values[key] = value
        elif isinstance(value, bool):
            values[key] = value
    return ProactiveMemoryConfig.model_validate(values)
