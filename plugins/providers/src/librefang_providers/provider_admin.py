"""Provider administration: listing with auth status, keys in the vault, base-URL overrides, the
connectivity test (a real, short request through the driver registry) and Ollama detection.

Keys are stored in the kernel's vault under the provider's key variable name (``ANTHROPIC_API_KEY``),
which is where the driver registry looks after the environment. No response or log line carries a
key; upstream error messages are scrubbed of it before they are returned.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from librefang.errors import ApiError, BadGateway, BadRequest, Conflict

from librefang_providers import catalog_store as store
from librefang_providers.catalog import Catalog, ProviderEntry
from librefang_providers.probe import ProbeResult, probe
from librefang_providers.service import AVAILABLE_STATUSES, CatalogService, catalog_service

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel

TEST_PROMPT = "Reply with the single word: pong"
TEST_MAX_TOKENS = 16
MAX_REPLY_CHARS = 200
MAX_TEST_RESULTS = 256


class ProviderAdmin:
    """Provider operations for one kernel (stateless apart from the catalog service's caches)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.catalog_service: CatalogService = catalog_service(kernel)

    # -- listing ------------------------------------------------------------------------------
    def _info(self, catalog: Catalog, provider: ProviderEntry, status: str, probe_result: ProbeResult | None) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": provider.id,
            "display_name": provider.display_name,
            "api_key_env": provider.key_env(),
            "base_url": provider.base_url,
            "key_required": provider.key_required,
            "api_format": provider.api_format,
            "auth_status": status,
            "model_count": catalog.model_count(provider.id),
            "signup_url": provider.signup_url,
            "aliases": list(provider.aliases),
            "is_local": provider.local,
            "is_custom": provider.source != "bundled",
        }
        if probe_result is not None:
            info.update(probe_result.as_dict())
        tested = self.catalog_service.test_results.get(provider.id)
        if tested is not None:
            info.setdefault("last_tested", tested["last_tested"])
            info.setdefault("latency_ms", tested["latency_ms"])
            info["last_test_status"] = tested["status"]
        return info

    async def list_providers(self) -> dict[str, Any]:
        catalog = await self.catalog_service.catalog()
        statuses, probes = await self.catalog_service.statuses(catalog)
        rows = [self._info(catalog, p, statuses[pid], probes.get(pid)) for pid, p in catalog.providers.items()]
        return {"providers": rows, "total": len(rows)}

    async def get_provider(self, name: str) -> dict[str, Any]:
        service = self.catalog_service
        provider = await service.provider_or_404(name)
        catalog = await service.catalog()
        probe_result = None
        if provider.local and provider.base_url:
            probe_result = await service.probes.get(provider.base_url, provider.api_format,
                                                    service.settings.local_probe_timeout_secs)
        names = service._vault_names()
        status = service.auth_status(provider, probe_result, names)
        info = self._info(catalog, provider, status, probe_result)
        available = status in AVAILABLE_STATUSES
        info["models"] = [service.model_dict(catalog, m, available) for m in catalog.models_of(provider.id)]
        return info

    # -- keys -----------------------------------------------------------------------------------
    async def set_key(self, name: str, key: str, request_id: str = "", actor: str = "api") -> dict[str, Any]:
        service = self.catalog_service
        provider = await service.provider_or_404(name)
        secret_name = provider.key_env()
        try:
            await asyncio.to_thread(self.kernel.vault.set, secret_name, key)
        except Exception as exc:  # vault unreadable (wrong key): say so, without any secret
            raise ApiError(f"the vault could not store the key: {type(exc).__name__}", status=500,
                           code="vault_error") from None
        await self.kernel.audit.record("ProviderKeySet", actor=actor, target=provider.id,
                                       detail={"secret": secret_name}, request_id=request_id)
        return {"status": "saved", "provider": provider.id, "auth_status": service.auth_status(provider),
                "stored_in": "vault", "secret_name": secret_name}

    async def delete_key(self, name: str, request_id: str = "", actor: str = "api") -> dict[str, Any]:
        service = self.catalog_service
        provider = await service.provider_or_404(name)
        secret_name = provider.key_env()
        try:
            existed = await asyncio.to_thread(self.kernel.vault.delete, secret_name)
        except Exception as exc:
            raise ApiError(f"the vault could not be updated: {type(exc).__name__}", status=500,
                           code="vault_error") from None
        if not existed:
            from librefang.errors import NotFound

            raise NotFound(f"no key for {provider.id} is stored in the vault", code="key_not_found")
        await self.kernel.audit.record("ProviderKeyRemoved", actor=actor, target=provider.id,
                                       detail={"secret": secret_name}, request_id=request_id)
        return {"status": "removed", "provider": provider.id, "auth_status": service.auth_status(provider),
                "secret_name": secret_name}

    # -- base URL --------------------------------------------------------------------------------
    async def set_url(self, name: str, url: str, request_id: str = "", actor: str = "api") -> dict[str, Any]:
        from librefang_providers.ssrf import SsrfError, check_base_url

        service = self.catalog_service
        provider = await service.provider_or_404(name)
        try:
            clean = check_base_url(url)
        except SsrfError as exc:
            raise BadRequest(f"invalid base_url: {exc}", code="invalid_url") from None
        if provider.id in service.settings.provider_urls:
            # config.toml wins at the driver registry too, so an API override would be silently ignored.
            raise Conflict(f"the base URL of {provider.id} is set in config.toml ([providers] provider_urls); "
                           "change it there", code="url_set_in_config")
        async with service._lock:
            overrides = await asyncio.to_thread(store.read_url_overrides, self.kernel.home, store.LoadReport())
            overrides[provider.id] = clean
            await asyncio.to_thread(store.write_url_overrides, self.kernel.home, overrides)
            await service._rebuild()
        await self.kernel.audit.record("ProviderUrlSet", actor=actor, target=provider.id,
                                       detail={"base_url": clean}, request_id=request_id)
        result: dict[str, Any] = {"status": "saved", "provider": provider.id, "base_url": clean}
        if provider.local:
            found = await service.probes.get(clean, provider.api_format, service.settings.local_probe_timeout_secs,
                                             fresh=True)
            result.update(reachable=found.reachable, latency_ms=found.latency_ms, discovered_models=found.models)
        return result

    # -- connectivity test --------------------------------------------------------------------------
    async def _test_model(self, provider: ProviderEntry, requested: str | None) -> str:
        catalog = await self.catalog_service.catalog()
        if requested:
            return requested
        default = catalog.default_model_for(provider.id)
        if default is not None:
            return default.id
        if provider.local and provider.base_url:
            found = await self.catalog_service.probes.get(
                provider.base_url, provider.api_format, self.catalog_service.settings.local_probe_timeout_secs)
            if found.models:
                return found.models[0]
        raise BadRequest(f"no model is known for {provider.id}; pass ?model=<id>", code="model_required")

    async def test(self, name: str, model: str | None) -> dict[str, Any]:
        """Send one short real request through the driver registry."""
        from librefang_providers.api import CompletionRequest, LLMError, Message, MissingApiKey, get_registry

        service = self.catalog_service
        provider = await service.provider_or_404(name)
        if not provider.base_url:
            raise BadRequest(f"{provider.id} has no base URL; set one with PUT /api/providers/{provider.id}/url",
                             code="base_url_required")
        if provider.key_required and service.key_source(provider) is None:
            raise BadRequest(f"no API key for {provider.id}: set {provider.key_env()} or "
                             f"POST /api/providers/{provider.id}/key", code="missing_api_key")
        model_id = await self._test_model(provider, model)
        timeout = service.settings.provider_test_timeout_secs
        request = CompletionRequest(model=model_id, messages=[Message("user", TEST_PROMPT)],
                                    max_tokens=TEST_MAX_TOKENS, timeout=timeout)
        registry = get_registry(self.kernel)
        started = time.perf_counter()
        try:
            response = await asyncio.wait_for(
                registry.complete(request, provider=provider.id, fallback_models=[]), timeout + 1)
        except MissingApiKey as exc:
            raise BadRequest(exc.message, code="missing_api_key") from None
        except LLMError as exc:
            self._remember(provider.id, "error", started)
            status = exc.status
            where = f"HTTP {status}" if status else exc.code
            message = self._scrub(registry, provider, exc.message)
            raise BadGateway(f"{provider.id} failed ({where}): {message}", code="provider_error", details={
                "provider": provider.id, "model": model_id, "upstream_status": status,
                "upstream_code": exc.code, "upstream_message": message,
            }) from None
        except TimeoutError:
            self._remember(provider.id, "error", started)
            raise BadGateway(f"{provider.id} did not answer within {timeout:g}s", code="provider_timeout",
                             details={"provider": provider.id, "model": model_id, "upstream_status": None}) from None
        latency = self._remember(provider.id, "ok", started)
        usage = response.usage
        return {
            "status": "ok",
            "provider": response.provider,
            "model": response.model,
            "latency_ms": latency,
            "reply": response.text[:MAX_REPLY_CHARS],
            "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                      "cache_read_tokens": usage.cache_read_tokens, "cache_write_tokens": usage.cache_write_tokens},
            "cost_usd": await service.call_cost(response.provider, response.model, usage),
        }

    def _scrub(self, registry: Any, provider: ProviderEntry, text: str) -> str:
        """Belt and braces over the drivers' own scrubbing: no key, no credential shape."""
        from librefang.logs import scrub as scrub_shapes

        from librefang_providers.errors import scrub

        secrets = [registry.api_key(provider.id, provider.spec()), *self.kernel.vault.known_values()]
        return scrub_shapes(scrub(text, secrets))[:1000]

    def _remember(self, provider_id: str, status: str, started: float) -> int:
        latency = int((time.perf_counter() - started) * 1000)
        results = self.catalog_service.test_results
        if len(results) >= MAX_TEST_RESULTS and provider_id not in results:
            results.pop(next(iter(results)))
        results[provider_id] = {"status": status, "latency_ms": latency, "last_tested": store.now_iso()}
        return latency

    # -- ollama ------------------------------------------------------------------------------------
    async def detect_ollama(self) -> dict[str, Any]:
        """Probe the Ollama API at the ``ollama`` provider's base URL now (short timeout, no cache)."""
        service = self.catalog_service
        catalog = await service.catalog()
        provider = catalog.providers.get("ollama")
        base_url = provider.base_url if provider is not None else "http://127.0.0.1:11434"
        found = await probe(service.http_client(), base_url, "ollama", service.settings.ollama_detect_timeout_secs)
        service.probes.store(found)
        return {"available": found.reachable, "models": found.models, "base_url": base_url,
                "latency_ms": found.latency_ms, "error": found.error}
