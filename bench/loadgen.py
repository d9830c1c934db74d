"""A small keep-alive HTTP/1.1 load generator (used when ``wrk`` is not installed).

It opens a fixed number of connections to one URL and, on each, sends GET requests back to back
(one in flight per connection, like ``wrk`` without pipelining) for a bounded time and at most a
bounded number of requests. It runs as its own process so its CPU is not the server's.
Raw asyncio streams instead of an HTTP client library keep the client cheap, so on a small
machine it takes as little CPU as possible away from the server it measures.

Prints one JSON object: ``{"requests", "seconds", "rps", "statuses", "errors"}``.

Run: ``python bench/loadgen.py http://127.0.0.1:8123/api/health -c 50 -d 5 -H "X-Forwarded-For: 203.0.113.7"``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024


def build_request(url: str, headers: list[str]) -> tuple[str, int, bytes]:
    """The host, port and raw bytes of one keep-alive GET request for ``url``."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"only http:// URLs are supported, got {url!r}")
    port = parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.hostname}:{port}", "Connection: keep-alive"]
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise SystemExit(f"bad header {header!r}: expected 'Name: value'")
        lines.append(f"{name.strip()}: {value.strip()}")
    return parts.hostname, port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; returns (status, server wants to keep the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEADER_BYTES:
        raise ValueError("response header too large")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    keep_alive = True
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "connection" and value.strip().lower() == "close":
            keep_alive = False
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        if length > MAX_BODY_BYTES:
            raise ValueError("response body too large")
        await reader.readexactly(length)
    return status, keep_alive


async def run(url: str, connections: int, duration: float, max_requests: int, headers: list[str]) -> dict:
    """Drive ``connections`` keep-alive connections for ``duration`` seconds."""
    host, port, request = build_request(url, headers)
    statuses: Counter[int] = Counter()
    errors = 0
    sent = 0
    deadline = 0.0

    async def worker() -> None:
        nonlocal errors, sent
        reader = writer = None
        while time.perf_counter() < deadline and sent < max_requests:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                sent += 1
                writer.write(request)
                status, keep_alive = await read_response(reader)
                statuses[status] += 1
                if not keep_alive:
                    writer.close()
                    reader = writer = None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                errors += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.01)  # a refused connection must not spin
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    done = sum(statuses.values())
    return {
        "requests": done,
        "seconds": round(elapsed, 3),
        "rps": round(done / elapsed, 1) if elapsed > 0 else 0.0,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="keep-alive HTTP/1.1 GET load generator")
    parser.add_argument("url")
    parser.add_argument("-c", "--connections", type=int, default=50)
    parser.add_argument("-d", "--duration", type=float, default=5.0, help="seconds (bounded)")
    parser.add_argument("-n", "--max-requests", type=int, default=1_000_000)
    parser.add_argument("-H", "--header", action="append", default=[])
    args = parser.parse_args(argv)
    if not 1 <= args.connections <= 1000:
        parser.error("--connections must be between 1 and 1000")
    if not 0 < args.duration <= 600:
        parser.error("--duration must be between 0 and 600 seconds")
    result = asyncio.run(run(args.url, args.connections, args.duration, args.max_requests, args.header))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
