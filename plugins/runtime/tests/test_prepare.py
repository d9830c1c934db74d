"""The per-turn shortcuts of ``RuntimeService.prepare`` and the loop give what the long ways gave:
session ids, the ``<think>`` split, the default model, the session owner check, the workspace and
the message size limit."""

from __future__ import annotations

import shutil
import uuid
from typing import Any

import pytest
from librefang.errors import ApiError, BadRequest
from librefang_runtime.loop import THINK_TAG, split_thinking
from librefang_runtime.schemas import MessageRequest
from librefang_runtime.service import parse_session_id

from tests.fakes.llm_server import Script


def test_parse_session_id_gives_the_canonical_form() -> None:
    value = uuid.uuid4()
    canonical = str(value)
    for given in (canonical, canonical.upper(), value.hex, f"{{{canonical}}}", f"urn:uuid:{canonical}"):
        assert parse_session_id(given) == canonical
    for bad in ("", "nope", canonical[:-1], canonical + "0", canonical.replace("-", "_"), " " + canonical):
        with pytest.raises(BadRequest) as caught:
            parse_session_id(bad)
        assert caught.value.code == "invalid_session_id"


@pytest.mark.parametrize("text", [
    "plain reply", "  padded \n", "", "a < b and c > d", "<think>hidden</think>shown", "<THINK>x</think> y",
    "before <think>open to the end", "<thinking>not a tag</thinking>", "1 < 2",
])
def test_split_thinking_matches_the_regular_expressions(text: str) -> None:
    thoughts = [m.strip() for m in THINK_TAG.findall(text)]
    assert split_thinking(text) == (THINK_TAG.sub("", text).strip(), "\n".join(t for t in thoughts if t))


async def test_an_agent_on_the_default_model_uses_default_model(start_runtime: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, _ = await start_runtime('[default_model]\nprovider = "openai"\nmodel = "the-default"\n')
    runtime = kernel.services["runtime"]
    plain = await spawn(kernel, "plain", 'name = "plain"\n')  # provider and model "default"
    turn = await runtime.prepare(plain, MessageRequest(message="hi"))
    assert (turn.settings.provider, turn.settings.model) == ("openai", "the-default")
    half = await spawn(kernel, "half", 'name = "half"\n[model]\nprovider = "openai"\n')
    turn = await runtime.prepare(half, MessageRequest(message="hi"))
    assert (turn.settings.provider, turn.settings.model) == ("openai", "the-default")
    own = await spawn(kernel, "own")
    turn = await runtime.prepare(own, MessageRequest(message="hi"))
    assert (turn.settings.provider, turn.settings.model) == ("openai", "fake-model")


async def test_a_session_of_another_agent_is_refused_cached_or_not(runtime_env: Any, spawn: Any,
                                                                  fake_llm: Any) -> None:
    kernel, _ = runtime_env
    runtime = kernel.services["runtime"]
    owner, other = await spawn(kernel, "owner"), await spawn(kernel, "other")
    fake_llm.script(Script(text="mine"))
    turn = await runtime.prepare(owner, MessageRequest(message="hi"))
    await runtime.run(turn)
    cached = turn.session_id
    assert cached in runtime.store.windows  # answered from the window cache
    created = (await runtime.store.create(owner)).id
    assert created not in runtime.store.windows  # answered by a read
    for session_id in (cached, created):
        with pytest.raises(ApiError) as caught:
            await runtime.prepare(other, MessageRequest(message="hi", session_id=session_id))
        assert caught.value.code == "session_agent_mismatch"
        turn = await runtime.prepare(owner, MessageRequest(message="hi", session_id=session_id.upper()))
        assert turn.session_id == session_id and turn.pinned
    fresh = str(uuid.uuid4())  # not stored yet: any agent may start it
    assert (await runtime.prepare(other, MessageRequest(message="hi", session_id=fresh))).session_id == fresh


async def test_a_removed_workspace_is_made_again(runtime_env: Any, spawn: Any) -> None:
    kernel, _ = runtime_env
    runtime = kernel.services["runtime"]
    agent_id = await spawn(kernel, "worker")
    turn = await runtime.prepare(agent_id, MessageRequest(message="hi"))
    workspace = turn.context.workspace
    assert workspace.is_dir()
    shutil.rmtree(workspace)
    turn = await runtime.prepare(agent_id, MessageRequest(message="hi"))
    assert turn.context.workspace == workspace and workspace.is_dir()


async def test_message_size_limits_count_bytes_and_characters(start_runtime: Any, spawn: Any) -> None:
    kernel, _ = await start_runtime("[runtime]\nmax_message_bytes = 2000\nmax_message_chars = 1000\n")
    runtime = kernel.services["runtime"]
    agent_id = await spawn(kernel, "sized")
    await runtime.prepare(agent_id, MessageRequest(message="x" * 500))  # 500 bytes: no encoding needed
    await runtime.prepare(agent_id, MessageRequest(message="é" * 1000))  # 2000 bytes, 1000 characters
    await runtime.prepare(agent_id, MessageRequest(message="😀" * 500))  # 2000 bytes, 500 characters
    for text in ("x" * 1001, "😀" * 501, "é" * 999 + "😀"):  # 1001 characters; 2004 and 2002 bytes
        with pytest.raises(ApiError) as caught:
            await runtime.prepare(agent_id, MessageRequest(message=text))
        assert caught.value.status == 413 and caught.value.code == "message_too_large"


async def test_the_repair_memo_finds_the_last_history_in_the_next_turns(runtime_env: Any, spawn: Any,
                                                                         fake_llm: Any) -> None:
    """The user's message goes to the loop in its stored form (one text block), so the history a next
    turn reads back holds equal copies and the memo matches all of the last history at once."""
    kernel, _ = runtime_env
    runtime = kernel.services["runtime"]
    agent_id = await spawn(kernel, "remembered")
    session_id = str(uuid.uuid4())
    for text in ("first", "second"):
        fake_llm.script(Script(text=f"reply to {text}"))
        turn = await runtime.prepare(agent_id, MessageRequest(message=text, session_id=session_id))
        await runtime.run(turn)
    memo = runtime.repair_memo(session_id)
    stored = await runtime.store.load(session_id)
    history = [s.message for s in stored]
    assert [m.content[0].text for m in history] == ["first", "reply to first", "second", "reply to second"]
    assert memo.inputs == history[:3]  # the last call's history: up to the second user message
    assert memo._overlap(history) == (0, 3)
    # what the provider got is unchanged: the user's message as plain text content
    assert fake_llm.requests[-1].body["messages"][-1] == {"role": "user", "content": "second"}


async def test_a_pinned_session_is_read_once_and_cached_by_prepare(runtime_env: Any, spawn: Any,
                                                                    fake_llm: Any) -> None:
    """The owner check of a pinned session that is not cached reads it with its history into the
    window cache (the turn then needs no read); a new session is created by the turn's one write-first
    transaction; either way the window is what the database holds."""
    from librefang_providers.api import Message

    kernel, _ = runtime_env
    runtime = kernel.services["runtime"]
    store = runtime.store
    agent_id = await spawn(kernel, "pinned")
    existing = (await store.create(agent_id)).id
    for text in ("old question", "old answer"):
        await store.append(existing, Message("user" if "question" in text else "assistant", text))
    assert existing not in store.windows
    turn = await runtime.prepare(agent_id, MessageRequest(message="new question", session_id=existing))
    window = store.windows.get(existing, turn.max_history)
    assert window is not None and [s.message.blocks()[0].text for s in window.items] == ["old question", "old answer"]
    fake_llm.script(Script(text="new answer"))
    await runtime.run(turn)
    assert [m["content"] for m in fake_llm.requests[-1].body["messages"][1:]] == [
        "old question", "old answer", "new question"]
    fresh = str(uuid.uuid4())
    turn = await runtime.prepare(agent_id, MessageRequest(message="first", session_id=fresh))
    assert fresh not in store.windows and await store.get(fresh) is None  # nothing written before the turn
    fake_llm.script(Script(text="hello"))
    await runtime.run(turn)
    for session_id, count in ((existing, 4), (fresh, 2)):
        window = store.windows.get(session_id, turn.max_history)
        stored = await store.load(session_id)
        assert [(s.message, s.created_at) for s in window.items] == [(s.message, s.created_at) for s in stored]
        info = await store.get(session_id)
        assert info.agent_id == agent_id and info.message_count == count == len(stored)
