"""API key authentication, the public-route list, and bounded auditing of auth failures.

Credentials: ``Authorization: Bearer <key>``, ``X-API-Key: <key>``, and for WebSockets the
sub-protocol ``bearer.<key>``. Query-string tokens are never accepted (they end up in logs and
browser history). The configured key may be plaintext, ``$sha256$<hex>``, ``env:NAME`` or
``vault:NAME`` (``LIBREFANG_API_KEY`` overrides it); it is held only as a SHA-256 digest and
compared with :func:`hmac.compare_digest` over fixed-length digests, so timing says nothing about it.

Public routes are exactly: routes declared ``public=True`` through :class:`librefang.Router`, plus
the WebChat shell and its assets (:data:`ALWAYS_PUBLIC_PATHS`, :data:`PUBLIC_ASSET_PREFIXES`) when no
declared route says otherwise. :func:`public_routes` is that one list, shown by ``/api/status``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from librefang.errors import Unauthorized
from librefang.netutil import has_forwarding_headers, is_loopback

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel
    from librefang.routing import RouteSpec

log = logging.getLogger("librefang.auth")

NO_KEY_MESSAGE = (
    "API key required for non-loopback requests: set api_key in config.toml or the LIBREFANG_API_KEY "
    "environment variable and send it as 'Authorization: Bearer <key>' (or set LIBREFANG_ALLOW_NO_AUTH=1 "
    "to serve without authentication, not recommended)"
)
CHALLENGE = {"WWW-Authenticate": "Bearer"}
WS_BEARER_PREFIX = "bearer."

# The WebChat shell and its static assets: public (any method for the fixed paths, GET/HEAD for the
# asset folders) unless a declared route at that path says otherwise. Also exempt from the limiter.
ALWAYS_PUBLIC_PATHS = frozenset({"/", "/favicon.ico", "/logo.png"})
PUBLIC_ASSET_PREFIXES = ("/static/", "/webchat/")
_READ_METHODS = frozenset({"GET", "HEAD"})


def allow_no_auth() -> bool:
    """``LIBREFANG_ALLOW_NO_AUTH`` is set: with no key, remote clients are admitted too."""
    return os.environ.get("LIBREFANG_ALLOW_NO_AUTH", "").lower() in {"1", "true", "yes", "on"}


def is_static_public(method: str, path: str) -> bool:
    """True for the WebChat shell and asset paths of the built-in public list."""
    return path in ALWAYS_PUBLIC_PATHS or (method in _READ_METHODS and path.startswith(PUBLIC_ASSET_PREFIXES))


def public_routes(specs: Iterable[RouteSpec]) -> list[str]:
    """The one public list: every route declared public, plus the WebChat shell and assets."""
    declared = {f"{s.method} {s.path}" for s in specs if s.public}
    builtin = {f"ANY {p}" for p in ALWAYS_PUBLIC_PATHS}
    builtin.update(f"GET {prefix}*" for prefix in PUBLIC_ASSET_PREFIXES)
    return sorted(declared | builtin)


def presented_credential(headers: Mapping[str, str], subprotocols: Sequence[str] = ()) -> str | None:
    """The credential a client presented, from any accepted place (or None).

    ``subprotocols`` are the WebSocket sub-protocols the client offered (WebSocket requests only:
    browsers cannot set headers on a WebSocket, so the key travels as ``bearer.<key>``).
    """
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get("x-api-key")
    if key and key.strip():
        return key.strip()
    for proto in subprotocols:
        proto = proto.strip()
        if proto.startswith(WS_BEARER_PREFIX) and len(proto) > len(WS_BEARER_PREFIX):
            return proto[len(WS_BEARER_PREFIX):]
    return None


def choose_subprotocol(offered: Sequence[str]) -> str | None:
    """The sub-protocol to accept: the first one that is not a credential, else the ``bearer.`` one.

    A browser drops the connection when it offered sub-protocols and the server selects none.
    """
    bearer = None
    for proto in offered:
        if proto.startswith(WS_BEARER_PREFIX):
            bearer = bearer or proto
        else:
            return proto
    return bearer


def hash_key(key: str) -> str:
    """The ``$sha256$<hex>`` form of a key, to store in config.toml instead of the plaintext."""
    return "$sha256$" + hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    """Checks credentials against the configured master key (plaintext or ``$sha256$`` form)."""

    def __init__(self, configured_key: str) -> None:
        self._digest: bytes | None = None
        key = configured_key.strip()
        if key.startswith("$sha256$"):
            try:
                self._digest = bytes.fromhex(key[len("$sha256$"):])
            except ValueError:
                raise ValueError("api_key: $sha256$ must be followed by 64 hex characters") from None
            if len(self._digest) != 32:
                raise ValueError("api_key: $sha256$ must be followed by 64 hex characters")
        elif key:
            self._digest = hashlib.sha256(key.encode()).digest()

    @property
    def mode(self) -> str:
        """``api_key``; or with no key ``open`` (LIBREFANG_ALLOW_NO_AUTH) or ``loopback_only``."""
        return "api_key" if self._digest is not None else ("open" if allow_no_auth() else "loopback_only")

    @property
    def enabled(self) -> bool:
        """A key is configured."""
        return self._digest is not None

    def matches(self, credential: str) -> bool:
        """Constant-time check: both sides are 32-byte SHA-256 digests whatever the input length."""
        if self._digest is None:
            return False
        return hmac.compare_digest(hashlib.sha256(credential.encode()).digest(), self._digest)

    def check(self, headers: Mapping[str, str], peer: str, subprotocols: Sequence[str] = ()) -> str:
        """Return the authenticated principal or raise :class:`Unauthorized` (401 + challenge).

        With no key: ``local`` for a loopback peer without forwarding headers, ``anonymous`` for
        anyone when ``LIBREFANG_ALLOW_NO_AUTH`` is set; such requests must also pass
        :func:`browser_guard`.
        """
        if self._digest is None:
            if is_loopback(peer) and not has_forwarding_headers(headers):
                return "local"
            if allow_no_auth():
                return "anonymous"
            raise Unauthorized(NO_KEY_MESSAGE, code="api_key_required", headers=CHALLENGE)
        credential = presented_credential(headers, subprotocols)
        if credential is None:
            raise Unauthorized(
                "missing credential: send 'Authorization: Bearer <api_key>' or 'X-API-Key: <api_key>'",
                code="missing_credential",
                headers=CHALLENGE,
            )
        if not self.matches(credential):
            raise Unauthorized("invalid API key", code="invalid_credential", headers=CHALLENGE)
        return "root"


def browser_guard(headers: Mapping[str, str], allowed_origins: frozenset[str], *, local: bool) -> str | None:
    """Why a request admitted *without* a credential must still be refused, or None.

    Without a key, "the peer is loopback" would also admit a hostile web page open in the user's
    browser: a cross-site form post or WebSocket (CSRF / cross-site WebSocket hijacking) carries an
    ``Origin`` the daemon did not allow, and a DNS-rebinding page carries a ``Host`` that is not this
    machine. Non-browser clients (CLI, SDKs) send neither, so they are unaffected.
    """
    origin = headers.get("origin")
    if origin and origin not in allowed_origins:
        return f"cross-origin request from {origin[:200]} refused: without an api_key only local origins are allowed"
    if local:
        host = headers.get("host", "")
        hostname = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
        if hostname and not is_loopback(hostname):
            return (f"Host {host[:200]!r} is not this machine: without an api_key the daemon answers only "
                    "requests addressed to localhost (DNS rebinding protection)")
    return None


# -- auditing failures without letting a flood reach the database ---------------------------------
@dataclass
class _Tally:
    failures: int = 0
    first_request_id: str = ""
    last_request_id: str = ""
    first_at: float = 0.0
    paths: dict[str, int] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)


class AuthFailureAudit:
    """Coalesces auth failures per client and per window into one audit entry each.

    A failure is counted in memory; one flush task per window writes one ``AuthAttempt`` entry per
    client (failures, paths, codes, first and last request id). At most ``max_clients`` clients are
    tracked per window; failures from any further client go into one overflow entry. A flood of
    bad requests therefore costs at most ``max_clients + 1`` audit writes per window, whatever its
    size or number of source addresses. Pending tallies are flushed on shutdown.
    """

    MAX_PATHS = 5

    def __init__(self, kernel: Kernel, window: float = 30.0, max_clients: int = 128) -> None:
        self.kernel = kernel
        self.window = window
        self.max_clients = max_clients
        self._pending: dict[str, _Tally] = {}
        self._overflow: _Tally | None = None
        self._flusher: asyncio.Task[Any] | None = None
        self.failures_seen = 0
        self.entries_written = 0

    def note(self, client: str, path: str, code: str, request_id: str) -> None:
        """Count one failure (cheap, synchronous; the write happens at the end of the window)."""
        self.failures_seen += 1
        tally = self._pending.get(client)
        if tally is None:
            if len(self._pending) < self.max_clients:
                tally = self._pending[client] = _Tally(first_request_id=request_id, first_at=time.time())
            else:
                if self._overflow is None:
                    self._overflow = _Tally(first_request_id=request_id, first_at=time.time())
                tally = self._overflow
        tally.failures += 1
        tally.last_request_id = request_id
        if path in tally.paths or len(tally.paths) < self.MAX_PATHS:
            tally.paths[path] = tally.paths.get(path, 0) + 1
        tally.codes[code] = tally.codes.get(code, 0) + 1
        if self._flusher is None:
            try:
                self._flusher = self.kernel.tasks.spawn("core", self._flush_later(), name="core:auth-audit")
            except RuntimeError:  # no running loop (cannot happen inside a request); keep the tally
                self._flusher = None

    async def _flush_later(self) -> None:
        try:
            await asyncio.sleep(self.window)
        finally:
            # Also on cancellation (kernel shutdown): the database is closed only after tasks end.
            self._flusher = None
            await self.flush()

    async def flush(self) -> int:
        """Write the pending tallies now; returns how many audit entries were written."""
        pending, self._pending = self._pending, {}
        overflow, self._overflow = self._overflow, None
        written = 0
        for client, tally in pending.items():
            await self._write(client, tally)
            written += 1
        if overflow is not None:
            await self._write("*other-clients*", overflow)
            written += 1
        self.entries_written += written
        return written

    async def _write(self, actor: str, tally: _Tally) -> None:
        detail: dict[str, Any] = {
            "failures": tally.failures,
            "window_seconds": self.window,
            "first_at": tally.first_at,
            "paths": tally.paths,
            "codes": tally.codes,
            "last_request_id": tally.last_request_id,
        }
        target = next(iter(tally.paths), "")
        try:
            await self.kernel.audit.record(
                "AuthAttempt", actor=actor, target=target, detail=detail, outcome="denied",
                request_id=tally.first_request_id,
            )
        except Exception:  # the audit must never take the edge down; the failure is logged
            log.exception("could not write the auth-failure audit entry for %s", actor)
