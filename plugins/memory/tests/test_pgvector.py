"""Semantic memory search on PostgreSQL with pgvector: vectors kept in a ``vector(256)`` column and
ranked by the server (``ORDER BY embedding <=> q LIMIT k``) with the same results as the in-process
ranking, filters applied, a restart (and a dropped extension) healed from ``memory_vectors``, and the
in-process ranking when the extension cannot be used.

Runs when ``LIBREFANG_TEST_POSTGRES_URL`` points at a server (the core's ``postgres_url`` fixture)
that has the pgvector extension installed, with the ``embeddings`` extra (wordllama)."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from librefang_memory import embeddings
from librefang_memory.pgvector import TABLE

SEMANTIC = '[memory]\nembeddings = "wordllama"\n'
CONTENTS = {
    "a": [("The user drinks green tea every morning", "user"), ("The car needs new winter tires", "session"),
          ("The quarterly report is due on Friday", "user"), ("The user is allergic to peanuts", "user"),
          ("Meeting with the dentist next Tuesday", "session")],
    "b": [("The user enjoys espresso after lunch", "user"), ("The bicycle chain needs oil", "session"),
          ("The user speaks Portuguese and Spanish", "user")],
}
QUERIES = ["hot beverages", "automobile maintenance", "food allergy", "languages", "appointments"]


@pytest.fixture
async def pgvector_url(postgres_url: str) -> str:
    """The ``postgres_url`` database, skipped when its server has no pgvector to offer."""
    if os.environ.get("CI"):
        import wordllama  # noqa: F401 - in CI the development install must have the extra
    else:
        pytest.importorskip("wordllama")
    import asyncpg

    conn = await asyncpg.connect(postgres_url)
    try:
        available = await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")
    finally:
        await conn.close()
    if not available:
        pytest.skip("the PostgreSQL server behind LIBREFANG_TEST_POSTGRES_URL has no pgvector extension "
                    "(install pgvector, or use the server bundled in the 'pgserver' wheel)")
    return postgres_url


async def sql(url: str, statement: str, *args: Any) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(statement, *args)
    finally:
        await conn.close()


async def add_all(client: Any, agents: dict[str, str]) -> dict[str, str]:
    """Store CONTENTS; content → memory id."""
    ids = {}
    for key, entries in CONTENTS.items():
        for content, level in entries:
            r = await client.post("/api/memory", json={"agent_id": agents[key], "content": content, "level": level})
            assert r.status_code == 201
            ids[content] = (await r.get_json())["memories"][0]["id"]
    return ids


async def in_process(kernel: Any, url: str, query: str, limit: int, agent_id: str | None = None,
                     level: str | None = None) -> list[tuple[int, float]]:
    """The in-process ranking (numpy over ``memory_vectors``) of the live items matching the filters."""
    semantic = kernel.services["memory"].semantic
    rows = await sql(url, "SELECT v.seq, v.vector FROM memory_vectors v JOIN memory_items m ON m.seq = v.seq "
                          "WHERE NOT m.deleted AND ($1::text IS NULL OR m.agent_id = $1) "
                          "AND ($2::text IS NULL OR m.level = $2)", agent_id, level)
    vector = (await semantic.embedder.encode([query]))[0]
    return embeddings.rank(vector, [(r["seq"], bytes(r["vector"])) for r in rows], limit)


async def knn(kernel: Any, query: str, limit: int, agent_id: str | None = None,
              level: str | None = None) -> list[tuple[int, float]]:
    semantic = kernel.services["memory"].semantic
    vector = (await semantic.embedder.encode([query]))[0]
    return await semantic.pg.search(semantic.embedder.name, embeddings.to_blob(vector), limit, agent_id, level)


async def assert_same_ranking(kernel: Any, url: str, agents: dict[str, str], **filters: Any) -> None:
    for query in QUERIES:
        for agent_id in (None, agents["a"], agents["b"]):
            expected = await in_process(kernel, url, query, 4, agent_id, **filters)
            found = await knn(kernel, query, 4, agent_id, **filters)
            assert [seq for seq, _ in found] == [seq for seq, _ in expected], (query, agent_id, filters)
            assert [score for _, score in found] == pytest.approx([score for _, score in expected], abs=1e-5)


async def counts(url: str) -> tuple[int, int]:
    """(rows of memory_vectors, rows of the pgvector table)."""
    rows = await sql(url, f"SELECT (SELECT count(*) FROM memory_vectors) AS v, (SELECT count(*) FROM {TABLE}) AS p")
    return rows[0]["v"], rows[0]["p"]


async def test_pgvector_ranks_like_in_process_and_survives_restarts(start_memory: Any, spawn: Any,
                                                                   pgvector_url: str) -> None:
    url = pgvector_url
    top = f'database_url = "{url}"\n'
    kernel, client = await start_memory(SEMANTIC, top=top)
    semantic = kernel.services["memory"].semantic
    assert (await (await client.get("/api/memory/stats")).get_json())["vector_backend"] == "pgvector"
    agents = {key: await spawn(kernel, f"pgv-{key}") for key in CONTENTS}
    ids = await add_all(client, agents)

    # stored in a pgvector column, one row per memory_vectors row
    column = await sql(url, "SELECT format_type(atttypid, atttypmod) AS t FROM pg_attribute "
                            f"WHERE attrelid = '{TABLE}'::regclass AND attname = 'embedding'")
    assert column[0]["t"] == "vector(256)"
    assert await counts(url) == (8, 8)

    # the server's KNN equals the in-process ranking, globally, per agent and per level
    await assert_same_ranking(kernel, url, agents)
    await assert_same_ranking(kernel, url, agents, level="user")
    found = await knn(kernel, "hot beverages", 8, agents["b"])
    by_seq = {r["seq"]: r["agent_id"] for r in await sql(url, "SELECT seq, agent_id FROM memory_items")}
    assert len(found) == 3 and {by_seq[seq] for seq, _ in found} == {agents["b"]}
    levels = {r["seq"]: r["level"] for r in await sql(url, "SELECT seq, level FROM memory_items")}
    assert {levels[seq] for seq, _ in await knn(kernel, "car", 8, level="session")} == {"session"}

    # through HTTP: hybrid results found by meaning
    body = await (await client.get(f"/api/memory/agents/{agents['a']}/search?q=hot beverages&limit=1")).get_json()
    assert body["mode"] == "hybrid"
    assert [m["content"] for m in body["memories"]] == ["The user drinks green tea every morning"]
    body = await (await client.get("/api/memory/search?q=automobile maintenance&limit=3&level=session")).get_json()
    assert body["memories"] and {m["level"] for m in body["memories"]} == {"session"}

    # a soft-deleted memory is no longer a neighbour; an updated one is re-embedded in place
    tea = ids["The user drinks green tea every morning"]
    assert (await client.delete(f"/api/memory/items/{tea}")).status_code == 200
    tea_seq = (await sql(url, "SELECT seq FROM memory_items WHERE id = $1", tea))[0]["seq"]
    assert tea_seq not in [seq for seq, _ in await knn(kernel, "hot beverages", 8)]
    await assert_same_ranking(kernel, url, agents)
    report = ids["The quarterly report is due on Friday"]
    assert (await client.put(f"/api/memory/items/{report}", json={"content": "The user plays the violin"})).status_code == 200
    assert await counts(url) == (8, 8)
    body = await (await client.get("/api/memory/search?q=musical instrument&limit=1")).get_json()
    assert body["memories"][0]["id"] == report
    await assert_same_ranking(kernel, url, agents)
    await kernel.stop()

    # a restart finds the table as it was
    kernel, client = await start_memory(SEMANTIC, top=top)
    semantic = kernel.services["memory"].semantic
    assert semantic.backend == "pgvector"
    assert await counts(url) == (8, 8)
    await assert_same_ranking(kernel, url, agents)

    # the extension dropped (with the column) while running: writes (and searches) go on in-process
    await sql(url, "DROP EXTENSION vector CASCADE")
    r = await client.post("/api/memory", json={"agent_id": agents["b"], "content": "The user owns a grand piano"})
    assert r.status_code == 201
    piano = (await r.get_json())["memories"][0]["id"]
    assert semantic.backend == "in-process"
    body = await (await client.get("/api/memory/search?q=automobile maintenance&limit=1")).get_json()
    assert body["mode"] == "hybrid" and body["memories"][0]["content"] == "The car needs new winter tires"
    body = await (await client.get(f"/api/memory/agents/{agents['b']}/search?q=musical instrument&limit=1")).get_json()
    assert [m["id"] for m in body["memories"]] == [piano]
    await kernel.stop()

    # the next start installs the extension again and refills the table from memory_vectors
    kernel, client = await start_memory(SEMANTIC, top=top)
    semantic = kernel.services["memory"].semantic
    assert semantic.backend == "pgvector"
    assert await counts(url) == (9, 9)
    await assert_same_ranking(kernel, url, agents, level="user")
    body = await (await client.get("/api/memory/search?q=musical instrument&limit=2")).get_json()
    assert body["mode"] == "hybrid" and {m["id"] for m in body["memories"]} == {report, piano}

    # dropped again while running, now seen first by a search: it answers from memory_vectors
    await sql(url, "DROP EXTENSION vector CASCADE")
    body = await (await client.get(f"/api/memory/agents/{agents['a']}/search?q=automobile maintenance&limit=1"))\
        .get_json()
    assert semantic.backend == "in-process"
    assert body["mode"] == "hybrid"
    assert [m["content"] for m in body["memories"]] == ["The car needs new winter tires"]


@pytest.fixture
async def plain_role(pgvector_url: str) -> AsyncIterator[str]:
    """The test database owned by a new role without superuser rights (it may not create the
    untrusted pgvector extension); its URL. The role is dropped afterwards."""
    role = f"lf_plain_{uuid.uuid4().hex[:10]}"
    database = pgvector_url.rsplit("/", 1)[1]
    await sql(pgvector_url, f"CREATE ROLE {role} LOGIN")
    await sql(pgvector_url, f"ALTER DATABASE {database} OWNER TO {role}")
    parts = urlsplit(pgvector_url)
    yield urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
    await sql(pgvector_url, f"REASSIGN OWNED BY {role} TO CURRENT_USER")
    await sql(pgvector_url, f"DROP OWNED BY {role}")
    await sql(pgvector_url, f"DROP ROLE {role}")


async def test_without_the_extension_vectors_are_ranked_in_process(start_memory: Any, spawn: Any, pgvector_url: str,
                                                                  plain_role: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    top = f'database_url = "{plain_role}"\n'
    with caplog.at_level(logging.INFO, logger="librefang.memory"):
        kernel, client = await start_memory(SEMANTIC, top=top)
    assert "ranks vectors in-process (CREATE EXTENSION vector failed" in caplog.text
    assert (await (await client.get("/api/memory/stats")).get_json())["vector_backend"] == "in-process"
    agents = {key: await spawn(kernel, f"plain-{key}") for key in CONTENTS}
    await add_all(client, agents)
    body = await (await client.get(f"/api/memory/agents/{agents['a']}/search?q=hot beverages&limit=1")).get_json()
    assert body["mode"] == "hybrid"
    assert [m["content"] for m in body["memories"]] == ["The user drinks green tea every morning"]
    assert (await sql(pgvector_url, "SELECT to_regclass($1) AS t", TABLE))[0]["t"] is None
    await kernel.stop()

    # an administrator installs the extension: the next start moves the vectors into pgvector
    await sql(pgvector_url, "CREATE EXTENSION vector")
    kernel, client = await start_memory(SEMANTIC, top=top)
    assert kernel.services["memory"].semantic.backend == "pgvector"
    assert await counts(pgvector_url) == (8, 8)
    await assert_same_ranking(kernel, pgvector_url, agents)
    await kernel.stop()

    # and removes it again: back to the in-process ranking over memory_vectors, same answers
    await sql(pgvector_url, "DROP EXTENSION vector CASCADE")
    kernel, client = await start_memory(SEMANTIC, top=top)
    assert kernel.services["memory"].semantic.backend == "in-process"
    body = await (await client.get("/api/memory/search?q=automobile maintenance&limit=1")).get_json()
    assert body["mode"] == "hybrid"
    assert [m["content"] for m in body["memories"]] == ["The car needs new winter tires"]
    r = await client.post("/api/memory", json={"agent_id": agents["b"], "content": "The user owns a grand piano"})
    assert r.status_code == 201
    body = await (await client.get(f"/api/memory/agents/{agents['b']}/search?q=musical instrument&limit=1")).get_json()
    assert [m["content"] for m in body["memories"]] == ["The user owns a grand piano"]
    await kernel.stop()  # (before the role that owns its connections is dropped)
