"""HTTP routes of the runtime: send a message (JSON or SSE) and read a session. Thin handlers over
:class:`~librefang_runtime.service.RuntimeService`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from librefang import Router, current_kernel
from librefang.errors import ApiError, BadRequest, NotFound
from librefang_providers.api import (
    ContentComplete,
    ImageBlock,
    TextDelta,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseEnd,
    ToolUseStart,
)
from quart import Response

from librefang_runtime.attachments import upload_ref
from librefang_runtime.history import text_of
from librefang_runtime.loop import LoopEvent, PhaseChange
from librefang_runtime.schemas import (
    MessageRequest,
    MessageResponse,
    SessionImage,
    SessionMessage,
    SessionQuery,
    SessionTool,
    SessionView,
    StopResponse,
)
from librefang_runtime.service import RuntimeService, parse_session_id

log = logging.getLogger("librefang.runtime.routes")

router = Router("runtime", tags=("agents",))
QUEUE_SIZE = 10_000  # events of one stream buffered for a slow client; beyond it the turn waits
BATCH_FRAMES = 256


def service() -> RuntimeService:
    return current_kernel().services["runtime"]


@router.post("/api/agents/<agent_id>/message", cost=30, body=MessageRequest, response=MessageResponse)
async def send_message(agent_id: str, body: MessageRequest) -> dict[str, Any]:
    """Send a message to an agent and wait for the whole reply."""
    runtime = service()
    turn = await runtime.prepare(agent_id, body)
    result = await runtime.run(turn)
    return runtime.response(turn, result)


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def sse_frame(event: LoopEvent) -> bytes | None:
    """The SSE frame of a loop event (brief §3.4); None for events the stream does not show."""
    if isinstance(event, TextDelta):
        return sse("chunk", {"content": event.text, "done": False}) if event.text else None
    if isinstance(event, ToolUseStart):
        return sse("tool_use", {"tool": event.name, "id": event.id})
    if isinstance(event, ToolUseEnd):
        return sse("tool_result", {"tool": event.name, "id": event.id, "input": event.input})
    if isinstance(event, PhaseChange):
        return sse("phase", {"phase": event.phase, "detail": event.detail})
    if isinstance(event, ContentComplete):
        usage = {"input_tokens": event.usage.input_tokens, "output_tokens": event.usage.output_tokens}
        return sse("done", {"done": True, "usage": usage})
    return None


@router.post("/api/agents/<agent_id>/message/stream", cost=30, body=MessageRequest)
async def send_message_stream(agent_id: str, body: MessageRequest) -> Response:
    """Send a message and receive the reply as Server-Sent Events (chunk, tool_use, tool_result,
    phase, done, then result or error; ``: keep-alive`` comments while idle). A client that
    disconnects cancels the turn."""
    runtime = service()
    turn = await runtime.prepare(agent_id, body)  # refusals are still plain HTTP errors here
    keepalive = runtime.config.sse_keepalive_secs

    async def events() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_SIZE)

        async def emit(event: LoopEvent) -> None:
            frame = sse_frame(event)
            if frame is not None:
                await queue.put(frame)

        async def run() -> None:
            try:
                result = await runtime.run(turn, emit)
                await queue.put(sse("result", runtime.response(turn, result)))
            except ApiError as exc:
                await queue.put(sse("error", {"error": exc.message, "code": exc.code}))
            except Exception as exc:  # the stream is already 200: report, never leave the client hanging
                log.exception("streamed turn failed")
                await queue.put(sse("error", {"error": f"the turn failed: {type(exc).__name__}",
                                              "code": "message_delivery_failed"}))
            finally:
                await queue.put(None)

        task = asyncio.ensure_future(run())
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
                    # cancellation that arrives when the client disconnects (see routes_ws.py).
                    async with asyncio.timeout(keepalive):
                        frame = await queue.get()
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if frame is None:
                    return
                # Frames that queued up while the last write was in flight go out in one write:
                # a fast model does not pay the server's per-write cost for every token.
                batch = [frame]
                while not queue.empty() and len(batch) < BATCH_FRAMES:
                    more = queue.get_nowait()
                    if more is None:
                        yield b"".join(batch)
                        return
                    batch.append(more)
                yield b"".join(batch)
        finally:
            if not task.done():  # the client went away mid-turn: stop the run
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    response = Response(events(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None
    return response


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def image_view(block: ImageBlock) -> SessionImage:
    """How the session view shows an image block (a stored upload reference, or inline data)."""
    file_id = upload_ref(block)
    url = block.url or f"data:{block.media_type};base64,{block.data}"
    return SessionImage(media_type=block.media_type, url=url, file_id=file_id)


def flatten(stored: list[Any]) -> list[SessionMessage]:
    """Messages as the dashboard shows them: tool results folded into the assistant message that
    called the tools (a user message of results alone is not shown)."""
    out: list[SessionMessage] = []
    pending: dict[str, SessionTool] = {}
    for item in stored:
        message = item.message
        blocks = message.blocks()
        if message.role == "assistant":
            tools = [SessionTool(name=b.name, input=b.input) for b in blocks if isinstance(b, ToolUseBlock)]
            ids = [b.id for b in blocks if isinstance(b, ToolUseBlock)]
            pending = dict(zip(ids, tools, strict=True))
            thinking = "\n".join(getattr(b, "text", "") for b in blocks if getattr(b, "type", "") == "thinking")
            out.append(SessionMessage(role="Assistant", content=text_of(message), tools=tools or None,
                                      thinking=thinking or None, timestamp=_iso(item.created_at)))
            continue
        results = [b for b in blocks if isinstance(b, ToolResultBlock)]
        for result in results:
            tool = pending.get(result.tool_use_id)
            if tool is not None:
                tool.result, tool.is_error = result.content, result.is_error
        text = text_of(message)
        images = [image_view(b) for b in blocks if isinstance(b, ImageBlock)]
        if text or images or not results:
            out.append(SessionMessage(role="User", content=text, images=images or None, timestamp=_iso(item.created_at)))
    return out


@router.get("/api/agents/<agent_id>/session", cost=1, query=SessionQuery, response=SessionView)
async def get_session(agent_id: str, query: SessionQuery) -> SessionView:
    """An agent's conversation (its canonical session, or ``?session_id=``)."""
    runtime = service()
    record = await runtime.agents.get(agent_id)
    session_id = parse_session_id(query.session_id) if query.session_id else record.session_id
    info = await runtime.store.get(session_id) if session_id else None
    if info is not None and info.agent_id != record.id:
        raise BadRequest("the session belongs to another agent", code="session_agent_mismatch")
    if info is None and query.session_id:
        raise NotFound(f"session {session_id} not found", code="session_not_found")
    stored = await runtime.store.load(session_id) if info is not None else []
    chars = sum(len(json.dumps([getattr(b, "text", "") or getattr(b, "content", "") for b in s.message.blocks()]))
                for s in stored)
    return SessionView(
        session_id=session_id, agent_id=record.id, message_count=info.message_count if info else 0,
        context_window_tokens=chars // 4, label=info.label if info else None, messages=flatten(stored),
        compacted_summary=info.summary if info else None,
    )


@router.post("/api/agents/<agent_id>/stop", cost=5, response=StopResponse)
async def stop_agent(agent_id: str) -> StopResponse:
    """Cancel the agent's running turns (what they committed stays; the session stays consistent)."""
    runtime = service()
    record = await runtime.agents.get(agent_id)
    stopped = await runtime.stop(record.id)
    return StopResponse(status="ok", message="Run cancelled" if stopped else "No active run", stopped=stopped)


@router.post("/api/agents/<agent_id>/sessions/<session_id>/stop", cost=5, response=StopResponse)
async def stop_session(agent_id: str, session_id: str) -> StopResponse:
    """Cancel the running turn of one session of the agent."""
    runtime = service()
    record = await runtime.agents.get(agent_id)
    session_id = parse_session_id(session_id)
    info = await runtime.store.get(session_id)
    if info is None or info.agent_id != record.id:
        raise NotFound(f"session {session_id} not found for this agent", code="session_not_found")
    stopped = await runtime.stop(record.id, session_id)
    return StopResponse(status="ok", message="Run cancelled" if stopped else "No active run", stopped=stopped)
