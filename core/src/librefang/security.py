"""``GET /api/security``: each active security system with its real configuration."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from librefang import current_kernel
from librefang.plugins import await_me_maybe
from librefang.routing import Router

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel


def _auth(kernel: Kernel) -> dict[str, Any]:
    auth = kernel.edge.auth
    return {
        "mode": auth.mode,
        "accepted_credentials": ["Authorization: Bearer", "X-API-Key", "Sec-WebSocket-Protocol bearer.<key>"],
        "public_routes": kernel.routes.public_paths(),
    }


def _rate_limit(kernel: Kernel) -> dict[str, Any]:
    rl = kernel.config.core.rate_limit
    return {
        "algorithm": "GCRA",
        "api_requests_per_minute": rl.api_requests_per_minute,
        "retry_after_secs": rl.retry_after_secs,
        "tracked_clients": len(kernel.edge.limiter),
        "max_tracked_clients": rl.max_tracked_clients,
        "denied_total": kernel.edge.limiter.denied,
        "loopback_exempt": True,
        "trusted_proxies": kernel.config.core.trusted_proxies,
    }


def _audit(kernel: Kernel) -> dict[str, Any]:
    return {
        "algorithm": "SHA-256 hash chain",
        "entries": kernel.audit.length,
        "tip_hash": kernel.audit.tip_hash,
        "anchor_path": str(kernel.audit.anchor_path),
        "retention_days": kernel.config.core.audit.retention_days,
        "last_verify": kernel.audit.last_verify,
    }


def _headers(kernel: Kernel) -> dict[str, Any]:
    from librefang.edge import SECURITY_HEADERS

    return {"headers": dict(SECURITY_HEADERS), "cors_origins": sorted(kernel.edge.cors_origins)}


def _limits(kernel: Kernel) -> dict[str, Any]:
    from librefang.jsonbody import MAX_JSON_DEPTH

    core = kernel.config.core
    return {
        "max_request_body_bytes": core.max_request_body_bytes,
        "max_upload_size_bytes": core.max_upload_size_bytes,
        "max_json_depth": MAX_JSON_DEPTH,
    }


def core_security_checks() -> dict[str, Callable[[Kernel], Any]]:
    return {
        "authentication": _auth,
        "rate_limiter": _rate_limit,
        "audit_chain": _audit,
        "security_headers": _headers,
        "request_limits": _limits,
    }


def add_routes(router: Router) -> None:
    @router.get("/api/security", cost=5)
    async def security_status() -> dict[str, Any]:
        """Every active security system, contributed through the ``security_checks`` hook."""
        kernel = current_kernel()
        systems = []
        for name, (owner, fn) in sorted(kernel.security_checks.items()):
            try:
                detail = await await_me_maybe(fn(kernel))
                systems.append({"name": name, "plugin": owner, "active": True, "config": detail})
            except Exception as exc:
                systems.append({"name": name, "plugin": owner, "active": False, "error": type(exc).__name__})
        return {"systems": systems, "count": len(systems)}
