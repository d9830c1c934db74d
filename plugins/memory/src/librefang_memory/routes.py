"""HTTP routes of proactive memory (thin handlers over :class:`librefang_memory.service.MemoryService`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from librefang import Router, current_kernel
from librefang.errors import BadRequest

from librefang_memory.kv import SHARED_NAMESPACE
from librefang_memory.routes_kv import audit, namespace
from librefang_memory.schemas import (
    AddBody,
    Added,
    BulkDelete,
    ConfigPatch,
    CountQuery,
    ListQuery,
    MemoryExport,
    MemoryImport,
    MemoryItem,
    MemoryList,
    MemoryStats,
    RelationsBody,
    RelationsQuery,
    SearchQuery,
    SearchResults,
    UpdateBody,
)
from librefang_memory.service import MemoryService, check_level
from librefang_memory.store import Filter, Item

router = Router("memory", tags=("proactive-memory",))


def service() -> MemoryService:
    return current_kernel().services["memory"]


def _items(found: list[Item]) -> list[MemoryItem]:
    return [MemoryItem(**i.to_json()) for i in found]


def _timestamp(value: str | None, field: str) -> float | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{field} is not an ISO 8601 timestamp: {value!r}", code="invalid_body") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


async def _page(query: ListQuery, **where: Any) -> MemoryList:
    memory = service()
    f = Filter(level=check_level(query.level), category=query.category, peer_id=query.peer_id, **where)
    found, total = await memory.store.page(f, query.offset, query.limit)
    return MemoryList(memories=_items(found), total=total, offset=query.offset, limit=query.limit,
                      proactive_enabled=memory.proactive.enabled)


# -- global --------------------------------------------------------------------------------------------
@router.get("/api/memory", cost=2, query=ListQuery, response=MemoryList)
async def list_memories(query: ListQuery) -> MemoryList:
    """All memories, newest first (filters: level, category, peer_id; paging: offset, limit ≤ 100)."""
    return await _page(query)


@router.post("/api/memory", cost=10, body=AddBody, response=Added, status=201)
async def add_memories(body: AddBody) -> Added:
    """Add one memory from ``content``, or extract memories from the user ``messages``."""
    memory = service()
    agent_id = await namespace(body.agent_id) if body.agent_id else SHARED_NAMESPACE
    check_level(body.level)
    if body.content is not None:
        added = await memory.add_many(agent_id, [{
            "content": body.content, "level": body.level, "category": body.category, "metadata": body.metadata,
            "confidence": body.confidence}], source=body.source or "api", peer_id=body.peer_id)
        return Added(added=len(added), memories=_items(added))
    text = "\n".join(m.content for m in body.messages or [] if m.role == "user")
    if len(text) > memory.config.max_content_chars * 10:
        raise BadRequest("messages are too long to extract from", code="invalid_body")
    decisions = await memory.pipeline.memorize(agent_id, text, level=body.level or "user", peer_id=body.peer_id,
                                               source=body.source or "api")
    touched = [await memory.store.get(d.memory_id) for d in decisions]
    return Added(added=sum(d.action == "add" for d in decisions), updated=sum(d.action == "update" for d in decisions),
                 unchanged=sum(d.action == "noop" for d in decisions), memories=_items([i for i in touched if i]))


@router.get("/api/memory/search", cost=2, query=SearchQuery, response=SearchResults)
async def search(query: SearchQuery) -> SearchResults:
    """Search every agent's memories (BM25 full-text; hybrid with embeddings when installed)."""
    found, mode = await service().search(query.q, level=query.level, limit=query.limit, peer_id=query.peer_id)
    return SearchResults(query=query.q, mode=mode, count=len(found), memories=_items(found))


@router.get("/api/memory/stats", cost=2, response=MemoryStats)
async def stats() -> MemoryStats:
    """Counts by level and category across all agents, and the pipeline switches."""
    return MemoryStats(**await service().stats())


@router.post("/api/memory/cleanup", cost=10)
async def cleanup() -> dict[str, Any]:
    """Delete expired session memories and purge long-deleted ones."""
    return await service().cleanup()


@router.post("/api/memory/decay", cost=10)
async def decay() -> dict[str, Any]:
    """Apply confidence decay to memories not accessed for more than a day."""
    return await service().decay()


@router.post("/api/memory/bulk-delete", cost=10, body=BulkDelete)
async def bulk_delete(body: BulkDelete) -> dict[str, Any]:
    """Delete memories by id; unknown ids are listed in ``not_found``."""
    result = await service().bulk_delete(body.ids)
    await audit("MemoryBulkDelete", "", {"deleted": result["deleted"]})
    return result


@router.put("/api/memory/items/<memory_id>", cost=5, body=UpdateBody, response=MemoryItem)
async def update_item(memory_id: str, body: UpdateBody) -> MemoryItem:
    """Change a memory; the previous content is kept in its history."""
    item = await service().update(memory_id, body.model_dump(exclude_unset=True))
    return MemoryItem(**item.to_json())


@router.delete("/api/memory/items/<memory_id>", cost=5)
async def delete_item(memory_id: str) -> dict[str, Any]:
    """Delete one memory."""
    await service().delete(memory_id)
    await audit("MemoryDelete", memory_id, "")
    return {"status": "deleted", "id": memory_id}


@router.get("/api/memory/items/<memory_id>/history", cost=2)
async def item_history(memory_id: str) -> dict[str, Any]:
    """Every change of a memory, oldest first (also of a deleted one)."""
    memory = service()
    if await memory.store.get(memory_id, include_deleted=True) is None:
        from librefang.errors import NotFound

        raise NotFound(f"memory {memory_id} not found", code="memory_not_found")
    return {"memory_id": memory_id, "history": await memory.store.history_of(memory_id)}


@router.get("/api/memory/user/<user_id>", cost=2, query=ListQuery, response=MemoryList)
async def by_user(user_id: str, query: ListQuery) -> MemoryList:
    """Memories of a user: the agent with this id, or the channel user (``peer_id``) with this id."""
    if len(user_id) > 256:
        raise BadRequest("user id is too long", code="invalid_user_id")
    return await _page(query, user=user_id)


@router.get("/api/memory/config", cost=1)
async def get_config() -> dict[str, Any]:
    """The effective ``[proactive_memory]`` configuration."""
    return service().proactive.model_dump()


@router.patch("/api/memory/config", cost=10, body=ConfigPatch)
async def patch_config(body: Any) -> dict[str, Any]:
    """Change ``[proactive_memory]`` values at run time (kept across restarts)."""
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise BadRequest("no configuration keys given", code="invalid_config")
    updated = (await service().patch_config(changes)).model_dump()
    await audit("MemoryConfigChange", "proactive_memory", {"changed": sorted(changes)})
    return updated


# -- per agent -----------------------------------------------------------------------------------------
@router.get("/api/memory/agents/<agent_id>", cost=2, query=ListQuery, response=MemoryList)
async def agent_memories(agent_id: str, query: ListQuery) -> MemoryList:
    """The agent's memories, newest first."""
    return await _page(query, agent_id=await namespace(agent_id))


@router.delete("/api/memory/agents/<agent_id>", cost=10)
async def reset_agent(agent_id: str) -> dict[str, Any]:
    """Delete every memory of the agent."""
    ns = await namespace(agent_id)
    deleted = await service().clear(ns)
    await audit("MemoryClear", ns, {"deleted": deleted})
    return {"status": "cleared", "agent_id": ns, "deleted": deleted}


@router.get("/api/memory/agents/<agent_id>/search", cost=2, query=SearchQuery, response=SearchResults)
async def agent_search(agent_id: str, query: SearchQuery) -> SearchResults:
    """Search one agent's memories."""
    ns = await namespace(agent_id)
    found, mode = await service().search(query.q, agent_id=ns, level=query.level, limit=query.limit,
                                         peer_id=query.peer_id)
    return SearchResults(query=query.q, mode=mode, count=len(found), memories=_items(found))


@router.get("/api/memory/agents/<agent_id>/stats", cost=2, response=MemoryStats)
async def agent_stats(agent_id: str) -> MemoryStats:
    """The agent's counts by level and category."""
    return MemoryStats(**await service().stats(await namespace(agent_id)))


@router.delete("/api/memory/agents/<agent_id>/level/<level>", cost=10)
async def clear_level(agent_id: str, level: str) -> dict[str, Any]:
    """Delete the agent's memories of one level (user, session or agent)."""
    check_level(level)
    ns = await namespace(agent_id)
    deleted = await service().clear(ns, level)
    await audit("MemoryClear", ns, {"level": level, "deleted": deleted})
    return {"status": "cleared", "agent_id": ns, "level": level, "deleted": deleted}


@router.get("/api/memory/agents/<agent_id>/duplicates", cost=5)
async def duplicates(agent_id: str) -> dict[str, Any]:
    """Groups of near-duplicate memories (newest first in each group)."""
    groups = await service().duplicates(await namespace(agent_id))
    return {"groups": [[i.to_json() for i in g] for g in groups], "count": len(groups)}


@router.post("/api/memory/agents/<agent_id>/consolidate", cost=10)
async def consolidate(agent_id: str) -> dict[str, Any]:
    """Keep the newest of each duplicate group, delete the rest and expired session memories."""
    return await service().consolidate(await namespace(agent_id))


@router.get("/api/memory/agents/<agent_id>/count", cost=1, query=CountQuery)
async def count(agent_id: str, query: CountQuery) -> dict[str, Any]:
    """How many memories the agent has (optionally of one level)."""
    ns = await namespace(agent_id)
    level = check_level(query.level)
    return {"agent_id": ns, "level": level, "count": await service().store.count(Filter(agent_id=ns, level=level))}


@router.get("/api/memory/agents/<agent_id>/relations", cost=2, query=RelationsQuery)
async def query_relations(agent_id: str, query: RelationsQuery) -> dict[str, Any]:
    """Relations matching source / relation / target (all optional)."""
    found = await service().relations.query(await namespace(agent_id), source=query.source,
                                            relation=query.relation, target=query.target, limit=query.limit)
    return {"relations": found, "count": len(found)}


@router.post("/api/memory/agents/<agent_id>/relations", cost=5, body=RelationsBody)
async def store_relations(agent_id: str, body: RelationsBody) -> dict[str, Any]:
    """Store relation triples; identical ones are skipped."""
    ns = await namespace(agent_id)
    result = await service().relations.store(ns, [t.model_dump() for t in body.relations])
    return {"status": "stored", "agent_id": ns, **result}


@router.get("/api/memory/agents/<agent_id>/export", cost=5, response=MemoryExport)
async def export_memories(agent_id: str) -> MemoryExport:
    """Every memory of the agent as JSON."""
    ns = await namespace(agent_id)
    found = await service().store.all(Filter(agent_id=ns))
    return MemoryExport(agent_id=ns, version=1, memories=[{
        "content": i.content, "level": i.level, "category": i.category, "confidence": i.confidence,
        "created_at": i.to_json()["created_at"], "updated_at": i.to_json()["updated_at"], "metadata": i.metadata,
        "peer_id": i.peer_id, "source": i.source} for i in found])


@router.post("/api/memory/agents/<agent_id>/import", cost=10, body=MemoryImport)
async def import_memories(agent_id: str, body: MemoryImport) -> dict[str, Any]:
    """Add exported memories to the agent (``clear_existing`` deletes its memories first)."""
    memory = service()
    ns = await namespace(agent_id)
    entries = []
    for position, item in enumerate(body.memories):
        check_level(item.level)
        entry = item.model_dump()
        entry["created_at"] = _timestamp(item.created_at, f"memories.{position}.created_at")
        entry["updated_at"] = _timestamp(item.updated_at, f"memories.{position}.updated_at")
        entries.append(entry)
    if len(entries) > memory.config.max_batch_items:  # checked before anything is deleted
        from librefang.errors import PayloadTooLarge

        raise PayloadTooLarge(f"at most {memory.config.max_batch_items} memories per import", code="too_many_items")
    for entry in entries:  # validate everything before anything is deleted
        memory.check_content(entry["content"])
        memory.check_metadata(entry["metadata"])
    cleared = await memory.clear(ns) if body.clear_existing else 0
    added = await memory.add_many(ns, entries, source="import")
    await audit("MemoryImport", ns, {"imported": len(added), "cleared": cleared})
    return {"status": "imported", "agent_id": ns, "imported": len(added), "cleared": cleared}
