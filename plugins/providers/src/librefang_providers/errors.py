"""Typed LLM errors. Every driver maps its provider's failures onto these.

``retryable`` says whether the same provider may be tried again after a pause (rate limits,
overload, 5xx, a connection that failed before any output). Messages come from the upstream
provider with the API key scrubbed out (:func:`scrub`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class LLMError(Exception):
    """Base of every provider error. ``status`` is the upstream HTTP status when there was one."""

    retryable = False
    code = "llm_error"

    def __init__(self, message: str, *, provider: str = "", model: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.model = model
        self.status = status

    def __str__(self) -> str:
        where = f"{self.provider}/{self.model}: " if self.provider else ""
        return f"{where}{self.message}"


class RateLimited(LLMError):
    """429: slow down. ``retry_after`` (seconds) is the provider's hint, when it gave one."""

    retryable = True
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class Overloaded(LLMError):
    """503/529 or an ``overloaded_error``: the provider is busy."""

    retryable = True
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class UpstreamError(LLMError):
    """Any other error status from the provider; 5xx are retryable."""

    code = "upstream_error"

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.status is not None and self.status >= 500


class ConnectionFailed(LLMError):
    """The provider could not be reached, or dropped the connection before answering."""

    retryable = True
    code = "connection_failed"


class AuthFailed(LLMError):
    """401/403: the key is wrong, revoked or lacks access."""

    code = "auth_failed"


class MissingApiKey(AuthFailed):
    """No key is configured for a provider that needs one."""

    code = "missing_api_key"


class ModelNotFound(LLMError):
    """The provider does not know the model."""

    code = "model_not_found"


class ContextTooLong(LLMError):
    """The prompt exceeds the model's context window."""

    code = "context_too_long"


class TimedOut(LLMError):
    """No answer in time, or the stream stalled; ``partial_text`` is what arrived before."""

    code = "timed_out"

    def __init__(self, message: str, *, partial_text: str = "", **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.partial_text = partial_text


class BadResponse(LLMError):
    """The provider answered something that is not its documented format (malformed JSON, a stream
    cut mid-way); ``partial_text`` is what arrived before."""

    code = "bad_response"

    def __init__(self, message: str, *, partial_text: str = "", **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.partial_text = partial_text


class UnknownProvider(LLMError):
    """No driver is registered under that name and no catalog entry or base URL describes it."""

    code = "unknown_provider"


@dataclass(slots=True)
class Attempt:
    """One failed slot of a fallback chain."""

    provider: str
    model: str
    error: LLMError

    def describe(self) -> dict[str, str]:
        return {"provider": self.provider, "model": self.model, "code": self.error.code, "reason": self.error.message}


class AllProvidersExhausted(LLMError):
    """Every slot of the chain failed; ``attempts`` lists why, in order."""

    code = "all_providers_exhausted"

    def __init__(self, attempts: list[Attempt]) -> None:
        summary = "; ".join(f"{a.provider}/{a.model}: {a.error.code}: {a.error.message}" for a in attempts)
        super().__init__(f"all providers failed: {summary}")
        self.attempts = attempts

    @property
    def last(self) -> LLMError | None:
        return self.attempts[-1].error if self.attempts else None


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (4+ characters) replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
    return text
