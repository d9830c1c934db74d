"""``POST /v1/chat/completions`` with image parts: base64 ``data:`` URIs reach the provider (stored in
the session as uploads of the agent), and the refusals (remote URLs, bad data, stream, limits)."""

from __future__ import annotations

import base64
from typing import Any

from tests.fakes.llm_server import Script

from .test_attachments import JPEG, png


async def complete(client: Any, body: Any) -> tuple[int, Any]:
    response = await client.post("/v1/chat/completions", json=body)
    return response.status_code, await response.get_json()


def image_part(data: bytes, mime: str = "image/png") -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}


async def test_data_uri_image_reaches_the_provider(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "vision")
    image = png(3, 2)
    fake_llm.script(Script(text="Three by two."))
    status, body = await complete(client, {"model": "librefang:vision", "messages": [
        {"role": "system", "content": "ignored"},
        {"role": "user", "content": [{"type": "text", "text": "Size?"}, image_part(image)]}]})
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "Three by two."
    sent = [m for m in fake_llm.requests[0].body["messages"] if m["role"] == "user"][-1]["content"]
    assert sent == [{"type": "text", "text": "Size?"}, image_part(image)]
    # the session keeps the image as an upload of the agent, not inline
    view = await (await client.get(f"/api/agents/{agent_id}/session")).get_json()
    stored = view["messages"][0]["images"][0]
    assert stored["media_type"] == "image/png" and stored["url"] == f"/api/uploads/{stored['file_id']}"
    served = await client.get(stored["url"])
    assert await served.get_data() == image

    # an image alone (no text) is a message too
    fake_llm.script(Script(text="A JPEG."))
    status, body = await complete(client, {"model": agent_id, "messages": [
        {"role": "user", "content": [image_part(JPEG, "image/jpeg")]}]})
    assert status == 200 and body["choices"][0]["message"]["content"] == "A JPEG."


async def test_image_refusals(start_runtime: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start_runtime("[runtime]\nmax_attachments = 1\nmax_attachments_bytes = 2048\n")
    await spawn(kernel, "eyes")

    async def refused(parts: list[Any], stream: bool = False) -> tuple[int, str]:
        status, body = await complete(client, {"model": "eyes", "stream": stream,
                                               "messages": [{"role": "user", "content": parts}]})
        return status, body["error"]["code"]

    text = {"type": "text", "text": "look"}
    remote = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    assert await refused([text, remote]) == (400, "invalid_image")
    assert await refused([text, {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]) == (
        400, "invalid_image")
    assert await refused([text, {"type": "image_url", "image_url": {"url": 5}}]) == (400, "invalid_image")
    assert await refused([text, image_part(b"GIF but not really", "image/gif")]) == (400, "invalid_image")
    assert await refused([text, image_part(png())], stream=True) == (400, "streaming_vision_unsupported")
    assert await refused([text, image_part(png()), image_part(png())]) == (400, "too_many_attachments")
    big = png() + b"\x00" * 4096
    assert await refused([text, image_part(big)]) == (400, "image_too_large")
    assert await refused([{"type": "text", "text": "  "}]) == (400, "missing_message")
    assert fake_llm.requests == []


def upload_ids(kernel: Any) -> set[str]:
    """The uploads stored on disk (one file each)."""
    folder = kernel.home / "data" / "uploads"
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")} if folder.is_dir() else set()


async def test_the_same_image_is_stored_once_per_agent(runtime_env: Any, spawn: Any, fake_llm: Any,
                                                       monkeypatch: Any) -> None:
    import asyncio

    import librefang_agents.files as agent_files

    kernel, client = runtime_env
    agent_id = await spawn(kernel, "repeat")
    other_id = await spawn(kernel, "other")
    # a small upload cap makes the old behaviour (a new upload per call) fail with 409 by the 3rd call
    monkeypatch.setattr(agent_files, "MAX_UPLOADS_PER_AGENT", 2)
    first, second = png(3, 3), png(4, 4)

    async def ask(model: str, *images: bytes) -> None:
        fake_llm.script(Script(text="seen"))
        status, body = await complete(client, {"model": model, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "again"}, *map(image_part, images)]}]})
        assert status == 200, body

    async def file_ids(agent: str) -> list[str]:
        view = await (await client.get(f"/api/agents/{agent}/session")).get_json()
        return [image["file_id"] for m in view["messages"] for image in m.get("images") or []]

    for _ in range(3):
        await ask("librefang:repeat", first)
    ids = await file_ids(agent_id)
    assert len(ids) == 3 and len(set(ids)) == 1  # three messages, one upload
    assert upload_ids(kernel) == set(ids)
    # and the provider got the image every time
    sent = [m for m in fake_llm.requests[-1].body["messages"] if m["role"] == "user"][-1]["content"]
    assert image_part(first) in sent

    # a different image is a second upload; the same image twice in one message is still one
    await ask("librefang:repeat", second, second)
    ids = await file_ids(agent_id)
    assert len(set(ids)) == 2 and ids[-1] == ids[-2] != ids[0]
    assert len(upload_ids(kernel)) == 2

    # an image uploaded over HTTP first is reused by the chat (same bytes, same agent)
    uploaded = await client.post(f"/api/agents/{other_id}/upload", data=first,
                                 headers={"Content-Type": "image/png", "X-Filename": "first.png"})
    http_id = (await uploaded.get_json())["file_id"]
    await ask("librefang:other", first)
    assert await file_ids(other_id) == [http_id]  # another agent's upload of the same bytes is its own

    # concurrent calls bringing the same new image store it once
    third = png(5, 5)
    before = upload_ids(kernel)
    fake_llm.script(Script(text="a"), Script(text="b"))
    results = await asyncio.gather(*(complete(client, {"model": "librefang:other", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, image_part(third)]}]}) for _ in range(2)))
    assert [status for status, _ in results] == [200, 200]
    assert len(upload_ids(kernel) - before) == 1

    # the cap still counts distinct images
    status, body = await complete(client, {"model": "librefang:repeat", "messages": [
        {"role": "user", "content": [image_part(png(6, 6))]}]})
    assert status == 409 and body["error"]["code"] == "upload_limit_reached"
