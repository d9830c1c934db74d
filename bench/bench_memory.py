"""Benchmark of the memory plugin's proactive store: insert throughput and search latency.

Measures, in one run, on a fresh temporary home (SQLite, WAL):
1. insert throughput: ``--memories`` (default 100,000) memories across ``--agents`` (default 100)
   agents, written in batches of ``--batch`` through ``MemoryService.insert_batch`` (one transaction
   per batch, FTS index and history rows included);
2. full-text search latency (FTS5, BM25), p50/p99 over ``--queries`` sequential queries of 1–3 words:
   global (every agent) and per agent, through ``MemoryService.search`` (no access bookkeeping) and,
   per agent, through the HTTP route in-process (``GET /api/memory/agents/{id}/search``);
3. with ``--semantic`` and the ``embeddings`` extra installed: embedding throughput and hybrid
   (FTS + cosine, reciprocal-rank fusion) latency, per agent and global.

The corpus is synthetic and follows natural-language statistics: sentences of 8–14 words drawn from a
20,000-word vocabulary with Zipf's law (frequency ∝ 1/rank). The 100 most frequent words play the
part of function words ("the", "is", …): they fill the memories but are never searched for (the
product drops stop words from queries). Query words (1–3) are drawn with the same law from the rest,
so popular words (in about 1% of memories) come up often and rare ones seldom. Every memory also
starts with "The user", as extracted memories do: a word in every row, pruned from queries that hold a
rarer word (see ``librefang_memory.fts``), which ``--with-user`` adds to every query to show.

Run: ``uv run python bench/bench_memory.py`` (``--memories 20000`` for a quick look).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "pa", "qu", "dor", "len", "mar", "tis", "bel"]


def vocabulary(size: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def sentence(words: list[str], cumulative: list[float], rng: random.Random) -> str:
    # cum_weights, computed once: ``weights=`` would rebuild them (20,000 sums) for every sentence.
    return "The user " + " ".join(rng.choices(words, cum_weights=cumulative, k=rng.randint(8, 14)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(label: str, samples_ms: list[float], cpu_ms: float | None = None) -> dict[str, Any]:
    """p50/p99 of wall-clock samples; ``cpu_ms``: CPU time of the whole process (every thread) per
    sample, the figure that does not depend on what else runs on the machine."""
    row = {"case": label, "n": len(samples_ms), "p50_ms": round(statistics.median(samples_ms), 3),
           "p99_ms": round(percentile(samples_ms, 0.99), 3), "max_ms": round(max(samples_ms), 3)}
    if cpu_ms is not None:
        row["cpu_ms"] = round(cpu_ms, 3)
    cpu = f"   cpu {cpu_ms:>7.3f} ms/op" if cpu_ms is not None else ""
    print(f"  {label:<46} p50 {row['p50_ms']:>8.3f} ms   p99 {row['p99_ms']:>8.3f} ms{cpu}   (n={row['n']})",
          flush=True)
    return row


async def timed(calls: list[Any]) -> tuple[list[float], float]:
    """Run each ``await call()`` in turn: wall-clock ms of each, and mean process CPU ms per call."""
    samples = []
    cpu = time.process_time()
    for call in calls:
        t = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t) * 1000)
    return samples, (time.process_time() - cpu) * 1000 / max(1, len(calls))


async def run(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    import librefang_agents.plugin as agents_plugin
    import librefang_memory.plugin as memory_plugin
    from librefang.app import build_app
    from librefang.kernel import create_kernel
    from librefang.testing import make_client
    from librefang_agents.api import registry
    from librefang_memory.api import memory, new_row

    rng = random.Random(7)
    words = vocabulary(20_000, rng)
    rng.shuffle(words)
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    content_words, content_weights = words[100:], weights[100:]
    cumulative = list(itertools.accumulate(weights))
    home = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    os.environ["LIBREFANG_VAULT_KEY"] = "00" * 32
    os.environ.pop("LIBREFANG_API_KEY", None)
    embeddings = "wordllama" if args.semantic else "off"
    (home / "config.toml").write_text(
        f'[agents]\nspawn_default_agent = false\n[memory]\nembeddings = "{embeddings}"\n'
        f"vector_index = {'false' if args.no_vector_index else 'true'}\n"
        f"[proactive_memory]\nmax_memories_per_agent = {args.memories}\n")
    kernel = create_kernel(home, plugins={"agents": agents_plugin, "memory": memory_plugin}, load_entry_points=False)
    await kernel.start()
    try:
        service = memory(kernel)
        agents = []
        for i in range(args.agents):
            record = await registry(kernel).spawn_request(
                manifest_toml=f'name = "bench-{i}"\n[model]\nprovider = "openai"\nmodel = "m"\n')
            agents.append(record.id)
        print(f"memory benchmark: {args.memories:,} memories, {args.agents} agents, batches of {args.batch}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
        rows = [new_row(agent_id=agents[n % len(agents)], content=sentence(words, cumulative, rng), level="user",
                        category="preference", metadata={}, source="bench", confidence=0.9, peer_id=None)
                for n in range(args.memories)]
        started, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(rows), args.batch):
            await service.insert_batch(rows[start:start + args.batch])
        elapsed = time.perf_counter() - started
        rate = args.memories / elapsed
        insert_cpu_us = (time.process_time() - cpu) * 1e6 / args.memories
        print(f"  insert: {rate:,.0f} items/s ({elapsed:.2f} s for {args.memories:,}; "
              f"cpu {insert_cpu_us:.0f} us/item)", flush=True)

        content_cumulative = list(itertools.accumulate(content_weights))
        queries = [" ".join(rng.choices(content_words, cum_weights=content_cumulative, k=rng.randint(1, 3)))
                   for _ in range(args.queries)]
        if args.with_user:
            queries = [f"user {q}" for q in queries]
        for q in queries[:20]:  # warm the page cache
            await service.search(q, limit=10, touch=False)
        results = []
        samples, cpu = await timed([lambda q=q: service.search(q, limit=10, touch=False) for q in queries])
        results.append(summary("FTS global (service)", samples, cpu))
        samples, cpu = await timed([lambda n=n, q=q: service.search(q, agent_id=agents[n % len(agents)], limit=10,
                                                                    touch=False) for n, q in enumerate(queries)])
        results.append(summary("FTS per agent (service)", samples, cpu))
        client = make_client(build_app(kernel))
        samples = []
        for n, q in enumerate(queries[: min(len(queries), 300)]):
            t = time.perf_counter()
            response = await client.get(f"/api/memory/agents/{agents[n % len(agents)]}/search",
                                        query_string={"q": q, "limit": "10"})
            samples.append((time.perf_counter() - t) * 1000)
            assert response.status_code == 200
        results.append(summary("FTS per agent (HTTP route, in-process)", samples))

        # Floors measured in the same run on the same file with plain sqlite3 (no SQLAlchemy, no
        # threads, no history rows, no pruning): what the machine gives at this moment.
        import sqlite3
        import uuid

        from librefang_memory.fts import match_expression, search_sql
        from librefang_memory.store import query_terms

        raw = sqlite3.connect(str(home / "data" / "librefang.db"))
        raw.execute("PRAGMA synchronous=NORMAL")
        extra = [dict(r, id=str(uuid.uuid4())) for r in rows[:10_000]]
        columns = list(extra[0])
        insert_sql = (f"INSERT INTO memory_items ({', '.join(columns)}) "
                      f"VALUES ({', '.join(':' + c for c in columns)})")
        t, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(extra), args.batch):
            with raw:
                raw.executemany(insert_sql, extra[start:start + args.batch])
        floor_rate = len(extra) / (time.perf_counter() - t)
        floor_cpu_us = (time.process_time() - cpu) * 1e6 / len(extra)
        print(f"  floor insert (plain sqlite3, same table and FTS triggers): {floor_rate:,.0f} items/s "
              f"(cpu {floor_cpu_us:.0f} us/item)", flush=True)
        samples = []
        cpu = time.process_time()
        for q in queries:
            params = {"match": match_expression(query_terms(q), None), "fetch": 10, "limit": 10}
            t = time.perf_counter()
            raw.execute(search_sql(False, False), params).fetchall()
            samples.append((time.perf_counter() - t) * 1000)
        results.append(summary("floor FTS global (plain sqlite3, no pruning)", samples,
                               (time.process_time() - cpu) * 1000 / len(queries)))
        raw.close()

        if args.semantic and service.semantic.enabled:
            from librefang_memory.store import Filter

            live = await service.store.all(Filter())
            t = time.perf_counter()
            for start in range(0, len(live), args.batch):  # the product's write path: table + vector index
                await service.semantic.embed(live[start:start + args.batch])
            print(f"  embed + store ({service.semantic.backend}): {len(live) / (time.perf_counter() - t):,.0f} items/s")
            samples, cpu = await timed([lambda n=n, q=q: service.search(q, agent_id=agents[n % len(agents)], limit=10,
                                                                        touch=False) for n, q in enumerate(queries[:200])])
            results.append(summary("hybrid per agent (service)", samples, cpu))
            samples, cpu = await timed([lambda q=q: service.search(q, limit=10, touch=False) for q in queries[:20]])
            results.append(summary("hybrid global (service)", samples, cpu))
        if args.json:  # the figures above, for bench/all.py
            args.json.write_text(json.dumps({
                "memories": args.memories, "agents": args.agents, "batch": args.batch, "queries": args.queries,
                "insert_items_per_s": round(rate), "floor_insert_items_per_s": round(floor_rate),
                "insert_cpu_us_per_item": round(insert_cpu_us, 1), "floor_insert_cpu_us_per_item": round(floor_cpu_us, 1),
                "search": results, "loadavg": os.getloadavg(), "cpus": os.cpu_count()}, indent=2) + "\n")
    finally:
        await kernel.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memories", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--semantic", action="store_true", help="also measure hybrid search (embeddings extra)")
    parser.add_argument("--no-vector-index", action="store_true",
                        help="semantic search ranks vectors in-process instead of through sqlite-vec")
    parser.add_argument("--with-user", action="store_true", help='add "user" (in every memory) to each query')
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
