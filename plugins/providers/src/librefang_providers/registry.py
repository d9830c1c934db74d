"""The LLM registry: drivers by provider name, keys, retries with backoff, and the fallback chain.

Resolution of a provider name, in order: a driver factory registered under that name
(``register_llm_providers``); a :class:`ProviderSpec` from a spec source (the model catalog) or the
built-in table, whose ``format`` names the factory; any other name with an explicit ``base_url`` is
treated as OpenAI-compatible (key ``{NAME}_API_KEY``).

Keys, in order: ``[providers] provider_api_keys.<name>`` (``vault:``/``env:``/literal), the
provider's key variable in the environment, then the vault entry of that variable's name (where
``POST /api/providers/{name}/key`` stores it). Keys are never logged, returned or put in errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any

from librefang_providers.config import FallbackProvider, ProvidersConfig
from librefang_providers.drivers import BUILTIN_SPECS, builtin_factory
from librefang_providers.errors import (
    AllProvidersExhausted,
    Attempt,
    BadResponse,
    LLMError,
    MissingApiKey,
    UnknownProvider,
    scrub,
)
from librefang_providers.eventstream import EventStream
from librefang_providers.retry import Backoff
from librefang_providers.types import (
    CompletionRequest,
    CompletionResponse,
    DriverConfig,
    ProviderSpec,
    StreamEvent,
    Target,
)

log = logging.getLogger("librefang.providers")

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# Other variables some providers' keys are commonly found in.
ALTERNATE_KEY_ENVS = {"gemini": ("GOOGLE_API_KEY",)}
MAX_CACHED_DRIVERS = 64
MAX_CACHED_RESOLUTIONS = 256

DriverFactory = Callable[[DriverConfig], Any]
SpecSource = Callable[[str], ProviderSpec | None]


def default_key_env(provider: str) -> str:
    """``groq`` → ``GROQ_API_KEY`` (the reference's convention for unknown providers)."""
    return re.sub(r"[^A-Z0-9]", "_", provider.upper()) + "_API_KEY"


def as_target(entry: Any) -> Target:
    """A fallback entry given as :class:`Target`, :class:`FallbackProvider` or a dict."""
    if isinstance(entry, Target):
        return entry
    if isinstance(entry, dict):
        entry = FallbackProvider.model_validate(entry)
    return Target(entry.provider, entry.model, entry.base_url, entry.api_key_env)


class LLMRegistry:
    """Resolves providers to drivers and calls them with retries and fallback (see module docstring)."""

    def __init__(
        self,
        config: ProvidersConfig | None = None,
        *,
        fallbacks: Iterable[Any] = (),
        resolve_secret: Callable[[str], str] | None = None,
        vault_get: Callable[[str], str | None] | None = None,
        vault_names: Callable[[], list[str]] | None = None,
    ) -> None:
        self.config = config or ProvidersConfig()
        self.fallbacks = [as_target(f) for f in fallbacks]
        self.factories: dict[str, DriverFactory] = {}
        self.owners: dict[str, str] = {}
        self.spec_sources: list[SpecSource] = []
        self._resolve_secret = resolve_secret or (lambda value: value)
        self._vault_get = vault_get or (lambda name: None)
        self._vault_names = vault_names or (lambda: [])
        self._drivers: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._pool: Any = None
        self._keys_seen: set[str] = set()
        # Resolution cache (see _resolve): bumped when factories or spec sources change.
        self._generation = 0
        self._source_versions: list[Callable[[], Any] | None] = []
        self._resolved: dict[tuple[str, str | None, str | None], tuple[tuple[Any, ...], Any, ProviderSpec]] = {}
        self._fingerprints: dict[str, str] = {}
        # Per-slot fast path of driver() (every agent turn calls it twice): the resolution token,
        # spec, key, LRU cache key and driver of the slot's last call. A hit needs the same token and
        # the very same key string (read again on every call: env and vault can change at any time).
        self._slots: dict[tuple[str, str | None, str | None], tuple[Any, ...]] = {}

    # -- registration --------------------------------------------------------------------------
    def register(self, name: str, factory: DriverFactory, *, owner: str = "") -> None:
        """Add a driver factory under ``name``; ``factory(DriverConfig)`` returns a driver."""
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ValueError(f"provider name {name!r} must match {NAME_PATTERN.pattern}")
        if not callable(factory):
            raise ValueError(f"driver factory for {name!r} is not callable")
        if name in self.factories:
            raise ValueError(f"LLM provider {name!r} is already registered by {self.owners.get(name) or 'another plugin'}")
        self.factories[name] = factory
        self.owners[name] = owner
        self._generation += 1

    def add_spec_source(self, source: SpecSource, *, version: Callable[[], Any] | None = None) -> None:
        """Add a lookup ``name -> ProviderSpec | None`` (the catalog); earlier sources win.

        ``version()`` is a value that changes whenever the source's answers may (the catalog's
        snapshot generation): with it the registry reuses a resolution until it changes; a source
        without one is asked on every call."""
        self.spec_sources.append(source)
        self._source_versions.append(version)
        self._generation += 1

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.config.retry_base_delay_ms / 1000.0, self.config.retry_max_delay_secs)

    # -- resolution ---------------------------------------------------------------------------------
    def spec(self, name: str) -> ProviderSpec | None:
        """The provider's spec, with the ``provider_urls`` override applied."""
        found: ProviderSpec | None = None
        for source in self.spec_sources:
            found = source(name)
            if found is not None:
                break
        if found is None:
            found = BUILTIN_SPECS.get(name)
        override = self.config.provider_urls.get(name)
        if found is not None and override:
            found = replace(found, base_url=override)
        return found

    def _resolve_token(self, name: str) -> tuple[Any, ...] | None:
        """Everything a resolution of ``name`` depends on, or ``None`` when it cannot be cached."""
        sources = self._source_versions
        if len(sources) != len(self.spec_sources):  # a source appended to the list directly
            return None
        config = self.config
        if len(sources) == 1:  # the usual case (the catalog): no intermediate list
            version = sources[0]
            if version is None:
                return None
            return (self._generation, config, config.provider_urls.get(name), version())
        versions = []
        for version in sources:
            if version is None:
                return None
            versions.append(version())
        return (self._generation, config, config.provider_urls.get(name), *versions)

    def _resolve(self, name: str, base_url: str | None, api_key_env: str | None) -> tuple[DriverFactory, ProviderSpec]:
        """The factory and spec of a provider slot; reused while nothing it depends on changed
        (factories, spec sources and their versions, the config object and its URL override)."""
        token = self._resolve_token(name)
        key = (name, base_url, api_key_env)
        if token is not None:
            cached = self._resolved.get(key)
            if cached is not None and cached[0] == token:
                return cached[1], cached[2]
        factory, spec = self._compute_resolution(name, base_url, api_key_env)
        if token is not None:
            if len(self._resolved) >= MAX_CACHED_RESOLUTIONS:
                self._resolved.clear()
            self._resolved[key] = (token, factory, spec)
        return factory, spec

    def _compute_resolution(self, name: str, base_url: str | None,
                            api_key_env: str | None) -> tuple[DriverFactory, ProviderSpec]:
        spec = self.spec(name)
        if name in self.factories:
            spec = spec or ProviderSpec(name, self.config.provider_urls.get(name, ""), name,
                                        default_key_env(name), key_required=False)
            factory = self.factories[name]
        elif spec is not None:
            factory = self.factories.get(spec.format)
            if factory is None:
                raise UnknownProvider(f"no driver for wire format {spec.format!r}", provider=name)
        elif base_url and "openai" in self.factories:
            spec = ProviderSpec(name, base_url, "openai", default_key_env(name), key_required=False)
            factory = self.factories["openai"]
        else:
            known = ", ".join(sorted(set(self.factories) | set(BUILTIN_SPECS)))
            raise UnknownProvider(f"unknown provider {name!r} (known: {known}; or give a base_url)", provider=name)
        if base_url:
            spec = replace(spec, base_url=base_url)
        if api_key_env:
            spec = replace(spec, api_key_env=api_key_env)
        return factory, spec

    def _key_envs(self, name: str, spec: ProviderSpec) -> list[str]:
        return [spec.api_key_env or default_key_env(name), *ALTERNATE_KEY_ENVS.get(name, ())]

    def api_key(self, name: str, spec: ProviderSpec) -> str:
        """The provider's key (config, then environment, then vault); empty when none."""
        configured = self.config.provider_api_keys.get(name)
        if configured is not None:
            value = self._resolve_secret(configured.get_secret_value())
            if value:
                return value
        envs = self._key_envs(name, spec)
        for env in envs:
            value = os.environ.get(env, "")
            if value:
                return value
        for env in envs:
            value = self._vault_get(env) or ""
            if value:
                return value
        return ""

    def auth_status(self, name: str) -> str:
        """``configured`` / ``missing`` / ``not_required``, decided without reading any secret value."""
        try:
            _, spec = self._resolve(name, None, None)
        except UnknownProvider:
            return "missing"
        envs = self._key_envs(name, spec)
        if name in self.config.provider_api_keys or any(os.environ.get(e) for e in envs):
            return "configured"
        vault = set(self._vault_names())
        if any(e in vault for e in envs):
            return "configured"
        return "missing" if spec.key_required else "not_required"

    def driver(self, provider: str, *, base_url: str | None = None, api_key_env: str | None = None) -> Any:
        """The (cached) driver for ``provider``; one per provider, base URL and key."""
        slot = (provider, base_url, api_key_env)
        token = self._resolve_token(provider)
        hit = self._slots.get(slot) if token is not None else None
        if hit is not None and hit[0] == token and self.api_key(provider, hit[1]) == hit[2]:
            try:
                self._drivers.move_to_end(hit[3])
            except KeyError:  # evicted from the LRU (or closed): build it again below
                pass
            else:
                return hit[4]
        factory, spec = self._resolve(provider, base_url, api_key_env)
        key = self.api_key(provider, spec)
        if not key and spec.key_required:
            raise MissingApiKey(f"no API key for {provider}: set {spec.api_key_env or default_key_env(provider)} "
                                "or store it in the vault", provider=provider)
        fingerprint = self._fingerprints.get(key)
        if fingerprint is None:
            if key:
                self._keys_seen.add(key)
            if len(self._fingerprints) >= MAX_CACHED_DRIVERS:
                self._fingerprints.clear()
            fingerprint = self._fingerprints[key] = hashlib.sha256(key.encode()).hexdigest()[:16]
        cache_key = (provider, factory, spec.format, spec.base_url, fingerprint)
        driver = self._drivers.get(cache_key)
        if driver is not None:
            self._drivers.move_to_end(cache_key)
            self._remember_slot(slot, token, spec, key, cache_key, driver)
            return driver
        cfg = self.config
        # A built-in driver takes the httpx client from the pool if it ever needs it (its completion
        # calls go over aiohttp); a third party's factory gets the shared httpx client, as documented.
        http_client = None if isinstance(factory, builtin_factory) else self.http_client()
        driver = factory(DriverConfig(
            provider=provider, base_url=spec.base_url, api_key=key,
            request_timeout=cfg.provider_request_timeout_secs, connect_timeout=cfg.provider_connect_timeout_secs,
            stream_idle_timeout=cfg.stream_idle_timeout_secs, http_client=http_client, pool=self.pool(),
        ))
        self._drivers[cache_key] = driver
        while len(self._drivers) > MAX_CACHED_DRIVERS:
            self._drivers.popitem(last=False)
        self._remember_slot(slot, token, spec, key, cache_key, driver)
        return driver

    def _remember_slot(self, slot: tuple[str, str | None, str | None], token: tuple[Any, ...] | None,
                       spec: ProviderSpec, key: str, cache_key: tuple[Any, ...], driver: Any) -> None:
        if token is None:  # a resolution that cannot be reused (an unversioned spec source)
            self._slots.pop(slot, None)
            return
        if len(self._slots) >= MAX_CACHED_RESOLUTIONS and slot not in self._slots:
            self._slots.clear()
        self._slots[slot] = (token, spec, key, cache_key, driver)

    def pool(self) -> Any:
        """The HTTP clients shared by the drivers (:class:`~librefang_providers.drivers.transport.HTTPPool`;
        each client is created on its first use)."""
        if self._pool is None:
            from librefang_providers.drivers.transport import HTTPPool

            self._pool = HTTPPool(self.config.max_connections)
        return self._pool

    def http_client(self) -> Any:
        """The pooled ``httpx.AsyncClient`` of the non-completion calls and third-party drivers."""
        return self.pool().httpx_client()

    def chain(self, request: CompletionRequest, provider: str, fallback_models: Iterable[Any] | None,
              primary: Target | None = None) -> list[Target]:
        """Primary, then ``fallback_models``, then ``[[fallback_providers]]``; ``fallback_models=[]``
        means no fallback at all (as a manifest's empty list does in the reference)."""
        targets = [primary or Target(provider, request.model)]
        if fallback_models is not None:
            extra = [as_target(f) for f in fallback_models]
            if not extra:
                return targets
            targets += extra
        targets += self.fallbacks
        seen: set[tuple[str, str, str | None]] = set()
        unique = []
        for target in targets:
            key = (target.provider, target.model, target.base_url)
            if key not in seen:
                seen.add(key)
                unique.append(target)
        return unique

    # -- calls -------------------------------------------------------------------------------------
    def _failure(self, exc: BaseException, target: Target) -> LLMError:
        if isinstance(exc, LLMError):
            return exc
        # A third-party driver raised something untyped: keep the chain going, without the key.
        message = scrub(f"driver failed: {type(exc).__name__}: {exc}", self._keys_seen)
        return BadResponse(message, provider=target.provider, model=target.model)

    def _retry_delay(self, exc: LLMError, attempt: int, deadline: float | None) -> float | None:
        if not exc.retryable or attempt >= self.config.provider_max_retries:
            return None
        delay = self.backoff.delay(attempt, getattr(exc, "retry_after", None))
        if delay is None or (deadline is not None and time.monotonic() + delay > deadline):
            return None
        return delay

    def _give_up(self, attempts: list[Attempt]) -> LLMError:
        if len(attempts) == 1:
            return attempts[0].error
        return AllProvidersExhausted(attempts)

    async def complete(self, request: CompletionRequest, *, provider: str,
                       fallback_models: Iterable[Any] | None = None, base_url: str | None = None,
                       api_key_env: str | None = None) -> CompletionResponse:
        """Call ``provider`` (retrying transient errors), then each fallback in turn. The response's
        ``provider``/``model`` name the slot that served. One slot failing raises its own typed error;
        several raise :class:`AllProvidersExhausted`. ``base_url``/``api_key_env`` apply to the primary
        slot (an agent manifest's own endpoint and key variable)."""
        attempts: list[Attempt] = []
        deadline = time.monotonic() + request.timeout if request.timeout else None
        primary = Target(provider, request.model, base_url, api_key_env)
        for target in self.chain(request, provider, fallback_models, primary):
            call_request = request if target.model == request.model else replace(request, model=target.model)
            try:
                driver = self.driver(target.provider, base_url=target.base_url, api_key_env=target.api_key_env)
                return await self._retrying(lambda d=driver, r=call_request: d.complete(r), target, deadline)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = self._failure(exc, target)
                attempts.append(Attempt(target.provider, target.model, failure))
                log.warning("provider %s/%s failed: %s", target.provider, target.model, failure.code)
        raise self._give_up(attempts)

    async def _retrying(self, call: Callable[[], Awaitable[CompletionResponse]], target: Target,
                        deadline: float | None) -> CompletionResponse:
        attempt = 0
        while True:
            try:
                return await call()
            except LLMError as exc:
                delay = self._retry_delay(exc, attempt, deadline)
                if delay is None:
                    raise
                log.info("provider %s/%s: %s, retry %d in %.2fs", target.provider, target.model, exc.code,
                         attempt + 1, delay)
                await asyncio.sleep(delay)
                attempt += 1

    def stream(self, request: CompletionRequest, *, provider: str,
               fallback_models: Iterable[Any] | None = None, base_url: str | None = None,
               api_key_env: str | None = None) -> EventStream:
        """Stream from ``provider`` with the same retry and fallback rules as :meth:`complete`, applied
        until the first event arrives; after that the stream is committed to that slot and a failure
        is raised as is (with the partial text). The answer is an :class:`EventStream` (an async
        iterator of the events, closed with ``aclose()``)."""
        return EventStream(self._stream_batches(request, provider, fallback_models, base_url, api_key_env))

    async def _stream_batches(self, request: CompletionRequest, provider: str, fallback_models: Iterable[Any] | None,
                              base_url: str | None, api_key_env: str | None) -> AsyncIterator[list[StreamEvent]]:
        """The events in lists: one per network read from a driver with ``stream_batches`` (see
        ``HTTPDriver.stream_from_batches``), one per event from any other driver."""
        attempts: list[Attempt] = []
        deadline = time.monotonic() + request.timeout if request.timeout else None
        primary = Target(provider, request.model, base_url, api_key_env)
        for target in self.chain(request, provider, fallback_models, primary):
            call_request = request if target.model == request.model else replace(request, model=target.model)
            attempt = 0
            while True:
                events: Any = None
                batched = False
                try:
                    driver = self.driver(target.provider, base_url=target.base_url, api_key_env=target.api_key_env)
                    if getattr(getattr(type(driver), "stream", None), "from_batches", False):
                        batched = True
                        events = driver.stream_batches(call_request).__aiter__()
                        first = await events.__anext__()
                    else:
                        events = driver.stream(call_request).__aiter__()
                        first = [await events.__anext__()]
                except asyncio.CancelledError:
                    await _close(events)
                    raise
                except StopAsyncIteration:
                    failure: LLMError = BadResponse("empty stream", provider=target.provider, model=target.model)
                except Exception as exc:
                    await _close(events)
                    failure = self._failure(exc, target)
                else:
                    try:
                        yield first
                        if batched:
                            async for batch in events:
                                yield batch
                        else:
                            async for event in events:
                                yield [event]
                    finally:
                        await _close(events)
                    return
                delay = self._retry_delay(failure, attempt, deadline)
                if delay is None:
                    attempts.append(Attempt(target.provider, target.model, failure))
                    log.warning("provider %s/%s failed: %s", target.provider, target.model, failure.code)
                    break
                await asyncio.sleep(delay)
                attempt += 1
        raise self._give_up(attempts)

    async def aclose(self) -> None:
        """Close every driver and the shared connection pool."""
        drivers = list(self._drivers.values())
        self._drivers.clear()
        self._slots.clear()
        for driver in drivers:
            close = getattr(driver, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception as exc:  # one bad third-party driver must not block shutdown
                    log.warning("closing a driver failed: %s", type(exc).__name__)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.aclose()


async def _close(events: Any) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        await close()

