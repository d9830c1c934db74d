"""The gate: the runtime's ``before_tool_call`` policy for tools under ``[approval] require_approval``.

A gated call creates a pending request and the turn waits for the decision (at most
``timeout_secs``). The runtime's hook contract is *no objection* (``None``) or
:class:`~librefang_runtime.api.Deny`, so the decisions map to:

- approved → ``None``: the call runs with the input the model gave;
- rejected → ``Deny`` (status ``denied``): the model reads an error result naming the refusal;
- modified → ``Deny`` (status ``modify_and_retry``) whose reason carries the reviewer's feedback, so the
  model can issue a corrected call (which is gated again); the hook cannot substitute the input itself;
- no decision in time → ``[approval] timeout_fallback``: ``deny`` (status ``expired``), ``skip``
  (status ``skipped``) or ``approve``.
"""

from __future__ import annotations

import logging
from typing import Any

from librefang.errors import ApiError
from librefang_runtime.api import Deny

log = logging.getLogger("librefang.approvals")


async def check(service: Any, call: Any, context: Any) -> Deny | None:
    """The verdict on one tool call (see the module docstring)."""
    if not service.gated(call.name):
        return None
    if not context.agent_id:
        # POST /api/tools/{name}/invoke without ?agent_id=: nobody to attribute the request to.
        return Deny(f"{call.name} needs approval, which needs an agent: call it with ?agent_id=", status="denied")
    summary = service.summarize(call.input)
    try:
        request = await service.create(
            agent_id=context.agent_id, agent_name=context.agent_name or context.agent_id, tool_name=call.name,
            session_id=context.session_id or None, description=f"Agent {context.agent_name or context.agent_id} "
            f"wants to run {call.name}", action_summary=summary, tool_use_id=getattr(call, "id", None) or None,
            source="tool_call", actor=context.agent_id)
    except ApiError as exc:  # too many pending requests: refuse with the reason, not a generic failure
        return Deny(exc.message, status="denied")
    config = service.config()
    decision = await service.wait(request["id"], float(request["timeout_secs"]))
    who = decision.decided_by or "the reviewer"
    if decision.status == "approved":
        return None
    if decision.status == "rejected":
        return Deny(f"{who} rejected this call (approval {request['id']})", status="denied")
    if decision.status == "modified":
        return Deny(f"{who} did not approve this call as it is and asks for a change: {decision.feedback}. "
                    "Adjust the call accordingly and try again, or explain why you cannot.", status="modify_and_retry")
    if decision.status == "timed_out":
        if config.timeout_fallback == "approve":
            log.warning("approval %s timed out; running %s anyway ([approval] timeout_fallback = approve)",
                        request["id"], call.name)
            return None
        if config.timeout_fallback == "skip":
            return Deny(f"nobody approved this call within {request['timeout_secs']} s, so it was skipped",
                        status="skipped")
        return Deny(f"nobody approved this call within {request['timeout_secs']} s (approval {request['id']} "
                    "expired)", status="expired")
    return Deny(f"this call was not approved (approval {request['id']} is {decision.status})", status="denied")
