"""What other plugins may import from the approvals plugin.

Events on ``kernel.bus``: ``approval.requested`` and ``approval.resolved``, both carrying the
request's JSON view (``id, agent_id, agent_name, tool_name, action_summary, risk_level, session_id,
status, decided_by, feedback, ...``). Channels and the WebChat subscribe to show and decide them.
"""

from __future__ import annotations

from typing import Any

from librefang_approvals.service import ApprovalService, Decision

EVENTS = ("approval.requested", "approval.resolved")

__all__ = ["EVENTS", "ApprovalService", "Decision", "approvals"]


def approvals(kernel: Any) -> ApprovalService:
    """The approvals service of a started kernel (``KeyError`` when the plugin is not running)."""
    return kernel.services["approvals"]
