"""The OpenAI-compatible API: ``POST /v1/chat/completions`` and ``GET /v1/models``.

An agent is a "model": ``librefang:<agent name>``, an agent id, or a bare agent name. The agent keeps
its own session history, so only the latest user message of the request is forwarded (as the
reference does); ``max_tokens``/``temperature`` are accepted and ignored. Errors use OpenAI's shape
``{"error": {"message", "type", "code"}}`` so the official clients raise their usual exceptions.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from librefang import Router, current_kernel
from librefang.errors import ApiError
from librefang_providers.api import TextDelta, ToolUseEnd, ToolUseStart
from pydantic import BaseModel, ConfigDict, Field
from quart import Response

from librefang_runtime.attachments import sniff_image, store_image
from librefang_runtime.loop import LoopEvent
from librefang_runtime.schemas import AttachmentRef, MessageRequest
from librefang_runtime.service import RuntimeService

router = Router("runtime_openai", tags=("openai",))
MODEL_PREFIX = "librefang:"
MAX_LISTED_AGENTS = 10_000
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
               412: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}


class ChatMessage(BaseModel):
    """One message of a chat completion request (other OpenAI fields are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")

    role: str = Field(max_length=32)
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` (OpenAI's fields; unknown ones are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=300)
    messages: list[ChatMessage] = Field(min_length=1, max_length=10_000)
    stream: bool = False
    max_tokens: int | None = None
    temperature: float | None = None


class ChatCompletion(BaseModel):
    """The non-streaming reply (``object: chat.completion``)."""

    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, int]


class ModelList(BaseModel):
    object: str = "list"
    data: list[dict[str, Any]]


def openai_error(status: int, message: str, code: str) -> Response:
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "api_error"), "param": None, "code": code}}
    return Response(json.dumps(body), status=status, mimetype="application/json")


def service() -> RuntimeService:
    return current_kernel().services["runtime"]


async def find_agent(runtime: RuntimeService, model: str) -> Any:
    """The agent a ``model`` string names, or None."""
    name = model[len(MODEL_PREFIX):] if model.startswith(MODEL_PREFIX) else model
    try:
        uuid.UUID(name)
    except ValueError:
        return await runtime.agents.find(name)
    try:
        return await runtime.agents.get(name)
    except ApiError:
        return await runtime.agents.find(name)


class ImageRefused(ValueError):
    """An image part that cannot be used; ``code`` is the OpenAI-shape error code."""

    def __init__(self, message: str, code: str = "invalid_image") -> None:
        super().__init__(message)
        self.code = code


DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)


def decode_image(part: dict[str, Any], max_bytes: int) -> tuple[str, bytes]:
    """(media type, bytes) of an ``image_url`` part holding a base64 ``data:`` URI of a PNG, JPEG,
    GIF or WebP image (as the reference, remote URLs are refused: nothing is fetched)."""
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise ImageRefused("image_url.url must be a string")
    match = DATA_URI.match(url)
    if match is None:
        raise ImageRefused("only base64 data: URIs are accepted as images (data:<mime>;base64,...)")
    encoded = match["data"]
    if len(encoded) > max_bytes * 4 // 3 + 4:
        raise ImageRefused(f"an image is larger than {max_bytes} bytes", "image_too_large")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRefused("the image is not valid base64") from None
    media_type = sniff_image(data)
    if media_type is None:
        raise ImageRefused(f"the image ({match['mime'][:64]}) is not a PNG, JPEG, GIF or WebP image")
    return media_type, data


def latest_user(messages: list[ChatMessage], max_images: int, max_bytes: int) -> tuple[str, list[tuple[str, bytes]]] | None:
    """The text (text parts joined) and images of the last user message; None without one.
    Raises :class:`ImageRefused` for an unusable image part."""
    for message in reversed(messages):
        if message.role != "user":
            continue
        if isinstance(message.content, str):
            return message.content, []
        parts: list[str] = []
        images: list[tuple[str, bytes]] = []
        for part in message.content or []:
            if part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                if len(images) >= max_images:
                    raise ImageRefused(f"at most {max_images} images per message", "too_many_attachments")
                images.append(decode_image(part, max_bytes))
        return "\n".join(parts), images
    return None


def chunk(completion_id: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None,
          usage: dict[str, int] | None = None) -> bytes:
    body: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


@router.post("/v1/chat/completions", cost=30, body=ChatCompletionRequest, response=ChatCompletion)
async def chat_completions(body: ChatCompletionRequest) -> Any:
    """Talk to an agent with OpenAI's Chat Completions protocol (``stream`` supported). A body that
    is not valid JSON or misses fields is a 400 in LibreFang's error shape; every other error uses
    OpenAI's."""
    runtime = service()
    record = await find_agent(runtime, body.model)
    if record is None:
        return openai_error(404, f"No agent found for model '{body.model[:300]}'", "model_not_found")
    config = runtime.config
    try:
        latest = latest_user(body.messages, config.max_attachments, config.max_attachments_bytes)
    except ImageRefused as exc:
        return openai_error(400, str(exc), exc.code)
    text, images = latest if latest is not None else ("", [])
    if not text.strip() and not images:
        return openai_error(400, "no user message with text or an image in 'messages'", "missing_message")
    if images and body.stream:
        return openai_error(400, "images are not supported with stream: true; send the request without streaming",
                            "streaming_vision_unsupported")
    try:
        # The images are stored as uploads of the agent (the session keeps a reference, not the
        # bytes); an image the agent already has is not stored again (clients resend them every call).
        refs = []
        for index, (media_type, data) in enumerate(images):
            name = f"chat-image-{index + 1}.{media_type.split('/')[1]}"
            meta = await store_image(runtime.kernel, record.id, name, media_type, data)
            refs.append(AttachmentRef(file_id=meta["file_id"], filename=name))
        turn = await runtime.prepare(record.id, MessageRequest(message=text, attachments=refs))
    except ApiError as exc:
        return openai_error(exc.status, exc.message, exc.code)
    completion_id = f"chatcmpl-{uuid.uuid4()}"
    created = int(time.time())
    if not body.stream:
        try:
            result = await runtime.run(turn)
        except ApiError as exc:
            return openai_error(exc.status, exc.message, exc.code)
        usage = result.usage
        return ChatCompletion(
            id=completion_id, created=created, model=record.name,
            choices=[{"index": 0, "message": {"role": "assistant", "content": result.response},
                      "finish_reason": "stop"}],
            usage={"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
                   "total_tokens": usage.input_tokens + usage.output_tokens},
        )

    async def frames() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(10_000)
        tool_index = -1

        async def emit(event: LoopEvent) -> None:
            nonlocal tool_index
            if isinstance(event, TextDelta) and event.text:
                await queue.put(chunk(completion_id, created, record.name, {"content": event.text}))
            elif isinstance(event, ToolUseStart):
                tool_index += 1  # keeps growing across the loop's iterations, as the reference does
                call = {"index": tool_index, "id": event.id, "type": "function",
                        "function": {"name": event.name, "arguments": ""}}
                await queue.put(chunk(completion_id, created, record.name, {"tool_calls": [call]}))
            elif isinstance(event, ToolUseEnd):
                call = {"index": tool_index, "function": {"arguments": json.dumps(event.input)}}
                await queue.put(chunk(completion_id, created, record.name, {"tool_calls": [call]}))

        async def run() -> None:
            try:
                result = await runtime.run(turn, emit)
                usage = {"prompt_tokens": result.usage.input_tokens, "completion_tokens": result.usage.output_tokens,
                         "total_tokens": result.usage.input_tokens + result.usage.output_tokens}
                await queue.put(chunk(completion_id, created, record.name, {}, "stop", usage))
            except ApiError as exc:
                error = {"error": {"message": exc.message, "type": "api_error", "code": exc.code}}
                await queue.put(b"data: " + json.dumps(error).encode() + b"\n\n")
            finally:
                await queue.put(None)

        yield chunk(completion_id, created, record.name, {"role": "assistant", "content": ""})
        task = asyncio.ensure_future(run())
        try:
            while (frame := await queue.get()) is not None:
                yield frame
            yield b"data: [DONE]\n\n"
        finally:
            if not task.done():  # the client went away: stop the turn
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    response = Response(frames(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.timeout = None
    return response


@router.get("/v1/models", cost=1, response=ModelList)
async def list_models() -> ModelList:
    """Every agent as a model id ``librefang:<name>``."""
    runtime = service()
    now = int(time.time())
    data: list[dict[str, Any]] = []
    while len(data) < MAX_LISTED_AGENTS:
        page = await runtime.agents.list(limit=500, offset=len(data))
        data += [{"id": f"{MODEL_PREFIX}{item['name']}", "object": "model", "created": now, "owned_by": "librefang"}
                 for item in page["items"]]
        if len(page["items"]) < 500:
            break
    return ModelList(data=data)
