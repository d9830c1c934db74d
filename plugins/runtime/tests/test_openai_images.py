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
