"""Stopping a turn and cancelling its caller, at the service level: the loop runs in the caller's own
task, so a stop's cancellation must be taken back (the caller goes on to answer 409), a cancellation
of the caller must win over a stop, and a stop that comes after the loop ended must not cancel what
the turn still stores."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from librefang import hookimpl
from librefang.errors import ApiError
from librefang_runtime.schemas import MessageRequest

from tests.fakes.llm_server import Script


async def _started(fake_llm: Any, count: int = 1) -> None:
    for _ in range(300):
        if len(fake_llm.requests) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the model was never called")


async def test_a_stopped_caller_is_not_left_cancelled(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, _ = runtime_env
    runtime = kernel.services["runtime"]
    agent_id = await spawn(kernel, "stopped")
    fake_llm.script(Script(text="y" * 100, chunk_size=1, delay=0.05))  # 5 s of streaming

    async def caller() -> tuple[str, int]:
        turn = await runtime.prepare(agent_id, MessageRequest(message="slow please"))
        try:
            await runtime.run(turn)
        except ApiError as exc:
            # the stop's cancellation was taken back: this task goes on like any other
            cancelling = asyncio.current_task().cancelling()  # type: ignore[union-attr]
            await asyncio.sleep(0.01)
            return exc.code, cancelling
        return "finished", 0

    task = asyncio.ensure_future(caller())
    await _started(fake_llm)
    assert runtime.running.get(agent_id)
    assert await runtime.stop(agent_id) is True
    assert await asyncio.wait_for(task, 5) == ("run_cancelled", 0)
    assert runtime.running == {} and len(runtime.locks) == 0
    # the turn was stored as cancelled and the session stays usable
    turns = (await runtime.store.turns(agent_id))[1]
    assert [t["outcome"] for t in turns] == ["cancelled"]
    fake_llm.script(Script(text="fresh"))
    turn = await runtime.prepare(agent_id, MessageRequest(message="again"))
    assert (await runtime.run(turn)).response == "fresh"


async def test_the_callers_cancellation_wins_over_a_stop(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, _ = runtime_env
    runtime = kernel.services["runtime"]
    agent_id = await spawn(kernel, "leaving")
    fake_llm.script(Script(text="y" * 100, chunk_size=1, delay=0.05))
    turn = await runtime.prepare(agent_id, MessageRequest(message="going away"))
    task = asyncio.ensure_future(runtime.run(turn))
    await _started(fake_llm)
    task.cancel()  # the client goes away...
    stopping = asyncio.ensure_future(runtime.stop(agent_id))  # ...while someone presses stop
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert await asyncio.wait_for(stopping, 5) is True
    assert runtime.running == {} and len(runtime.locks) == 0
    # what the run had committed (the user's message) was written; no half reply
    stored = await runtime.store.load(turn.session_id)
    assert [(s.message.role, s.message.blocks()[0].text) for s in stored] == [("user", "going away")]


async def test_a_stop_after_the_loop_ended_leaves_the_turn_alone(start_runtime: Any, spawn: Any,
                                                                 fake_llm: Any) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    @hookimpl
    async def after_turn(kernel: Any, turn: dict[str, Any]) -> None:
        entered.set()
        await release.wait()

    kernel, _ = await start_runtime(plugins={"observer": SimpleNamespace(after_turn=after_turn)})
    runtime = kernel.services["runtime"]
    agent_id = await spawn(kernel, "finishing")
    fake_llm.script(Script(text="done already"))
    turn = await runtime.prepare(agent_id, MessageRequest(message="hi"))
    task = asyncio.ensure_future(runtime.run(turn))
    await asyncio.wait_for(entered.wait(), 5)  # the loop ended; the turn is in its after_turn hooks
    assert await runtime.stop(agent_id) is False
    release.set()
    result = await asyncio.wait_for(task, 5)
    assert result.response == "done already"
    assert [t["outcome"] for t in (await runtime.store.turns(agent_id))[1]] == ["ok"]


async def test_a_cancellation_raised_inside_the_loop_is_a_cancelled_run(start_runtime: Any, spawn: Any,
                                                                       fake_llm: Any) -> None:
    """A CancelledError that does not come from cancelling the caller (here: a tool raising it)
    ends the turn as a cancelled run (409), as it did when the loop ran in a task of its own."""
    from librefang_runtime.api import Tool

    from tests.fakes.llm_server import ToolCall

    def bail(_data: Any, _ctx: Any) -> str:
        raise asyncio.CancelledError

    @hookimpl
    def register_tools(register: Any) -> None:
        register(Tool("bail", "Give up.", bail))

    kernel, _ = await start_runtime(plugins={"bailer": SimpleNamespace(register_tools=register_tools)})
    runtime = kernel.services["runtime"]
    agent_id = await spawn(kernel, "bailing", 'name = "bailing"\n[model]\nprovider = "openai"\nmodel = "fake-model"\n'
                                              '[capabilities]\ntools = ["bail"]\n')
    fake_llm.script(Script(tool_calls=[ToolCall("bail", {}, id="b1")]))
    turn = await runtime.prepare(agent_id, MessageRequest(message="try"))
    assert "bail" in turn.allowed_tools
    with pytest.raises(ApiError) as caught:
        await runtime.run(turn)
    assert caught.value.code == "run_cancelled"
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    assert runtime.running == {} and len(runtime.locks) == 0
