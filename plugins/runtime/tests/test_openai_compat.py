"""The OpenAI-compatible API: the official ``openai`` package against a live server (non-streaming,
streaming, models, errors), and bad input in-process."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from librefang.testing import start_live_server, write_config

from tests.fakes.llm_server import FakeLLMServer, Script, ToolCall

from .conftest import AGENT, TEST_KEY, config_for

API_KEY = "lf-test-key-0123456789abcdef0123456789"


@pytest.fixture
def live(librefang_home: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    fake = FakeLLMServer().start_in_thread()
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    monkeypatch.setenv("LIBREFANG_API_KEY", API_KEY)
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "providers,agents,runtime")
    write_config(librefang_home, config_for(fake))
    server = start_live_server(librefang_home)
    yield server, fake
    server.stop()
    fake.stop_thread()


async def spawn_live(server: Any, name: str) -> str:
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        response = await http.post("/api/agents", json={"manifest_toml": AGENT.format(name=name)})
        assert response.status_code == 201, response.text
        return response.json()["agent_id"]


async def test_official_client_non_streaming_streaming_and_models(live: Any) -> None:
    server, fake = live
    agent_id = await spawn_live(server, "oai")
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
    try:
        models = await client.models.list()
        assert [m.id for m in models.data] == ["librefang:oai"]

        fake.script(Script(text="Paris.", usage={"input": 11, "output": 2}))
        completion = await client.chat.completions.create(
            model="librefang:oai",
            messages=[{"role": "system", "content": "ignored"}, {"role": "user", "content": "Capital of France?"}],
        )
        assert completion.choices[0].message.content == "Paris."
        assert completion.choices[0].finish_reason == "stop" and completion.model == "oai"
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (11, 2)

        # by agent id, streaming, with a tool call in between
        fake.script(Script(tool_calls=[ToolCall("system_time", {}, id="t1")]),
                    Script(text="It is late.", chunk_size=3))
        stream = await client.chat.completions.create(
            model=agent_id, messages=[{"role": "user", "content": "What time is it?"}], stream=True)
        text, tools, finish = [], [], None
        async for part in stream:
            delta = part.choices[0].delta
            text.append(delta.content or "")
            tools += [c.function.name for c in delta.tool_calls or [] if c.function and c.function.name]
            finish = part.choices[0].finish_reason or finish
        assert "".join(text) == "It is late." and tools == ["system_time"] and finish == "stop"
        # the agent kept the history server-side: the third call sees the earlier turns
        fake.script(Script(text="ok"))
        await client.chat.completions.create(model="oai", messages=[{"role": "user", "content": "thanks"}])
        sent = fake.requests[-1].body["messages"]
        assert [m["content"] for m in sent if m["role"] == "user"] == ["Capital of France?", "What time is it?", "thanks"]

        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="librefang:nobody", messages=[{"role": "user", "content": "x"}])
        assert info.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="oai", messages=[{"role": "assistant", "content": "x"}])
        assert bad.value.code == "missing_message"
        wrong = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="wrong-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()
        await wrong.close()
    finally:
        await client.close()


async def test_bad_input_in_process(runtime_env: Any, spawn: Any, monkeypatch: Any) -> None:
    kernel, client = runtime_env
    await spawn(kernel, "local")

    async def complete(body: Any) -> tuple[int, Any]:
        response = await client.post("/v1/chat/completions", json=body)
        return response.status_code, await response.get_json()

    status, body = await complete({"model": "local"})
    assert status == 400
    status, body = await complete({"model": "local", "messages": []})
    assert status == 400
    status, body = await complete({"model": "ghost", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 404 and body["error"]["code"] == "model_not_found" and body["error"]["type"] == "invalid_request_error"
    image = [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]
    status, body = await complete({"model": "local", "messages": [{"role": "user", "content": image}]})
    assert status == 400 and body["error"]["code"] == "invalid_image"  # not a PNG; images: test_openai_images.py
    status, body = await complete({"model": "local", "messages": [{"role": "user", "content": "   "}]})
    assert status == 400 and body["error"]["code"] == "missing_message"
    status, body = await complete({"model": "local", "messages": [{"role": "user", "content": "x" * 100_001}]})
    assert status == 413 and body["error"]["code"] == "message_too_large"
    monkeypatch.delenv("OPENAI_API_KEY")
    status, body = await complete({"model": "librefang:local", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 412 and body["error"]["code"] == "provider_auth_missing"
