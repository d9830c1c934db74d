"""The ``[approval]`` section of ``config.toml``."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_GATED = ["shell_exec", "file_write", "file_delete", "apply_patch"]
GLOB = re.compile(r"^[A-Za-z0-9_\-*?\[\]!]{1,64}$")


class ApprovalConfig(BaseModel):
    """``[approval]``: which tool calls wait for a human decision, for how long, and with which second factor."""

    model_config = ConfigDict(extra="forbid")

    require_approval: list[str] = Field(
        default_factory=lambda: list(DEFAULT_GATED), max_length=200,
        description="Glob patterns of tool names whose calls wait for approval ([] disables the gate)")
    timeout_secs: int = Field(60, ge=1, le=86_400, description="How long a gated call waits for a decision")
    timeout_fallback: Literal["deny", "skip", "approve"] = Field(
        "deny", description="What happens when nobody decides in time: deny (error result), skip (the call is "
        "skipped with a notice) or approve (the call runs; weakens the gate)")
    auto_approve: bool = Field(False, description="Approve every gated call at once (turns the gate off)")
    max_pending_per_agent: int = Field(50, ge=1, le=10_000, description="Pending requests one agent may hold")
    second_factor: Literal["none", "totp"] = Field(
        "none", description="totp: approving a call of a tool in totp_tools needs a valid TOTP or recovery code")
    totp_tools: list[str] = Field(
        default_factory=list, max_length=200,
        description="Glob patterns of tools whose approval needs a TOTP code (empty with second_factor = totp: "
        "every gated tool)")
    totp_issuer: str = Field("LibreFang", min_length=1, max_length=64, description="Issuer shown by authenticator apps")
    totp_max_failures: int = Field(5, ge=1, le=100, description="Wrong codes in a row before the lockout")
    totp_lockout_secs: int = Field(300, ge=1, le=86_400, description="How long a lockout lasts")
    audit_retention_days: int = Field(90, ge=0, le=36_500, description="Decided requests older than this are "
                                      "deleted (0 keeps them)")

    @field_validator("require_approval", "totp_tools")
    @classmethod
    def _globs(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not GLOB.match(pattern):
                raise ValueError(f"{pattern!r} is not a tool-name glob (letters, digits, _ - * ? [ ] !)")
        return value

    @model_validator(mode="after")
    def _second_factor(self) -> ApprovalConfig:
        # A totp_tools list that silently protects nothing would be worse than an error.
        if self.totp_tools and self.second_factor != "totp":
            raise ValueError('totp_tools is set but second_factor is not "totp"')
        return self
