"""shell_exec under [exec_policy]: modes, allowlist, workspace confinement, environment, capabilities."""

from __future__ import annotations

import pytest
from librefang_runtime.api import ToolError

ALLOWLIST = '[exec_policy]\nmode = "allowlist"\n'
FULL = '[exec_policy]\nmode = "full"\n'


async def test_default_mode_denies_everything(start_sandbox, agent, call):
    kernel = await start_sandbox()
    ctx = await agent(kernel, "denied")
    with pytest.raises(ToolError, match="disabled"):
        await call(ctx, "shell_exec", command="echo hi")
    entries, _ = await kernel.audit.recent(20)
    assert any(e["action"] == "ShellExec" and e["outcome"] == "denied" for e in entries)


async def test_allowlist_runs_a_safe_bin_in_the_workspace(start_sandbox, agent, call):
    kernel = await start_sandbox(ALLOWLIST)
    ctx = await agent(kernel, "lister")
    (ctx.workspace / "notes.txt").write_text("alpha\nbeta\n")
    out = await call(ctx, "shell_exec", command="cat notes.txt")
    assert out.startswith("exit code 0") and "alpha\nbeta" in out
    out = await call(ctx, "shell_exec", argv=["pwd"])
    assert str(ctx.workspace.resolve()) in out


REFUSALS = [
    ("rm -rf notes.txt", "not in \\[exec_policy\\] safe_bins"),
    ("echo hi; cat /etc/passwd", "shell syntax"),
    ("echo $(id)", "shell syntax"),
    ("cat notes.txt > copy.txt", "shell syntax"),
    ("cat /etc/passwd", "outside the agent workspace"),
    ("cat ../other/secret.txt", "outside the agent workspace"),
    ("cat --file=/etc/shadow", "outside the agent workspace"),
    ("cat ~/secret", "'~' paths"),
    ("/bin/cat notes.txt", "by name"),
    ("cat 'unterminated", "cannot parse"),
]


async def test_allowlist_refusals(start_sandbox, agent, call):
    kernel = await start_sandbox(ALLOWLIST)
    ctx = await agent(kernel, "strict")
    (ctx.workspace / "notes.txt").write_text("x")
    (ctx.workspace / "sneaky").symlink_to(ctx.kernel.home / "config.toml")
    for command, message in [*REFUSALS, ("cat sneaky", "outside the agent workspace")]:
        with pytest.raises(ToolError, match=message):
            await call(ctx, "shell_exec", command=command)
    assert (ctx.workspace / "notes.txt").exists()
    assert kernel.services["sandbox"].exec.counts["refused"] == len(REFUSALS) + 1


async def test_cwd_cannot_leave_the_workspace(start_sandbox, agent, call):
    kernel = await start_sandbox(ALLOWLIST)
    ctx = await agent(kernel, "walker")
    (ctx.workspace / "sub").mkdir()
    (ctx.workspace / "link").symlink_to("/etc")
    assert "sub" in await call(ctx, "shell_exec", command="pwd", cwd="sub")
    for cwd in ("..", "../..", "/etc", "link"):
        with pytest.raises(ToolError, match="cwd leaves|no such folder"):
            await call(ctx, "shell_exec", command="pwd", cwd=cwd)


async def test_landlock_confines_full_mode_to_the_workspace(start_sandbox, agent, call, librefang_home):
    kernel = await start_sandbox(FULL)
    if not kernel.services["sandbox"].exec.confined:
        pytest.skip("the kernel has no Landlock")
    victim = await agent(kernel, "victim")
    (victim.workspace / "secret.txt").write_text("victim-secret")
    ctx = await agent(kernel, "attacker")
    # Reading another agent's workspace, the daemon's home and /proc/1/environ is refused by the kernel.
    for target in (victim.workspace / "secret.txt", librefang_home / "config.toml", "/proc/1/environ"):
        with pytest.raises(ToolError, match="failed") as info:
            await call(ctx, "shell_exec", command=f"cat {target}")
        assert "Permission denied" in str(info.value) and "victim-secret" not in str(info.value)
    with pytest.raises(ToolError, match="Permission denied"):
        await call(ctx, "shell_exec", command=f"echo pwned > {victim.workspace / 'owned.txt'}")
    assert not (victim.workspace / "owned.txt").exists()
    # Inside its own workspace everything works, including a shell pipeline.
    out = await call(ctx, "shell_exec", command="echo hello > a.txt && cat a.txt | tr a-z A-Z")
    assert "HELLO" in out and (ctx.workspace / "a.txt").read_text() == "hello\n"


async def test_environment_is_cleared_and_secrets_never_pass(start_sandbox, agent, call, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-leak-me-0123456789")
    monkeypatch.setenv("MY_PRIVATE_THING", "private-value-42")
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("HARMLESS_VARIABLE", "not-passed-either")
    kernel = await start_sandbox(FULL)
    ctx = await agent(kernel, "envy")
    out = await call(ctx, "shell_exec", argv=["env"])
    assert "sk-leak-me" not in out and "private-value-42" not in out and "not-passed-either" not in out
    names = {line.split("=", 1)[0] for line in out.split("--- stdout ---\n", 1)[1].splitlines() if "=" in line}
    assert names <= {"PATH", "HOME", "TMPDIR", "TMP", "TEMP", "LANG", "LC_ALL", "TERM", "PWD", "SHLVL", "_"}
    assert f"HOME={ctx.workspace.resolve()}" in out and "PATH=/usr/local/bin:/usr/bin:/bin" in out


async def test_config_refuses_a_credential_passthrough(start_sandbox):
    from librefang.errors import ConfigError

    with pytest.raises(ConfigError, match="env_passthrough"):
        await start_sandbox('[exec_policy]\nenv_passthrough = ["GITHUB_TOKEN"]\n')


async def test_capabilities_and_manifest_policy_narrow(start_sandbox, agent, call):
    kernel = await start_sandbox(FULL)
    no_shell = await agent(kernel, "noshell", shell="[]")
    with pytest.raises(ToolError, match="capabilities.shell"):
        await call(no_shell, "shell_exec", command="echo hi")
    only_echo = await agent(kernel, "echoer", shell='["echo"]')
    assert "hi" in await call(only_echo, "shell_exec", command="echo hi")
    with pytest.raises(ToolError, match="capabilities.shell"):
        await call(only_echo, "shell_exec", command="cat x")
    narrowed = await agent(kernel, "narrow", extra='exec_policy = "deny"\n')
    with pytest.raises(ToolError, match="disabled"):
        await call(narrowed, "shell_exec", command="echo hi")


async def test_anonymous_call_has_no_workspace(start_sandbox, call):
    from librefang_runtime.api import ToolContext

    kernel = await start_sandbox(FULL)
    ctx = ToolContext(kernel=kernel, agent_id="", agent_name="", session_id="", workspace=None)
    with pytest.raises(ToolError, match="agent"):
        await call(ctx, "shell_exec", command="echo hi")


async def test_landlock_scopes_signals_and_network(start_sandbox, agent, call):
    import os
    import socket

    kernel = await start_sandbox(FULL + "allow_network = false\n")
    service = kernel.services["sandbox"].exec
    if service.landlock_abi < 6:
        pytest.skip("needs Landlock ABI 6 (signal scoping) and 4 (network)")
    ctx = await agent(kernel, "contained")
    # The command cannot signal the daemon (even as root) ...
    with pytest.raises(ToolError, match="not permitted"):
        await call(ctx, "shell_exec", command=f"kill -0 {os.getpid()}")
    # ... but can signal what it started itself.
    assert "exit code 0" in await call(ctx, "shell_exec", command="sleep 5 & kill $!")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        port = listener.getsockname()[1]
        script = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
        with pytest.raises(ToolError, match="PermissionError"):
            await call(ctx, "shell_exec", argv=["python3", "-c", script])
    finally:
        listener.close()
    assert service.describe()["network"]["enforced"] is True


async def test_children_of_a_root_daemon_hold_no_capabilities(start_sandbox, agent, call):
    import os

    if os.geteuid() != 0:
        pytest.skip("the daemon is not root")
    kernel = await start_sandbox(FULL)
    assert kernel.services["sandbox"].exec.describe()["capabilities_dropped"] is True
    ctx = await agent(kernel, "rootless")
    (ctx.workspace / "mine.txt").write_text("x")
    # chown needs CAP_CHOWN; harmless if it ever succeeded (a file of the agent's own workspace).
    with pytest.raises(ToolError, match="not permitted"):
        await call(ctx, "shell_exec", command="chown 12345 mine.txt")
    script = ("import ctypes; libc = ctypes.CDLL(None); "
              "print('bset', [c for c in range(41) if libc.prctl(23, c, 0, 0, 0) == 1])")
    out = await call(ctx, "shell_exec", argv=["python3", "-c", script])
    assert "bset []" in out
