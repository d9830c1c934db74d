"""``GET /api/security``: each active security system with its real configuration.

Systems are contributed through the ``security_checks`` hook: the core registers its own (auth,
CORS, headers, request limits, rate limiter, audit chain, idempotency, log redaction, vault), and a
plugin registers its own (sandbox, SSRF, ...) only when it is installed and started. A check
returns a dict of its live configuration; a dict with ``"active": False`` reports a system that is
installed but switched off, and ``None`` leaves the system out.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from librefang import current_kernel
from librefang.auth import allow_no_auth, public_routes
from librefang.plugins import await_me_maybe
from librefang.routing import Router

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel


def _key_source(kernel: Kernel) -> str:
    """Where the API key comes from (never the key itself)."""
    if os.environ.get("LIBREFANG_API_KEY"):
        return "env:LIBREFANG_API_KEY"
    configured = kernel.config.raw.get("api_key", "") or ""
    if not configured:
        return "none"
    if configured.startswith(("env:", "vault:")):
        return str(configured)  # the reference (env:NAME / vault:NAME), never the value
    return "config:sha256" if configured.startswith("$sha256$") else "config:plaintext"


def _auth(kernel: Kernel) -> dict[str, Any]:
    auth = kernel.edge.auth
    return {
        "active": auth.mode != "open",
        "mode": auth.mode,
        "key_source": _key_source(kernel),
        "allow_no_auth": allow_no_auth(),
        "comparison": "constant-time (HMAC compare of SHA-256 digests)",
        "accepted_credentials": ["Authorization: Bearer", "X-API-Key", "Sec-WebSocket-Protocol bearer.<key>"],
        "query_string_tokens": False,
        "public_routes": public_routes(kernel.routes.specs.values()),
    }


def _cors(kernel: Kernel) -> dict[str, Any]:
    return {
        "allowed_origins": sorted(kernel.edge.cors_origins),
        "wildcard": False,
        "restricted_to_localhost": not kernel.edge.auth.enabled,
    }


def _rate_limit(kernel: Kernel) -> dict[str, Any]:
    rl = kernel.config.core.rate_limit
    return {
        **kernel.edge.limiter.describe(),
        "api_requests_per_minute": rl.api_requests_per_minute,
        "retry_after_secs": rl.retry_after_secs,
        "loopback_exempt": True,
        "trusted_proxies": kernel.config.core.trusted_proxies,
    }


def _audit(kernel: Kernel) -> dict[str, Any]:
    audit = kernel.audit
    return {
        "algorithm": "SHA-256 hash chain",
        "entries": audit.length,
        "tip_seq": audit.tip_seq,
        "tip_hash": audit.tip_hash,
        "anchor_path": str(audit.anchor_path),
        "anchor_present": audit.anchor_path.exists(),
        "retention_days": kernel.config.core.audit.retention_days,
        "last_verify": audit.last_verify,
        "last_trim": audit.last_trim,
    }


def _headers(kernel: Kernel) -> dict[str, Any]:
    from librefang.edge import SECURITY_HEADERS

    return {"headers": dict(SECURITY_HEADERS), "request_id_header": "x-request-id"}


def _limits(kernel: Kernel) -> dict[str, Any]:
    from librefang.jsonbody import MAX_JSON_DEPTH

    core = kernel.config.core
    return {
        "max_request_body_bytes": core.max_request_body_bytes,
        "max_upload_size_bytes": core.max_upload_size_bytes,
        "max_json_depth": MAX_JSON_DEPTH,
    }


def _idempotency(kernel: Kernel) -> dict[str, Any]:
    from librefang import idempotency

    store = kernel.idempotency
    return {
        "header": idempotency.HEADER,
        "routes": sorted(f"{s.method} {s.path}" for s in kernel.routes.specs.values() if s.idempotent),
        "ttl_seconds": idempotency.TTL_SECONDS,
        "in_progress_lease_seconds": idempotency.IN_PROGRESS_LEASE_SECONDS,
        "max_key_length": idempotency.MAX_KEY_LENGTH,
        "max_stored_body_bytes": idempotency.MAX_STORED_BODY_BYTES,
        "scope": "principal + method + path",
        "replays_total": store.replays,
        "conflicts_total": store.conflicts,
    }


def _log_redaction(kernel: Kernel) -> dict[str, Any]:
    from librefang.logs import SECRET_PATTERNS

    stream = kernel.logstream
    return {
        "credential_patterns": len(SECRET_PATTERNS),
        "known_secret_values": len({v for v in stream.secret_values() if v and len(v) >= 6}),
        "log_stream_attached": stream.attached,
        "log_stream_clients": len(stream.subscribers),
        "log_stream_max_clients": stream.max_subscribers,
        "ring_buffer_capacity": stream.ring.maxlen,
    }


def _vault(kernel: Kernel) -> dict[str, Any]:
    vault = kernel.vault
    if os.environ.get("LIBREFANG_VAULT_KEY"):
        key_source = "env:LIBREFANG_VAULT_KEY"
    else:
        key_source = "file" if vault.key_path.exists() else "none"
    return {
        "cipher": "XSalsa20-Poly1305 (NaCl SecretBox)",
        "file_present": vault.path.exists(),
        "key_source": key_source,
        "zeroization": "best effort (Python strings are immutable)",
    }


def core_security_checks() -> dict[str, Callable[[Kernel], Any]]:
    """The core's own systems, registered before any plugin's."""
    return {
        "authentication": _auth,
        "cors": _cors,
        "rate_limiter": _rate_limit,
        "audit_chain": _audit,
        "security_headers": _headers,
        "request_limits": _limits,
        "idempotency": _idempotency,
        "log_redaction": _log_redaction,
        "secrets_vault": _vault,
    }


class SecuritySystem(BaseModel):
    name: str
    plugin: str
    active: bool
    config: dict[str, Any] | None = None
    error: str | None = None


class SecurityStatus(BaseModel):
    systems: list[SecuritySystem]
    count: int
    active: int


async def collect_status(kernel: Kernel) -> SecurityStatus:
    """Ask every registered check of a running owner for its live configuration."""
    systems = []
    for name, (owner, fn) in sorted(kernel.security_checks.items()):
        record = kernel.plugins.records.get(owner)
        if owner != "core" and (record is None or not record.ok or not record.started):
            continue  # a plugin that failed or stopped protects nothing
        try:
            detail = await await_me_maybe(fn(kernel))
        except Exception as exc:  # the type only: a message could carry a secret
            systems.append(SecuritySystem(name=name, plugin=owner, active=False, error=type(exc).__name__))
            continue
        if detail is None:
            continue
        detail = dict(detail) if isinstance(detail, dict) else {"value": detail}
        active = bool(detail.pop("active", True))
        systems.append(SecuritySystem(name=name, plugin=owner, active=active, config=detail))
    return SecurityStatus(systems=systems, count=len(systems), active=sum(s.active for s in systems))


def add_routes(router: Router) -> None:
    @router.get("/api/security", cost=5, response=SecurityStatus)
    async def security_status() -> SecurityStatus:
        """Every active security system, contributed through the ``security_checks`` hook."""
        return await collect_status(current_kernel())
