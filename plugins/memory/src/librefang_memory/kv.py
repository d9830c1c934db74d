"""Per-agent key-value memory: JSON values under checked keys, one namespace per agent.

Backs ``/api/memory/agents/{id}/kv``, the KV export/import endpoints and the ``memory_store``,
``memory_recall`` and ``memory_list`` tools. ``SHARED_NAMESPACE`` is the fixed id of the namespace
every agent may be granted through its ``memory_read`` / ``memory_write`` capabilities.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import sqlalchemy as sa
from librefang.errors import BadRequest, NotFound, PayloadTooLarge
from librefang.jsonbody import json_depth_exceeds

from librefang_memory.config import MemoryConfig
from librefang_memory.models import kv

SHARED_NAMESPACE = "00000000-0000-0000-0000-000000000001"
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@\-]*$")


def encode_value(value: Any, max_bytes: int) -> str:
    """The stored JSON text of ``value``; 400 for what is not JSON, 413 above ``max_bytes``."""
    if json_depth_exceeds(value):
        raise BadRequest("value nests too deeply", code="invalid_value")
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"value is not JSON: {exc}", code="invalid_value") from None
    if len(text.encode("utf-8")) > max_bytes:
        raise PayloadTooLarge(f"value is larger than {max_bytes} bytes", code="value_too_large")
    return text


class KvStore:
    """KV pairs in ``memory_kv`` (the caller has checked the agent id)."""

    def __init__(self, db: Any, config: MemoryConfig) -> None:
        self.db = db
        self.config = config

    def check_key(self, key: str) -> str:
        """``key`` when it is 1..kv_max_key_chars of ``[A-Za-z0-9_.:@-]`` (not starting with a
        punctuation mark); :class:`BadRequest` otherwise."""
        if not isinstance(key, str) or not key:
            raise BadRequest("key must be a non-empty string", code="invalid_key")
        if len(key) > self.config.kv_max_key_chars:
            raise BadRequest(f"key is longer than {self.config.kv_max_key_chars} characters", code="invalid_key")
        if not KEY_PATTERN.match(key):
            raise BadRequest("key may only contain letters, digits and _ . : @ - (and must start with a "
                             "letter, digit or _)", code="invalid_key")
        return key

    async def list(self, agent_id: str, prefix: str = "") -> list[dict[str, Any]]:
        """Every pair of the agent (keys starting with ``prefix``), sorted by key."""
        query = sa.select(kv.c.key, kv.c.value).where(kv.c.agent_id == agent_id).order_by(kv.c.key)
        async with self.db.begin() as conn:
            rows = (await conn.execute(query)).all()
        return [{"key": r.key, "value": json.loads(r.value)} for r in rows if r.key.startswith(prefix)]

    async def get(self, agent_id: str, key: str) -> Any:
        """The value under ``key``; :class:`NotFound` when there is none."""
        self.check_key(key)
        async with self.db.begin() as conn:
            row = (await conn.execute(
                sa.select(kv.c.value).where(kv.c.agent_id == agent_id, kv.c.key == key))).first()
        if row is None:
            raise NotFound(f"key {key!r} not found", code="key_not_found")
        return json.loads(row.value)

    async def count(self, agent_id: str) -> int:
        async with self.db.begin() as conn:
            return int((await conn.execute(
                sa.select(sa.func.count()).select_from(kv).where(kv.c.agent_id == agent_id))).scalar_one())

    async def put(self, agent_id: str, key: str, value: Any) -> int:
        """Store ``value`` under ``key``; returns the new version. 413 when the agent is at its key limit."""
        self.check_key(key)
        text = encode_value(value, self.config.kv_max_value_bytes)
        now = time.time()
        async with self.db.begin() as conn:
            row = (await conn.execute(
                sa.select(kv.c.version).where(kv.c.agent_id == agent_id, kv.c.key == key))).first()
            if row is not None:
                await conn.execute(kv.update().where(kv.c.agent_id == agent_id, kv.c.key == key)
                                   .values(value=text, version=row.version + 1, updated_at=now))
                return row.version + 1
            total = (await conn.execute(
                sa.select(sa.func.count()).select_from(kv).where(kv.c.agent_id == agent_id))).scalar_one()
            if total >= self.config.kv_max_keys_per_agent:
                raise PayloadTooLarge(f"agent already holds {total} keys (limit {self.config.kv_max_keys_per_agent})",
                                      code="too_many_keys")
            await conn.execute(kv.insert().values(agent_id=agent_id, key=key, value=text, version=1, updated_at=now))
        return 1

    async def delete(self, agent_id: str, key: str) -> None:
        """Remove ``key``; :class:`NotFound` when there is none."""
        self.check_key(key)
        async with self.db.begin() as conn:
            result = await conn.execute(kv.delete().where(kv.c.agent_id == agent_id, kv.c.key == key))
        if result.rowcount == 0:
            raise NotFound(f"key {key!r} not found", code="key_not_found")

    async def export(self, agent_id: str) -> dict[str, Any]:
        """``{key: value}`` of the agent."""
        return {pair["key"]: pair["value"] for pair in await self.list(agent_id)}

    async def import_(self, agent_id: str, pairs: dict[str, Any], *, clear_existing: bool) -> int:
        """Write ``pairs`` all-or-nothing (every key and value is checked first); returns how many."""
        encoded = {self.check_key(k): encode_value(v, self.config.kv_max_value_bytes) for k, v in pairs.items()}
        now = time.time()
        async with self.db.begin() as conn:
            if clear_existing:
                await conn.execute(kv.delete().where(kv.c.agent_id == agent_id))
            existing = {r.key: r.version for r in (await conn.execute(
                sa.select(kv.c.key, kv.c.version).where(kv.c.agent_id == agent_id))).all()}
            new_keys = [k for k in encoded if k not in existing]
            if len(existing) + len(new_keys) > self.config.kv_max_keys_per_agent:
                raise PayloadTooLarge(
                    f"import would leave {len(existing) + len(new_keys)} keys (limit "
                    f"{self.config.kv_max_keys_per_agent})", code="too_many_keys")
            for key, text in encoded.items():
                if key in existing:
                    await conn.execute(kv.update().where(kv.c.agent_id == agent_id, kv.c.key == key)
                                       .values(value=text, version=existing[key] + 1, updated_at=now))
            if new_keys:
                await conn.execute(kv.insert(), [
                    {"agent_id": agent_id, "key": k, "value": encoded[k], "version": 1, "updated_at": now}
                    for k in new_keys])
        return len(encoded)
