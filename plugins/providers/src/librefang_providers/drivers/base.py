"""What every HTTP driver shares: the pooled client, timeouts, error mapping and key scrubbing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

from librefang_providers.errors import (
    AuthFailed,
    BadResponse,
    ConnectionFailed,
    ContextTooLong,
    LLMError,
    ModelNotFound,
    Overloaded,
    RateLimited,
    TimedOut,
    UpstreamError,
    scrub,
)
from librefang_providers.retry import parse_retry_after
from librefang_providers.types import CompletionRequest, DriverConfig

# Longest upstream error message we keep (bodies can be whole HTML pages).
MAX_ERROR_MESSAGE = 500
# Largest non-streaming response body we accept (a runaway or hostile server must not exhaust memory).
MAX_RESPONSE_BYTES = 32 * 1024 * 1024

_CONTEXT_PHRASES = (
    "context length",
    "context_length",
    "context window",
    "maximum context",
    "prompt is too long",
    "input is too long",
    "too many tokens",
    "token limit",
    "tokens exceeds",
    "exceeds the maximum number of tokens",
)
_AUTH_KINDS = {"authentication_error", "permission_error", "invalid_api_key", "UNAUTHENTICATED", "PERMISSION_DENIED"}
_RATE_KINDS = {"rate_limit_error", "rate_limit_exceeded", "RESOURCE_EXHAUSTED"}
_OVERLOAD_KINDS = {"overloaded_error", "UNAVAILABLE", "server_overloaded"}


class NoCookies(CookieJar):
    """A cookie jar that never stores a cookie (and so never sends one).

    LLM APIs authenticate with keys, not cookies; a shared client that kept a provider's (or a
    load balancer's) Set-Cookie would replay it to every later call of every agent. Refusing in the
    policy covers any path into the jar; the overrides skip the parsing httpx asks for on every
    response."""

    def __init__(self) -> None:
        super().__init__(policy=DefaultCookiePolicy(allowed_domains=[]))

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: Any) -> None:
        return None

    def set_cookie_if_ok(self, cookie: Any, request: Any) -> None:
        return None


class NoCookieStore(httpx.Cookies):
    """``httpx.Cookies`` over a :class:`NoCookies` jar that skips reading responses altogether
    (httpx builds a ``urllib`` request wrapper for every response just to offer it to the jar)."""

    def __init__(self) -> None:
        super().__init__(NoCookies())

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class CookielessClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` whose cookie store never keeps anything (see :class:`NoCookies`)."""

    @property  # type: ignore[override]
    def cookies(self) -> httpx.Cookies:
        store = self.__dict__.get("_no_cookies")
        if store is None:
            store = self.__dict__["_no_cookies"] = NoCookieStore()
        return store

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        return None  # nothing is kept: assigning cookies to the shared client has no effect


def new_http_client(max_connections: int = 100) -> httpx.AsyncClient:
    """A pooled async client (keep-alive; per-request timeouts are set by each call; no cookies)."""
    return CookielessClient(
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=20, keepalive_expiry=30),
        timeout=httpx.Timeout(120.0, connect=10.0),
        follow_redirects=False,
        cookies=NoCookies(),
    )


def classify(
    status: int | None,
    message: str,
    *,
    kind: str = "",
    retry_after: float | None = None,
    provider: str = "",
    model: str = "",
) -> LLMError:
    """The typed error for an upstream failure (HTTP status and/or the provider's error type)."""
    kw: dict[str, Any] = {"provider": provider, "model": model, "status": status}
    low = message.lower()
    if status == 429 or kind in _RATE_KINDS:
        return RateLimited(message, retry_after=retry_after, **kw)
    if status in (503, 529) or kind in _OVERLOAD_KINDS or "overloaded" in low:
        return Overloaded(message, retry_after=retry_after, **kw)
    if status in (401, 403) or kind in _AUTH_KINDS:
        return AuthFailed(message, **kw)
    if status == 413 or kind == "context_length_exceeded" or any(p in low for p in _CONTEXT_PHRASES):
        return ContextTooLong(message, **kw)
    if status == 404 or kind in {"not_found_error", "model_not_found", "NOT_FOUND"}:
        return ModelNotFound(message, **kw)
    return UpstreamError(message, **kw)


def error_details(body: Any) -> tuple[str, str, Any]:
    """(message, kind, the error object) from the usual error body shapes:
    ``{"error": {"message", "type"|"status"|"code"}}`` (OpenAI, Anthropic, Gemini) or ``{"error": "..."}`` (Ollama)."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, str):
            return err, "", err
        if isinstance(err, dict):
            message = err.get("message") or err.get("error") or json.dumps(err)[:MAX_ERROR_MESSAGE]
            kind = err.get("type") or err.get("status") or err.get("code") or ""
            if body.get("type") == "error" and isinstance(body.get("error"), dict):
                kind = body["error"].get("type", kind)
            return str(message), str(kind), err
    return "", "", None


class HTTPDriver:
    """Base of the built-in drivers. Subclasses set ``default_base_url`` and implement
    ``complete`` / ``stream``; they use :meth:`post_json` and :meth:`open_stream` for I/O."""

    default_base_url = ""

    def __init__(self, config: DriverConfig) -> None:
        self.config = config
        self.provider = config.provider
        self.base_url = (config.base_url or self.default_base_url).rstrip("/")
        self._owns_client = config.http_client is None
        self.client: httpx.AsyncClient = config.http_client or new_http_client()

    async def aclose(self) -> None:
        """Close the HTTP client when this driver created it (a shared one belongs to the registry)."""
        if self._owns_client:
            await self.client.aclose()

    # -- helpers -----------------------------------------------------------------------------------
    def scrub(self, text: str) -> str:
        """``text`` without the API key (upstream errors sometimes echo it)."""
        return scrub(text, (self.config.api_key,))

    def timeout(self, request: CompletionRequest, *, stream: bool) -> httpx.Timeout:
        """Per-call timeouts: a stream's read timeout is the inactivity limit (a stall surfaces as
        :class:`TimedOut`), a plain call's is the whole budget."""
        total = request.timeout or self.config.request_timeout
        read = min(self.config.stream_idle_timeout, total) if stream else total
        return httpx.Timeout(connect=min(self.config.connect_timeout, total), read=read, write=total, pool=total)

    def deadline(self, request: CompletionRequest) -> float:
        return time.monotonic() + (request.timeout or self.config.request_timeout)

    def error_from_body(self, status: int, headers: Mapping[str, str], body: bytes, model: str) -> LLMError:
        """Map an error response to a typed error, with the key scrubbed from the message."""
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        message, kind, detail = error_details(parsed)
        if not message:
            message = body.decode("utf-8", "replace").strip()[:MAX_ERROR_MESSAGE] or f"HTTP {status}"
        retry_after = parse_retry_after(headers) if headers else None
        if retry_after is None:
            retry_after = self.retry_after_from_detail(detail)
        return classify(
            status, self.scrub(message[:MAX_ERROR_MESSAGE]), kind=kind, retry_after=retry_after,
            provider=self.provider, model=model,
        )

    def retry_after_from_detail(self, detail: Any) -> float | None:
        """Provider-specific retry hint inside the error body (Gemini overrides this)."""
        return None

    def stream_error(self, obj: Any, model: str) -> LLMError:
        """An error reported inside a stream (no HTTP status)."""
        message, kind, _ = error_details(obj)
        return classify(None, self.scrub(message[:MAX_ERROR_MESSAGE] or "error in stream"), kind=kind,
                        provider=self.provider, model=model)

    def transport_error(self, exc: httpx.HTTPError, model: str, partial: str, emitted: bool) -> LLMError:
        """Map an httpx failure. Before anything was emitted a dropped connection may be retried."""
        kw: dict[str, Any] = {"provider": self.provider, "model": model}
        detail = self.scrub(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, httpx.TimeoutException):
            what = "stream stalled" if emitted or partial else "no response in time"
            return TimedOut(f"{what} ({detail})", partial_text=partial, **kw)
        if emitted or partial:
            return BadResponse(f"connection lost mid-stream ({detail})", partial_text=partial, **kw)
        return ConnectionFailed(f"cannot reach provider ({detail})", **kw)

    # -- I/O -----------------------------------------------------------------------------------------
    async def post_json(self, url: str, body: dict[str, Any], headers: dict[str, str],
                        request: CompletionRequest) -> Any:
        """POST a JSON body and return the parsed JSON answer (typed errors on any failure)."""
        content = json.dumps(body, separators=(",", ":")).encode()
        budget = request.timeout or self.config.request_timeout
        try:
            # httpx's read timeout is per read; the budget bounds the whole call (a trickling server).
            async with asyncio.timeout(budget), self.client.stream(
                "POST", url, content=content, headers=headers, timeout=self.timeout(request, stream=False)
            ) as resp:
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        raise BadResponse("response body too large", provider=self.provider, model=request.model)
                    chunks.append(chunk)
                raw = b"".join(chunks)
                if resp.status_code >= 400:
                    raise self.error_from_body(resp.status_code, resp.headers, raw, request.model)
        except httpx.HTTPError as exc:
            raise self.transport_error(exc, request.model, "", False) from None
        except TimeoutError:
            raise self.timed_out(request.model, "") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise BadResponse("response is not valid JSON", provider=self.provider, model=request.model) from None

    @asynccontextmanager
    async def open_stream(self, url: str, body: dict[str, Any], headers: dict[str, str],
                          request: CompletionRequest) -> AsyncIterator[httpx.Response]:
        """Send a streaming POST; yields the response once its status is known to be a success."""
        content = json.dumps(body, separators=(",", ":")).encode()
        req = self.client.build_request("POST", url, content=content, headers=headers,
                                        timeout=self.timeout(request, stream=True))
        try:
            resp = await self.client.send(req, stream=True)
        except httpx.HTTPError as exc:
            raise self.transport_error(exc, request.model, "", False) from None
        try:
            if resp.status_code >= 400:
                try:
                    raw = await resp.aread()
                except httpx.HTTPError:
                    raw = b""
                raise self.error_from_body(resp.status_code, resp.headers, raw[:MAX_RESPONSE_BYTES], request.model)
            yield resp
        finally:
            await resp.aclose()

    def bad_json(self, model: str, partial: str) -> BadResponse:
        return BadResponse("malformed chunk in stream (not JSON)", partial_text=partial,
                           provider=self.provider, model=model)

    def timed_out(self, model: str, partial: str) -> TimedOut:
        return TimedOut("the call exceeded its time budget", partial_text=partial, provider=self.provider, model=model)

    def incomplete(self, model: str, partial: str) -> BadResponse:
        return BadResponse("stream ended before the provider finished", partial_text=partial,
                           provider=self.provider, model=model)


def parse_tool_input(text: str, driver: HTTPDriver, model: str) -> dict[str, Any]:
    """The JSON object of a tool call's arguments (empty text means no arguments)."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise BadResponse("tool call arguments are not valid JSON", provider=driver.provider, model=model) from None
    if not isinstance(value, dict):
        raise BadResponse("tool call arguments are not a JSON object", provider=driver.provider, model=model)
    return value
