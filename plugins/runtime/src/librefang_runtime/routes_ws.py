"""``GET /api/agents/{id}/ws``: chat with an agent over a WebSocket (brief §3.5).

Client frames: ``{"type":"message","content","message_id"?,"attachments"?}`` (plain non-JSON text is a
message too), ``{"type":"command","command","args"?}`` (commands: see :mod:`~librefang_runtime.ws_commands`),
``{"type":"ping"}``. Server frames: ``connected``, ``agents_updated`` (on connect, then on registry
changes, debounced), ``typing`` (start/tool/stop), ``text_delta`` (debounced), ``tool_start``,
``tool_end``, ``tool_result`` (detail per the ``verbose`` level), ``phase``, ``response`` (with
``context_pressure``) / ``silent_complete`` / ``error`` (echoing ``message_id``), ``command_result``,
``compaction``, ``pong``. Auth is the edge's (header or ``bearer.<key>`` sub-protocol). Limits: connections per client IP (429 on upgrade), messages per minute per
connection, an idle timeout. Turns run in the background so ``stop`` works while one runs; closing the
socket cancels them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from typing import Any

from librefang import Router, current_kernel
from librefang.errors import ApiError, TooManyRequests
from librefang_providers.api import TextDelta, ToolUseEnd, ToolUseStart
from pydantic import ValidationError
from quart import g, websocket

from librefang_runtime import ws_commands
from librefang_runtime.loop import LoopEvent, PhaseChange, ToolExecuted
from librefang_runtime.schemas import MessageRequest
from librefang_runtime.service import RuntimeService

router = Router("runtime_ws", tags=("agents",))
MAX_FRAME_CHARS = 512 * 1024
DELTA_CHARS = 200
DELTA_SECONDS = 0.1
PREVIEW_CHARS = 500  # tool input and result previews at verbose "full" ("on": 100 and 200)
AGENTS_DEBOUNCE = 0.2  # seconds: a burst of registry changes makes one agents_updated frame

log = logging.getLogger("librefang.runtime.ws")


def service() -> RuntimeService:
    return current_kernel().services["runtime"]


class Connection:
    """One socket: sending (serialised), the message rate window, and the turns it started."""

    def __init__(self, runtime: RuntimeService, record: Any, principal: str = "websocket") -> None:
        self.runtime = runtime
        self.record = record
        self.principal = principal  # who changes the agent through commands (the audit entry's actor)
        self.sent: deque[float] = deque()
        self.turns: set[asyncio.Task[None]] = set()
        self.verbose = "full"  # tool detail of the frames: off | on | full
        self._send_lock = asyncio.Lock()
        self._agents_sent: Any = None

    async def send(self, frame: dict[str, Any]) -> None:
        async with self._send_lock:
            await websocket.send(json.dumps(frame, ensure_ascii=False))

    def rate_limited(self) -> bool:
        limit = self.runtime.config.ws_messages_per_minute
        now = time.monotonic()
        while self.sent and now - self.sent[0] > 60:
            self.sent.popleft()
        if len(self.sent) >= limit:
            return True
        self.sent.append(now)
        return False

    async def send_agents(self) -> None:
        """An ``agents_updated`` frame, unless the list is the same as the last one sent."""
        frame = await ws_commands.agents_snapshot(self.runtime)
        if frame != self._agents_sent:
            self._agents_sent = frame
            await self.send(frame)

    async def watch_agents(self, subscription: Any) -> None:
        """Send ``agents_updated`` after registry changes (``agent.*`` events on the bus), one frame
        per burst: events arriving within :data:`AGENTS_DEBOUNCE` of the first are folded in."""
        try:
            while True:
                await subscription.get()
                await asyncio.sleep(AGENTS_DEBOUNCE)
                while not subscription.queue.empty():
                    subscription.queue.get_nowait()
                try:
                    await self.send_agents()
                except ApiError as exc:  # the registry refused (shutting down): try on the next change
                    log.debug("agents_updated skipped: %s", exc)
        finally:
            subscription.close()

    async def pressure(self, turn: Any, result: Any) -> str:
        """Context pressure after a turn: the prompt of its last model call against the window."""
        s = turn.settings
        window = await ws_commands.context_window(self.runtime.kernel, turn.context_window, s.provider, s.model)
        prompt = result.calls[-1].usage.input_tokens if result.calls else 0
        return ws_commands.pressure(prompt, window)

    async def turn(self, body: MessageRequest, message_id: str | None) -> None:
        """Run one message and report it; every outcome ends with a terminal frame."""
        echo = {"message_id": message_id} if message_id else {}
        buffer: list[str] = []
        flushed = time.monotonic()

        async def flush() -> None:
            nonlocal flushed
            if buffer:
                await self.send({"type": "text_delta", "content": "".join(buffer)})
                buffer.clear()
            flushed = time.monotonic()

        async def emit(event: LoopEvent) -> None:
            if isinstance(event, TextDelta):
                buffer.append(event.text)
                # Debounced: one frame per 200 characters or 100 ms, whichever comes first.
                if sum(map(len, buffer)) >= DELTA_CHARS or time.monotonic() - flushed >= DELTA_SECONDS:
                    await flush()
                return
            await flush()
            if isinstance(event, ToolUseStart):
                await self.send({"type": "typing", "state": "tool"})
                await self.send({"type": "tool_start", "id": event.id, "tool": event.name})
            elif isinstance(event, ToolUseEnd):
                if self.verbose != "off":
                    limit = PREVIEW_CHARS if self.verbose == "full" else 100
                    preview = json.dumps(event.input, ensure_ascii=False)[:limit]
                    await self.send({"type": "tool_end", "id": event.id, "tool": event.name, "input": preview})
            elif isinstance(event, ToolExecuted):
                frame = {"type": "tool_result", "id": event.id, "tool": event.name, "is_error": event.is_error}
                if self.verbose != "off":
                    frame["result"] = event.content[:PREVIEW_CHARS if self.verbose == "full" else 200]
                await self.send(frame)
            elif isinstance(event, PhaseChange):
                if event.phase == "response_complete":
                    await self.send({"type": "typing", "state": "stop"})
                await self.send({"type": "phase", "phase": event.phase, "detail": event.detail})

        try:
            turn = await self.runtime.prepare(self.record.id, body)
            await self.send({"type": "typing", "state": "start"})
            result = await self.runtime.run(turn, emit)
            await flush()
        except ApiError as exc:
            await self.send({"type": "typing", "state": "stop"})
            await self.send({"type": "error", "content": exc.message, "code": exc.code, **echo})
            return
        if result.silent:
            await self.send({"type": "silent_complete", **echo})
            return
        frame = {"type": "response", "content": result.response, "input_tokens": result.usage.input_tokens,
                 "output_tokens": result.usage.output_tokens, "iterations": result.iterations,
                 "cost_usd": result.cost_usd, "context_pressure": await self.pressure(turn, result), **echo}
        await self.send(frame)

    def start_turn(self, body: MessageRequest, message_id: str | None) -> None:
        task = asyncio.ensure_future(self.turn(body, message_id))
        self.turns.add(task)
        task.add_done_callback(self.turns.discard)

    async def command(self, name: str, args: str) -> None:
        frame = await ws_commands.run_command(self, name, args)
        if frame is not None:
            await self.send(frame)


def parse_frame(raw: str | bytes) -> dict[str, Any]:
    """A client frame as a dict; plain text (or JSON that is not an object) is a message."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    try:
        value = json.loads(text)
    except ValueError:
        return {"type": "message", "content": text}
    return value if isinstance(value, dict) else {"type": "message", "content": text}


@router.websocket("/api/agents/<agent_id>/ws", cost=10)
async def agent_ws(agent_id: str) -> Any:
    """Chat with an agent over a WebSocket (see the module docstring for the protocol)."""
    runtime = service()
    record = await runtime.agents.get(agent_id)  # 400/404 refuse the upgrade
    peer = (websocket.scope.get("client") or ("",))[0] or "unknown"
    limit = runtime.config.ws_max_connections_per_ip
    if runtime.ws_connections.get(peer, 0) >= limit:
        message = f"at most {limit} WebSocket connections per client"
        if getattr(g, "websocket_subprotocol", None) is not None:
            # The edge already accepted (bearer sub-protocol): refuse in-band, then close.
            await websocket.send(json.dumps({"type": "error", "content": message, "code": "too_many_connections"}))
            await websocket.close(1013, "too many connections")
            return None
        raise TooManyRequests(message, code="too_many_connections")
    runtime.ws_connections[peer] = runtime.ws_connections.get(peer, 0) + 1
    connection = Connection(runtime, record, str(getattr(g, "principal", None) or "websocket"))
    watcher: asyncio.Task[None] | None = None
    try:
        if getattr(g, "websocket_subprotocol", None) is None:
            await websocket.accept()
        await connection.send({"type": "connected", "agent_id": record.id})
        try:  # subscribed before the first list is read, so no change falls in between
            subscription = runtime.kernel.bus.subscribe("agent.*", maxsize=64, name="runtime.ws.agents")
        except ApiError as exc:  # the bus is full: the socket works, without live agent updates
            log.warning("no agents_updated for this WebSocket: %s", exc)
            subscription = None
        try:
            await connection.send_agents()
        finally:
            if subscription is not None:
                watcher = asyncio.ensure_future(connection.watch_agents(subscription))
        while True:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows the cancellation
                # Quart sends when the client disconnects if receive() completes at the same moment,
                # and the handler then waits forever, holding its per-IP connection slot (found
                # by the reliability soak: after 5 mid-turn disconnects every WebSocket was refused).
                async with asyncio.timeout(runtime.config.ws_idle_timeout_secs):
                    raw = await websocket.receive()
            except TimeoutError:
                await websocket.close(1000, "idle timeout")
                return
            if len(raw) > MAX_FRAME_CHARS:
                await connection.send({"type": "error", "content": "frame too large", "code": "message_too_large"})
                continue
            frame = parse_frame(raw)
            kind = frame.get("type")
            if kind == "ping":
                await connection.send({"type": "pong"})
                continue
            if connection.rate_limited():
                limit_per_minute = runtime.config.ws_messages_per_minute
                await connection.send({"type": "error", "code": "rate_limited",
                                       "content": f"Rate limit exceeded. Max {limit_per_minute} messages per minute."})
                continue
            if kind == "command":
                try:
                    await connection.command(str(frame.get("command", "")), str(frame.get("args", "") or ""))
                except ApiError as exc:
                    await connection.send({"type": "error", "content": exc.message, "code": exc.code})
                continue
            if kind == "message":
                content, message_id = frame.get("content", ""), frame.get("message_id")
                attachments = frame.get("attachments") or []
                if not isinstance(content, str) or not (content.strip() or attachments):
                    await connection.send({"type": "error", "content": "message content must be non-empty text",
                                           "code": "invalid_message"})
                    continue
                try:
                    body = MessageRequest(message=content, attachments=attachments)
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first.get("loc", ()))
                    await connection.send({"type": "error", "content": f"invalid attachments: {where}: {first['msg']}",
                                           "code": "invalid_message"})
                    continue
                connection.start_turn(body, str(message_id)[:200] if message_id is not None else None)
                continue
            await connection.send({"type": "error", "content": f"Unknown frame type: {str(kind)[:64]}",
                                   "code": "invalid_frame"})
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
        for task in list(connection.turns):  # the client went away: its turns stop with it
            task.cancel()
        for task in list(connection.turns):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        remaining = runtime.ws_connections.get(peer, 1) - 1
        if remaining > 0:
            runtime.ws_connections[peer] = remaining
        else:
            runtime.ws_connections.pop(peer, None)
