"""Configuration of the providers plugin: the ``[providers]`` section and ``[[fallback_providers]]``.

``[providers]`` is registered through ``register_config``; other modules of this plugin (the
catalog and its API) add their keys to :class:`ProvidersConfig` here, so the section has one model.

``[[fallback_providers]]`` is a top-level array of tables (as in the reference implementation), so it
cannot be a section model; :func:`load_fallback_providers` validates it when the plugin starts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError

PROVIDER_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class ProvidersConfig(BaseModel):
    """``[providers]`` of config.toml."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    provider_max_retries: int = Field(3, ge=0, le=10, description="Retries of one provider on 429/5xx/overload")
    retry_base_delay_ms: int = Field(1000, ge=0, le=60_000, description="First backoff delay; doubles per retry")
    retry_max_delay_secs: float = Field(
        30.0, ge=0, le=600,
        description="Longest pause between retries; a longer Retry-After fails over to the next provider instead",
    )
    provider_request_timeout_secs: float = Field(120.0, gt=0, le=3600, description="Default budget of one call")
    provider_connect_timeout_secs: float = Field(10.0, gt=0, le=300)
    stream_idle_timeout_secs: float = Field(
        60.0, gt=0, le=3600, description="A stream silent this long is a stall (timed out, partial text kept)"
    )
    max_connections: int = Field(100, ge=1, le=10_000, description="Size of the shared HTTP connection pool")
    provider_urls: dict[str, str] = Field(default_factory=dict, description="Base URL override per provider")
    provider_api_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Key per provider: "vault:NAME", "env:NAME" or a literal (prefer the vault)',
    )
    # -- model catalog and provider API (catalog.py, service.py, provider_admin.py, oauth.py) --
    local_probe_timeout_secs: float = Field(1.0, gt=0, le=30, description="Reachability probe of local servers")
    ollama_detect_timeout_secs: float = Field(2.0, gt=0, le=30, description="GET /api/providers/ollama/detect")
    provider_test_timeout_secs: float = Field(20.0, gt=0, le=300, description="POST /api/providers/{name}/test")
    catalog_fetch_timeout_secs: float = Field(15.0, gt=0, le=300, description="POST /api/catalog/update with a URL")
    catalog_allowed_hosts: list[str] = Field(
        default_factory=list, max_length=64,
        description="Hosts/CIDRs a catalog URL may resolve to although private (metadata ranges stay blocked)",
    )
    copilot_client_id: str = Field("Iv1.b507a08c87ecfe98", min_length=1, max_length=100)
    copilot_device_code_url: str = Field("https://github.com/login/device/code", pattern=r"^https?://")
    copilot_token_url: str = Field("https://github.com/login/oauth/access_token", pattern=r"^https?://")
    copilot_scope: str = Field("read:user", max_length=200)


class FallbackProvider(BaseModel):
    """One ``[[fallback_providers]]`` entry (also the shape of a per-agent ``fallback_models`` entry)."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(pattern=PROVIDER_NAME)
    model: str = Field(min_length=1, max_length=256)
    base_url: str | None = Field(None, max_length=2048)
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


_FALLBACKS = TypeAdapter(list[FallbackProvider])
MAX_FALLBACKS = 16


def load_fallback_providers(raw: dict[str, Any]) -> list[FallbackProvider]:
    """Validate the top-level ``fallback_providers`` list of the raw config (missing = empty).

    Raises ``ValueError`` naming the bad key.
    """
    value = raw.get("fallback_providers", [])
    try:
        entries = _FALLBACKS.validate_python(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ValueError(f"invalid configuration: fallback_providers.{where}: {first.get('msg')}") from None
    if len(entries) > MAX_FALLBACKS:
        raise ValueError(f"invalid configuration: fallback_providers: at most {MAX_FALLBACKS} entries")
    return entries
