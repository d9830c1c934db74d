"""Typed API errors, raised anywhere and rendered once at the edge as JSON.

Every error body has the shape ``{"error": "<message>", "code": "<snake_case>", "request_id": "<uuid>"}``.
"""

from __future__ import annotations

from typing import Any

# Status -> default machine code, as in the reference implementation.
DEFAULT_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    423: "locked",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


def code_for_status(status: int) -> str:
    """The default error code for an HTTP status."""
    if status in DEFAULT_CODES:
        return DEFAULT_CODES[status]
    return "internal_error" if status >= 500 else "error"


class ApiError(Exception):
    """Base class: an error a client should see, with its HTTP status."""

    status: int = 500

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.code = code or code_for_status(self.status)
        self.headers = headers or {}
        self.details = details

    def body(self, request_id: str | None) -> dict[str, Any]:
        """The JSON body of this error."""
        body: dict[str, Any] = {"error": self.message, "code": self.code, "request_id": request_id}
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class MethodNotAllowed(ApiError):
    status = 405


class Conflict(ApiError):
    status = 409


class PreconditionFailed(ApiError):
    status = 412


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class TooManyRequests(ApiError):
    status = 429


class ServiceUnavailable(ApiError):
    status = 503


class BadGateway(ApiError):
    status = 502


class PluginError(Exception):
    """A plugin could not be loaded or wired (duplicate route, bad config model, ...)."""


class ConfigError(Exception):
    """The configuration is invalid; the message names the key."""
