"""HTTP routes of provider administration: ``/api/providers*`` (thin: logic in provider_admin.py, oauth.py)."""

from __future__ import annotations

import re

from librefang import Router, current_kernel
from librefang.errors import BadRequest
from quart import g

from librefang_providers import oauth
from librefang_providers.provider_admin import ProviderAdmin
from librefang_providers.schemas import (
    KeyRemoved,
    KeySaved,
    OAuthPoll,
    OAuthStart,
    OllamaDetect,
    ProviderDetail,
    ProviderKeyBody,
    ProviderList,
    ProviderTestResult,
    ProviderUrlBody,
    TestQuery,
    UrlSaved,
)

_POLL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _who() -> tuple[str, str]:
    return getattr(g, "request_id", "") or "", str(getattr(g, "principal", "") or "api")


def providers_router() -> Router:
    """Routes of provider administration."""
    router = Router("provider_admin", tags=("providers",))

    @router.get("/api/providers", cost=1, response=ProviderList)
    async def list_providers() -> ProviderList:
        """Every provider with its auth status (local servers probed, cached for a minute)."""
        return ProviderList.model_validate(await ProviderAdmin(current_kernel()).list_providers())

    @router.get("/api/providers/ollama/detect", response=OllamaDetect)
    async def detect_ollama() -> OllamaDetect:
        """Probe the local Ollama API (``GET /api/tags`` at the ollama base URL, short timeout)."""
        return OllamaDetect.model_validate(await ProviderAdmin(current_kernel()).detect_ollama())

    @router.post("/api/providers/github-copilot/oauth/start", response=OAuthStart)
    async def copilot_oauth_start() -> OAuthStart:
        """Start the GitHub device flow for Copilot; returns the code the user enters."""
        return OAuthStart.model_validate(await oauth.start(current_kernel()))

    @router.get("/api/providers/github-copilot/oauth/poll/<poll_id>", response=OAuthPoll)
    async def copilot_oauth_poll(poll_id: str) -> OAuthPoll:
        """Poll a device flow: pending, complete (token stored in the vault), expired, denied or error."""
        if not _POLL_ID.match(poll_id):
            raise BadRequest("invalid poll_id", code="invalid_poll_id")
        request_id, actor = _who()
        return OAuthPoll.model_validate(await oauth.poll(current_kernel(), poll_id, request_id, actor))

    @router.get("/api/providers/<name>", response=ProviderDetail)
    async def get_provider(name: str) -> ProviderDetail:
        """One provider with its models and auth status."""
        return ProviderDetail.model_validate(await ProviderAdmin(current_kernel()).get_provider(name))

    @router.post("/api/providers/<name>/key", body=ProviderKeyBody, response=KeySaved)
    async def set_provider_key(name: str, body: ProviderKeyBody) -> KeySaved:
        """Store the provider's API key in the vault (never echoed back)."""
        request_id, actor = _who()
        result = await ProviderAdmin(current_kernel()).set_key(name, body.key, request_id, actor)
        return KeySaved.model_validate(result)

    @router.delete("/api/providers/<name>/key", response=KeyRemoved)
    async def delete_provider_key(name: str) -> KeyRemoved:
        """Remove the provider's API key from the vault."""
        request_id, actor = _who()
        return KeyRemoved.model_validate(await ProviderAdmin(current_kernel()).delete_key(name, request_id, actor))

    @router.post("/api/providers/<name>/test", query=TestQuery, response=ProviderTestResult)
    async def test_provider(name: str, query: TestQuery) -> ProviderTestResult:
        """Send one short real request to the provider; a failure is 502 with the upstream status."""
        return ProviderTestResult.model_validate(await ProviderAdmin(current_kernel()).test(name, query.model))

    @router.put("/api/providers/<name>/url", body=ProviderUrlBody, response=UrlSaved)
    async def set_provider_url(name: str, body: ProviderUrlBody) -> UrlSaved:
        """Override the provider's base URL (http/https, no credentials, no metadata hosts)."""
        request_id, actor = _who()
        result = await ProviderAdmin(current_kernel()).set_url(name, body.base_url, request_id, actor)
        return UrlSaved.model_validate(result)

    return router
