"""process_start / poll / write / kill / list: ownership, stdin, output, limits, shutdown."""

from __future__ import annotations

import asyncio
import re

import pytest
from librefang_runtime.api import ToolError

FULL = '[exec_policy]\nmode = "full"\nmax_background_processes = 2\n'


async def poll_until(call, ctx, process_id: str, needle: str) -> str:
    seen = ""
    for _ in range(300):
        seen += await call(ctx, "process_poll", process_id=process_id)
        if needle in seen:
            return seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"{needle!r} never appeared in {seen!r}")


async def test_interactive_process_lifecycle(start_sandbox, agent, call):
    kernel = await start_sandbox(FULL)
    ctx = await agent(kernel, "owner")
    other = await agent(kernel, "stranger")
    started = await call(ctx, "process_start", argv=["cat"])
    process_id = re.search(r"started process (\w+)", started).group(1)
    assert process_id in await call(ctx, "process_list")
    assert await call(other, "process_list") == "(no processes)"
    for tool, extra in (("process_poll", {}), ("process_write", {"data": "x"}), ("process_kill", {})):
        with pytest.raises(ToolError, match="of yours"):
            await call(other, tool, process_id=process_id, **extra)
    await call(ctx, "process_write", process_id=process_id, data="hello sandbox\n")
    assert "hello sandbox" in await poll_until(call, ctx, process_id, "hello sandbox")
    await call(ctx, "process_write", process_id=process_id, data="bye\n", close=True)
    final = await poll_until(call, ctx, process_id, "exit code 0")
    assert "bye" in final
    with pytest.raises(ToolError, match="no longer accepts input"):
        await call(ctx, "process_write", process_id=process_id, data="late")


async def test_kill_limit_and_shutdown(start_sandbox, agent, call):
    kernel = await start_sandbox(FULL)
    ctx = await agent(kernel, "runner")
    first = re.search(r"process (\w+) \(pid (\d+)\)", await call(ctx, "process_start", command="sleep 60"))
    second = re.search(r"process (\w+) \(pid (\d+)\)", await call(ctx, "process_start", argv=["sleep", "61"]))
    with pytest.raises(ToolError, match="limit is 2"):
        await call(ctx, "process_start", argv=["sleep", "62"])
    assert "killed on request" in await call(ctx, "process_kill", process_id=first.group(1))
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(int(first.group(2)), 0)
    # A free slot again; the policy still applies to background processes.
    assert "started process" in await call(ctx, "process_start", argv=["sleep", "63"])
    no_shell = await agent(kernel, "noshell", shell="[]")
    with pytest.raises(ToolError, match="capabilities.shell"):
        await call(no_shell, "process_start", argv=["sleep", "1"])
    # Plugin shutdown kills what is still running.
    await kernel.stop_plugin("sandbox")
    await asyncio.sleep(0.05)
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(int(second.group(2)), 0)


async def test_background_output_keeps_the_newest_bytes(start_sandbox, agent, call):
    kernel = await start_sandbox(FULL + "max_output_bytes = 2048\n")
    ctx = await agent(kernel, "flood")
    started = await call(ctx, "process_start", command="seq 1 5000; echo END")
    process_id = re.search(r"started process (\w+)", started).group(1)
    for _ in range(100):
        if "exit code 0" in await call(ctx, "process_list"):
            break
        await asyncio.sleep(0.05)
    out = await call(ctx, "process_poll", process_id=process_id)
    assert "exit code 0" in out and "END" in out and "older output were dropped" in out
    assert len(out.split("--- stdout ---\n", 1)[1]) <= 2048 + 2


async def test_killing_the_agent_kills_its_processes(start_sandbox, agent, call):
    import os

    from librefang_agents import api as agents_api

    kernel = await start_sandbox(FULL)
    ctx = await agent(kernel, "doomed")
    survivor = await agent(kernel, "survivor")
    pid = int(re.search(r"\(pid (\d+)\)", await call(ctx, "process_start", argv=["sleep", "60"])).group(1))
    other = int(re.search(r"\(pid (\d+)\)", await call(survivor, "process_start", argv=["sleep", "60"])).group(1))
    await agents_api.registry(kernel).kill(ctx.agent_id)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the killed agent's process is still running")
    os.kill(other, 0)  # the other agent's process is untouched
