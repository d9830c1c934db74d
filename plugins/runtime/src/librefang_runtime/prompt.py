"""System prompt assembly: the manifest's prompt, identity, date, tools, then sections from hooks."""

from __future__ import annotations

import datetime as dt

from librefang_providers.api import ToolDefinition

TOOL_RULES = (
    "Call a tool only when it helps answer the user. Use the results you get; do not call the same tool "
    "with the same input again and again. When you have what you need, answer in plain text."
)
SILENT_RULE = "If no reply is needed at all, answer with exactly NO_REPLY."
MAX_TOOL_LINE = 200


def build_system_prompt(
    *,
    base: str,
    agent_name: str,
    description: str = "",
    tools: list[ToolDefinition] | None = None,
    sections: list[str] | None = None,
    now: dt.datetime | None = None,
) -> str:
    """The system prompt of one LLM call, in this order: the manifest's ``system_prompt``, identity,
    current date, tool-use rules and the list of available tools, then ``sections`` (recalled context
    from ``before_prompt_build`` hooks)."""
    now = now or dt.datetime.now(dt.UTC)
    parts = [base.strip()] if base.strip() else []
    identity = f"## Identity\nYour name is {agent_name}."
    if description.strip():
        identity += f" {description.strip()}"
    parts.append(identity)
    parts.append(f"## Current date\n{now.strftime('%A, %Y-%m-%d %H:%M')} UTC")
    if tools:
        lines = []
        for tool in tools:
            summary = " ".join(tool.description.split())
            lines.append(f"- {tool.name}: {summary[:MAX_TOOL_LINE]}" if summary else f"- {tool.name}")
        parts.append("## Tools\n" + TOOL_RULES + "\nAvailable tools:\n" + "\n".join(lines))
    parts.append(SILENT_RULE)
    for section in sections or []:
        if section and section.strip():
            parts.append(section.strip())
    return "\n\n".join(parts)
