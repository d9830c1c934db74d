"""The baseline of the benchmark: a bare Quart app serving one JSON route on Hypercorn.

It is served exactly like the daemon (``hypercorn.asyncio.serve`` in one process, one worker,
access log off, no ``Server`` header), so the ratios in ``docs/benchmarks.md`` measure what
LibreFang adds on top of Quart and Hypercorn, not a difference in how the server is run.

With ``--with-core-deps`` it first imports the third-party libraries the LibreFang core itself
imports to start (SQLAlchemy's asyncio engine with aiosqlite, pydantic, pluggy, click,
prometheus_client) and nothing else: the cold start and RSS of that process are the floor any
daemon built on those libraries pays, which tells how much of the gap to the bare app is ours.

Run: ``python bench/bare_app.py --port 8123 [--with-core-deps]``
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart

# What ``librefang start`` imports beyond Quart and Hypercorn before it serves (see docs/benchmarks.md).
CORE_DEPENDENCIES = (
    "sqlalchemy.ext.asyncio",
    "sqlalchemy.dialects.sqlite.aiosqlite",
    "aiosqlite",
    "pydantic",
    "pluggy",
    "click",
    "prometheus_client",
)

if "--with-core-deps" in sys.argv:  # before the app exists, as in the daemon
    for module in CORE_DEPENDENCIES:
        importlib.import_module(module)

app = Quart("bare")


@app.get("/api/health")
async def health() -> dict[str, str]:
    """The one JSON route (same path and a body of the same shape as the daemon's health)."""
    return {"status": "ok", "version": "0.1.0"}


async def main(host: str, port: int) -> None:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.include_server_header = False
    config.keep_alive_timeout = 75
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(app, config, shutdown_trigger=stop.wait)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--with-core-deps", action="store_true", help="import the core's libraries first")
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
