"""The relations graph of an agent: typed entities and typed relations between them."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import sqlalchemy as sa

from librefang_memory.models import entities, relations

QUERY_LIMIT = 100


def _entity(row: Any) -> dict[str, Any]:
    return {"id": row.id, "entity_type": row.entity_type, "name": row.name, "properties": json.loads(row.properties)}


class RelationStore:
    """Entities and relations in ``memory_entities`` / ``memory_relations``."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def _entity_id(self, conn: Any, agent_id: str, entity_type: str, name: str, now: float) -> tuple[str, bool]:
        row = (await conn.execute(sa.select(entities.c.id).where(
            entities.c.agent_id == agent_id, entities.c.entity_type == entity_type, entities.c.name == name))).first()
        if row is not None:
            return row.id, False
        entity_id = str(uuid.uuid4())
        await conn.execute(entities.insert().values(id=entity_id, agent_id=agent_id, entity_type=entity_type,
                                                    name=name, properties="{}", created_at=now))
        return entity_id, True

    async def store(self, agent_id: str, triples: list[dict[str, Any]]) -> dict[str, int]:
        """Store ``{subject, subject_type, relation, object, object_type, confidence, properties}``
        triples (validated by the caller); identical relations are skipped."""
        now = time.time()
        stored = skipped = new_entities = 0
        async with self.db.begin() as conn:
            for triple in triples:
                source, created_s = await self._entity_id(conn, agent_id, triple["subject_type"], triple["subject"], now)
                target, created_t = await self._entity_id(conn, agent_id, triple["object_type"], triple["object"], now)
                new_entities += int(created_s) + int(created_t)
                exists = (await conn.execute(sa.select(relations.c.id).where(
                    relations.c.agent_id == agent_id, relations.c.source_entity == source,
                    relations.c.relation_type == triple["relation"], relations.c.target_entity == target))).first()
                if exists is not None:
                    skipped += 1
                    continue
                await conn.execute(relations.insert().values(
                    id=str(uuid.uuid4()), agent_id=agent_id, source_entity=source, relation_type=triple["relation"],
                    target_entity=target, properties=json.dumps(triple.get("properties") or {}),
                    confidence=triple.get("confidence", 1.0), created_at=now))
                stored += 1
        return {"stored": stored, "skipped": skipped, "entities_created": new_entities}

    async def query(self, agent_id: str, *, source: str | None = None, relation: str | None = None,
                    target: str | None = None, limit: int = QUERY_LIMIT) -> list[dict[str, Any]]:
        """Relations of the agent matching the pattern (entity by name or id), with both entities."""
        src = entities.alias("src")
        dst = entities.alias("dst")
        stmt = (sa.select(relations, src.c.id.label("s_id"), src.c.entity_type.label("s_type"),
                          src.c.name.label("s_name"), src.c.properties.label("s_props"), dst.c.id.label("t_id"),
                          dst.c.entity_type.label("t_type"), dst.c.name.label("t_name"),
                          dst.c.properties.label("t_props"))
                .join(src, src.c.id == relations.c.source_entity)
                .join(dst, dst.c.id == relations.c.target_entity)
                .where(relations.c.agent_id == agent_id)
                .order_by(relations.c.created_at, relations.c.id).limit(limit))
        if source:
            stmt = stmt.where(sa.or_(src.c.name == source, src.c.id == source))
        if target:
            stmt = stmt.where(sa.or_(dst.c.name == target, dst.c.id == target))
        if relation:
            stmt = stmt.where(relations.c.relation_type == relation)
        async with self.db.begin() as conn:
            rows = (await conn.execute(stmt)).all()
        return [{
            "id": r.id,
            "source": {"id": r.s_id, "entity_type": r.s_type, "name": r.s_name, "properties": json.loads(r.s_props)},
            "relation": r.relation_type, "properties": json.loads(r.properties), "confidence": r.confidence,
            "target": {"id": r.t_id, "entity_type": r.t_type, "name": r.t_name, "properties": json.loads(r.t_props)},
        } for r in rows]
