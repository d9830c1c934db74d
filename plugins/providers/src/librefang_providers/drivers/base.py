"""What every HTTP driver shares: the pooled clients, timeouts, error mapping and key scrubbing.

The completion calls (:meth:`HTTPDriver.post_json`, :meth:`HTTPDriver.open_stream`) go over the pool's
lean HTTP/1.1 client (aiohttp's session through a proxy; see ``transport.py`` for why);
:attr:`HTTPDriver.client` is still the pooled ``httpx.AsyncClient`` for a subclass that makes other
calls with it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from librefang_providers.drivers.transport import HTTPPool, StreamResponse, read_limited
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


# orjson options: what stdlib json cannot encode (dataclasses, datetimes, subclasses of str/int/dict/list)
# goes to the stdlib fallback, so what is accepted and how it is written is unchanged.
_ORJSON_OPTS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS


def dump_body(body: Any) -> bytes:
    """A request body as compact JSON bytes. orjson is ~13x faster than ``json.dumps`` on a long
    conversation (the body of every call carries the whole history: 35 KB took 0.37 ms, 5% of the
    daemon's CPU per turn); what orjson refuses (lone surrogates, non-string keys, integers over 64
    bits, the types above) is written by ``json`` exactly as before. One difference: a NaN or infinite
    float becomes ``null`` (``json`` wrote ``NaN``, which is not JSON and which providers refuse)."""
    try:
        return orjson.dumps(body, option=_ORJSON_OPTS)
    except TypeError:
        return json.dumps(body, separators=(",", ":")).encode()


def load_json(data: bytes | str) -> Any:
    """Parse one JSON document (a response body, a stream event): orjson (4x faster on a stream
    event), ``json`` for what orjson refuses (NaN/Infinity, escaped lone surrogates, a BOM or UTF-16);
    ``ValueError`` when neither can."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


# Failures of the transport: aiohttp's own, and the socket errors (TimeoutError included) it may let through.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError)


def is_timeout(exc: BaseException) -> bool:
    """A timeout of the transport (aiohttp's socket timeouts, or httpx's for a driver using ``client``)."""
    if isinstance(exc, TimeoutError):
        return True
    httpx = sys.modules.get("httpx")  # only a driver that used the httpx client can raise its errors
    return httpx is not None and isinstance(exc, httpx.TimeoutException)


class HTTPDriver:
    """Base of the built-in drivers. Subclasses set ``default_base_url`` and implement
    ``complete`` / ``stream``; they use :meth:`post_json` and :meth:`open_stream` for I/O.

    ``config.pool`` is the registry's shared :class:`HTTPPool`; a driver built without one makes its
    own (closed by :meth:`aclose`). ``config.http_client``, when given, is what :attr:`client` returns."""

    default_base_url = ""

    def __init__(self, config: DriverConfig) -> None:
        self.config = config
        self.provider = config.provider
        self.base_url = (config.base_url or self.default_base_url).rstrip("/")
        pool = getattr(config, "pool", None)
        self._owns_pool = pool is None
        self.pool: HTTPPool = pool if pool is not None else HTTPPool()
        self._client_override: Any = config.http_client
        self._timeouts: dict[tuple[bool, float | None], Any] = {}

    @property
    def client(self) -> Any:
        """The pooled ``httpx.AsyncClient`` (``config.http_client``, else the pool's; created on first use)."""
        if self._client_override is not None:
            return self._client_override
        return self.pool.httpx_client()

    @client.setter
    def client(self, client: Any) -> None:
        self._client_override = client

    async def aclose(self) -> None:
        """Close the pool when this driver created it (a shared one belongs to the registry)."""
        if self._owns_pool:
            await self.pool.aclose()

    # -- helpers -----------------------------------------------------------------------------------
    def scrub(self, text: str) -> str:
        """``text`` without the API key (upstream errors sometimes echo it)."""
        return scrub(text, (self.config.api_key,))

    def timeout(self, request: CompletionRequest, *, stream: bool) -> Any:
        """Per-call ``httpx.Timeout`` for a call made with :attr:`client` (see :meth:`client_timeout`)."""
        import httpx

        total = request.timeout or self.config.request_timeout
        read = min(self.config.stream_idle_timeout, total) if stream else total
        return httpx.Timeout(connect=min(self.config.connect_timeout, total), read=read, write=total, pool=total)

    def client_timeout(self, request: CompletionRequest, *, stream: bool) -> aiohttp.ClientTimeout:
        """Per-call timeouts of the completion calls: a stream's socket read timeout is the inactivity
        limit (a stall surfaces as :class:`TimedOut`), a plain call's is the whole budget; waiting for a
        pooled connection and connecting are bounded by the budget and the connect timeout."""
        key = (stream, request.timeout)
        found = self._timeouts.get(key)
        if found is None:
            total = request.timeout or self.config.request_timeout
            read = min(self.config.stream_idle_timeout, total) if stream else total
            found = aiohttp.ClientTimeout(total=None, connect=total, sock_read=read,
                                          sock_connect=min(self.config.connect_timeout, total))
            if len(self._timeouts) < 64:  # request.timeout is caller-chosen: keep the cache small
                self._timeouts[key] = found
        return found

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

    def transport_error(self, exc: BaseException, model: str, partial: str, emitted: bool) -> LLMError:
        """Map a transport failure (aiohttp, socket, or httpx for a driver using :attr:`client`).
        Before anything was emitted a dropped connection may be retried."""
        kw: dict[str, Any] = {"provider": self.provider, "model": model}
        detail = self.scrub(f"{type(exc).__name__}: {exc}")
        if is_timeout(exc):
            what = "stream stalled" if emitted or partial else "no response in time"
            return TimedOut(f"{what} ({detail})", partial_text=partial, **kw)
        if emitted or partial:
            return BadResponse(f"connection lost mid-stream ({detail})", partial_text=partial, **kw)
        return ConnectionFailed(f"cannot reach provider ({detail})", **kw)

    # -- I/O -----------------------------------------------------------------------------------------
    async def _send(self, url: Any, body: dict[str, Any], headers: Mapping[str, str], request: CompletionRequest,
                    stream: bool) -> Any:
        """``url`` is a ``str`` or an already parsed ``yarl.URL`` (a driver that calls one URL on every
        turn parses it once: aiohttp would parse the string on every call)."""
        pool = self.pool
        proxy = pool.proxy(url)
        if proxy is None:  # the lean client (drivers/h1.py); through a proxy, aiohttp's session
            return await pool.h1().request(url, dump_body(body), headers, self.client_timeout(request, stream=stream))
        return await pool.session().request(
            "POST", url, data=dump_body(body), headers=headers,
            timeout=self.client_timeout(request, stream=stream), allow_redirects=False, proxy=proxy,
        )

    async def post_json(self, url: str, body: dict[str, Any], headers: dict[str, str],
                        request: CompletionRequest) -> Any:
        """POST a JSON body and return the parsed JSON answer (typed errors on any failure)."""
        budget = request.timeout or self.config.request_timeout
        try:
            # The socket read timeout is per read; the budget bounds the whole call (a trickling server).
            async with asyncio.timeout(budget):
                resp = await self._send(url, body, headers, request, False)
                try:
                    raw, too_large = await read_limited(resp, MAX_RESPONSE_BYTES)
                finally:
                    resp.release()
        except aiohttp.ClientError as exc:  # socket timeouts included (they are ClientErrors too)
            raise self.transport_error(exc, request.model, "", False) from None
        except TimeoutError:
            raise self.timed_out(request.model, "") from None
        except OSError as exc:
            raise self.transport_error(exc, request.model, "", False) from None
        if too_large:
            raise BadResponse("response body too large", provider=self.provider, model=request.model)
        if resp.status >= 400:
            raise self.error_from_body(resp.status, resp.headers, raw, request.model)
        try:
            return load_json(raw)
        except ValueError:
            raise BadResponse("response is not valid JSON", provider=self.provider, model=request.model) from None

    async def start_stream(self, url: Any, body: dict[str, Any], headers: Mapping[str, str],
                           request: CompletionRequest) -> Any:
        """Send a streaming POST; the aiohttp response once its status is known to be a success (an
        error status raises its typed error). The caller reads ``resp.content`` and calls
        ``resp.release()`` when done (what :meth:`open_stream` does around it)."""
        try:
            resp = await self._send(url, body, headers, request, True)
        except TRANSPORT_ERRORS as exc:
            raise self.transport_error(exc, request.model, "", False) from None
        if resp.status >= 400:
            try:
                try:
                    raw, _ = await read_limited(resp, MAX_RESPONSE_BYTES)
                except TRANSPORT_ERRORS:
                    raw = b""
                raise self.error_from_body(resp.status, resp.headers, raw, request.model)
            finally:
                resp.release()
        return resp

    @asynccontextmanager
    async def open_stream(self, url: str, body: dict[str, Any], headers: dict[str, str],
                          request: CompletionRequest) -> AsyncIterator[StreamResponse]:
        """Send a streaming POST; yields the response once its status is known to be a success. Read it
        with ``resp.aiter_bytes()`` and map :data:`TRANSPORT_ERRORS` with :meth:`transport_error`."""
        resp = await self.start_stream(url, body, headers, request)
        try:
            yield StreamResponse(resp)
        finally:
            # Back to the pool when the body was read to its end; closed otherwise (aiohttp decides).
            resp.release()

    async def stream_from_batches(self, request: CompletionRequest) -> AsyncIterator[Any]:
        """``stream`` of a driver that implements ``stream_batches(request)`` (an async iterator of
        lists of events, one list per network read): the same events one by one. The registry calls
        ``stream_batches`` itself when a driver's ``stream`` is this method, so a consumer that folds
        the whole answer (``api.collect``) handles each read's events in one step."""
        batches = self.stream_batches(request)  # type: ignore[attr-defined]
        try:
            async for batch in batches:
                for event in batch:
                    yield event
        finally:
            await batches.aclose()

    # The registry reads this mark on a driver class's ``stream`` (a subclass that overrides ``stream``
    # is called through its own ``stream``).
    stream_from_batches.from_batches = True  # type: ignore[attr-defined]

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


_HTTPX_NAMES = ("new_http_client", "NoCookies", "NoCookieStore", "CookielessClient")


def __getattr__(name: str) -> Any:
    """The httpx client helpers that used to live here (``from ...drivers.base import new_http_client``
    keeps working; httpx is imported when one is asked for)."""
    if name in _HTTPX_NAMES:
        from librefang_providers.drivers import httpx_client

        return getattr(httpx_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
