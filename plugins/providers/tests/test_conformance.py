"""The same conformance suite for every built-in driver, against the fake server over real HTTP."""

from __future__ import annotations

import time
from typing import Any

import pytest
from librefang_providers.api import (
    AuthFailed,
    BadResponse,
    CompletionRequest,
    ConnectionFailed,
    ContentComplete,
    ContextTooLong,
    Message,
    ModelNotFound,
    Overloaded,
    RateLimited,
    TextDelta,
    ThinkingDelta,
    TimedOut,
    ToolDefinition,
    ToolInputDelta,
    ToolUseEnd,
    ToolUseStart,
    UpstreamError,
    collect,
)

from tests.fakes.llm_server import Script, ToolCall

from .conftest import FORMATS, TEST_KEY

pytestmark = pytest.mark.parametrize("fmt", FORMATS)

WEATHER = ToolDefinition("get_weather", "Weather for a city",
                         {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


def request(text: str = "Hi there", **kw: Any) -> CompletionRequest:
    kw.setdefault("tools", [WEATHER])
    return CompletionRequest(model="fake-model", messages=[Message("user", text)], system="Be brief.", **kw)


async def events_of(driver: Any, req: CompletionRequest | None = None) -> list[Any]:
    return [event async for event in driver.stream(req or request())]


async def test_complete_text(fmt: str, fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(text="Hello, world!")
    response = await make_driver(fmt).complete(request())
    assert response.text == "Hello, world!"
    assert response.stop_reason == "end_turn"
    assert response.provider == f"fake-{fmt}" and response.model.startswith("fake-model")
    assert response.tool_calls == []
    assert fake_llm.requests[-1].stream is False


async def test_stream_text(fmt: str, fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(text="The quick brown fox jumps over the lazy dog.", chunk_size=5)
    events = await events_of(make_driver(fmt))
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == 9  # 44 characters in pieces of 5
    assert "".join(deltas) == "The quick brown fox jumps over the lazy dog."
    assert isinstance(events[-1], ContentComplete) and events[-1].stop_reason == "end_turn"
    assert events[-1].provider == f"fake-{fmt}"
    assert fake_llm.requests[-1].stream is True


async def test_stream_one_tool_call(fmt: str, fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(text="Let me check.", tool_calls=[ToolCall("get_weather", {"city": "Paris"}, id="call_a")])
    events = await events_of(make_driver(fmt))
    starts = [e for e in events if isinstance(e, ToolUseStart)]
    ends = [e for e in events if isinstance(e, ToolUseEnd)]
    assert [(s.name) for s in starts] == ["get_weather"]
    assert [(e.name, e.input) for e in ends] == [("get_weather", {"city": "Paris"})]
    assert starts[0].id == ends[0].id
    pieces = "".join(e.text for e in events if isinstance(e, ToolInputDelta))
    assert pieces.replace(" ", "") == '{"city":"Paris"}'
    assert events.index(starts[0]) < events.index(ends[0])
    assert events[-1].stop_reason == "tool_use"
    response = await collect(_replay(events))
    assert response.text == "Let me check." and response.tool_calls[0].input == {"city": "Paris"}


async def test_stream_several_tool_calls(fmt: str, fake_llm: Any, make_driver: Any) -> None:
    calls = [ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_weather", {"city": "Oslo"}),
             ToolCall("get_time", {"zone": "UTC", "format": {"h24": True}})]
    fake_llm.script(tool_calls=calls, chunk_size=3)
    events = await events_of(make_driver(fmt))
    ends = [e for e in events if isinstance(e, ToolUseEnd)]
    assert [(e.name, e.input) for e in ends] == [(c.name, c.arguments) for c in calls]
    assert len({e.id for e in ends}) == 3  # distinct ids, made up when the provider sends none
    assert events[-1].stop_reason == "tool_use"


async def test_complete_tool_calls(fmt: str, fake_llm: Any, make_driver: Any) -> None:
    calls = [ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_weather", {"city": "Oslo"})]
    fake_llm.script(text="Checking both.", tool_calls=calls)
    response = await make_driver(fmt).complete(request())
    assert [(c.name, c.input) for c in response.tool_calls] == [(c.name, c.arguments) for c in calls]
    assert response.stop_reason == "tool_use"
    assert response.text == "Checking both."


async def test_split_arguments(fmt: str, fake_llm: Any, make_driver: Any) -> None:
    # One character per argument delta where the format streams arguments, and the whole body cut into
    # 7-byte writes, so every JSON line is split too.
    args = {"query": "a \"quoted\" {brace} and, comma", "limit": 10, "nested": {"list": [1, 2, 3]}}
    fake_llm.script(tool_calls=[ToolCall("search", args)], chunk_size=1, byte_chunk=7)
    events = await events_of(make_driver(fmt))
    ends = [e for e in events if isinstance(e, ToolUseEnd)]
    assert [e.input for e in ends] == [args]
    if fmt in ("openai", "anthropic"):  # these formats stream arguments piecewise
        assert len([e for e in events if isinstance(e, ToolInputDelta)]) > 20


async def test_split_utf8(fmt: str, fake_llm: Any, make_driver: Any) -> None:
    text = "Grüße — 日本語のテキスト 🎉🚀 done"
    args = {"note": "naïve café ☕ 𝄞"}
    fake_llm.script(text=text, tool_calls=[ToolCall("save", args)], chunk_size=3, byte_chunk=1)
    events = await events_of(make_driver(fmt))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == text
    assert [e.input for e in events if isinstance(e, ToolUseEnd)] == [args]


async def test_thinking(fmt: str, fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(thinking="First, consider the question.", text="42")
    events = await events_of(make_driver(fmt))
    assert "".join(e.text for e in events if isinstance(e, ThinkingDelta)) == "First, consider the question."
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "42"
    fake_llm.script(thinking="Hmm.", text="42")
    response = await make_driver(fmt).complete(request())
    assert response.thinking == "Hmm." and response.text == "42"


EXPECTED_USAGE = {  # what each wire format can express of {input 120, output 33, cache_read 20, cache_write 10}
    "openai": (120, 33, 20, 0),
    "anthropic": (120, 33, 20, 10),
    "gemini": (120, 33, 20, 0),
    "ollama": (120, 33, 0, 0),
}


async def test_usage(fmt: str, fake_llm: Any, make_driver: Any) -> None:
    usage = {"input": 120, "output": 33, "cache_read": 20, "cache_write": 10}
    fake_llm.script(Script(text="ok", usage=usage), Script(text="ok", usage=usage))
    driver = make_driver(fmt)
    events = await events_of(driver)
    u = events[-1].usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens) == EXPECTED_USAGE[fmt]
    u = (await driver.complete(request())).usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens) == EXPECTED_USAGE[fmt]


async def test_max_tokens_stop_reason(fmt: str, fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(Script(text="cut sh", stop_reason="max_tokens"), Script(text="cut sh", stop_reason="max_tokens"))
    driver = make_driver(fmt)
    assert (await events_of(driver))[-1].stop_reason == "max_tokens"
    assert (await driver.complete(request())).stop_reason == "max_tokens"


# -- faults -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize(
    ("fault", "error"),
    [("rate_limit", RateLimited), ("server_error", UpstreamError), ("overloaded", Overloaded),
     ("auth", AuthFailed), ("model_not_found", ModelNotFound), ("context_too_long", ContextTooLong)],
)
async def test_http_faults(fmt: str, fault: str, error: type, streaming: bool, fake_llm: Any, make_driver: Any,
                           caplog: pytest.LogCaptureFixture) -> None:
    fake_llm.script(fault=fault, retry_after="2")
    driver = make_driver(fmt)
    with pytest.raises(error) as info:
        if streaming:
            await events_of(driver)
        else:
            await driver.complete(request())
    exc = info.value
    assert exc.provider == f"fake-{fmt}" and exc.model == "fake-model"
    assert exc.retryable is (fault in ("rate_limit", "server_error", "overloaded"))
    if fault == "rate_limit":
        assert exc.retry_after == 2.0
    if fault == "server_error":
        assert exc.status == 500
    if fault == "overloaded":
        assert exc.status == (529 if fmt == "anthropic" else 503)
    # The fake echoes the presented key in its auth error, as real providers do: it must not survive.
    assert TEST_KEY not in str(exc) and TEST_KEY not in repr(exc.args) and TEST_KEY not in caplog.text
    if fault == "auth":
        assert "***" in str(exc)


async def test_malformed_chunk(fmt: str, fake_llm: Any, make_driver: Any) -> None:
    text = "abcdefghijklmnopqrstuvwxyz0123456789"
    fake_llm.script(text=text, chunk_size=4, fault="malformed", fault_after=5)
    with pytest.raises(BadResponse) as info:
        await events_of(make_driver(fmt))
    assert "malformed" in str(info.value)
    assert info.value.partial_text.startswith("abcd") and text.startswith(info.value.partial_text)


async def test_malformed_body(fmt: str, fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(fault="malformed")
    with pytest.raises(BadResponse):
        await make_driver(fmt).complete(request())


async def test_stalled_stream_times_out_with_partial_text(fmt: str, fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(text="partial answer that never ends", chunk_size=8, fault="stall", fault_after=5)
    started = time.monotonic()
    with pytest.raises(TimedOut) as info:
        await events_of(make_driver(fmt, stream_idle_timeout=0.3))
    assert time.monotonic() - started < 5
    assert info.value.partial_text and "partial answer that never ends".startswith(info.value.partial_text)


async def test_stalled_complete_times_out(fmt: str, fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(fault="stall")
    with pytest.raises(TimedOut):
        await make_driver(fmt).complete(request(timeout=0.3))


async def test_connection_dropped_mid_stream(fmt: str, fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(text="one two three four five", chunk_size=4, fault="drop", fault_after=5)
    with pytest.raises(BadResponse) as info:
        await events_of(make_driver(fmt))
    assert "connection lost" in str(info.value)
    assert info.value.partial_text and "one two three four five".startswith(info.value.partial_text)


async def test_connection_dropped_before_any_output(fmt: str, fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(Script(fault="drop"), Script(fault="drop", fault_after=0))
    driver = make_driver(fmt)
    with pytest.raises(ConnectionFailed) as info:
        await driver.complete(request())
    assert info.value.retryable
    with pytest.raises(ConnectionFailed):
        await events_of(driver)


async def test_unreachable_provider(fmt: str, make_driver: Any, fake_llm: Any) -> None:
    driver = make_driver(fmt, connect_timeout=2)
    await fake_llm.stop()  # nothing listens on the driver's port any more
    with pytest.raises(ConnectionFailed):
        await driver.complete(request())


async def _replay(events: list[Any]) -> Any:
    for event in events:
        yield event
