"""The ``memory_store``, ``memory_recall`` and ``memory_list`` tools over the KV store.

An agent always reaches its own namespace. Another namespace (``"shared"`` or another agent's id)
needs a capability: ``memory_read`` (recall, list) or ``memory_write`` (store) patterns are matched
against ``<namespace>.<key>`` with ``self`` for the agent's own namespace, so ``"*"`` grants every
namespace, ``"shared.*"`` the shared one, and the default ``"self.*"`` nothing beyond its own.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from typing import Any

from librefang.errors import ApiError

from librefang_memory.kv import SHARED_NAMESPACE

MAX_LIST = 200

NAMESPACE_PROPERTY = {
    "type": "string",
    "description": "Whose memory: omit for your own; 'shared' for the shared namespace; or another agent's id "
                   "(needs a capability).",
}


def _service(context: Any) -> Any:
    return context.kernel.services["memory"]


async def _namespace(context: Any, data: dict[str, Any], right: str, key: str) -> str:
    """The namespace id a call may use; ``ToolError`` when the agent lacks the capability."""
    from librefang_agents.api import effective_capabilities, parse_agent_id, registry
    from librefang_runtime.api import ToolError

    requested = (data.get("namespace") or "").strip()
    if not requested or requested == "self" or requested == context.agent_id:
        return context.agent_id
    if requested == "shared":
        target, label = SHARED_NAMESPACE, "shared"
    else:
        try:
            target = parse_agent_id(requested)
        except ApiError:
            raise ToolError("namespace must be 'self', 'shared' or an agent id") from None
        label = target
    try:
        record = await registry(context.kernel).get(context.agent_id)
        patterns = getattr(effective_capabilities(record.parsed()), right)
    except ApiError:
        patterns = []
    if not any(fnmatchcase(f"{label}.{key}", p) for p in patterns):
        raise ToolError(f"no {right} capability for namespace {requested!r}")
    return target


async def memory_store(data: dict[str, Any], context: Any) -> str:
    """Store a JSON value under a key."""
    from librefang_runtime.api import ToolError

    key = data.get("key")
    if not isinstance(key, str):
        raise ToolError("key must be a string")
    ns = await _namespace(context, data, "memory_write", key)
    try:
        version = await _service(context).kv.put(ns, key, data.get("value"))
    except ApiError as exc:
        raise ToolError(exc.message) from None
    return f"Stored {key!r} (version {version})."


async def memory_recall(data: dict[str, Any], context: Any) -> str:
    """The value stored under a key."""
    from librefang_runtime.api import ToolError

    key = data.get("key")
    if not isinstance(key, str):
        raise ToolError("key must be a string")
    ns = await _namespace(context, data, "memory_read", key)
    try:
        value = await _service(context).kv.get(ns, key)
    except ApiError as exc:
        if exc.status == 404:
            return f"Nothing is stored under {key!r}."
        raise ToolError(exc.message) from None
    return json.dumps(value, ensure_ascii=False)


async def memory_list(data: dict[str, Any], context: Any) -> str:
    """The keys stored (optionally those starting with ``prefix``)."""
    prefix = data.get("prefix") or ""
    ns = await _namespace(context, data, "memory_read", prefix + "*")
    pairs = await _service(context).kv.list(ns, prefix)
    if not pairs:
        return "No keys stored." if not prefix else f"No keys start with {prefix!r}."
    keys = [p["key"] for p in pairs]
    more = f"\n… and {len(keys) - MAX_LIST} more" if len(keys) > MAX_LIST else ""
    return "\n".join(keys[:MAX_LIST]) + more


def memory_tools() -> list[Any]:
    """The three KV tools as runtime :class:`Tool` objects."""
    from librefang_runtime.api import Tool

    return [
        Tool("memory_store", "Remember a value under a key (persists across conversations).", memory_store, {
            "type": "object",
            "properties": {"key": {"type": "string", "description": "Letters, digits and _ . : @ -"},
                           "value": {"description": "Any JSON value"}, "namespace": NAMESPACE_PROPERTY},
            "required": ["key", "value"]}),
        Tool("memory_recall", "Recall the value stored under a key.", memory_recall, {
            "type": "object",
            "properties": {"key": {"type": "string"}, "namespace": NAMESPACE_PROPERTY},
            "required": ["key"]}),
        Tool("memory_list", "List the keys you have stored (optionally by prefix).", memory_list, {
            "type": "object",
            "properties": {"prefix": {"type": "string"}, "namespace": NAMESPACE_PROPERTY}}),
    ]
