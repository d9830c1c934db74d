"""AgentStore.get keeps the rows it read (one database hop less per lookup; a turn looks its agent
up several times): every write path is seen by the next get, a read that raced a write is not
kept, and callers get records of their own."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from librefang_agents import api as agents_api

from .conftest import HELLO


async def test_every_write_is_seen_by_the_next_get(agents_kernel: Any) -> None:
    registry = agents_api.registry(agents_kernel)
    store = registry.store
    record = await registry.spawn_request(manifest_toml=HELLO.format(name="cached"))
    first = await registry.get(record.id)
    assert record.id in store._rows  # kept
    first.manifest["description"] = "changed by a caller"  # a caller's copy, not the cache's
    assert (await registry.get(record.id)).manifest["description"] == "test agent"
    await registry.set_state(record.id, "Suspended")
    assert (await registry.get(record.id)).state == "Suspended"
    await registry.set_mode(record.id, "observe")
    assert (await registry.get(record.id)).mode == "observe"
    await registry.touch(record.id, "11111111-1111-4111-8111-111111111111")
    assert (await registry.get(record.id)).session_id == "11111111-1111-4111-8111-111111111111"
    await registry.change(record.id, lambda data: data.update(description="patched"))
    again = await registry.get(record.id)
    assert again.manifest["description"] == "patched" and again.revision > first.revision
    await registry.kill(record.id)
    assert record.id not in store._rows
    assert await store.get(record.id) is None


async def test_a_read_that_raced_a_write_is_not_kept(agents_kernel: Any) -> None:
    registry = agents_api.registry(agents_kernel)
    store = registry.store
    record = await registry.spawn_request(manifest_toml=HELLO.format(name="racer"))
    store._rows.clear()
    # Hold the database thread so the read and the write queue up behind it, read first: the read
    # then sees the row before the write, and must not be kept once the write is in.
    gate = threading.Event()
    held = asyncio.ensure_future(agents_kernel.db.run(lambda _conn: gate.wait(10)))
    await asyncio.sleep(0.05)
    reading = asyncio.ensure_future(store.get(record.id))
    await asyncio.sleep(0)
    writing = asyncio.ensure_future(store.set_fields(record.id, state="Suspended"))
    await asyncio.sleep(0)
    gate.set()
    await held
    assert (await reading).state == "Running"  # what the database held when it was read
    assert await writing
    assert record.id not in store._rows
    assert (await registry.get(record.id)).state == "Suspended"
