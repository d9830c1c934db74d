"""Pydantic request and response models of the model-catalog and provider routes (they feed
``/api/openapi.json``). Field names follow the reference API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from librefang_providers.catalog import ALIAS, MODEL_ID, PROVIDER_ID, Tier


class DeferredModel(BaseModel):
    """Base of this module's request and response models: pydantic builds each model's validator and
    serializer on first use (``defer_build``), not when the daemon starts and imports this module."""

    model_config = ConfigDict(defer_build=True)


class Strict(DeferredModel):
    model_config = ConfigDict(extra="forbid")


# -- models -----------------------------------------------------------------------------------------
class ModelsQuery(Strict):
    provider: str | None = Field(None, max_length=64, description="Provider id or alias")
    tier: Literal["frontier", "smart", "balanced", "fast", "local", "custom"] | None = None
    available: bool | None = Field(None, description="Only models whose provider is usable now")


class ModelInfo(DeferredModel):
    id: str
    display_name: str
    provider: str
    tier: str
    modality: str
    context_window: int
    max_output_tokens: int
    input_cost_per_m: float
    output_cost_per_m: float
    cache_read_cost_per_m: float | None = None
    cache_write_cost_per_m: float | None = None
    image_input_cost_per_m: float | None = None
    image_output_cost_per_m: float | None = None
    pricing_known: bool
    supports_tools: bool
    supports_vision: bool
    supports_streaming: bool
    supports_thinking: bool
    capabilities_catalog: dict[str, bool]
    aliases: list[str]
    available: bool
    is_custom: bool
    source: str


class ModelList(DeferredModel):
    models: list[ModelInfo]
    total: int = Field(description="Models in the whole catalog")
    available: int = Field(description="Models in the whole catalog whose provider is usable now")


class AliasInfo(DeferredModel):
    alias: str
    model_id: str
    user_defined: bool


class AliasList(DeferredModel):
    aliases: list[AliasInfo]
    total: int


class AliasCreate(Strict):
    alias: str = Field(pattern=ALIAS, description="Lowercase short name, e.g. my-fast")
    model_id: str = Field(pattern=MODEL_ID, description="A model id (or provider/model) of the catalog")

    @field_validator("alias", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class AliasCreated(DeferredModel):
    alias: str
    model_id: str
    status: str


class StatusOnly(DeferredModel):
    status: str


class CustomModelCreate(Strict):
    id: str = Field(pattern=MODEL_ID)
    provider: str = Field(pattern=PROVIDER_ID)
    display_name: str | None = Field(None, max_length=200)
    tier: Tier = "custom"
    modality: str = Field("text", pattern=r"^[a-z_+-]{1,32}$")
    context_window: int = Field(128_000, ge=1, le=100_000_000)
    max_output_tokens: int = Field(8192, ge=1, le=100_000_000)
    input_cost_per_m: float = Field(0.0, ge=0, le=100_000)
    output_cost_per_m: float = Field(0.0, ge=0, le=100_000)
    cache_read_cost_per_m: float | None = Field(None, ge=0, le=100_000)
    cache_write_cost_per_m: float | None = Field(None, ge=0, le=100_000)
    pricing_known: bool = True
    supports_tools: bool = True
    supports_vision: bool = False
    supports_streaming: bool = True
    supports_thinking: bool = False
    aliases: list[str] = Field(default_factory=list, max_length=16)

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: list[str]) -> list[str]:
        import re

        pattern = re.compile(ALIAS)
        out = []
        for alias in value:
            alias = alias.strip().lower()
            if not pattern.match(alias):
                raise ValueError(f"alias {alias[:64]!r} must match {ALIAS}")
            out.append(alias)
        return out


class CustomModelAdded(DeferredModel):
    id: str
    provider: str
    status: str
    replaces_builtin: bool


# -- catalog ----------------------------------------------------------------------------------------
class CatalogStatus(DeferredModel):
    last_sync: str | None
    source: str
    bundled_version: str
    providers: int
    models: int
    custom_models: int
    aliases: int
    registry_dir: str
    registry_files: int
    errors: list[str]


class CatalogUpdateRequest(Strict):
    url: str | None = Field(
        None, max_length=2048, description="Fetch a catalog bundle from this http(s) URL (SSRF rules apply); "
        "absent: reload from the local registry folder"
    )


class CatalogUpdateResult(DeferredModel):
    status: str
    source: str
    files_downloaded: int
    registry_files: int
    providers_count: int
    models_count: int
    timestamp: str
    errors: list[str]


# -- providers --------------------------------------------------------------------------------------
class ProviderInfo(DeferredModel, extra="allow"):
    id: str
    display_name: str
    api_key_env: str
    base_url: str
    key_required: bool
    api_format: str
    auth_status: str = Field(description="configured | missing | not_required | local_offline")
    model_count: int
    signup_url: str
    aliases: list[str]
    is_local: bool
    is_custom: bool


class ProviderList(DeferredModel):
    providers: list[ProviderInfo]
    total: int


class ProviderDetail(ProviderInfo):
    models: list[ModelInfo]


class ProviderKeyBody(Strict):
    key: str = Field(min_length=1, max_length=4096, description="The API key; stored in the vault, never returned")

    @field_validator("key")
    @classmethod
    def _clean(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("key is empty")
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
            raise ValueError("key must not contain whitespace or control characters")
        return value


class KeySaved(DeferredModel):
    status: str
    provider: str
    auth_status: str
    stored_in: str
    secret_name: str


class KeyRemoved(DeferredModel):
    status: str
    provider: str
    auth_status: str
    secret_name: str


class ProviderUrlBody(Strict):
    base_url: str = Field(min_length=1, max_length=2048)


class UrlSaved(DeferredModel):
    status: str
    provider: str
    base_url: str
    reachable: bool | None = None
    latency_ms: int | None = None
    discovered_models: list[str] = []


class TestQuery(Strict):
    model: str | None = Field(None, pattern=MODEL_ID, description="Model to try (default: the provider's cheapest)")


class ProviderTestResult(DeferredModel):
    status: str
    provider: str
    model: str
    latency_ms: int
    reply: str
    usage: dict[str, int]
    cost_usd: float | None


class OllamaDetect(DeferredModel):
    available: bool
    models: list[str]
    base_url: str
    latency_ms: int
    error: str | None = None


class OAuthStart(DeferredModel):
    user_code: str
    verification_uri: str
    poll_id: str
    expires_in: int
    interval: int


class OAuthPoll(DeferredModel):
    status: Literal["pending", "complete", "expired", "denied", "error"]
    interval: int | None = None
    error: str | None = None
    auth_status: str | None = None
