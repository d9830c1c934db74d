"""Attachments of a message: files uploaded with ``POST /api/agents/{id}/upload`` and referenced as
``attachments: [{file_id, filename?, content_type?}]`` (HTTP, SSE, WebSocket, OpenAI image parts).

- An **image** (PNG, JPEG, GIF, WebP — recognised by its bytes, not by the declared type) becomes an
  image block of the user message. The session stores it as a *reference* (an ``ImageBlock`` with
  no data and ``url = /api/uploads/<file_id>``), so history, export and the database never hold the
  base64; :class:`ImageLoader` loads the bytes only when a request to the model is built. Images of
  earlier messages are sent again only for the newest ``[runtime] max_history_images``; older ones
  become a one-line note, so a long conversation with pictures does not resend every picture on
  every turn.
- A **text file** (``text/*``, JSON/YAML/TOML/XML…, or a source/data file extension) is inlined as a
  text block, up to ``max_attachment_text_chars`` (longer files are cut with a note).
- Anything else is refused (400 ``unsupported_attachment`` naming the file).

Images that arrive inline (OpenAI image parts) are stored with :func:`store_image`: the same bytes
for the same agent are one upload (found by SHA-256), so a client resending its picture on every call
does not fill the agent's upload quota.

Refusals, all before the turn runs: 400 ``invalid_file_id`` / ``too_many_attachments``, 404
``upload_not_found``, 403 ``attachment_not_owned`` (an upload of another agent), 413
``attachments_too_large`` (total size over ``max_attachments_bytes``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from librefang.errors import ApiError, BadRequest, Forbidden, PayloadTooLarge
from librefang_agents import api as agents_api
from librefang_providers.api import Block, ImageBlock, Message, TextBlock

log = logging.getLogger("librefang.runtime.attachments")

IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
UPLOAD_URL = re.compile(r"^/api/uploads/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")
TEXT_TYPES = frozenset({
    "application/json", "application/xml", "application/yaml", "application/x-yaml", "application/toml",
    "application/x-toml", "application/javascript", "application/x-javascript", "application/typescript",
    "application/sql", "application/graphql", "application/x-ipynb+json", "application/x-sh",
})
TEXT_EXTENSIONS = frozenset("""
txt md markdown rst csv tsv log json jsonl yaml yml toml xml ini conf cfg env properties html htm css scss
sass less js jsx ts tsx mjs cjs vue svelte py rs go java kt kts swift scala clj ex exs c cpp cc cxx h hpp hh
m mm rb php pl lua r jl dart zig nim sh bash zsh fish ps1 sql graphql gql proto ipynb dockerfile makefile
""".split())
NOT_RESENT = "[An image from earlier in the conversation ({media_type}) is not sent again.]"
UNAVAILABLE = "[An image from earlier in the conversation is no longer available.]"
NO_VISION = "[An image was attached ({media_type}), but the model {model} cannot see images.]"


def sniff_image(data: bytes) -> str | None:
    """The media type of a PNG, JPEG, GIF or WebP image from its first bytes, else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


HASH_OFF_LOOP_BYTES = 1 << 20  # hashing a bigger image (~2 ms per MiB) goes to a thread
# One lock per (agent, SHA-256) being stored: two concurrent calls with the same new image make one
# upload, not two. Weak values: a lock lives only while someone holds or waits for it.
_storing: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()


async def store_image(kernel: Any, agent_id: str, filename: str, media_type: str, data: bytes) -> dict[str, Any]:
    """The upload of the agent holding exactly ``data``: an existing one with the same SHA-256, else
    a new one (stored as ``POST /api/agents/{id}/upload`` does, with its limits). Returns its metadata."""
    if len(data) > HASH_OFF_LOOP_BYTES:
        digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    else:
        digest = hashlib.sha256(data).hexdigest()
    key = (agent_id, digest)
    lock = _storing.get(key)
    if lock is None:
        lock = _storing[key] = asyncio.Lock()
    async with lock:
        found = await agents_api.find_upload(kernel, agent_id, digest)
        if found is not None:
            return found
        return await agents_api.save_upload(kernel, agent_id, filename, media_type, data)


def is_text_file(content_type: str, filename: str) -> bool:
    """Whether a file is text the model can read inline (browsers label code files poorly, so the
    extension counts too)."""
    if content_type.startswith("text/") or content_type in TEXT_TYPES:
        return True
    stem, dot, ext = filename.rpartition(".")
    return (ext if dot else filename).lower() in TEXT_EXTENSIONS


def upload_ref(block: Any) -> str | None:
    """The upload id an image block refers to (a stored reference), else None."""
    if isinstance(block, ImageBlock) and not block.data:
        match = UPLOAD_URL.match(block.url)
        if match:
            return match.group(1)
    return None


@dataclass
class Attached:
    """The resolved attachments of one message: ``blocks`` as the session stores them (images as
    references), ``images`` the loaded image blocks of this message by upload id."""

    blocks: list[Block] = field(default_factory=list)
    images: dict[str, ImageBlock] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)


def _text_block(name: str, data: bytes, limit: int) -> TextBlock:
    if b"\x00" in data:
        raise BadRequest(f"attachment {name!r} is not a text file (it holds NUL bytes)", code="unsupported_attachment")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequest(f"attachment {name!r} is not UTF-8 text", code="unsupported_attachment") from None
    note = ""
    if len(text) > limit:
        text = text[:limit]
        note = f"\n\n[... the file was cut at {limit} characters]"
    return TextBlock(f"[Attached file: {name} ({len(data)} bytes)]\n\n{text}{note}")


async def resolve(kernel: Any, agent_id: str, refs: list[Any], config: Any) -> Attached:
    """Check and load the files a message attaches (see the module docstring for the refusals)."""
    if len(refs) > config.max_attachments:
        raise BadRequest(f"{len(refs)} attachments; at most {config.max_attachments} per message",
                         code="too_many_attachments")
    out = Attached()
    total = 0
    for ref in refs:
        meta, data = await agents_api.get_upload(kernel, ref.file_id)
        name = ref.filename or meta["filename"]
        if meta["agent_id"] != agent_id:
            raise Forbidden(f"attachment {name!r} was uploaded for another agent", code="attachment_not_owned")
        total += len(data)
        if total > config.max_attachments_bytes:
            raise PayloadTooLarge(f"the attachments hold more than {config.max_attachments_bytes} bytes",
                                  code="attachments_too_large")
        declared = meta["content_type"]
        media_type = sniff_image(data)
        if media_type is not None:
            file_id = meta["file_id"]
            out.blocks.append(ImageBlock(media_type, "", f"/api/uploads/{file_id}"))
            out.images[file_id] = ImageBlock(media_type, base64.b64encode(data).decode("ascii"))
        elif declared.startswith("image/"):
            raise BadRequest(f"attachment {name!r} ({declared}) is not a supported image: use PNG, JPEG, GIF or WebP",
                             code="unsupported_attachment")
        elif is_text_file(declared, name):
            out.blocks.append(_text_block(name, data, config.max_attachment_text_chars))
        else:
            raise BadRequest(f"attachment {name!r} ({declared}) cannot be sent to the model: attach images "
                             "(PNG, JPEG, GIF, WebP) or text files", code="unsupported_attachment")
        out.names.append(name)
    return out


def user_message(text: str, attached: Attached | None) -> Message:
    """The user message of a turn: the text, then the attachments."""
    if attached is None:
        return Message("user", text)
    return Message("user", [*([TextBlock(text)] if text.strip() else []), *attached.blocks])


def has_images(messages: list[Message]) -> bool:
    """Whether any message holds an image block (plain-text strings are skipped cheaply)."""
    return any(not isinstance(m.content, str) and any(isinstance(b, ImageBlock) for b in m.content)
               for m in messages)


class ImageLoader:
    """Stands in front of the providers registry for one turn: each request's image references
    are replaced by the images' bytes (this turn's, and the newest ``max_history`` of earlier
    messages; older ones become a note). Stored history is never changed."""

    def __init__(self, llm: Any, kernel: Any, agent_id: str, loaded: dict[str, ImageBlock], max_history: int,
                 no_vision_model: str | None = None) -> None:
        self.llm = llm
        self.kernel = kernel
        self.agent_id = agent_id
        self.current = set(loaded)
        self.loaded = dict(loaded)
        self.max_history = max_history
        self.no_vision_model = no_vision_model

    async def _load(self, file_id: str) -> ImageBlock | None:
        if file_id in self.loaded:
            return self.loaded[file_id]
        try:
            meta, data = await agents_api.get_upload(self.kernel, file_id)
        except ApiError:
            return None
        media_type = sniff_image(data)
        if meta["agent_id"] != self.agent_id or media_type is None:  # an imported session's foreign reference
            return None
        self.loaded[file_id] = ImageBlock(media_type, base64.b64encode(data).decode("ascii"))
        return self.loaded[file_id]

    async def expand(self, messages: list[Message]) -> list[Message]:
        """``messages`` with image references loaded (newest first within the budget)."""
        budget = self.max_history
        out: list[Message] = []
        for message in reversed(messages):
            if isinstance(message.content, str) or not any(isinstance(b, ImageBlock) for b in message.content):
                out.append(message)
                continue
            blocks: list[Block] = []
            for block in message.content:
                if not isinstance(block, ImageBlock):
                    blocks.append(block)
                    continue
                if self.no_vision_model is not None:
                    blocks.append(TextBlock(NO_VISION.format(media_type=block.media_type, model=self.no_vision_model)))
                    continue
                file_id = upload_ref(block)
                if file_id is not None and file_id in self.current:
                    blocks.append(self.loaded[file_id])
                elif budget <= 0:
                    blocks.append(TextBlock(NOT_RESENT.format(media_type=block.media_type)))
                elif file_id is None:
                    budget -= 1
                    blocks.append(block)  # inline data (an imported session): already whole
                else:
                    budget -= 1
                    image = await self._load(file_id)
                    blocks.append(image if image is not None else TextBlock(UNAVAILABLE))
            out.append(Message(message.role, blocks))
        out.reverse()
        return out

    def stream(self, request: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """The registry's ``stream`` with the request's images loaded first."""
        return self._stream(request, kwargs)

    async def _stream(self, request: Any, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        request.messages = await self.expand(request.messages)
        events = self.llm.stream(request, **kwargs)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()


async def vision_refused(kernel: Any, provider: str, model: str) -> bool:
    """True when the model catalog knows the model and says it cannot see images (an unknown
    model gets the images: the provider is the judge)."""
    service = kernel.services.get("providers.catalog")
    if service is None:
        return False
    try:
        catalog = await service.catalog()
    except Exception as exc:  # the catalog failing to build must not fail the turn
        log.warning("model catalog unavailable for the vision check: %s", exc)
        return False
    entry = catalog.model_in(provider, model)
    return entry is not None and not entry.supports_vision


async def model_client(llm: Any, kernel: Any, turn: Any, history: list[Message], config: Any,
                       memo: Any = None) -> Any:
    """The providers registry, or an :class:`ImageLoader` in front of it when the turn's messages
    hold images (``memo``: the session's RepairMemo, which knows which of them it saw image-free)."""
    attached: Attached | None = getattr(turn, "attachments", None)
    images = memo.has_images(history) if memo is not None else has_images(history)
    if not (attached is not None and attached.images) and not images:
        return llm
    s = turn.settings
    refused = await vision_refused(kernel, s.provider, s.model)
    return ImageLoader(llm, kernel, turn.agent_id, attached.images if attached else {}, config.max_history_images,
                       no_vision_model=s.model if refused else None)
