"""The core's system endpoints: health, status, version(s), metrics, openapi, shutdown."""

from __future__ import annotations

import asyncio
import platform
import sys
from typing import Any

from quart import Response

from librefang import current_kernel
from librefang.auth import public_routes
from librefang.metrics import process_rss_bytes
from librefang.plugins import await_me_maybe
from librefang.routing import Router
from librefang.schemas import Health, HealthDetail, ShutdownResponse, Status, Version, Versions

API_VERSION = {"current": "v1", "supported": ["v1"], "deprecated": []}


def system_router() -> Router:
    """The core's own routes (registered as plugin ``core``)."""
    from librefang import auditapi, configapi, logstream, security

    router = Router("core", tags=("system",))
    add_system_routes(router)
    configapi.add_routes(router)
    auditapi.add_routes(router)
    security.add_routes(router)
    logstream.add_routes(router)
    return router


def add_system_routes(router: Router) -> None:
    @router.get("/api/health", public=True, cost=1, response=Health)
    async def health() -> Health:
        """Liveness: status and version only (no internals)."""
        kernel = current_kernel()
        ok = await kernel.db.healthy()  # cached for 1 s: probes poll this route
        return Health(status="ok" if ok else "degraded", version=kernel.version)

    @router.get("/api/health/detail", cost=1, response=HealthDetail)
    async def health_detail() -> HealthDetail:
        """Readiness detail: database, plugins, event bus, memory."""
        kernel = current_kernel()
        db_ok = await kernel.db.ping()
        failed = {r.name: r.error for r in kernel.plugins.records.values() if r.error}
        checks = [
            {"name": "database", "status": "ok" if db_ok else "error"},
            {"name": "plugins", "status": "ok" if not failed else "warn"},
            {"name": "event_bus", "status": "ok" if kernel.bus.dropped_total == 0 else "warn"},
        ]
        return HealthDetail(
            status="ok" if db_ok else "degraded",
            version=kernel.version,
            uptime_seconds=round(kernel.uptime, 3),
            database="connected" if db_ok else "error",
            checks=checks,
            plugins={"loaded": [r.name for r in kernel.plugins.loaded()], "failed": failed},
            event_bus=kernel.bus.stats(),
            memory_rss_bytes=process_rss_bytes(),
        )

    @router.get("/api/status", cost=1, response=Status)
    async def status() -> Status:
        """Kernel status: uptime, loaded plugins, public routes, plus what plugins contribute."""
        kernel = current_kernel()
        extra: dict[str, Any] = {}
        for _name, value in await kernel.plugins.acall("status_info", kernel=kernel):
            value = await await_me_maybe(value)
            if isinstance(value, dict):
                extra.update(value)
        return Status(
            status="running",
            version=kernel.version,
            uptime_seconds=round(kernel.uptime, 3),
            api_listen=kernel.config.core.api_listen,
            home_dir=str(kernel.home),
            log_level=kernel.config.core.log_level,
            memory_used_mb=round(process_rss_bytes() / 1_048_576, 1),
            auth_mode=kernel.edge.auth.mode,
            event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
            plugins=kernel.plugins.describe(),
            public_routes=public_routes(kernel.routes.specs.values()),
            **extra,
        )

    @router.get("/api/version", public=True, cost=1, response=Version)
    async def version() -> Version:
        """Build and API version information (no hostname)."""
        return Version(
            name="librefang",
            version=current_kernel().version,
            python_version=platform.python_version(),
            platform=sys.platform,
            arch=platform.machine(),
            api=API_VERSION,
        )

    @router.get("/api/versions", public=True, cost=1, response=Versions)
    async def versions() -> Versions:
        """API version discovery."""
        return Versions(
            **API_VERSION,
            details=[{"version": "v1", "status": "stable", "url_prefix": "/api/v1"}],
            negotiation={
                "header": "Accept",
                "media_type_pattern": "application/vnd.librefang.<version>+json",
                "example": "application/vnd.librefang.v1+json",
            },
        )

    @router.get("/api/metrics", cost=1)
    async def metrics() -> Response:
        """Prometheus metrics in the text exposition format."""
        body = current_kernel().edge.metrics.render()
        return Response(body, mimetype="text/plain; version=0.0.4")

    @router.get("/api/openapi.json", public=True, cost=1)
    async def openapi() -> dict[str, Any]:
        """The OpenAPI 3.1 document of every registered route."""
        from quart import current_app

        from librefang.openapi import build_openapi

        document = current_app.config.get("LIBREFANG_OPENAPI")
        if document is None:  # built once per app; a reload builds a new app
            document = current_app.config["LIBREFANG_OPENAPI"] = build_openapi(current_kernel())
        return document

    @router.post("/api/shutdown", cost=5, response=ShutdownResponse, status=202)
    async def shutdown() -> ShutdownResponse:
        """Graceful shutdown: stop accepting, finish in-flight requests, run shutdown hooks."""
        from quart import g

        kernel = current_kernel()
        await kernel.audit.record(
            "Shutdown", actor=getattr(g, "principal", "api"), detail="shutdown requested via API",
            request_id=getattr(g, "request_id", ""),
        )
        if kernel.shutdown_requested is not None:
            kernel.shutdown_requested.set()
        return ShutdownResponse(status="shutting_down")
