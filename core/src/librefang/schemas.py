"""Pydantic response models of the core's system endpoints (they feed /api/openapi.json)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    error: str = Field(description="Human-readable message")
    code: str = Field(description="Machine-readable snake_case code")
    request_id: str | None = Field(None, description="The request's x-request-id")


class HealthCheck(BaseModel):
    name: str
    status: str


class Health(BaseModel):
    status: str
    version: str


class HealthDetail(BaseModel):
    status: str
    version: str
    uptime_seconds: float
    database: str
    checks: list[HealthCheck]
    plugins: dict[str, Any]
    event_bus: dict[str, Any]
    memory_rss_bytes: int
    config_warnings: list[str] = []


class PluginInfo(BaseModel):
    name: str
    distribution: str
    version: str
    module: str
    loaded: bool
    error: str | None
    hooks: list[str]
    routes: list[str]
    reloads: int = 0
    reload_error: str | None = None


class Status(BaseModel, extra="allow"):
    status: str
    version: str
    uptime_seconds: float
    api_listen: str
    home_dir: str
    log_level: str
    memory_used_mb: float
    auth_mode: str
    event_loop: str = Field(description="the event loop serving the daemon: uvloop or asyncio")
    plugins: list[PluginInfo]
    public_routes: list[str]


class ApiVersionInfo(BaseModel):
    current: str
    supported: list[str]
    deprecated: list[str]


class Version(BaseModel):
    name: str
    version: str
    python_version: str
    platform: str
    arch: str
    api: ApiVersionInfo


class VersionDetail(BaseModel):
    version: str
    status: str
    url_prefix: str


class Versions(BaseModel):
    current: str
    supported: list[str]
    deprecated: list[str]
    details: list[VersionDetail]
    negotiation: dict[str, str]


class ShutdownResponse(BaseModel):
    status: str
