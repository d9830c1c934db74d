"""The registry's stream carries each network read's events together (EventStream): ``collect`` folds
them in one step, ``async for`` still gets every event in order, a failure inside a read comes after
the events before it (and the stream stays committed to its provider), and a driver subclass that
overrides ``stream`` is still called through it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from librefang_providers.api import (
    BadResponse,
    CompletionRequest,
    ContentComplete,
    EventStream,
    LLMRegistry,
    Message,
    ProvidersConfig,
    StreamEvent,
    Target,
    TextDelta,
    Usage,
    collect,
)
from librefang_providers.drivers import BUILTIN_FORMATS
from librefang_providers.drivers.openai import OpenAIDriver

from tests.fakes.llm_server import Script

KEY = "sk-batches-0123456789"


def delta(text: str) -> str:
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}) + "\n\n"


class ShoutingDriver(OpenAIDriver):
    """A third party's subclass that post-processes the events of the built-in stream."""

    async def stream(self, request: CompletionRequest) -> AsyncIterator[StreamEvent]:
        async for event in super().stream(request):
            yield TextDelta(event.text.upper()) if isinstance(event, TextDelta) else event


@pytest.fixture
async def registry(fake_llm: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LLMRegistry]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("SHOUTY_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    url = fake_llm.base_url("openai")
    registry = LLMRegistry(ProvidersConfig(retry_base_delay_ms=10, provider_urls={
        "openai": url, "shouty": url, "anthropic": fake_llm.base_url("anthropic")}))
    for name, factory in BUILTIN_FORMATS.items():
        registry.register(name, factory, owner="providers")
    registry.register("shouty", ShoutingDriver, owner="test")
    yield registry
    await registry.aclose()


def ask(text: str = "hello") -> CompletionRequest:
    return CompletionRequest(model="fake-model", messages=[Message("user", text)])


async def test_one_read_travels_as_one_list_and_collect_folds_it(fake_llm: Any, registry: LLMRegistry) -> None:
    # the whole body in one write: one network read holds every event
    fake_llm.script(Script(text="one two three", chunk_size=4, byte_chunk=1 << 16))
    stream = registry.stream(ask(), provider="openai")
    assert isinstance(stream, EventStream)
    batches = [batch async for batch in stream.batches()]
    texts = [e.text for e in batches[0] if isinstance(e, TextDelta)]
    assert "".join(texts) == "one two three" and len(texts) == 4
    assert isinstance(batches[-1][-1], ContentComplete) and batches[-1][-1].provider == "openai"

    fake_llm.script(Script(text="one two three", chunk_size=4, byte_chunk=1 << 16))
    response = await collect(registry.stream(ask(), provider="openai"))
    assert response.text == "one two three" and response.provider == "openai"


async def test_async_for_gets_every_event_in_order_and_aclose_is_harmless(fake_llm: Any,
                                                                        registry: LLMRegistry) -> None:
    fake_llm.script(Script(text="abcdefghijkl", chunk_size=2))
    stream = registry.stream(ask(), provider="openai")
    first = await stream.__anext__()
    rest = [event async for event in stream]
    assert [e.text for e in [first, *rest] if isinstance(e, TextDelta)] == ["ab", "cd", "ef", "gh", "ij", "kl"]
    assert isinstance(rest[-1], ContentComplete)
    assert stream.batches() is None  # read one by one: no second way in
    await stream.aclose()
    await stream.aclose()


async def test_events_before_a_bad_event_in_the_same_read_are_delivered_first(fake_llm: Any,
                                                                             registry: LLMRegistry) -> None:
    fake_llm.script(Script(raw_events=[delta("one "), delta("two"), "data: {not json\n\n"], byte_chunk=1 << 16,
                           only="openai"), Script(text="fallback must not serve"))
    received: list[str] = []
    with pytest.raises(BadResponse) as info:
        async for event in registry.stream(ask(), provider="openai", fallback_models=[Target("anthropic", "c")]):
            received.append(event.text)
    assert received == ["one ", "two"] and info.value.partial_text == "one two"
    assert [r.format for r in fake_llm.requests] == ["openai"]  # committed: no retry, no fallback

    fake_llm.reset()
    fake_llm.script(Script(raw_events=[delta("x"), "data: {not json\n\n"], byte_chunk=1 << 16))
    with pytest.raises(BadResponse) as info:
        await collect(registry.stream(ask(), provider="openai", fallback_models=[]))
    assert info.value.partial_text == "x"


async def test_a_bad_first_read_falls_back_as_before(fake_llm: Any, registry: LLMRegistry) -> None:
    # nothing was delivered yet: the call is not committed, the next slot serves
    fake_llm.script(Script(raw_events=["data: {not json\n\n"], byte_chunk=1 << 16, only="openai"),
                    Script(text="anthropic serves", only="anthropic"))
    response = await collect(registry.stream(ask(), provider="openai", fallback_models=[Target("anthropic", "c")]))
    assert (response.text, response.provider) == ("anthropic serves", "anthropic")
    assert [r.format for r in fake_llm.requests] == ["openai", "anthropic"]


async def test_a_subclass_overriding_stream_is_called_through_it(fake_llm: Any, registry: LLMRegistry) -> None:
    fake_llm.script(Script(text="quiet words"))
    assert (await collect(registry.stream(ask(), provider="shouty"))).text == "QUIET WORDS"
    fake_llm.script(Script(text="quiet words"))
    events = [e async for e in registry.stream(ask(), provider="shouty")]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "QUIET WORDS"


async def test_collect_still_reads_any_async_iterator() -> None:
    async def events() -> AsyncIterator[StreamEvent]:
        yield TextDelta("a")
        yield TextDelta("b")
        yield ContentComplete("end_turn", Usage(), "p", "m")

    response = await collect(events())
    assert (response.text, response.provider) == ("ab", "p")
