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


async def test_records_of_a_cached_row_share_its_validated_manifest_until_it_changes(agents_kernel: Any) -> None:
    registry = agents_api.registry(agents_kernel)
    record = await registry.spawn_request(manifest_toml=HELLO.format(name="parsed-once"))
    first = await registry.get(record.id)
    second = await registry.get(record.id)
    assert first is not second and first.parsed() is second.parsed()  # validated once per row
    assert first.parsed().description == "test agent"
    # a caller that changes its record's manifest (in place or by assignment) gets its own model
    second.manifest["description"] = "edited in place"
    assert second.parsed().description == "edited in place"
    assert first.parsed().description == "test agent"
    first.manifest = {**first.manifest, "description": "replaced"}
    assert first.parsed().description == "replaced"
    assert (await registry.get(record.id)).parsed().description == "test agent"
    # a write of other columns (activity, state) keeps the validated manifest; a manifest write does not
    kept = (await registry.get(record.id)).parsed()
    await registry.touch(record.id)
    await registry.set_state(record.id, "Suspended")
    assert (await registry.get(record.id)).parsed() is kept
    # every write path: the next record validates what was written
    await registry.change(record.id, lambda data: data.update(description="patched"))
    assert (await registry.get(record.id)).parsed().description == "patched"
    await agents_api.set_model(agents_kernel, record.id, "other-model", "openai")
    assert (await registry.get(record.id)).parsed().model.model == "other-model"
    await registry.store.load()  # the index reloaded (shared database): the cache starts over
    assert (await registry.get(record.id)).parsed().model.model == "other-model"


async def test_get_answers_a_cached_id_and_still_checks_other_spellings(agents_kernel: Any) -> None:
    import pytest
    from librefang.errors import BadRequest, NotFound

    registry = agents_api.registry(agents_kernel)
    record = await registry.spawn_request(manifest_toml=HELLO.format(name="spelled"))
    await registry.get(record.id)
    assert (await registry.get(record.id.upper())).id == record.id  # not the cached key: parsed, found
    with pytest.raises(BadRequest):
        await registry.get("not-a-uuid")
    await registry.kill(record.id)
    with pytest.raises(NotFound):
        await registry.get(record.id)


def test_load_json_reads_what_the_stdlib_reads() -> None:
    import json
    import math

    from librefang_agents.store import load_json

    samples = [
        {"name": "a", "model": {"provider": "openai", "temperature": 0.7, "max_tokens": 4096}, "tags": ["x", "é ✓ 😀"]},
        {"big": 2 ** 70, "negative": -(2 ** 63) - 1, "edge": 2 ** 63 - 1, "u64": 2 ** 64 - 1},
        {"text": "call 1234567890123456789012 now", "float": 1.2345678901234567e-300, "zero": -0.0},
        {"nan": math.nan, "inf": math.inf},
        {"escaped": "\ud800 lone", "control": "\x00\x1f", "nested": [[[{"a": None, "b": True}]]]},
    ]
    for sample in samples:
        text = json.dumps(sample, separators=(",", ":"))
        loaded, expected = load_json(text), json.loads(text)
        assert repr(loaded) == repr(expected)  # repr: NaN compares unequal to itself
        assert type(loaded.get("big", 0)) is int
    assert load_json('{"huge":1e400}') == {"huge": math.inf}
