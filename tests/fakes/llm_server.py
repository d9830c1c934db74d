"""A fake LLM provider server: real HTTP/1.1 on 127.0.0.1 speaking four wire formats.

- OpenAI Chat Completions: ``POST /v1/chat/completions`` (``GET /v1/models``)
- Anthropic Messages: ``POST /v1/messages``
- Google Gemini: ``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``
  (``GET /v1beta/models``)
- Ollama: ``POST /api/chat`` (NDJSON stream; ``GET /api/tags``)
- Embeddings in the OpenAI, Ollama and Gemini formats (deterministic vectors, ``tests/fakes/llm_embeddings.py``)

Replies come from a queue of :class:`Script` objects (text, tool calls, thinking, usage, chunking,
delays, faults); with an empty queue the server answers ``Fake reply to: <last user text>``. Every
request is recorded (:attr:`FakeLLMServer.requests`). Control endpoints for a server in another
process: ``POST /_fake/scripts`` (a script object or a list), ``GET /_fake/requests``,
``POST /_fake/reset``.

Use it in-process (``async with FakeLLMServer() as server``), in a background thread
(``FakeLLMServer().start_in_thread()``), or standalone:
``python -m tests.fakes.llm_server --port 11500`` (see docs/fake-provider.md).

A raw asyncio server rather than a web framework: faults such as a connection dropped mid-stream,
a stalled stream or a body cut into 1-byte chunks need control of every write.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes import llm_embeddings
from tests.fakes import llm_wire as wire
from tests.fakes.llm_wire import Script, ToolCall

__all__ = ["FakeLLMServer", "RecordedRequest", "Script", "ToolCall"]

MAX_BODY = 64 * 1024 * 1024
MAX_RECORDED = 1000
GEMINI_PATH = re.compile(r"^/(v1|v1beta|v1alpha)/models/(?P<model>[^:]+):(?P<method>generateContent|streamGenerateContent)$")
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable", 529: "Overloaded"}


@dataclass
class RecordedRequest:
    """A request the server received (``body`` is the parsed JSON, or None)."""

    format: str
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    stream: bool = False

    @property
    def model(self) -> str:
        if self.format == "gemini":
            match = GEMINI_PATH.match(self.path)
            return unquote(match["model"]) if match else ""
        return (self.body or {}).get("model", "") if isinstance(self.body, dict) else ""


@dataclass
class FakeLLMServer:
    """The server; ``models`` is what the model-list endpoints report."""

    host: str = "127.0.0.1"
    port: int = 0
    models: list[str] = field(default_factory=lambda: ["fake-model", "fake-model-large"])
    scripts: list[Script] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)
    set_cookie: str | None = None  # a Set-Cookie header value sent with every reply (cookie tests)

    def __post_init__(self) -> None:
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- scripting ---------------------------------------------------------------------------------
    def script(self, *scripts: Script | dict[str, Any], **kwargs: Any) -> FakeLLMServer:
        """Queue replies: ``server.script(text="hi")`` or ``server.script(Script(...), Script(...))``."""
        if kwargs:
            scripts = (*scripts, Script.from_dict(kwargs))
        for item in scripts:
            self.scripts.append(item if isinstance(item, Script) else Script.from_dict(item))
        return self

    def reset(self) -> None:
        self.scripts.clear()
        self.requests.clear()

    def _next_script(self, fmt: str, prompt: str) -> Script:
        for index, script in enumerate(self.scripts):
            if script.only in (None, fmt):
                return self.scripts.pop(index)
        return Script(text=f"Fake reply to: {prompt[:200]}" if prompt else "Fake reply.")

    # -- URLs --------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def base_url(self, fmt: str) -> str:
        """The base URL a driver of ``fmt`` should be configured with."""
        return {"openai": self.url + "/v1", "anthropic": self.url, "gemini": self.url + "/v1beta",
                "ollama": self.url}[fmt]

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> FakeLLMServer:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=1024 * 1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            if self._handlers:
                await asyncio.wait(list(self._handlers), timeout=5)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeLLMServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self) -> FakeLLMServer:
        """Serve from a background thread with its own event loop (for sync callers)."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-llm-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    # -- HTTP ----------------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            while True:
                line = await reader.readline()
                if not line.strip():
                    break
                method, target, _version = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    raw = await reader.readline()
                    if raw in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = raw.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                if length > MAX_BODY:
                    await self._send(writer, 413, {"error": "body too large"})
                    break
                body = await reader.readexactly(length) if length else b""
                if not await self._dispatch(method, target, headers, body, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        except asyncio.CancelledError:
            # The server is stopping. Ending the handler normally (not re-raising) keeps asyncio's
            # stream callback from logging the cancellation as an error on Python 3.11.
            writer.transport.abort()
        finally:
            if task is not None:
                self._handlers.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def _send(self, writer: asyncio.StreamWriter, status: int, obj: Any,
                    headers: dict[str, str] | None = None, raw: bytes | None = None) -> None:
        payload = raw if raw is not None else json.dumps(obj).encode()
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", "content-type: application/json",
                f"content-length: {len(payload)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if self.set_cookie:
            head.append(f"set-cookie: {self.set_cookie}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        await writer.drain()

    async def _dispatch(self, method: str, target: str, headers: dict[str, str], body: bytes,
                        reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False closes the connection."""
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query)
        if path.startswith("/_fake/"):
            return await self._control(method, path, body, writer)
        if method == "GET":
            return await self._list_models(path, writer)
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            await self._send(writer, 400, {"error": {"message": "body is not JSON"}})
            return True
        embedding = llm_embeddings.route(path)
        if embedding is not None:
            return await self._embeddings(embedding, method, path, query, headers, payload, writer)
        gemini = GEMINI_PATH.match(path)
        if path.endswith("/chat/completions"):
            fmt, stream = "openai", bool(payload.get("stream"))
        elif path.endswith("/messages"):
            fmt, stream = "anthropic", bool(payload.get("stream"))
        elif gemini is not None:
            fmt, stream = "gemini", gemini["method"] == "streamGenerateContent"
        elif path == "/api/chat":
            fmt, stream = "ollama", payload.get("stream", True) is not False
        else:
            await self._send(writer, 404, {"error": f"no route for {method} {path}"})
            return True
        record = RecordedRequest(fmt, method, path, query, headers, payload, stream)
        self.requests.append(record)
        del self.requests[:-MAX_RECORDED]
        script = self._next_script(fmt, _last_user_text(fmt, payload))
        return await self._reply(fmt, record, script, reader, writer)

    async def _embeddings(self, fmt: str, method: str, path: str, query: dict[str, list[str]],
                          headers: dict[str, str], payload: Any, writer: asyncio.StreamWriter) -> bool:
        """Answer an embeddings call (see tests/fakes/llm_embeddings.py), recorded as format ``embeddings``."""
        record = RecordedRequest("embeddings", method, path, query, headers, payload)
        self.requests.append(record)
        del self.requests[:-MAX_RECORDED]
        for index, script in enumerate(self.scripts):
            if script.only == "embeddings":
                self.scripts.pop(index)
                if script.fault in wire.HTTP_FAULTS:
                    await self._fault(fmt, record, script, writer)
                    return True
                break
        status, body = llm_embeddings.answer(fmt, path, payload if isinstance(payload, dict) else {})
        await self._send(writer, status, body)
        return True

    async def _reply(self, fmt: str, record: RecordedRequest, script: Script,
                     reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        model = record.model or "fake-model"
        usage = script.normalised_usage(len(json.dumps(record.body)))
        if script.fault in wire.HTTP_FAULTS:
            await self._fault(fmt, record, script, writer)
            return True
        if not record.stream:
            if script.fault == "stall":
                await reader.read()  # hold the request until the client gives up
                return False
            if script.fault == "drop":
                writer.transport.abort()
                return False
            if script.fault == "malformed":
                await self._send(writer, 200, None, raw=b'{"choices": [{"message": ')
                return True
            body = {"openai": wire.openai_body, "anthropic": wire.anthropic_body, "gemini": wire.gemini_body,
                    "ollama": wire.ollama_body}[fmt](script, model, usage)
            await self._send(writer, 200, body)
            return True
        if script.raw_events is not None:
            events: Iterator[bytes] = (event.encode() for event in script.raw_events)
        elif fmt == "openai":
            include = bool((record.body.get("stream_options") or {}).get("include_usage"))
            events = wire.openai_stream(script, model, usage, include)
        elif fmt == "anthropic":
            events = wire.anthropic_stream(script, model, usage)
        elif fmt == "gemini":
            events = wire.gemini_stream(script, model, usage)
        else:
            events = wire.ollama_stream(script, model, usage)
        content_type = "application/x-ndjson" if fmt == "ollama" else "text/event-stream"
        return await self._stream(fmt, script, events, content_type, reader, writer)

    async def _stream(self, fmt: str, script: Script, events: Iterator[bytes], content_type: str,
                      reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        cookie = f"set-cookie: {self.set_cookie}\r\n" if self.set_cookie else ""
        writer.write(f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncache-control: no-cache\r\n"
                     f"{cookie}transfer-encoding: chunked\r\n\r\n".encode())
        fault = script.fault if script.fault in wire.STREAM_FAULTS else None
        pending = bytearray()
        sent_events = 0
        for event in events:
            if fault is not None and sent_events >= script.fault_after:
                break
            sent_events += 1
            if script.byte_chunk:
                pending += event
                while len(pending) >= script.byte_chunk:
                    await self._write_chunk(writer, bytes(pending[: script.byte_chunk]), script.delay)
                    del pending[: script.byte_chunk]
            else:
                await self._write_chunk(writer, event, script.delay)
        if pending:
            await self._write_chunk(writer, bytes(pending), script.delay)
        if fault == "malformed":
            await self._write_chunk(writer, wire.MALFORMED[fmt], 0)
        elif fault == "stall":
            await reader.read()  # silence until the client gives up and closes
            return False
        elif fault == "drop":
            writer.transport.abort()  # no terminating chunk: the client sees a cut body
            return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    @staticmethod
    async def _write_chunk(writer: asyncio.StreamWriter, data: bytes, delay: float) -> None:
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await writer.drain()
        if delay:
            await asyncio.sleep(delay)

    async def _fault(self, fmt: str, record: RecordedRequest, script: Script, writer: asyncio.StreamWriter) -> None:
        fault = script.fault or "server_error"
        status = script.status or (529 if fault == "overloaded" and fmt == "anthropic" else wire.FAULT_STATUS[fault])
        key = _presented_key(record.headers, record.query)
        messages = {
            "rate_limit": "Rate limit reached for requests",
            "server_error": "The server had an error while processing your request",
            "overloaded": "Overloaded",
            # Real providers echo (part of) the key; drivers must scrub it.
            "auth": f"Incorrect API key provided: {key}",
            "model_not_found": f"The model `{record.model}` does not exist",
            "context_too_long": {
                "openai": "This model's maximum context length is 8192 tokens.",
                "anthropic": "prompt is too long: 250000 tokens > 200000 maximum",
                "gemini": "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
                "ollama": "input length exceeds the context length",
            }[fmt],
        }
        message = messages[fault]
        if fmt == "openai":
            body = wire.openai_error(fault, message)
        elif fmt == "anthropic":
            body = wire.anthropic_error(fault, message)
        elif fmt == "gemini":
            body = wire.gemini_error(fault, message, status)
        else:
            body = wire.ollama_error(fault, message)
        headers: dict[str, str] = {}
        if fault in ("rate_limit", "overloaded"):
            if script.retry_after is not None:
                headers["retry-after"] = script.retry_after
            if script.retry_after_ms is not None:
                headers["retry-after-ms"] = str(script.retry_after_ms)
        await self._send(writer, status, body, headers)

    async def _list_models(self, path: str, writer: asyncio.StreamWriter) -> bool:
        if path.endswith("/models") and path.startswith("/v1beta"):
            body: Any = {"models": [{"name": f"models/{m}", "displayName": m} for m in self.models]}
        elif path.endswith("/models"):
            body = {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "fake"} for m in self.models]}
        elif path == "/api/tags":
            body = {"models": [{"name": m, "model": m, "size": 1, "details": {"family": "fake"}} for m in self.models]}
        else:
            await self._send(writer, 404, {"error": f"no route for GET {path}"})
            return True
        await self._send(writer, 200, body)
        return True

    async def _control(self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        if method == "POST" and path == "/_fake/scripts":
            data = json.loads(body or b"[]")
            items = data if isinstance(data, list) else [data]
            self.script(*[Script.from_dict(item) for item in items])
            await self._send(writer, 200, {"queued": len(self.scripts)})
        elif method == "GET" and path == "/_fake/requests":
            await self._send(writer, 200, [asdict(r) for r in self.requests])
        elif method == "POST" and path == "/_fake/reset":
            self.reset()
            await self._send(writer, 200, {"reset": True})
        else:
            await self._send(writer, 404, {"error": "unknown control endpoint"})
        return True


def _presented_key(headers: dict[str, str], query: dict[str, list[str]]) -> str:
    auth = headers.get("authorization", "")
    return (auth.removeprefix("Bearer ").strip() or headers.get("x-api-key") or headers.get("x-goog-api-key")
            or (query.get("key") or [""])[0])


def _last_user_text(fmt: str, payload: dict[str, Any]) -> str:
    """The newest user text in a request (for the default echo reply)."""
    messages = payload.get("contents") if fmt == "gemini" else payload.get("messages")
    for message in reversed(messages or []):
        if message.get("role") != "user":
            continue
        content = message.get("parts") if fmt == "gemini" else message.get("content")
        if isinstance(content, str):
            return content
        texts = [p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("text")]
        if texts:
            return " ".join(texts)
    return ""


async def _main(host: str, port: int) -> None:
    server = await FakeLLMServer(host=host, port=port).start()
    print(f"fake LLM provider on {server.url}", flush=True)
    for fmt in ("openai", "anthropic", "gemini", "ollama"):
        print(f"  {fmt:<9} base URL {server.base_url(fmt)}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake LLM provider server (OpenAI, Anthropic, Gemini, Ollama)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11500)
    args = parser.parse_args(argv)
    try:
        asyncio.run(_main(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
