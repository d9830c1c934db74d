"""API key authentication: Bearer, X-API-Key, WebSocket ``bearer.<key>`` sub-protocol.

The configured key may be plaintext, ``$sha256$<hex>``, ``env:NAME`` or ``vault:NAME``; it is
compared as a SHA-256 digest with :func:`hmac.compare_digest`, so timing says nothing about it.
Query-string tokens are never accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

from librefang.errors import Unauthorized
from librefang.netutil import has_forwarding_headers, is_loopback

NO_KEY_MESSAGE = (
    "API key required for non-loopback requests: set api_key in config.toml or LIBREFANG_API_KEY "
    "(or LIBREFANG_ALLOW_NO_AUTH=1 to run open, not recommended)"
)


def allow_no_auth() -> bool:
    return os.environ.get("LIBREFANG_ALLOW_NO_AUTH", "").lower() in {"1", "true", "yes", "on"}


def presented_credential(headers: Mapping[str, str]) -> str | None:
    """The credential a client presented, from any accepted place (or None)."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    protocols = headers.get("sec-websocket-protocol")
    if protocols:
        for proto in protocols.split(","):
            proto = proto.strip()
            if proto.startswith("bearer."):
                return proto[len("bearer.") :]
    return None


class Authenticator:
    """Checks credentials against the configured master key."""

    def __init__(self, configured_key: str) -> None:
        self._digest: bytes | None = None
        key = configured_key.strip()
        if key.startswith("$sha256$"):
            try:
                self._digest = bytes.fromhex(key[len("$sha256$") :])
            except ValueError:
                raise ValueError("api_key: $sha256$ must be followed by 64 hex characters") from None
            if len(self._digest) != 32:
                raise ValueError("api_key: $sha256$ must be followed by 64 hex characters")
        elif key:
            self._digest = hashlib.sha256(key.encode()).digest()

    @property
    def mode(self) -> str:
        return "api_key" if self._digest is not None else ("open" if allow_no_auth() else "loopback_only")

    @property
    def enabled(self) -> bool:
        return self._digest is not None

    def matches(self, credential: str) -> bool:
        if self._digest is None:
            return False
        return hmac.compare_digest(hashlib.sha256(credential.encode()).digest(), self._digest)

    def check(self, headers: Mapping[str, str], peer: str) -> str:
        """Return the authenticated principal or raise :class:`Unauthorized`."""
        challenge = {"WWW-Authenticate": "Bearer"}
        if self._digest is None:
            if (is_loopback(peer) and not has_forwarding_headers(headers)) or allow_no_auth():
                return "local"
            raise Unauthorized(NO_KEY_MESSAGE, code="api_key_required", headers=challenge)
        credential = presented_credential(headers)
        if credential is None:
            raise Unauthorized(
                "missing credential: send Authorization: Bearer <api_key> or X-API-Key",
                code="missing_credential",
                headers=challenge,
            )
        if not self.matches(credential):
            raise Unauthorized("invalid API key", code="invalid_credential", headers=challenge)
        return "root"
