"""Attachments: uploaded images reach the provider (OpenAI and Anthropic wire shapes), text files are
inlined, the session stores references (history, export, later turns), and every refusal."""

from __future__ import annotations

import base64
import json
import struct
import uuid
import zlib
from typing import Any

from tests.fakes.llm_server import Script


def png(width: int = 2, height: int = 1) -> bytes:
    """A real (tiny) PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 32 + b"\xff\xd9"


async def upload(client: Any, agent_id: str, data: bytes, content_type: str, filename: str) -> str:
    response = await client.post(f"/api/agents/{agent_id}/upload", data=data,
                                 headers={"Content-Type": content_type, "X-Filename": filename})
    assert response.status_code == 200, await response.get_data(as_text=True)
    return (await response.get_json())["file_id"]


def openai_user_parts(body: dict[str, Any]) -> list[Any]:
    return [m for m in body["messages"] if m["role"] == "user"]


async def test_image_reaches_openai_and_is_stored_as_a_reference(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "seer")
    image = png()
    file_id = await upload(client, agent_id, image, "image/png", "red.png")
    fake_llm.script(Script(text="A red pixel pair."), Script(text="Still red."))
    response = await client.post(f"/api/agents/{agent_id}/message", json={
        "message": "What is this?", "attachments": [{"file_id": file_id, "filename": "red.png"}]})
    assert response.status_code == 200, await response.get_json()
    assert (await response.get_json())["response"] == "A red pixel pair."
    sent = openai_user_parts(fake_llm.requests[0].body)[-1]["content"]
    data_uri = "data:image/png;base64," + base64.b64encode(image).decode()
    assert sent == [{"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": data_uri}}]

    # the session holds a reference, not the bytes; the view and the export show it
    view = await (await client.get(f"/api/agents/{agent_id}/session")).get_json()
    first = view["messages"][0]
    assert first["role"] == "User" and first["content"] == "What is this?"
    assert first["images"] == [{"media_type": "image/png", "url": f"/api/uploads/{file_id}", "file_id": file_id}]
    exported = await (await client.get(
        f"/api/agents/{agent_id}/sessions/{view['session_id']}/export")).get_json()
    blocks = exported["messages"][0]["content"]
    assert {"type": "image", "media_type": "image/png", "data": "", "url": f"/api/uploads/{file_id}"} in blocks
    assert base64.b64encode(image).decode() not in json.dumps(exported)

    # the next turn loads the image again from the upload (within max_history_images)
    await client.post(f"/api/agents/{agent_id}/message", json={"message": "and now?"})
    again = openai_user_parts(fake_llm.requests[1].body)
    assert again[0]["content"][1] == {"type": "image_url", "image_url": {"url": data_uri}}
    assert again[-1]["content"] == "and now?"


async def test_older_images_are_not_sent_again_beyond_the_budget(start_runtime: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start_runtime("[runtime]\nmax_history_images = 1\n")
    agent_id = await spawn(kernel, "gallery")
    first = await upload(client, agent_id, png(1, 1), "image/png", "one.png")
    second = await upload(client, agent_id, JPEG, "image/jpeg", "two.jpg")
    for file_id in (first, second):
        response = await client.post(f"/api/agents/{agent_id}/message",
                                     json={"message": "look", "attachments": [{"file_id": file_id}]})
        assert response.status_code == 200
    await client.post(f"/api/agents/{agent_id}/message", json={"message": "compare"})
    users = openai_user_parts(fake_llm.requests[2].body)
    # (all-text parts are joined into one string by the OpenAI driver)
    assert users[0]["content"] == "look[An image from earlier in the conversation (image/png) is not sent again.]"
    assert users[1]["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")


async def test_image_reaches_anthropic_in_its_shape(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "claude-eyes", """name = "claude-eyes"
[model]
provider = "anthropic"
model = "fake-model"
""")
    image = png()
    file_id = await upload(client, agent_id, image, "application/octet-stream", "blob.bin")  # type from the bytes
    fake_llm.script(Script(text="Seen."))
    response = await client.post(f"/api/agents/{agent_id}/message", json={
        "message": "", "attachments": [{"file_id": file_id}]})  # an image alone is a message
    assert response.status_code == 200, await response.get_json()
    request = fake_llm.requests[0]
    assert request.format == "anthropic"
    content = request.body["messages"][-1]["content"]
    assert content == [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                    "data": base64.b64encode(image).decode()}}]


async def test_text_file_is_inlined_and_stream_accepts_attachments(start_runtime: Any, spawn: Any,
                                                                   fake_llm: Any) -> None:
    kernel, client = await start_runtime("[runtime]\nmax_attachment_text_chars = 1000\n")
    agent_id = await spawn(kernel, "reader")
    notes = await upload(client, agent_id, b"line one\nline two\n", "text/plain", "notes.txt")
    code = await upload(client, agent_id, ("x = 1\n" * 400).encode(), "application/octet-stream", "big.py")
    fake_llm.script(Script(text="Read it."))
    response = await client.post(f"/api/agents/{agent_id}/message/stream", json={
        "message": "summarise", "attachments": [{"file_id": notes}, {"file_id": code}]})
    body = await response.get_data(as_text=True)
    assert response.status_code == 200 and "event: result" in body
    content = openai_user_parts(fake_llm.requests[0].body)[-1]["content"]
    assert content.startswith("summarise[Attached file: notes.txt (18 bytes)]\n\nline one\nline two\n")
    assert "[Attached file: big.py (2400 bytes)]" in content
    assert content.endswith("[... the file was cut at 1000 characters]")


async def test_refusals(start_runtime: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start_runtime("[runtime]\nmax_attachments = 2\nmax_attachments_bytes = 4096\n")
    agent_id = await spawn(kernel, "picky")
    other_id = await spawn(kernel, "other")
    ok = await upload(client, agent_id, png(), "image/png", "ok.png")
    pdf = await upload(client, agent_id, b"%PDF-1.4 binary", "application/pdf", "report.pdf")
    svg = await upload(client, agent_id, b"<svg/>", "image/svg+xml", "logo.svg")
    binary_txt = await upload(client, agent_id, b"\x00\x01\x02", "text/plain", "weird.txt")
    big = await upload(client, agent_id, b"a" * 3000, "text/plain", "a.txt")
    big2 = await upload(client, agent_id, b"b" * 3000, "text/plain", "b.txt")
    foreign = await upload(client, other_id, png(), "image/png", "theirs.png")

    async def send(attachments: Any, path: str = "message") -> tuple[int, dict[str, Any]]:
        response = await client.post(f"/api/agents/{agent_id}/{path}", json={"message": "hi", "attachments": attachments})
        return response.status_code, await response.get_json()

    status, body = await send([{"file_id": pdf}])
    assert status == 400 and body["code"] == "unsupported_attachment" and "report.pdf" in body["error"]
    status, body = await send([{"file_id": svg}])
    assert status == 400 and body["code"] == "unsupported_attachment" and "logo.svg" in body["error"]
    status, body = await send([{"file_id": binary_txt}])
    assert status == 400 and "weird.txt" in body["error"]
    status, body = await send([{"file_id": str(uuid.uuid4())}])
    assert status == 404 and body["code"] == "upload_not_found"
    status, body = await send([{"file_id": "../../etc/passwd"}])
    assert status == 400 and body["code"] == "invalid_file_id"
    status, body = await send([{"file_id": foreign}], "message/stream")
    assert status == 403 and body["code"] == "attachment_not_owned"
    status, body = await send([{"file_id": ok}] * 3)
    assert status == 400 and body["code"] == "too_many_attachments"
    status, body = await send([{"file_id": big}, {"file_id": big2}])
    assert status == 413 and body["code"] == "attachments_too_large"
    status, body = await send([{"file_id": ok, "bogus": 1}])
    assert status == 400
    status, body = await send([{"file_id": ok}] * 21)  # the schema's hard cap
    assert status == 400
    assert fake_llm.requests == []  # nothing reached the provider
    # an image-less empty message is still refused
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": " ", "attachments": []})
    assert (await response.get_json())["code"] == "empty_message"


async def test_model_without_vision_gets_a_note(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    catalog = await kernel.services["providers.catalog"].catalog()
    blind = catalog.model_in("openai", "gpt-3.5-turbo")  # the bundled catalog: text only
    assert blind is not None and not blind.supports_vision
    agent_id = await spawn(kernel, "blind", 'name = "blind"\n[model]\nprovider = "openai"\nmodel = "gpt-3.5-turbo"\n')
    file_id = await upload(client, agent_id, png(), "image/png", "x.png")
    response = await client.post(f"/api/agents/{agent_id}/message",
                                 json={"message": "see?", "attachments": [{"file_id": file_id}]})
    assert response.status_code == 200
    content = openai_user_parts(fake_llm.requests[0].body)[-1]["content"]
    assert "image_url" not in json.dumps(content) and "cannot see images" in json.dumps(content)


async def test_send_message_api_with_attachments(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    from librefang_agents import api as agents_api
    from librefang_runtime import api as runtime_api

    kernel, _client = runtime_env
    agent_id = await spawn(kernel, "channel-bot")
    image = png()
    meta = await agents_api.save_upload(kernel, agent_id, "photo.png", "image/png", image)
    assert (await agents_api.get_upload(kernel, meta["file_id"]))[1] == image
    fake_llm.script(Script(text="Nice photo."))
    result = await runtime_api.send_message(kernel, agent_id, "from a channel", attachments=[meta["file_id"]])
    assert result.response == "Nice photo."
    content = openai_user_parts(fake_llm.requests[0].body)[-1]["content"]
    assert content[1] == {"type": "image_url",
                          "image_url": {"url": "data:image/png;base64," + base64.b64encode(image).decode()}}
