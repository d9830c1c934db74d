"""Attempts to break the subprocess sandbox: a fork bomb, runaway output, timeouts, cancellation, rlimits."""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid

import pytest
from librefang_runtime.api import ToolError
from librefang_sandbox.process import scan_processes

FULL = '[exec_policy]\nmode = "full"\n'


def live_with(marker: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line holds ``marker``."""
    found = []
    for proc in scan_processes():
        try:
            with open(f"/proc/{proc.pid}/cmdline", "rb") as handle:
                if marker.encode() in handle.read():
                    found.append(proc.pid)
        except OSError:
            pass
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return False
    return raw[raw.rfind(b")") + 2:][:1] not in (b"Z", b"X")


@pytest.mark.parametrize("cgroup", ["true", "false"])
async def test_fork_bomb_is_killed_even_as_root(start_sandbox, agent, call, cgroup):
    # RLIMIT_NPROC does nothing for root: the pids cgroup or, without one, the count supervision must
    # catch it. The bomb is bounded (2^7 processes) so a broken sandbox cannot take the machine down.
    kernel = await start_sandbox(FULL + f"max_processes = 10\nsupervise_interval_ms = 20\ncgroup_pids = {cgroup}\n")
    service = kernel.services["sandbox"].exec
    if cgroup == "true" and service.cgroup_root is None:
        pytest.skip("no writable pids cgroup here")
    assert (service.cgroup_root is None) == (cgroup == "false")
    ctx = await agent(kernel, "bomber")
    marker = f"bomb-{uuid.uuid4().hex}"
    script = f"import os, time\nfor _ in range(7):\n    os.fork()\ntime.sleep(30)  # {marker}"
    started = time.monotonic()
    with pytest.raises(ToolError, match="process limit exceeded") as info:
        await call(ctx, "shell_exec", argv=["python3", "-c", script])
    assert time.monotonic() - started < 20  # the bomb would sleep 30 s (generous bounds: CI machines are busy)
    assert "limit 10" in str(info.value)
    await asyncio.sleep(0.2)
    assert live_with(marker) == []
    assert os.getuid() != 0 or not kernel.services["sandbox"].exec.describe()[
        "process_count_supervision"]["rlimit_nproc_enforced"]


async def test_runaway_output_is_capped_and_stopped(start_sandbox, agent, call):
    kernel = await start_sandbox(FULL + "max_output_bytes = 4096\n")
    ctx = await agent(kernel, "chatty")
    started = time.monotonic()
    with pytest.raises(ToolError, match="output limit exceeded") as info:
        await call(ctx, "shell_exec", argv=["yes", "spam"])
    assert time.monotonic() - started < 20  # not the 30 s timeout
    text = str(info.value)
    assert 4000 <= text.count("spam") * 5 <= 4096 + 10


async def test_timeout_kills_the_whole_tree(start_sandbox, agent, call):
    kernel = await start_sandbox(FULL)
    ctx = await agent(kernel, "sleeper")
    started = time.monotonic()
    with pytest.raises(ToolError, match="timeout") as info:
        await call(ctx, "shell_exec", command="sleep 60 & echo $!; sleep 61 & echo $!; sleep 62", timeout_secs=1)
    assert time.monotonic() - started < 15
    pids = [int(p) for p in re.findall(r"^(\d+)$", str(info.value), re.M)]
    assert len(pids) == 2
    await asyncio.sleep(0.1)
    assert not any(alive(pid) for pid in pids)


@pytest.mark.parametrize("cgroup", ["true", "false"])
async def test_background_children_do_not_outlive_the_command(start_sandbox, agent, call, cgroup):
    kernel = await start_sandbox(FULL + f"cgroup_pids = {cgroup}\nsupervise_interval_ms = 20\n")
    if cgroup == "true" and kernel.services["sandbox"].exec.cgroup_root is None:
        pytest.skip("no writable pids cgroup here")
    ctx = await agent(kernel, "detacher")
    # A child that leaves the session and whose parent exits at once is only traceable through the
    # cgroup; without one it is found if the supervision saw it while its parent lived.
    pause = "" if cgroup == "true" else "sleep 1; "
    out = await call(ctx, "shell_exec", command=f"setsid sleep 60 & {pause}echo $!")
    pid = int(re.findall(r"^(\d+)$", out, re.M)[0])
    await asyncio.sleep(0.1)
    assert not alive(pid)


async def test_no_output_timeout(start_sandbox, agent, call):
    kernel = await start_sandbox(FULL + "no_output_timeout_secs = 0.5\n")
    ctx = await agent(kernel, "quiet")
    started = time.monotonic()
    with pytest.raises(ToolError, match="no output for 0.5 seconds"):
        await call(ctx, "shell_exec", argv=["sleep", "30"])
    assert time.monotonic() - started < 15


async def test_cancelling_the_call_kills_the_tree(start_sandbox, agent, call):
    kernel = await start_sandbox(FULL)
    ctx = await agent(kernel, "cancelled")
    marker = f"cancel-{uuid.uuid4().hex}"
    script = f"import os, time\nos.fork()\ntime.sleep(60)  # {marker}"
    task = asyncio.ensure_future(call(ctx, "shell_exec", argv=["python3", "-c", script]))
    for _ in range(400):
        if len(live_with(marker)) == 2:
            break
        await asyncio.sleep(0.05)
    assert len(live_with(marker)) == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert live_with(marker) == []


async def test_rlimits_cpu_file_size_and_memory(start_sandbox, agent, call):
    kernel = await start_sandbox(FULL + "cpu_time_secs = 1\nfile_size_bytes = 1048576\nmemory_bytes = 268435456\n")
    ctx = await agent(kernel, "hog")
    with pytest.raises(ToolError, match="killed by SIG(XCPU|KILL)"):
        await call(ctx, "shell_exec", argv=["python3", "-c", "while True: pass"])
    # Python ignores SIGXFSZ, so the write fails with EFBIG instead of the signal killing it.
    with pytest.raises(ToolError, match="SIGXFSZ|File too large"):
        await call(ctx, "shell_exec", argv=["python3", "-c", "open('big', 'wb').write(b'0' * 3_000_000)"])
    assert (ctx.workspace / "big").stat().st_size <= 1048576
    with pytest.raises(ToolError, match="MemoryError"):
        await call(ctx, "shell_exec", argv=["python3", "-c", "b = bytearray(600 * 1024 * 1024)"])


async def test_agent_resource_quotas_narrow_the_rlimits(start_sandbox, agent, call):
    kernel = await start_sandbox(FULL)
    ctx = await agent(kernel, "quota", tables="[resources]\nmax_cpu_time_ms = 1000\nmax_memory_bytes = 67108864\n")
    started = time.monotonic()
    with pytest.raises(ToolError, match="killed by SIG(XCPU|KILL)"):
        await call(ctx, "shell_exec", argv=["python3", "-c", "while True: pass"])
    assert time.monotonic() - started < 20  # the policy's own CPU limit is 30 s
    with pytest.raises(ToolError, match="MemoryError"):
        await call(ctx, "shell_exec", argv=["python3", "-c", "b = bytearray(100 * 1024 * 1024)"])
    other = await agent(kernel, "roomy")
    assert "exit code 0" in await call(other, "shell_exec", argv=["python3", "-c", "b = bytearray(100 * 1024 * 1024)"])


async def test_a_process_escaping_the_tree_cannot_hang_the_call(start_sandbox, agent, call):
    # Without a cgroup a grandchild that calls setsid while its parent exits at once may escape the
    # tree kill; it still holds the output pipe. The call must come back anyway.
    kernel = await start_sandbox(FULL + "cgroup_pids = false\n")
    ctx = await agent(kernel, "escaper")
    marker = f"{40 + uuid.uuid4().int % 1000 / 1000:.3f}"
    started = time.monotonic()
    try:
        out = await call(ctx, "shell_exec", command=f"(setsid sleep {marker} &); echo done")
        assert "done" in out
        assert time.monotonic() - started < 20
    finally:
        for pid in live_with(f"sleep\x00{marker}"):
            os.kill(pid, 9)
