"""The shared provider HTTP clients (the aiohttp session of the completion calls, the httpx client of the
rest) keep no cookies, and the per-request httpx log lines stay out of the daemon's logs unless debug
logging is on (fake server, real HTTP)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from librefang.logs import CHATTY_HTTP_LOGGERS, quiet_http_loggers, setup_logging
from librefang_providers.api import CompletionRequest, Message, TextBlock
from librefang_providers.drivers.base import new_http_client
from librefang_providers.drivers.openai import OpenAIDriver
from librefang_providers.types import DriverConfig

from tests.fakes.llm_server import Script

from .conftest import TEST_KEY


def request() -> CompletionRequest:
    return CompletionRequest(model="fake-model", messages=[Message("user", [TextBlock("hello")])])


@pytest.fixture
async def shared_driver(fake_llm: Any) -> Any:
    client = new_http_client()
    driver = OpenAIDriver(DriverConfig(provider="openai", base_url=fake_llm.base_url("openai"), api_key=TEST_KEY,
                                       http_client=client))
    yield driver
    await driver.aclose()
    await client.aclose()


async def test_a_providers_set_cookie_is_never_sent_back(fake_llm: Any, shared_driver: Any) -> None:
    fake_llm.set_cookie = "AWSALB=sticky-0123; Path=/; Max-Age=3600"
    fake_llm.script(Script(text="one"), Script(text="two"), Script(text="three"))
    await shared_driver.complete(request())
    async for _ in shared_driver.stream(request()):
        pass
    await shared_driver.complete(request())
    assert len(fake_llm.requests) == 3
    assert [r.headers.get("cookie") for r in fake_llm.requests] == [None, None, None]
    session = shared_driver.pool.session()  # the completion calls' aiohttp session
    assert len(session.cookie_jar) == 0
    # even cookies handed to the clients on purpose are not kept
    session.cookie_jar.update_cookies({"sid": "x"})
    assert len(session.cookie_jar) == 0
    assert len(shared_driver.client.cookies.jar) == 0
    shared_driver.client.cookies.set("sid", "x", domain="127.0.0.1")
    assert len(shared_driver.client.cookies.jar) == 0
    # and the httpx client (probe, catalog, third-party drivers) sends none back either
    fake_llm.requests.clear()
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(2):
        reply = await shared_driver.client.post(fake_llm.base_url("openai") + "/chat/completions", json=body)
        assert "AWSALB" in reply.headers["set-cookie"]
    assert [r.headers.get("cookie") for r in fake_llm.requests] == [None, None]


@pytest.fixture
def http_log_levels() -> Any:
    saved = {name: logging.getLogger(name).level for name in CHATTY_HTTP_LOGGERS}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


async def test_httpx_request_lines_are_kept_out_unless_debug(fake_llm: Any, shared_driver: Any, http_log_levels: Any,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    fake_llm.script(Script(text="quiet"))
    models = fake_llm.base_url("openai") + "/models"
    quiet_http_loggers(logging.INFO)
    with caplog.at_level(logging.DEBUG):  # the root logs everything; httpx alone is held at WARNING
        await shared_driver.complete(request())  # (over aiohttp, which logs no line per request)
        await shared_driver.client.get(models)
    assert not [r for r in caplog.records if r.name.startswith(("httpx", "httpcore", "aiohttp"))]
    caplog.clear()
    quiet_http_loggers(logging.DEBUG)  # the user turned debug logging on: the lines come back
    with caplog.at_level(logging.DEBUG):
        await shared_driver.client.get(models)
    assert [r for r in caplog.records if r.name == "httpx" and "GET" in r.getMessage()]


def test_daemon_logging_setup_quiets_httpx_at_info_only(tmp_path: Path, http_log_levels: Any) -> None:
    root = logging.getLogger()
    before_handlers, before_level = list(root.handlers), root.level
    try:
        setup_logging(tmp_path, "info")
        assert all(logging.getLogger(n).getEffectiveLevel() == logging.WARNING for n in CHATTY_HTTP_LOGGERS)
        setup_logging(tmp_path, "debug")
        assert all(logging.getLogger(n).getEffectiveLevel() == logging.DEBUG for n in CHATTY_HTTP_LOGGERS)
    finally:
        for handler in [h for h in root.handlers if h not in before_handlers]:
            root.removeHandler(handler)
        root.setLevel(before_level)
