"""The catalog service of one kernel: the current catalog snapshot, models, aliases, custom models,
catalog reload/update, and provider auth status. Route handlers stay thin and call this.

One instance per kernel, in ``kernel.services["providers.catalog"]`` (see :func:`catalog_service`).
Mutations are serialised by one lock, write their file first and then swap in a rebuilt snapshot,
so readers never see a half-applied change and the file on disk is the truth after a restart.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import TYPE_CHECKING, Any

from librefang.errors import BadGateway, BadRequest, Conflict, NotFound, PayloadTooLarge
from librefang.vault import VaultError

from librefang_providers import catalog_store as store
from librefang_providers.catalog import Catalog, ModelEntry, ProviderEntry, cost
from librefang_providers.config import ProvidersConfig
from librefang_providers.probe import ProbeCache, ProbeResult

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel

SERVICE_KEY = "providers.catalog"
AVAILABLE_STATUSES = frozenset({"configured", "not_required"})


def settings(kernel: Kernel) -> ProvidersConfig:
    """The validated ``[providers]`` section (defaults when the plugin did not register it)."""
    if kernel.config.has_section("providers"):
        return kernel.config.section("providers")
    return ProvidersConfig()


async def attach_catalog(kernel: Kernel) -> CatalogService:
    """Start-up wiring: a fresh service, its catalog loaded, and the driver registry resolving
    provider names (base URL, wire format, key variable) through it."""
    from librefang_providers.api import get_registry

    kernel.services.pop(SERVICE_KEY, None)
    service = catalog_service(kernel)
    await service.catalog()
    get_registry(kernel).add_spec_source(service.spec_source, version=service.generation)
    return service


def register_catalog_routes(register: Any) -> None:
    """The ``register_routes`` body of the catalog and provider API."""
    from librefang_providers.routes_models import models_router
    from librefang_providers.routes_providers import providers_router

    register(models_router())
    register(providers_router())


def catalog_service(kernel: Kernel) -> CatalogService:
    """The kernel's catalog service, created on first use (a reloaded plugin gets a fresh one)."""
    service = kernel.services.get(SERVICE_KEY)
    if not isinstance(service, CatalogService):
        service = CatalogService(kernel)
        kernel.services[SERVICE_KEY] = service
    return service


class CatalogService:
    """Catalog state and operations for one kernel."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.home = kernel.home
        self._catalog: Catalog | None = None
        self._generation = 0  # bumped on every snapshot swap (the registry's resolution cache key)
        self._report = store.LoadReport()
        self._lock = asyncio.Lock()
        self.probes = ProbeCache(self.http_client)
        self.test_results: dict[str, dict[str, Any]] = {}

    def http_client(self) -> Any:
        """The driver registry's pooled HTTP client (closed with the registry at plugin shutdown)."""
        from librefang_providers.api import get_registry

        return get_registry(self.kernel).http_client()

    # -- snapshot -----------------------------------------------------------------------------
    @property
    def settings(self) -> ProvidersConfig:
        return settings(self.kernel)

    async def catalog(self) -> Catalog:
        """The current snapshot (built from disk on first use)."""
        if self._catalog is None:
            async with self._lock:
                if self._catalog is None:
                    await self._rebuild()
        assert self._catalog is not None
        return self._catalog

    def snapshot(self) -> Catalog | None:
        """The current snapshot without building it (``None`` before first use); for sync callers."""
        return self._catalog

    def generation(self) -> int:
        """Changes whenever the snapshot is replaced (so whenever :meth:`spec_source` may answer differently)."""
        return self._generation

    def spec_source(self, name: str) -> Any:
        """The driver registry's view of a provider (``ProviderSpec``), from the current snapshot."""
        snapshot = self._catalog
        provider = snapshot.provider(name) if snapshot is not None else None
        return provider.spec() if provider is not None else None

    async def call_cost(self, provider: str, model: str, usage: Any) -> float | None:
        """USD cost of one call served by ``provider``/``model`` (as a ``CompletionResponse`` names
        them); ``None`` when the catalog does not know that model."""
        entry = (self._catalog or await self.catalog()).priced_model(provider, model)
        return cost(entry, usage) if entry is not None else None

    async def _rebuild(self) -> None:
        urls = dict(self.settings.provider_urls)
        self._catalog, self._report = await asyncio.to_thread(store.build_catalog, self.home, urls)
        self._generation += 1

    async def reload(self) -> Catalog:
        """Rebuild from disk (after a file changed outside the API)."""
        async with self._lock:
            await self._rebuild()
        return await self.catalog()

    async def provider_or_404(self, name: str) -> ProviderEntry:
        provider = (await self.catalog()).provider(name)
        if provider is None:
            raise NotFound(f"unknown provider {name[:64]!r}", code="provider_not_found")
        return provider

    # -- auth status (never reads a secret's value) ------------------------------------------------
    def _vault_names(self) -> set[str]:
        # On the event loop on purpose: after the first read the vault is an in-memory dict, and
        # reading it from a worker thread could race a concurrent write.
        try:
            return set(self.kernel.vault.names())
        except (VaultError, OSError, ValueError, RuntimeError):
            return set()

    def key_source(self, provider: ProviderEntry, vault_names: set[str] | None = None) -> str | None:
        """Where a key for ``provider`` is configured: ``env``, ``vault``, ``config``, or ``None``."""
        from librefang_providers.registry import ALTERNATE_KEY_ENVS

        env_names = (provider.key_env(), *ALTERNATE_KEY_ENVS.get(provider.id, ()))
        if any(os.environ.get(name, "").strip() for name in env_names):
            return "env"
        names = self._vault_names() if vault_names is None else vault_names
        if any(name in names for name in env_names):
            return "vault"
        configured = self.settings.provider_api_keys.get(provider.id)
        if configured is not None:
            reference = configured.get_secret_value()
            if reference.startswith("env:"):
                return "config" if os.environ.get(reference[4:], "").strip() else None
            if reference.startswith("vault:"):
                return "config" if reference[6:] in names else None
            return "config" if reference.strip() else None
        return None

    def auth_status(self, provider: ProviderEntry, probe: ProbeResult | None = None,
                    vault_names: set[str] | None = None) -> str:
        """``configured`` / ``missing`` / ``not_required`` / ``local_offline``."""
        if provider.local:
            if probe is not None and not probe.reachable:
                return "local_offline"
            return "not_required"
        if not provider.key_required:
            return "not_required"
        return "configured" if self.key_source(provider, vault_names) else "missing"

    async def local_probes(self, catalog: Catalog, *, fresh: bool = False) -> dict[str, ProbeResult]:
        """Probe every local provider concurrently (cached for a minute)."""
        timeout = self.settings.local_probe_timeout_secs
        local = [p for p in catalog.providers.values() if p.local and p.base_url]
        results = await asyncio.gather(
            *(self.probes.get(p.base_url, p.api_format, timeout, fresh=fresh) for p in local)
        )
        return {p.id: r for p, r in zip(local, results, strict=True)}

    async def statuses(self, catalog: Catalog) -> tuple[dict[str, str], dict[str, ProbeResult]]:
        """Auth status of every provider, and the local probe results behind them."""
        probes = await self.local_probes(catalog)
        names = self._vault_names()
        return {pid: self.auth_status(p, probes.get(pid), names) for pid, p in catalog.providers.items()}, probes

    # -- models --------------------------------------------------------------------------------
    def model_dict(self, catalog: Catalog, model: ModelEntry, available: bool) -> dict[str, Any]:
        data = model.model_dump(exclude={"aliases"})
        data["display_name"] = model.name()
        data["capabilities_catalog"] = {
            "tools": model.supports_tools,
            "vision": model.supports_vision,
            "streaming": model.supports_streaming,
            "thinking": model.supports_thinking,
        }
        data["aliases"] = catalog.aliases_of(model)
        data["available"] = available
        data["is_custom"] = model.source == "custom"
        return data

    async def list_models(self, provider: str | None, tier: str | None, available: bool | None) -> dict[str, Any]:
        catalog = await self.catalog()
        if provider and catalog.provider(provider) is None:
            raise NotFound(f"unknown provider {provider[:64]!r}", code="provider_not_found")
        statuses, _ = await self.statuses(catalog)
        usable = {pid for pid, status in statuses.items() if status in AVAILABLE_STATUSES}
        rows = []
        for model in catalog.list_models(provider=provider, tier=tier):
            is_available = model.provider in usable
            if available is not None and is_available != available:
                continue
            rows.append(self.model_dict(catalog, model, is_available))
        return {
            "models": rows,
            "total": len(catalog.models),
            "available": sum(1 for m in catalog.models if m.provider in usable),
        }

    async def get_model(self, ref: str) -> dict[str, Any]:
        catalog = await self.catalog()
        model = catalog.find_model(ref)
        if model is None:
            raise NotFound(f"model {ref[:200]!r} not found", code="model_not_found")
        provider = catalog.providers.get(model.provider)
        status = self.auth_status(provider) if provider is not None else "missing"
        if provider is not None and provider.local:
            status = self.auth_status(provider, (await self.local_probes(catalog)).get(provider.id))
        return self.model_dict(catalog, model, status in AVAILABLE_STATUSES)

    # -- aliases ------------------------------------------------------------------------------
    async def list_aliases(self) -> dict[str, Any]:
        catalog = await self.catalog()
        user, _ = await asyncio.to_thread(store.read_user_aliases, self.home, store.LoadReport())
        rows = [{"alias": a, "model_id": t, "user_defined": a in user} for a, t in sorted(catalog.aliases.items())]
        return {"aliases": rows, "total": len(rows)}

    async def add_alias(self, alias: str, model_id: str) -> dict[str, Any]:
        async with self._lock:
            if self._catalog is None:
                await self._rebuild()
            catalog = self._catalog
            assert catalog is not None
            if alias in catalog.aliases:
                raise Conflict(f"alias {alias!r} already exists", code="alias_exists")
            if catalog.find_model(alias) is not None:
                raise Conflict(f"{alias!r} is already a model id", code="alias_shadows_model")
            target = catalog.find_model(model_id)
            if target is None:
                raise NotFound(f"model {model_id!r} not found", code="model_not_found")
            user, removed = await asyncio.to_thread(store.read_user_aliases, self.home, store.LoadReport())
            if len(user) >= store.MAX_USER_ALIASES:
                raise PayloadTooLarge(f"at most {store.MAX_USER_ALIASES} user aliases", code="too_many_aliases")
            user[alias] = model_id
            removed.discard(alias)
            await asyncio.to_thread(store.write_user_aliases, self.home, user, removed)
            await self._rebuild()
        return {"alias": alias, "model_id": model_id, "status": "created"}

    async def delete_alias(self, alias: str) -> dict[str, Any]:
        alias = alias.strip().lower()
        async with self._lock:
            if self._catalog is None:
                await self._rebuild()
            assert self._catalog is not None
            if alias not in self._catalog.aliases:
                raise NotFound(f"alias {alias[:64]!r} not found", code="alias_not_found")
            user, removed = await asyncio.to_thread(store.read_user_aliases, self.home, store.LoadReport())
            if alias in user:
                del user[alias]
            bundled = any(alias in (a.lower() for a in m.aliases) for m in self._catalog.models)
            if bundled:
                removed.add(alias)  # a bundled alias stays deleted across restarts
            await asyncio.to_thread(store.write_user_aliases, self.home, user, removed)
            await self._rebuild()
        return {"status": "removed"}

    # -- custom models ------------------------------------------------------------------------
    async def add_custom_model(self, body: Any) -> dict[str, Any]:
        async with self._lock:
            if self._catalog is None:
                await self._rebuild()
            assert self._catalog is not None
            provider = self._catalog.provider(body.provider)
            if provider is None:
                raise NotFound(f"unknown provider {body.provider!r}", code="provider_not_found")
            for alias in body.aliases:
                owner = self._catalog.aliases.get(alias)
                if owner is not None and owner.lower() != body.id.lower():
                    raise Conflict(f"alias {alias!r} already points at {owner!r}", code="alias_exists")
            report = store.LoadReport()
            custom = await asyncio.to_thread(store.read_custom_models, self.home, report)
            if any(m.provider == provider.id and m.id.lower() == body.id.lower() for m in custom):
                raise Conflict(f"custom model {body.id!r} of provider {provider.id!r} already exists",
                               code="model_exists")
            if len(custom) >= store.MAX_CUSTOM_MODELS:
                raise PayloadTooLarge(f"at most {store.MAX_CUSTOM_MODELS} custom models", code="too_many_models")
            data = body.model_dump(exclude_none=True)
            data["provider"] = provider.id
            entry = ModelEntry.model_validate({**data, "source": "custom"})
            replaces = self._catalog.model_in(provider.id, body.id) is not None
            custom.append(entry)
            await asyncio.to_thread(store.write_custom_models, self.home, custom)
            await self._rebuild()
        return {"id": entry.id, "provider": entry.provider, "status": "added", "replaces_builtin": replaces}

    async def delete_custom_model(self, model_id: str) -> dict[str, Any]:
        async with self._lock:
            custom = await asyncio.to_thread(store.read_custom_models, self.home, store.LoadReport())
            head, _, rest = model_id.partition("/")
            keep = [m for m in custom if m.id.lower() != model_id.lower()]
            if len(keep) == len(custom) and rest:
                # "provider/model" names one provider's custom model.
                keep = [m for m in custom if not (m.provider == head.lower() and m.id.lower() == rest.lower())]
            if len(keep) == len(custom):
                raise NotFound(f"custom model {model_id[:200]!r} not found", code="model_not_found")
            await asyncio.to_thread(store.write_custom_models, self.home, keep)
            await self._rebuild()
        return {"status": "removed"}

    # -- catalog status and update --------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        catalog = await self.catalog()
        marker = await asyncio.to_thread(store.read_sync_marker, self.home)
        report = self._report
        return {
            "last_sync": (marker or {}).get("timestamp"),
            "source": (marker or {}).get("source") or ("registry" if report.registry_files else "bundled"),
            "bundled_version": await asyncio.to_thread(store.bundled_version),
            "providers": len(catalog.providers),
            "models": len(catalog.models),
            "custom_models": report.custom_models,
            "aliases": len(catalog.aliases),
            "registry_dir": str(store.registry_dir(self.home)),
            "registry_files": report.registry_files,
            "errors": list(report.errors),
        }

    async def update(self, url: str | None) -> dict[str, Any]:
        """Reload from the local registry folder; with ``url``, first fetch a bundle into it."""
        downloaded = 0
        source = "local"
        if url:
            doc = await self._fetch_bundle(url)
            await asyncio.to_thread(store.write_remote_bundle, self.home, doc)
            downloaded = 1
            source = "url"
        async with self._lock:
            await self._rebuild()
            timestamp = store.now_iso()
            report = self._report
            await asyncio.to_thread(
                store.write_sync_marker, self.home,
                {"timestamp": timestamp, "source": source, "files": report.registry_files},
            )
        catalog = await self.catalog()
        return {
            "status": "ok",
            "source": source,
            "files_downloaded": downloaded,
            "registry_files": report.registry_files,
            "providers_count": len(catalog.providers),
            "models_count": len(catalog.models),
            "timestamp": timestamp,
            "errors": list(report.errors),
        }

    async def _fetch_bundle(self, url: str) -> dict[str, Any]:
        import httpx

        from librefang_providers.ssrf import AllowList, ResponseTooLarge, SsrfError, fetch_limited

        config = self.settings
        try:
            status, body = await fetch_limited(
                self.http_client(), url, allowed=AllowList(config.catalog_allowed_hosts),
                max_bytes=store.MAX_FILE_BYTES, timeout_secs=config.catalog_fetch_timeout_secs,
            )
        except SsrfError as exc:
            raise BadRequest(f"catalog URL refused: {exc}", code="url_refused") from None
        except ResponseTooLarge as exc:
            raise BadGateway(f"catalog source: {exc}", code="upstream_too_large") from None
        except httpx.HTTPError as exc:  # the remote side failed, not the client
            raise BadGateway(f"catalog fetch failed: {type(exc).__name__}", code="upstream_unreachable") from None
        if status != 200:
            raise BadGateway(f"catalog source answered HTTP {status}", code="upstream_error",
                             details={"upstream_status": status})
        try:
            doc = json.loads(body)
        except ValueError:
            raise BadGateway("catalog source did not return JSON", code="upstream_bad_response") from None
        probe = store.LoadReport()
        providers, models = store.parse_document(doc, "download", "registry", probe)
        if not isinstance(doc, dict) or not (providers or models):
            raise BadGateway("catalog source returned no providers or models", code="upstream_bad_response",
                             details={"errors": probe.errors[:10]})
        return doc
