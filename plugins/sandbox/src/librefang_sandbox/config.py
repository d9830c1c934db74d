"""The ``[exec_policy]`` and ``[wasm_sandbox]`` sections of ``config.toml``."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# An environment variable whose name holds one of these is never passed to a child process.
SECRET_NAME_PARTS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL", "PRIVATE")
DEFAULT_SAFE_BINS = [
    "sleep", "true", "false", "cat", "sort", "uniq", "cut", "tr", "head", "tail", "wc", "date", "echo",
    "printf", "basename", "dirname", "pwd", "ls", "grep",
]
DEFAULT_READ_ONLY_PATHS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc"]
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
BIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+\-]{0,127}$")
HOST_METHODS = ("time_now", "fs_read", "fs_write", "fs_list", "kv_get", "kv_set", "agent_send")


def secret_name(name: str) -> bool:
    """True when an environment variable name looks like it holds a credential."""
    upper = name.upper()
    return any(part in upper for part in SECRET_NAME_PARTS)


class ExecPolicyConfig(BaseModel):
    """``[exec_policy]``: what ``shell_exec`` and the ``process_*`` tools may run, and under which limits.

    ``deny`` refuses every command; ``allowlist`` runs only programs named in ``safe_bins`` (argv, no
    shell syntax); ``full`` runs any command line, shell syntax included (through ``/bin/sh -c``).
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["deny", "allowlist", "full"] = Field("deny", description="deny | allowlist | full")
    safe_bins: list[str] = Field(default_factory=lambda: list(DEFAULT_SAFE_BINS), max_length=500,
                                 description="Programs (bare names, looked up on `path`) allowed in allowlist mode")
    path: str = Field("/usr/local/bin:/usr/bin:/bin", max_length=4096,
                      description="PATH of child processes (the daemon's own PATH is not passed)")
    env_passthrough: list[str] = Field(
        default_factory=lambda: ["LANG", "LC_ALL", "TERM"], max_length=100,
        description="Variables copied from the daemon's environment (never one whose name holds KEY, SECRET, ...)")
    timeout_secs: float = Field(30.0, gt=0, le=86_400, description="Wall-clock limit of shell_exec")
    no_output_timeout_secs: float = Field(15.0, gt=0, le=86_400,
                                          description="Kill a command that prints nothing for this long")
    process_timeout_secs: float = Field(3600.0, gt=0, le=7 * 86_400,
                                        description="Wall-clock limit of a process started by process_start")
    max_output_bytes: int = Field(102_400, ge=1024, le=64 * 1024 * 1024,
                                  description="Output kept per command (stdout and stderr together)")
    cpu_time_secs: int = Field(30, ge=1, le=86_400, description="RLIMIT_CPU of each child process")
    memory_bytes: int = Field(1024 * 1024 * 1024, ge=16 * 1024 * 1024, le=1 << 40,
                              description="RLIMIT_AS (address space) of each child process")
    file_size_bytes: int = Field(64 * 1024 * 1024, ge=0, le=1 << 40, description="RLIMIT_FSIZE: largest file written")
    max_processes: int = Field(32, ge=1, le=4096,
                               description="Processes one command may run at once (enforced by supervision, "
                                           "and RLIMIT_NPROC when the daemon is not root)")
    open_files: int = Field(256, ge=16, le=65_536, description="RLIMIT_NOFILE of each child process")
    supervise_interval_ms: int = Field(50, ge=10, le=5000,
                                       description="How often the process tree of a command is counted")
    cgroup_pids: bool = Field(True, description="Put each command in its own pids cgroup (pids.max = max_processes) "
                                                "when the daemon may create one")
    max_background_processes: int = Field(8, ge=0, le=256, description="process_start processes running at once")
    filesystem_confinement: bool = Field(
        True, description="Confine children with Landlock (read/write the workspace, read-only system folders) "
                          "when the kernel supports it")
    drop_capabilities: bool = Field(True, description="When the daemon holds Linux capabilities (root), children "
                                                      "drop all of them (bounding set included)")
    allow_network: bool = Field(True, description="Let commands open TCP connections and listen (refused by "
                                                   "Landlock when false and the kernel's Landlock ABI is 4 or later)")
    read_only_paths: list[str] = Field(default_factory=lambda: list(DEFAULT_READ_ONLY_PATHS), max_length=100,
                                       description="Absolute folders children may read and execute from")
    max_command_chars: int = Field(16_384, ge=64, le=1024 * 1024, description="Longest command line accepted")

    @field_validator("safe_bins")
    @classmethod
    def _bins(cls, values: list[str]) -> list[str]:
        for value in values:
            if not BIN_NAME.match(value):
                raise ValueError(f"{value!r} is not a bare program name")
        return values

    @field_validator("env_passthrough")
    @classmethod
    def _env(cls, values: list[str]) -> list[str]:
        for value in values:
            if not ENV_NAME.match(value):
                raise ValueError(f"{value!r} is not an environment variable name")
            if secret_name(value):
                raise ValueError(f"{value!r} looks like a credential and is never passed to a child process")
        return values

    @field_validator("read_only_paths")
    @classmethod
    def _paths(cls, values: list[str]) -> list[str]:
        for value in values:
            if not value.startswith("/") or "\x00" in value or ".." in value.split("/"):
                raise ValueError(f"{value!r} must be an absolute path without '..'")
        return values


class WasmToolConfig(BaseModel):
    """One ``[[wasm_sandbox.tools]]`` entry: a WASM module offered to agents as a tool."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
    path: str = Field(..., min_length=1, max_length=1000,
                      description="A .wasm or .wat file; relative paths are relative to LIBREFANG_HOME")
    description: str = Field("", max_length=2000)
    input_schema: dict = Field(default_factory=lambda: {"type": "object", "properties": {}})
    host_calls: list[str] = Field(default_factory=lambda: list(HOST_METHODS),
                                  description="Host methods this tool may use (and the calling agent must hold)")

    @field_validator("host_calls")
    @classmethod
    def _methods(cls, values: list[str]) -> list[str]:
        for value in values:
            if value not in HOST_METHODS:
                raise ValueError(f"unknown host method {value!r}; known: {', '.join(HOST_METHODS)}")
        return values


class WasmSandboxConfig(BaseModel):
    """``[wasm_sandbox]``: limits of every WASM run (tools and ``wasm:`` agents)."""

    model_config = ConfigDict(extra="forbid")

    fuel: int = Field(1_000_000, ge=1000, le=10**13, description="Instructions budget (wasmtime fuel) per call")
    timeout_secs: float = Field(30.0, gt=0, le=3600, description="Wall-clock deadline (epoch interruption)")
    epoch_tick_ms: int = Field(10, ge=1, le=1000, description="Epoch timer resolution")
    memory_bytes: int = Field(16 * 1024 * 1024, ge=64 * 1024, le=4 * 1024 * 1024 * 1024,
                              description="Largest linear memory of one instance")
    max_input_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_output_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_host_calls: int = Field(1000, ge=0, le=1_000_000, description="Host calls one run may make")
    max_concurrent: int = Field(4, ge=1, le=256, description="WASM calls running at once (their own threads)")
    max_module_bytes: int = Field(16 * 1024 * 1024, ge=1024, le=512 * 1024 * 1024)
    agent_modules_dir: str = Field("wasm", min_length=1, max_length=1000,
                                   description="Folder of shared modules of wasm: agents (besides each agent's "
                                               "workspace); relative paths are relative to LIBREFANG_HOME")
    tools: list[WasmToolConfig] = Field(default_factory=list, max_length=200)
