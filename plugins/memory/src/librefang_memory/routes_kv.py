"""HTTP routes of the per-agent KV memory (thin handlers over :class:`librefang_memory.kv.KvStore`)."""

from __future__ import annotations

from typing import Any

from librefang import Router, current_kernel

from librefang_memory.kv import SHARED_NAMESPACE
from librefang_memory.schemas import KvExport, KvImport, KvImported, KvList, KvPair, KvPut, KvStored
from librefang_memory.service import MemoryService

router = Router("memory_kv", tags=("memory",))


def service() -> MemoryService:
    return current_kernel().services["memory"]


async def audit(action: str, target: str, detail: Any) -> None:
    """Record a destructive memory operation in the audit chain (who, which request)."""
    from quart import g

    await current_kernel().audit.record(
        action, actor=str(getattr(g, "principal", None) or "api"), target=target, detail=detail,
        request_id=getattr(g, "request_id", "") or "")


async def namespace(agent_id: str) -> str:
    """The canonical id of an existing agent (or the shared namespace); 400 malformed, 404 unknown."""
    from librefang_agents.api import parse_agent_id, registry

    canonical = parse_agent_id(agent_id)
    if canonical == SHARED_NAMESPACE:
        return canonical
    known = service().known_agents
    if canonical not in known:
        known.add((await registry(current_kernel()).get(canonical)).id)
    return canonical


@router.get("/api/memory/agents/<agent_id>/kv", cost=2, response=KvList)
async def list_kv(agent_id: str) -> KvList:
    """Every KV pair of the agent, sorted by key."""
    pairs = await service().kv.list(await namespace(agent_id))
    return KvList(kv_pairs=[KvPair(**p) for p in pairs])


@router.get("/api/memory/agents/<agent_id>/kv/<key>", cost=1, response=KvPair)
async def get_kv(agent_id: str, key: str) -> KvPair:
    """One value (404 when the key is not set)."""
    value = await service().kv.get(await namespace(agent_id), key)
    return KvPair(key=key, value=value)


@router.put("/api/memory/agents/<agent_id>/kv/<key>", cost=2, body=KvPut, response=KvStored)
async def put_kv(agent_id: str, key: str, body: KvPut) -> KvStored:
    """Store a JSON value (``{"value": …}``, or the bare JSON body)."""
    version = await service().kv.put(await namespace(agent_id), key, body.value)
    return KvStored(status="stored", key=key, version=version)


@router.delete("/api/memory/agents/<agent_id>/kv/<key>", cost=2)
async def delete_kv(agent_id: str, key: str) -> dict[str, Any]:
    """Remove a key (404 when it is not set)."""
    ns = await namespace(agent_id)
    await service().kv.delete(ns, key)
    await audit("MemoryKvDelete", ns, {"key": key})
    return {"status": "deleted", "key": key}


@router.get("/api/agents/<agent_id>/memory/export", cost=5, response=KvExport)
async def export_kv(agent_id: str) -> KvExport:
    """All KV memory of the agent as JSON."""
    ns = await namespace(agent_id)
    return KvExport(agent_id=ns, version=1, kv=await service().kv.export(ns))


@router.post("/api/agents/<agent_id>/memory/import", cost=10, body=KvImport, response=KvImported)
async def import_kv(agent_id: str, body: KvImport) -> KvImported:
    """Write ``kv`` into the agent's memory, all or nothing (``clear_existing`` wipes it first)."""
    ns = await namespace(agent_id)
    count = await service().kv.import_(ns, body.kv, clear_existing=body.clear_existing)
    await audit("MemoryKvImport", ns, {"keys": count, "clear_existing": body.clear_existing})
    return KvImported(status="imported", agent_id=ns, imported=count, keys_imported=count,
                      cleared=body.clear_existing)
