"""The window cache of busy sessions' decoded history: its race rules, and that the history a turn
sends is exactly the stored one after every write path (turns with tools, clear, reset, compaction,
import, switch, label, delete, the per-session message limit, a restart)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import librefang_agents.plugin as agents_plugin
import librefang_providers.plugin as providers_plugin
import librefang_runtime.plugin as runtime_plugin
import sqlalchemy as sa
from librefang_runtime.history import Window, WindowCache, content_to_json
from librefang_runtime.models import sessions

from tests.fakes.llm_server import Script, ToolCall


@dataclass
class _Info:
    message_count: int
    updated_at: float = 0.0


def _window(items: list[int], count: int, cap: int | None = 3) -> Window:
    return Window(_Info(count), list(items), cap)


def test_window_cache_rules() -> None:
    cache = WindowCache(max_sessions=2)
    token = cache.begin_read("a")
    cache.end_read("a", token, _window([1, 2, 3], 5))
    assert cache.get("a", 3).items == [1, 2, 3]
    assert cache.get("a", 4) is None  # more than it holds of a longer session
    # an append extends it and keeps the last ``cap``
    cache.begin_write("a")
    cache.end_write("a", [4, 5], 7, 1.0)
    window = cache.get("a", 3)
    assert window.items == [3, 4, 5] and window.info.message_count == 7
    # a read that a write overlapped (started, or still in flight) is not installed
    cache.invalidate("a")
    token = cache.begin_read("a")
    cache.begin_write("a")
    cache.end_write("a", [6], 8)
    cache.end_read("a", token, _window([4, 5, 6], 8))
    assert "a" not in cache
    cache.begin_write("a")
    token = cache.begin_read("a")
    cache.end_read("a", token, _window([4, 5, 6], 8))
    assert "a" not in cache
    cache.end_write("a", [7], 9)
    # an invalidation during a read, and a failed write, drop it
    token = cache.begin_read("a")
    cache.invalidate("a")
    cache.end_read("a", token, _window([5, 6, 7], 9))
    assert "a" not in cache
    cache.end_read("a", cache.begin_read("a"), _window([5, 6, 7], 9))
    cache.begin_write("a")
    cache.end_write("a", None)
    assert "a" not in cache
    # a whole short session covers any limit; the cache is bounded (least recently used goes)
    cache.end_read("s", cache.begin_read("s"), _window([1], 1, cap=60))
    assert cache.get("s", 100) is not None and cache.get("s", None) is not None
    cache.end_read("t", cache.begin_read("t"), _window([], 0))
    cache.end_read("u", cache.begin_read("u"), _window([], 0))
    assert len(cache) == 2 and "s" not in cache
    assert not cache._busy  # no bookkeeping left for idle sessions


async def say(client: Any, agent_id: str, text: str, **extra: Any) -> dict[str, Any]:
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": text, **extra})
    assert response.status_code == 200, await response.get_data(as_text=True)
    return await response.get_json()


def sent(fake_llm: Any) -> list[tuple[str, str]]:
    """(role, content) of the conversation part of the last request the provider got."""
    return [(m["role"], str(m.get("content"))) for m in fake_llm.requests[-1].body["messages"][1:]]


async def assert_window_is_the_database(kernel: Any, session_id: str, limit: int = 60) -> None:
    store = kernel.services["runtime"].store
    window = store.windows.get(session_id, limit)
    assert window is not None, "the busy session should be in the window cache"
    stored = await store.load(session_id, limit=limit)
    assert [(s.message.role, content_to_json(s.message), s.created_at) for s in window.items[-limit:]] == \
        [(s.message.role, content_to_json(s.message), s.created_at) for s in stored]
    row = await kernel.db.run(lambda conn: conn.execute(sa.select(sessions).where(sessions.c.id == session_id)).one())
    assert vars(await store.get(session_id)) == vars(window.info)
    assert (window.info.message_count, window.info.updated_at, window.info.label, window.info.summary) == \
        (row.message_count, row.updated_at, row.label, row.summary)


async def test_turns_use_the_window_and_it_matches_the_database(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "windowed")
    fake_llm.script(Script(text="one"))
    session = (await say(client, agent_id, "first"))["session_id"]
    fake_llm.script(Script(tool_calls=[ToolCall("system_time", {}, id="t1")]), Script(text="it is late"))
    await say(client, agent_id, "what time?")
    await assert_window_is_the_database(kernel, session)
    fake_llm.script(Script(text="three"))
    await say(client, agent_id, "third")
    roles = [r for r, _ in sent(fake_llm)]
    assert roles == ["user", "assistant", "user", "assistant", "tool", "assistant", "user"]
    await assert_window_is_the_database(kernel, session)


async def test_every_write_path_refreshes_the_history(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "writer")
    session = (await say(client, agent_id, "alpha"))["session_id"]
    await say(client, agent_id, "beta")
    # history clear
    assert (await client.delete(f"/api/agents/{agent_id}/history")).status_code == 200
    session = (await say(client, agent_id, "gamma"))["session_id"]
    assert sent(fake_llm) == [("user", "gamma")]
    # compaction
    for i in range(6):
        await say(client, agent_id, f"question {i}")
    fake_llm.script(Script(text="SUMMARY-OF-IT"))
    assert (await client.post(f"/api/agents/{agent_id}/session/compact")).status_code == 200
    await say(client, agent_id, "after compaction")
    assert "SUMMARY-OF-IT" in sent(fake_llm)[0][1] and "gamma" not in str(sent(fake_llm))
    await assert_window_is_the_database(kernel, session)
    # label: the content is unchanged
    assert (await client.put(f"/api/sessions/{session}/label", json={"label": "kept"})).status_code == 200
    before = sent(fake_llm)
    await say(client, agent_id, "labelled")
    assert sent(fake_llm)[:len(before)] == before and sent(fake_llm)[-1] == ("user", "labelled")
    view = await (await client.get(f"/api/sessions/{session}")).get_json()
    assert view["label"] == "kept"
    # export, reset, import, switch to the import
    exported = await (await client.get(f"/api/agents/{agent_id}/sessions/{session}/export")).get_json()
    assert (await client.post(f"/api/agents/{agent_id}/session/reset")).status_code == 200
    await say(client, agent_id, "after reset")
    assert sent(fake_llm) == [("user", "after reset")]
    imported = await (await client.post(f"/api/agents/{agent_id}/sessions/import", json=exported)).get_json()
    assert (await client.post(f"/api/agents/{agent_id}/sessions/{imported['session_id']}/switch")).status_code == 200
    await say(client, agent_id, "in the import")
    assert "SUMMARY-OF-IT" in sent(fake_llm)[0][1] and sent(fake_llm)[-1] == ("user", "in the import")
    await assert_window_is_the_database(kernel, imported["session_id"])
    # delete a cached session, then pin a turn to its id: a new, empty session
    assert (await client.delete(f"/api/sessions/{imported['session_id']}")).status_code == 200
    await say(client, agent_id, "reborn", session_id=imported["session_id"])
    assert sent(fake_llm) == [("user", "reborn")]


async def test_message_limit_and_restart(start_runtime: Any, make_kernel: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start_runtime("[runtime]\nmax_session_messages = 10\n")
    agent_id = await spawn(kernel, "limited")
    for i in range(7):
        session = (await say(client, agent_id, f"m{i}"))["session_id"]
    # 14 messages written, the oldest 4 gone: the window agrees with the database
    await assert_window_is_the_database(kernel, session)
    # the turn of m6 saw the 10 stored (u1 a1 ... u5 a5)
    assert [r for r, _ in sent(fake_llm)] == ["user", "assistant"] * 5 + ["user"]
    assert [c for r, c in sent(fake_llm) if r == "user"] == ["m1", "m2", "m3", "m4", "m5", "m6"]
    await kernel.stop()
    # a new process: nothing cached, the history comes from the database
    from librefang.app import build_app
    from librefang.testing import make_client

    again = await make_kernel(plugins={"providers": providers_plugin, "agents": agents_plugin, "runtime": runtime_plugin},
                              load_entry_points=False)
    client = make_client(build_app(again))
    assert session not in again.services["runtime"].store.windows
    await say(client, agent_id, "after restart")
    # stored: u2 a2 ... u6 a6 (the last 10 of 14)
    assert [r for r, _ in sent(fake_llm)] == ["user", "assistant"] * 5 + ["user"]
    assert [c for r, c in sent(fake_llm) if r == "user"] == ["m2", "m3", "m4", "m5", "m6", "after restart"]
    await assert_window_is_the_database(again, session)


async def test_agent_changes_reach_the_next_turn(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    """What a turn derives from the agent's record (prompt, tools) is remembered per record revision:
    an update, a rename, a mode change and a kill are all seen by the very next turn."""
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "changing")
    await say(client, agent_id, "one")
    first = fake_llm.requests[-1].body
    assert "careful test agent" in first["messages"][0]["content"] and first.get("tools")
    manifest = ('name = "changing"\n[model]\nprovider = "openai"\nmodel = "fake-model"\n'
                'system_prompt = "You are now a pirate."\n')
    assert (await client.put(f"/api/agents/{agent_id}/update", json={"manifest_toml": manifest})).status_code == 200
    await say(client, agent_id, "two")
    assert "pirate" in fake_llm.requests[-1].body["messages"][0]["content"]
    assert (await client.patch(f"/api/agents/{agent_id}", json={"description": "Speaks in riddles."})).status_code == 200
    await say(client, agent_id, "three")
    assert "Speaks in riddles." in fake_llm.requests[-1].body["messages"][0]["content"]
    assert (await client.put(f"/api/agents/{agent_id}/mode", json={"mode": "observe"})).status_code == 200
    await say(client, agent_id, "four")
    assert not fake_llm.requests[-1].body.get("tools")  # observe: no tools offered
    assert (await client.delete(f"/api/agents/{agent_id}")).status_code == 200
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": "five"})
    assert response.status_code == 404


async def test_the_agent_view_outlives_activity_writes_but_not_changes(runtime_env: Any, spawn: Any,
                                                                       fake_llm: Any) -> None:
    """The view (validated manifest, tools, prompt) is kept across the writes a turn makes itself
    (``last_active``, the current session: they change the record's revision, not what the view holds)
    and is rebuilt by a model switch, a capability change and a rename."""
    from librefang_agents import api as agents_api

    kernel, client = runtime_env
    runtime = kernel.services["runtime"]
    registry = agents_api.registry(kernel)
    agent_id = await spawn(kernel, "viewed")
    await say(client, agent_id, "one")
    view = runtime._views[(agent_id, "viewed", "full")]
    revision = (await registry.get(agent_id)).revision
    await registry.touch(agent_id, "22222222-2222-4222-8222-222222222222")
    await registry.set_state(agent_id, "Running")
    assert (await registry.get(agent_id)).revision > revision
    await say(client, agent_id, "two", session_id="22222222-2222-4222-8222-222222222222")
    assert runtime._views[(agent_id, "viewed", "full")] is view  # kept
    # a model switch
    await agents_api.set_model(kernel, agent_id, "fake-model-2")
    await say(client, agent_id, "three")
    assert fake_llm.requests[-1].body["model"] == "fake-model-2"
    # a capability change: the tools offered follow
    manifest = ('name = "viewed"\n[model]\nprovider = "openai"\nmodel = "fake-model"\n'
                '[capabilities]\ntools = ["system_time"]\n')
    assert (await client.put(f"/api/agents/{agent_id}/update", json={"manifest_toml": manifest})).status_code == 200
    await say(client, agent_id, "four")
    assert [t["function"]["name"] for t in fake_llm.requests[-1].body["tools"]] == ["system_time"]
    # a rename
    assert (await client.patch(f"/api/agents/{agent_id}", json={"name": "renamed"})).status_code == 200
    await say(client, agent_id, "five")
    assert "Your name is renamed." in fake_llm.requests[-1].body["messages"][0]["content"]
