"""What the daemon leaves out of its start-up (docs/benchmarks.md, "Start-up: what was deferred").

A kernel with every installed plugin is started and its app built in a fresh interpreter, on a
home that an earlier start has already migrated (the everyday start: migrations import alembic); the
libraries that are only needed on first use (an LLM call, a WASM run, a signed manifest, writing
TOML, a vector search) must not have been imported by then, and no subprocess may have been run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DEFERRED = ["httpx", "rich", "pygments", "tomlkit", "wasmtime", "nacl", "numpy", "sqlite_vec", "aiohttp", "orjson"]

SCRIPT = r"""
import asyncio, json, subprocess, sys

spawned = []
_popen = subprocess.Popen.__init__
def _record(self, *args, **kwargs):
    spawned.append(str(args[0] if args else kwargs.get("args")))
    return _popen(self, *args, **kwargs)
subprocess.Popen.__init__ = _record

from librefang.app import build_app
from librefang.kernel import create_kernel

async def main():
    kernel = create_kernel(sys.argv[1])
    await kernel.start()
    try:
        app = build_app(kernel)
        client = app.test_client()
        health = await client.get("/api/health", scope_base={"client": ("127.0.0.1", 5)})
        loaded = {name: record.ok for name, record in kernel.plugins.records.items()}
        modules = [m for m in json.loads(sys.argv[2]) if m in sys.modules]
        rules = [r for r in app.url_map.iter_rules() if r.endpoint != "static"]
        builders = sum(1 for r in rules if "_compile_builder.<locals>" in getattr(r._build, "__qualname__", ""))
        print(json.dumps({"health": health.status_code, "plugins": loaded, "modules": modules,
                          "spawned": spawned, "rules": len(rules), "lazy_builders": builders}))
    finally:
        await kernel.stop()

asyncio.run(main())
"""


def test_start_imports_no_first_use_library_and_runs_no_subprocess(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("LIBREFANG_LOAD_PLUGINS", "LIBREFANG_API_KEY")}
    env.update(LIBREFANG_HOME=str(home), LIBREFANG_VAULT_KEY="00" * 32)
    for _ in range(2):  # the first start initialises the home and runs every migration
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(home), json.dumps(DEFERRED)], env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["health"] == 200
    assert result["plugins"] and all(result["plugins"].values()), result["plugins"]
    for name in ("providers", "agents", "sandbox", "memory"):  # the plugins these deferrals are in
        assert name in result["plugins"]
    assert result["modules"] == [], f"imported at start-up: {result['modules']}"
    assert result["spawned"] == [], f"subprocesses at start-up: {result['spawned']}"
    assert result["rules"] > 100 and result["lazy_builders"] == result["rules"]
