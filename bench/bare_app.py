"""The baseline of the benchmark: a bare Quart app serving one JSON route on Hypercorn.

It is served exactly like the daemon (``hypercorn.asyncio.serve`` in one process, one worker,
access log off, no ``Server`` header), so the ratios in ``docs/benchmarks.md`` measure what
LibreFang adds on top of Quart and Hypercorn, not a difference in how the server is run.

Run: ``python bench/bare_app.py --port 8123``
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart

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
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
