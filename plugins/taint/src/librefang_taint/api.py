"""What other plugins may import from the taint plugin.

A plugin that sends text out by itself (a channel adapter, an A2A or webhook client) asks before
sending::

    from librefang_taint.api import check_outbound

    problem = check_outbound(kernel, "channel_send", {"text": text})
    if problem is not None:
        raise ToolError(problem)  # or refuse in whatever way the plugin reports errors

The tool name is matched against ``[taint] sinks`` and ``[[taint_rules]]`` like a tool call's.
Event on ``kernel.bus``: ``taint.violation`` (tool, field, kind, rule, agent; never the text).
"""

from __future__ import annotations

from typing import Any

from librefang_taint.checker import Finding, builtin_kind

EVENTS = ("taint.violation",)

__all__ = ["EVENTS", "Finding", "builtin_kind", "check_outbound"]


def check_outbound(kernel: Any, sink: str, data: dict[str, Any]) -> str | None:
    """A description of the credential ``data`` would carry out through ``sink`` (never the
    credential itself), or ``None`` when it may go. ``None`` too when the taint plugin is not running
    or is switched off."""
    service = kernel.services.get("taint")
    if service is None:
        return None
    finding = service.find(sink, data)
    if finding is None:
        return None
    return f"the outbound text in {finding.field!r} contains a {finding.kind}"
