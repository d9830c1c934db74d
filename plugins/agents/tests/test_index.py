"""The in-memory list index: ordering, filters, updates, removal, children; and, with a shared
database, that a second process's writes are seen."""

from __future__ import annotations

import random
import time
import uuid

from librefang_agents.index import MATCH_CACHE_ENTRIES, MATCH_CACHE_QUERIES, AgentIndex, Entry, search_text
from librefang_agents.manifest import parse_manifest
from librefang_agents.service import AgentService


def entry(name: str, *, state: str = "Running", created: float = 0.0, parent: str | None = None,
          description: str = "") -> Entry:
    return Entry(
        id=str(uuid.uuid4()), name=name, description=description, author="", state=state, mode="full",
        profile=None, schedule="reactive", model_provider="default", model_name="default", tags=[], identity={},
        parent_id=parent, session_id=str(uuid.uuid4()), created_at=created or time.time(),
        last_active=created or time.time(), search=search_text(name, description),
    )


def names(entries):
    return [e.name for e in entries]


def test_views_stay_sorted_through_inserts_updates_and_removals():
    index = AgentIndex()
    pool = [entry(f"agent-{i:03d}", created=1000 + i) for i in range(200)]
    random.Random(7).shuffle(pool)
    for e in pool[:100]:
        index.put(e)
    first, total = index.page(q=None, state=None, sort="name", descending=False, limit=5, offset=0)
    assert total == 100 and names(first) == sorted(e.name for e in pool[:100])[:5]
    index.page(q=None, state=None, sort="created_at", descending=True, limit=5, offset=0)  # build that view too
    for e in pool[100:]:  # inserted into existing views
        index.put(e)
    page, total = index.page(q=None, state=None, sort="name", descending=False, limit=500, offset=0)
    assert total == 200 and names(page) == [f"agent-{i:03d}" for i in range(200)]
    newest, _ = index.page(q=None, state=None, sort="created_at", descending=True, limit=3, offset=0)
    assert names(newest) == ["agent-199", "agent-198", "agent-197"]
    last, _ = index.page(q=None, state=None, sort="name", descending=True, limit=2, offset=198)
    assert names(last) == ["agent-001", "agent-000"]
    beyond, total = index.page(q=None, state=None, sort="name", descending=True, limit=5, offset=500)
    assert beyond == [] and total == 200
    victim = index.entries[index.by_name["agent-050"]]
    index.remove(victim.id)
    page, total = index.page(q=None, state=None, sort="created_at", descending=False, limit=500, offset=0)
    assert total == 199 and "agent-050" not in names(page) and names(page) == sorted(names(page))
    renamed = index.entries[index.by_name["agent-010"]]
    index.update(renamed.id, name="zzz", description="Renamed Agent")
    assert index.by_name["zzz"] == renamed.id and "agent-010" not in index.by_name
    page, _ = index.page(q=None, state=None, sort="name", descending=True, limit=1, offset=0)
    assert names(page) == ["zzz"]
    found, total = index.page(q="renamed AGENT", state=None, sort="name", descending=False, limit=10, offset=0)
    assert names(found) == ["zzz"] and total == 1


def test_state_filter_counts_and_children():
    index = AgentIndex()
    parent = entry("parent")
    index.put(parent)
    kids = [entry(f"kid-{i}", parent=parent.id) for i in range(3)]
    for kid in kids:
        index.put(kid)
    assert index.children[parent.id] == [k.id for k in kids]
    index.update(kids[0].id, state="Suspended")
    assert index.counts() == (4, 3)
    suspended, total = index.page(q=None, state="Suspended", sort="state", descending=False, limit=10, offset=0)
    assert names(suspended) == ["kid-0"] and total == 1
    parent.fragment = b"cached"
    index.remove(kids[1].id)
    assert index.children[parent.id] == [kids[0].id, kids[2].id]
    assert parent.fragment is None  # the parent's cached item lists its children
    index.update(kids[2].id, parent_id=None)
    assert index.children[parent.id] == [kids[0].id]
    assert index.counts() == (3, 2)


async def test_shared_database_sees_writes_of_another_process(agents_kernel):
    """Two daemons on one database: each list first checks the version row and reloads when stale.

    The second daemon is a second service (its own index) on the same database; both run in the
    shared mode a PostgreSQL ``database_url`` selects.
    """
    a = agents_kernel.services["agents"]
    b = AgentService(agents_kernel, a.config, a.trusted_signers)
    for service in (a, b):
        service.store.shared = True
        await service.store.load()
    spawned = await a.spawn(parse_manifest('name = "from-a"'))
    listing = await b.list(q="from-a")
    assert [i["id"] for i in listing["items"]] == [spawned.id]
    await b.set_state(spawned.id, "Suspended")
    assert (await a.list(q="from-a"))["items"][0]["state"] == "Suspended"
    assert a.store.version == b.store.version
    await b.kill(spawned.id)
    assert (await a.list(q="from-a"))["total"] == 0
    assert (await a.counts())["agent_count"] == (await b.counts())["agent_count"] == 1


def brute(index, q, state, sort, descending, limit, offset):
    from librefang_agents.index import SORT_KEYS

    rows = sorted(index.entries.values(), key=SORT_KEYS[sort])
    rows = [e for e in rows if (not state or e.state == state) and (not q or q.lower() in e.search)]
    if descending:
        rows.reverse()
    return [e.id for e in rows[offset:offset + limit]], len(rows)


def test_random_operations_match_a_brute_force_listing():
    rng = random.Random(11)
    index = AgentIndex()
    words = ["alpha", "beta", "gamma", "delta", "report", "mail"]
    for step in range(600):
        op = rng.random()
        if op < 0.5 or not index.entries:
            index.put(entry(f"{rng.choice(words)}-{step}", state=rng.choice(["Running", "Suspended"]),
                            created=1000 + rng.random() * 100, description=" ".join(rng.sample(words, 2))))
        elif op < 0.7:
            victim = rng.choice(list(index.entries))
            index.update(victim, state=rng.choice(["Running", "Suspended", "Crashed"]), last_active=rng.random())
        elif op < 0.8:
            victim = rng.choice(list(index.entries))
            index.update(victim, name=f"renamed-{step}", description=rng.choice(words))
        else:
            index.remove(rng.choice(list(index.entries)))
        if step % 3 == 0:  # often, so remembered query results meet every kind of change
            for _ in range(5):
                q = rng.choice([None, "", "a", "mail", "renamed", "zzz", "ta-1", "MAIL"])
                state = rng.choice([None, "Running", "Suspended", "Crashed"])
                sort = rng.choice(["name", "created_at", "last_active", "state"])
                desc, limit, offset = rng.random() < 0.5, rng.choice([0, 1, 7, 50]), rng.choice([0, 3, 40])
                got, total = index.page(q=q, state=state, sort=sort, descending=desc, limit=limit, offset=offset)
                assert ([e.id for e in got], total) == brute(index, q, state, sort, desc, limit, offset)
    assert index.counts() == (len(index.entries), sum(e.state == "Running" for e in index.entries.values()))


async def test_old_tombstones_are_forgotten_at_start(start_agents, spawn):
    import sqlalchemy as sa
    from librefang_agents.models import tombstones

    kernel, client = await start_agents()
    agent_id = await spawn(client, "ancient")
    await client.delete(f"/api/agents/{agent_id}")
    async with kernel.db.begin() as conn:
        await conn.execute(sa.update(tombstones).values(killed_at=time.time() - 31 * 86400))
    await kernel.stop()
    _kernel, again = await start_agents()
    response = await again.delete(f"/api/agents/{agent_id}")
    assert response.status_code == 404


def test_remembered_query_results_follow_every_change():
    index = AgentIndex()
    a, b, c = entry("report-a", created=1), entry("report-b", created=2, state="Suspended"), entry("other", created=3)
    for e in (a, b, c):
        index.put(e)

    def ids(**kw):
        got, total = index.page(**{"q": "report", "state": None, "sort": "name", "descending": False,
                                   "limit": 50, "offset": 0, **kw})
        return [e.name for e in got], total

    assert ids() == (["report-a", "report-b"], 2)
    assert ids(descending=True) == (["report-b", "report-a"], 2)
    assert ids() == (["report-a", "report-b"], 2)  # the remembered list was not reversed in place
    assert ids(state="Running") == (["report-a"], 1)
    index.update(b.id, state="Running")  # a state change keeps the name view's memory, read fresh
    assert ids(state="Running") == (["report-a", "report-b"], 2)
    index.update(c.id, name="report-c")  # a rename
    assert ids() == (["report-a", "report-b", "report-c"], 3)
    index.remove(a.id)
    assert ids() == (["report-b", "report-c"], 2)
    index.put(entry("report-0", created=4))
    assert ids() == (["report-0", "report-b", "report-c"], 3)
    index.update(b.id, description="no longer", name="x")
    assert ids(q="no longer") == (["x"], 1) and ids() == (["report-0", "report-c"], 2)
    for i in range(100):  # many different needles: the memory stays bounded
        index.page(q=f"needle-{i}", state=None, sort="name", descending=False, limit=5, offset=0)
    assert all(len(corpus[2]) <= MATCH_CACHE_QUERIES for corpus in index._corpus.values())
    assert all(sum(map(len, corpus[2].values())) <= MATCH_CACHE_ENTRIES for corpus in index._corpus.values())
