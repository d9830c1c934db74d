"""The model catalog: providers, models, aliases, and what a call costs.

Data comes in layers, later layers winning (see :mod:`librefang_providers.catalog_store`):
the bundled files in ``data/``, the local registry folder ``<home>/registry/``, base-URL overrides,
the user's ``custom_models.json`` and ``aliases.toml``. A :class:`Catalog` is an in-memory snapshot of
the merged result; it is rebuilt (never patched field by field) when a layer changes, so readers
always see a consistent view.

A model id is unique within its provider but several providers may serve the same id (open-weight
models); :meth:`Catalog.find_model` returns the first match in catalog order (custom models first,
then providers in file order) and accepts ``provider/model`` to pick one explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from librefang_providers.types import Usage

TIERS = ("frontier", "smart", "balanced", "fast", "local", "custom")
API_FORMATS = ("openai", "anthropic", "gemini", "ollama")
Tier = Literal["frontier", "smart", "balanced", "fast", "local", "custom"]
ApiFormat = Literal["openai", "anthropic", "gemini", "ollama"]

# Ids are what users type in manifests and URLs: printable, no spaces, no path tricks.
PROVIDER_ID = r"^[a-z0-9][a-z0-9._-]{0,63}$"
MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$"
ALIAS = r"^[a-z0-9][a-z0-9._:-]{0,63}$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
_MODEL_ID_RE = re.compile(MODEL_ID)

PER_MILLION = 1_000_000
# Bound on the memo of priced (provider, model) pairs of one snapshot: the served model name comes
# from the provider's response, so an endpoint answering with ever-new names must not grow it.
MAX_PRICED = 1024


class ProviderEntry(BaseModel):
    """One provider: where it is, which wire format it speaks, which variable holds its key."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(pattern=PROVIDER_ID)
    display_name: str = Field(min_length=1, max_length=120)
    base_url: str = Field("", max_length=2048)
    api_key_env: str = Field("", pattern=r"^$|" + ENV_NAME[1:])
    key_required: bool = True
    api_format: ApiFormat = "openai"
    local: bool = False
    aliases: tuple[str, ...] = ()
    signup_url: str = Field("", max_length=500)
    source: str = "bundled"

    def key_env(self) -> str:
        """The variable (and vault secret name) holding this provider's key; derived when unset."""
        return self.api_key_env or self.id.upper().replace("-", "_").replace(".", "_") + "_API_KEY"

    def spec(self) -> Any:
        """This provider as the driver registry's :class:`~librefang_providers.types.ProviderSpec`."""
        from librefang_providers.types import ProviderSpec

        return ProviderSpec(self.id, self.base_url, self.api_format, self.key_env(), self.key_required)


class ModelEntry(BaseModel):
    """One model of one provider, with its limits, prices (USD per million tokens) and abilities."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(pattern=MODEL_ID)
    provider: str = Field(pattern=PROVIDER_ID)
    display_name: str = Field("", max_length=200)
    tier: Tier = "balanced"
    modality: str = Field("text", pattern=r"^[a-z_+-]{1,32}$")
    context_window: int = Field(128_000, ge=1, le=100_000_000)
    max_output_tokens: int = Field(8192, ge=1, le=100_000_000)
    input_cost_per_m: float = Field(0.0, ge=0, le=100_000)
    output_cost_per_m: float = Field(0.0, ge=0, le=100_000)
    cache_read_cost_per_m: float | None = Field(None, ge=0, le=100_000)
    cache_write_cost_per_m: float | None = Field(None, ge=0, le=100_000)
    image_input_cost_per_m: float | None = Field(None, ge=0, le=100_000)
    image_output_cost_per_m: float | None = Field(None, ge=0, le=100_000)
    pricing_known: bool = True
    supports_tools: bool = True
    supports_vision: bool = False
    supports_streaming: bool = True
    supports_thinking: bool = False
    aliases: tuple[str, ...] = ()
    source: str = "bundled"

    def name(self) -> str:
        return self.display_name or self.id


def _field(get: Callable[[str], Any], *names: str) -> int:
    """The first of ``names`` that ``get`` finds (not ``None``), as a non-negative int."""
    for name in names:
        value = get(name)
        if value is not None:
            try:
                return max(0, int(value))
            except (TypeError, ValueError):
                return 0
    return 0


def cost(model: ModelEntry, usage: Any) -> float:
    """What one call cost in USD, from the model's prices and the call's token usage.

    ``usage`` is a :class:`librefang_providers.types.Usage` or any object/mapping with
    ``input_tokens``, ``output_tokens``, ``cache_read_tokens`` and ``cache_write_tokens``
    (``cache_read_input_tokens`` / ``cache_creation_input_tokens`` are accepted too). As in
    ``types.Usage``, ``input_tokens`` *includes* the cached tokens: the cached subsets are billed at
    their own prices (the model's input price when the catalog knows none) and the rest at the input
    price. A model whose pricing is unknown costs 0.0.
    """
    if not model.pricing_known:
        return 0.0
    if type(usage) is Usage and type(usage.input_tokens) is type(usage.output_tokens) is int \
            and type(usage.cache_read_tokens) is type(usage.cache_write_tokens) is int:
        # The common case (every agent turn): a driver's Usage of plain ints, read directly.
        input_tokens = max(0, usage.input_tokens)
        output_tokens = max(0, usage.output_tokens)
        cache_read = max(0, usage.cache_read_tokens)
        cache_write = max(0, usage.cache_write_tokens)
    else:
        # One isinstance check per call, not per field (an ABC check is not free).
        get = usage.get if isinstance(usage, Mapping) else lambda name: getattr(usage, name, None)
        input_tokens = _field(get, "input_tokens", "prompt_tokens")
        output_tokens = _field(get, "output_tokens", "completion_tokens")
        cache_read = _field(get, "cache_read_tokens", "cache_read_input_tokens")
        cache_write = _field(get, "cache_write_tokens", "cache_creation_input_tokens")
    cache_read = min(cache_read, input_tokens)
    cache_write = min(cache_write, input_tokens - cache_read)
    plain_input = input_tokens - cache_read - cache_write
    read_price = model.cache_read_cost_per_m if model.cache_read_cost_per_m is not None else model.input_cost_per_m
    write_price = (
        model.cache_write_cost_per_m if model.cache_write_cost_per_m is not None else model.input_cost_per_m
    )
    total = (
        plain_input * model.input_cost_per_m
        + cache_read * read_price
        + cache_write * write_price
        + output_tokens * model.output_cost_per_m
    )
    return round(total / PER_MILLION, 10)


class Catalog:
    """An immutable snapshot of the merged catalog, indexed for lookups."""

    def __init__(
        self,
        providers: Iterable[ProviderEntry],
        models: Iterable[ModelEntry],
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.providers: dict[str, ProviderEntry] = {}
        for provider in providers:
            self.providers[provider.id] = provider
        self._provider_aliases: dict[str, str] = {}
        for provider in self.providers.values():
            for alias in provider.aliases:
                self._provider_aliases.setdefault(alias.lower(), provider.id)
        order = {pid: index for index, pid in enumerate(self.providers)}
        # Custom models first (they win lookups), then providers in file order, models in file order.
        indexed = list(enumerate(models))
        indexed.sort(key=lambda pair: (pair[1].source != "custom", order.get(pair[1].provider, len(order)), pair[0]))
        self.models: list[ModelEntry] = [m for _, m in indexed]
        self._by_id: dict[str, list[ModelEntry]] = {}
        self._by_provider: dict[str, list[ModelEntry]] = {}
        for model in self.models:
            self._by_id.setdefault(model.id.lower(), []).append(model)
            self._by_provider.setdefault(model.provider, []).append(model)
        self.aliases: dict[str, str] = dict(aliases or {})
        self._reverse_aliases: dict[int, list[str]] | None = None
        # Memo of :meth:`priced_model`: valid for this snapshot's whole life because a snapshot is
        # never changed (every write path builds a new Catalog), so it needs no invalidation.
        self._priced: dict[tuple[str, str], ModelEntry | None] = {}

    # -- providers ---------------------------------------------------------------------------
    def provider(self, name: str) -> ProviderEntry | None:
        """A provider by id or one of its aliases (case-insensitive)."""
        key = name.strip().lower()
        found = self.providers.get(key)
        if found is None and key in self._provider_aliases:
            found = self.providers.get(self._provider_aliases[key])
        return found

    def models_of(self, provider_id: str) -> list[ModelEntry]:
        """The models served by one provider, in catalog order."""
        return list(self._by_provider.get(provider_id, ()))

    def model_count(self, provider_id: str) -> int:
        return len(self._by_provider.get(provider_id, ()))

    # -- models ------------------------------------------------------------------------------
    def find_model(self, ref: str) -> ModelEntry | None:
        """A model by id, alias, or ``provider/model`` (``provider:model``) when the id alone is not
        found or is ambiguous to the caller. Case-insensitive."""
        ref = ref.strip()
        if not ref:
            return None
        target = self.aliases.get(ref.lower())
        if target is not None and target.lower() != ref.lower():
            found = self._find_exact_or_qualified(target)
            if found is not None:
                return found
        return self._find_exact_or_qualified(ref)

    def _find_exact_or_qualified(self, ref: str) -> ModelEntry | None:
        hits = self._by_id.get(ref.lower())
        if hits:
            return hits[0]
        for separator in ("/", ":"):
            head, sep, rest = ref.partition(separator)
            if sep and rest:
                provider = self.provider(head)
                if provider is not None:
                    for model in self._by_provider.get(provider.id, ()):
                        if model.id.lower() == rest.lower():
                            return model
        return None

    def priced_model(self, provider: str, model: str) -> ModelEntry | None:
        """The entry pricing a call served by ``provider``/``model`` (as a response names them): that
        provider's model, else ``provider/model`` as a reference, else ``model`` alone; ``None`` when
        the catalog does not know it. Memoised per snapshot: it runs on every agent turn."""
        key = (provider, model)
        try:
            return self._priced[key]
        except KeyError:
            pass
        found = self.model_in(provider, model) or self.find_model(f"{provider}/{model}") or self.find_model(model)
        if len(self._priced) >= MAX_PRICED:
            self._priced.clear()
        self._priced[key] = found
        return found

    def model_in(self, provider_id: str, model_id: str) -> ModelEntry | None:
        """The model ``model_id`` of one provider, if the catalog lists it."""
        for model in self._by_provider.get(provider_id, ()):
            if model.id.lower() == model_id.lower():
                return model
        return None

    def list_models(self, *, provider: str | None = None, tier: str | None = None) -> list[ModelEntry]:
        """Models filtered by provider (id or alias) and tier."""
        models: Iterable[ModelEntry] = self.models
        if provider:
            entry = self.provider(provider)
            models = self._by_provider.get(entry.id, []) if entry is not None else []
        if tier:
            models = [m for m in models if m.tier == tier.lower()]
        return list(models)

    def aliases_of(self, model: ModelEntry) -> list[str]:
        """Every alias resolving to ``model`` (its own and the user's)."""
        if self._reverse_aliases is None:
            reverse: dict[int, list[str]] = {}
            for alias, target in self.aliases.items():
                found = self._find_exact_or_qualified(target)
                if found is not None:
                    reverse.setdefault(id(found), []).append(alias)
            self._reverse_aliases = reverse
        return sorted(self._reverse_aliases.get(id(model), ()))

    def resolve(self, ref: str) -> tuple[ProviderEntry, ModelEntry] | None:
        """The provider and model serving ``ref`` (id, alias or ``provider/model``)."""
        model = self.find_model(ref)
        if model is None:
            return None
        provider = self.providers.get(model.provider)
        return (provider, model) if provider is not None else None

    def default_model_for(self, provider_id: str) -> ModelEntry | None:
        """The cheapest-to-try model of a provider: a fast tier first, else its first model."""
        models = self._by_provider.get(provider_id, [])
        for tier in ("fast", "balanced", "local", "custom", "smart", "frontier"):
            for model in models:
                if model.tier == tier:
                    return model
        return models[0] if models else None

    def cost(self, ref: str, usage: Any) -> float | None:
        """What a call to the model ``ref`` cost in USD; ``None`` when the catalog does not know it."""
        model = self.find_model(ref)
        return cost(model, usage) if model is not None else None


def valid_model_id(value: str) -> bool:
    """True when ``value`` is an acceptable model id (used for path parameters)."""
    return bool(_MODEL_ID_RE.match(value)) and ".." not in value
