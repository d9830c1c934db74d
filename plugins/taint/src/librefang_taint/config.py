"""``[taint]`` (the built-in sinks and switches) and ``[[taint_rules]]`` (operator rules).

A rule names tools (globs) and input fields (``"*"`` = every string in the input); the text found
there is checked with the built-in credential shapes and the vault's secret values (unless
``builtin = false``) and with the rule's own regular expression, if it has one.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
FIELD = re.compile(r"^(\*|[A-Za-z0-9_\-]{1,64})$")
TOOL_GLOB = re.compile(r"^[A-Za-z0-9_\-*?\[\]]{1,64}$")
MAX_RULES = 200
MAX_PATTERN_CHARS = 1000


def _check_fields(value: list[str]) -> list[str]:
    for item in value:
        if not FIELD.match(item):
            raise ValueError(f"field {item[:64]!r} must be '*' or 1-64 of A-Z a-z 0-9 _ -")
    return value


class TaintConfig(BaseModel):
    """``[taint]``: which tool inputs are outbound text, and how the built-in checks behave."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    enabled: bool = Field(True, description="Check outbound text before tool calls")
    check_vault_values: bool = Field(True, description="Refuse text holding a value stored in the vault")
    opaque_token_min_length: int = Field(
        40, ge=16, le=4096, description="A run of this many token characters mixing upper case, lower case "
        "and digits counts as an opaque credential")
    sinks: dict[str, list[str]] = Field(
        default_factory=lambda: {"agent_send": ["message"], "web_fetch": ["url", "body"]},
        description="Tool name -> input fields whose text leaves the agent ('*' = every string)")
    max_checked_chars: int = Field(1_000_000, ge=1000, le=64 * 1024 * 1024,
                                   description="Text beyond this many characters per call is refused unchecked")

    @field_validator("sinks")
    @classmethod
    def _sinks(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        if len(value) > MAX_RULES:
            raise ValueError(f"at most {MAX_RULES} sinks")
        for tool, fields in value.items():
            if not TOOL_GLOB.match(tool):
                raise ValueError(f"sink tool {tool[:64]!r} must be a tool name or glob")
            _check_fields(fields)
        return value


class TaintRule(BaseModel):
    """One ``[[taint_rules]]`` entry."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="Unique name, shown in refusals and audit entries")
    tools: list[str] = Field(default_factory=lambda: ["*"], min_length=1, max_length=50)
    fields: list[str] = Field(default_factory=lambda: ["*"], min_length=1, max_length=50)
    pattern: str | None = Field(None, max_length=MAX_PATTERN_CHARS, description="Python regular expression")
    ignore_case: bool = False
    builtin: bool = Field(True, description="Also apply the built-in credential shapes and vault values")
    reason: str = Field("", max_length=200, description="Shown to the model when the rule refuses a call")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError("name must be 1-64 of A-Z a-z 0-9 _ . -")
        return value

    @field_validator("tools")
    @classmethod
    def _tools(cls, value: list[str]) -> list[str]:
        for item in value:
            if not TOOL_GLOB.match(item):
                raise ValueError(f"tool {item[:64]!r} must be a tool name or glob")
        return value

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: list[str]) -> list[str]:
        return _check_fields(value)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _something_to_check(self) -> TaintRule:
        if self.pattern is None and not self.builtin:
            raise ValueError("a rule needs a pattern, or builtin = true")
        return self


class TaintRules(RootModel[list[TaintRule]]):
    """``[[taint_rules]]``: an array of tables at the top level of config.toml."""

    root: list[TaintRule] = Field(default_factory=list, max_length=MAX_RULES)

    @model_validator(mode="before")
    @classmethod
    def _absent(cls, value: Any) -> Any:
        # The host validates an absent section as {}: that means "no rules".
        return [] if value == {} else value

    @model_validator(mode="after")
    def _unique(self) -> TaintRules:
        names = [rule.name for rule in self.root]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate rule names: {', '.join(duplicates)}")
        return self
